//! OpenSSL calls that neither the `openssl` crate nor Pingora exposes, each behind a safe
//! function. This is the only crate in Vantage that may contain `unsafe` code (the workspace
//! forbids it everywhere else); keep it that small.
//!
//! - [`enable_read_ahead`]: lets one connection read whole TLS records, and every record
//!   already waiting in the socket, with one `read(2)`. The gateway turns it on for its upstream
//!   mutual-TLS connections, whose transport Pingora leaves unbuffered.

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;
use std::os::raw::c_int;

// Both are functions (not macros) since OpenSSL 1.1.0, in every libssl this links against
// (Debian's 3.0 or the vendored 3.x): `void SSL_set_read_ahead(SSL *, int)` and
// `int SSL_get_read_ahead(const SSL *)`. openssl-sys declares neither.
extern "C" {
    fn SSL_set_read_ahead(ssl: *mut openssl_sys::SSL, yes: c_int);
    fn SSL_get_read_ahead(ssl: *const openssl_sys::SSL) -> c_int;
}

/// Turns on OpenSSL's read-ahead for this connection.
///
/// Without it (OpenSSL's default for TLS) the record layer asks the transport for exactly what
/// it needs next: the 5-byte record header, then the record's body, so an unbuffered socket
/// costs two `read(2)` calls per record. With it, OpenSSL reads as much as its record buffer
/// holds, so one call brings in the header, the body, and any further records already
/// received. Use it on a connection whose transport has no read buffer of its own; on a
/// buffered one it only moves the copy into OpenSSL. It changes no bytes on the wire, and may
/// be turned on at any point, including after the handshake (OpenSSL checks the flag on every
/// read).
#[allow(unsafe_code)] // one FFI call, argued below
pub fn enable_read_ahead(ssl: &SslRef) {
    // SAFETY: `ssl.as_ptr()` is a live `SSL*` for as long as the borrow lasts. OpenSSL only
    // stores the flag in the connection's record layer; `SslRef` is an opaque (`UnsafeCell`)
    // wrapper, so changing the C object behind a shared reference is allowed, and the borrow
    // means no other thread is using this connection meanwhile.
    unsafe { SSL_set_read_ahead(ssl.as_ptr(), 1) }
}

/// Whether read-ahead is on for this connection (see [`enable_read_ahead`]); `false` is
/// OpenSSL's default for TLS.
#[allow(unsafe_code)] // one FFI call, argued below
pub fn read_ahead(ssl: &SslRef) -> bool {
    // SAFETY: a live `SSL*` for the borrow's duration; the call only reads a flag.
    unsafe { SSL_get_read_ahead(ssl.as_ptr()) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::pkey::PKey;
    use openssl::ssl::{SslAcceptor, SslConnector, SslMethod, SslStream, SslVerifyMode};
    use openssl::x509::X509;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};

    /// A transport that counts the `read(2)` calls OpenSSL makes on it.
    struct Counting {
        inner: UnixStream,
        reads: Arc<AtomicUsize>,
    }

    impl Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.read(buf)
        }
    }

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.inner.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }

    /// Runs a TLS 1.3 connection over a socket pair: the server writes `records` records of 100
    /// bytes each, and only then does the client (with or without read-ahead) read all of them.
    /// Returns the client's read-ahead flag and how many transport reads the client made for
    /// the application data.
    fn reads_for(records: usize, with_read_ahead: bool) -> (bool, usize) {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = X509::from_pem(issued.cert.pem().as_bytes()).unwrap();
        let key =
            PKey::private_key_from_pem(issued.signing_key.serialize_pem().as_bytes()).unwrap();
        let mut acceptor = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server()).unwrap();
        acceptor.set_certificate(&cert).unwrap();
        acceptor.set_private_key(&key).unwrap();
        // No session tickets: the only records after the handshake are the test's.
        acceptor.set_num_tickets(0).unwrap();
        let acceptor = acceptor.build();

        let (client_sock, server_sock) = UnixStream::pair().unwrap();
        let (written, wait_written) = mpsc::channel();
        let (done, wait_done) = mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let mut tls = acceptor.accept(server_sock).unwrap();
            for i in 0..records {
                tls.write_all(&[b'a' + (i % 26) as u8; 100]).unwrap();
            }
            tls.flush().unwrap();
            written.send(()).unwrap();
            // Keep the connection open until the client has read.
            wait_done.recv().unwrap();
        });

        let mut connector = SslConnector::builder(SslMethod::tls_client()).unwrap();
        connector.set_verify(SslVerifyMode::NONE);
        let reads = Arc::new(AtomicUsize::new(0));
        let transport = Counting {
            inner: client_sock,
            reads: Arc::clone(&reads),
        };
        let ssl = connector
            .build()
            .configure()
            .unwrap()
            .into_ssl("localhost")
            .unwrap();
        let mut tls = SslStream::new(ssl, transport).unwrap();
        tls.connect().unwrap();
        if with_read_ahead {
            enable_read_ahead(tls.ssl());
        }
        let flag = read_ahead(tls.ssl());

        wait_written.recv().unwrap();
        reads.store(0, Ordering::SeqCst);
        let mut got = vec![0u8; records * 100];
        tls.read_exact(&mut got).unwrap();
        for (i, chunk) in got.chunks(100).enumerate() {
            assert!(
                chunk.iter().all(|&b| b == b'a' + (i % 26) as u8),
                "record {i} intact"
            );
        }
        let count = reads.load(Ordering::SeqCst);
        done.send(()).unwrap();
        server.join().unwrap();
        (flag, count)
    }

    #[test]
    fn read_ahead_is_off_by_default_and_turned_on() {
        assert!(!reads_for(1, false).0);
        assert!(reads_for(1, true).0);
    }

    #[test]
    fn read_ahead_reads_waiting_records_in_one_call() {
        // Without it: a header read and a body read per record.
        let (_, plain) = reads_for(3, false);
        assert!(
            plain >= 6,
            "without read-ahead: {plain} reads for 3 records"
        );
        // With it: everything waiting comes in with the first read.
        let (_, ahead) = reads_for(3, true);
        assert_eq!(ahead, 1, "with read-ahead: {ahead} reads for 3 records");
    }
}
