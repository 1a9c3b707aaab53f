//! Is a RabbitMQ broker there? One AMQP 0-9-1 greeting, without credentials or an AMQP client.
//!
//! # How to use
//!
//! ```no_run
//! use std::time::Duration;
//!
//! match messaging::probe::greet("amqp://guest:guest@127.0.0.1:5672/%2f", Duration::from_secs(3)) {
//!     Ok(()) => {}
//!     // `address` is `host:port` only: the URL's credentials never reach a message.
//!     Err(e) => eprintln!("RabbitMQ is not reachable at {} ({})", e.address(), e.reason()),
//! }
//! ```
//!
//! For start-up checks that should say "start a broker" in one clear line instead of a hang or a
//! reconnect loop later: `stack`'s preflight and the test fixtures' `require_rabbitmq` use it.
//! It proves that something speaking AMQP 0-9-1 listens there, not that the credentials work.
//!
//! For `amqps://` URLs only the TCP connection is checked: the greeting comes after the TLS
//! handshake, and that needs the broker's CA bundle (`AMQP_CA_FILE`), which the probe does not
//! take. Nothing is sent to a TLS port. The handshake is checked by the first real connection
//! ([`crate::BrokerEndpoint`]; `stack` connects as each service user before it starts them).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::time::Duration;

/// What a client sends first: "AMQP", protocol id 0, version 0-9-1.
const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// The frame type a broker's first answer (`connection.start`) has: a method frame.
const METHOD_FRAME: u8 = 1;

/// Why [`greet`] found no broker.
#[derive(Debug, thiserror::Error)]
#[error("no AMQP broker at {address}: {reason}")]
pub struct ProbeError {
    address: String,
    reason: String,
}

impl ProbeError {
    /// `host:port` that was tried, or the scheme-less part of the URL when it has no host
    /// (never the credentials).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// What went wrong, in a few words (the connect error, or what answered instead of a broker).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Connects to the broker `amqp_url` names and checks that it answers the protocol header with
/// a method frame (`connection.start`), trying each address the host resolves to. `timeout`
/// bounds the connect and the wait for the first byte, per address. For `amqps://` a TCP
/// connection that is accepted is enough (see the module documentation).
pub fn greet(amqp_url: &str, timeout: Duration) -> Result<(), ProbeError> {
    let tls = amqp_url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("amqps://"));
    let Some((host, port)) = authority(amqp_url) else {
        return Err(ProbeError {
            address: without_credentials(amqp_url),
            reason: "cannot read host and port from the AMQP URL".into(),
        });
    };
    let address = format!("{host}:{port}");
    let fail = |reason: String| ProbeError {
        address: address.clone(),
        reason,
    };
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .collect();
    let mut last = "the host has no address".to_owned();
    for addr in addrs {
        let probed = if tls {
            connect_only(addr, timeout)
        } else {
            greet_one(addr, timeout)
        };
        match probed {
            Ok(()) => return Ok(()),
            Err(reason) => last = reason,
        }
    }
    Err(fail(last))
}

/// The TCP connection alone, closed without a byte sent (a TLS listener would log anything else
/// as a failed handshake).
fn connect_only(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    TcpStream::connect_timeout(&addr, timeout)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn greet_one(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(PROTOCOL_HEADER)
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    match stream.read(&mut first) {
        Ok(1) if first[0] == METHOD_FRAME => Ok(()),
        Ok(0) => Err("the connection was closed without an AMQP greeting".into()),
        Ok(_) => Err(format!(
            "something answers there, but it is not an AMQP 0-9-1 broker \
             (unexpected AMQP frame type {})",
            first[0]
        )),
        Err(e) => Err(format!("no AMQP greeting: {e}")),
    }
}

/// The `host` and `port` an AMQP URL points at (port 5672, or 5671 for `amqps`, by default);
/// `None` without a scheme, a host, or with a port that is not a number.
pub fn authority(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = if scheme == "amqps" { 5671 } else { 5672 };
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.is_empty() {
        return None;
    }
    if let Some(v6) = host_port.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_owned(), port));
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((host_port.to_owned(), default_port)),
    }
}

/// `url` with any `user:password@` cut out, for a URL [`authority`] could not read.
fn without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    if scheme.is_empty() {
        rest.to_owned()
    } else {
        format!("{scheme}://{rest}")
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn amqp_urls_give_host_and_port() {
        let a = |u: &str| authority(u);
        assert_eq!(
            a("amqp://guest:guest@127.0.0.1:5672/%2f"),
            Some(("127.0.0.1".into(), 5672))
        );
        assert_eq!(a("amqp://rabbitmq"), Some(("rabbitmq".into(), 5672)));
        assert_eq!(
            a("amqps://u:p@mq.example:5999/vh"),
            Some(("mq.example".into(), 5999))
        );
        assert_eq!(a("amqps://mq/"), Some(("mq".into(), 5671)));
        assert_eq!(a("amqp://[::1]:5673/%2f"), Some(("::1".into(), 5673)));
        assert_eq!(a("amqp://u:p@host:notaport"), None);
        assert_eq!(a("not a url"), None);
    }

    #[test]
    fn parses_host_and_port() {
        assert_eq!(
            authority("amqp://guest:guest@rabbit:5673/%2f"),
            Some(("rabbit".into(), 5673))
        );
        assert_eq!(
            authority("amqp://localhost"),
            Some(("localhost".into(), 5672))
        );
        assert_eq!(authority("amqps://[::1]/vhost"), Some(("::1".into(), 5671)));
        assert_eq!(authority("amqp://"), None);
    }

    #[test]
    fn a_closed_port_is_named_without_credentials() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = greet(
            &format!("amqp://guest:s3cret@127.0.0.1:{port}/%2f"),
            Duration::from_secs(3),
        )
        .unwrap_err();
        assert_eq!(err.address(), format!("127.0.0.1:{port}"));
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn an_unreadable_url_keeps_its_credentials_out_of_the_error() {
        let err = greet("amqp://guest:s3cret@host:notaport/", Duration::from_secs(1)).unwrap_err();
        assert!(err.reason().contains("cannot read host and port"), "{err}");
        assert_eq!(err.address(), "amqp://host:notaport/");
    }

    #[test]
    fn an_amqps_url_is_checked_by_its_tcp_connection_alone() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        greet(
            &format!("amqps://orders:s3cret@127.0.0.1:{port}/vantage"),
            Duration::from_secs(3),
        )
        .unwrap();
        // The probe connected and sent nothing: no plaintext AMQP header on a TLS port.
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut sent = Vec::new();
        conn.read_to_end(&mut sent).unwrap();
        assert!(sent.is_empty(), "{sent:?}");

        drop(listener);
        let err = greet(
            &format!("amqps://orders:s3cret@127.0.0.1:{port}/vantage"),
            Duration::from_secs(3),
        )
        .unwrap_err();
        assert_eq!(err.address(), format!("127.0.0.1:{port}"));
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn a_server_that_is_not_amqp_is_not_a_broker() {
        let server = test_support::OneShotServer::start(8, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        let err = greet(
            &format!("amqp://127.0.0.1:{}", server.port),
            Duration::from_secs(3),
        )
        .unwrap_err();
        assert!(err.reason().contains("not an AMQP 0-9-1 broker"), "{err}");
        assert_eq!(server.join(), PROTOCOL_HEADER);
    }

    #[test]
    fn a_broker_greeting_is_recognised() {
        // The start of a connection.start method frame on channel 0.
        let server = test_support::OneShotServer::start(8, &[METHOD_FRAME, 0, 0]);
        greet(
            &format!("amqp://127.0.0.1:{}", server.port),
            Duration::from_secs(3),
        )
        .unwrap();
        assert_eq!(server.join(), PROTOCOL_HEADER);
    }
}
