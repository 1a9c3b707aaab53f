//! A TCP peer that says one thing, for testing clients against servers that are not what they
//! expect (an HTTP server where a broker should be, a broker that only greets).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::thread::JoinHandle;

/// Serves one connection on 127.0.0.1: reads the client's first `read` bytes, writes `reply`,
/// closes. [`OneShotServer::join`] returns the bytes it read.
pub struct OneShotServer {
    pub port: u16,
    handle: JoinHandle<Vec<u8>>,
}

impl OneShotServer {
    /// Binds a free port and serves from a thread of its own.
    pub fn start(read: usize, reply: &'static [u8]) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a test server");
        let port = listener.local_addr().expect("its address").port();
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("one connection");
            let mut got = vec![0u8; read];
            conn.read_exact(&mut got).expect("the client's first bytes");
            conn.write_all(reply).expect("the reply");
            got
        });
        OneShotServer { port, handle }
    }

    /// Waits for the connection to be served; the bytes the client sent first.
    pub fn join(self) -> Vec<u8> {
        self.handle.join().expect("the test server panicked")
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;

    use super::*;

    #[test]
    fn it_reads_then_replies() {
        let server = OneShotServer::start(4, b"pong");
        let mut conn = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port)).unwrap();
        conn.write_all(b"ping").unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "pong");
        assert_eq!(server.join(), b"ping");
    }
}
