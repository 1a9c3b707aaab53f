//! Making sure a real broker is there, without pulling an AMQP client into every test.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

/// Used when `AMQP_URL` is unset: the broker `rabbitmq-server -detached` starts locally.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `AMQP_URL` from the environment, or [`DEFAULT_AMQP_URL`].
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned())
}

/// `Ok` if a RabbitMQ broker answers the AMQP 0-9-1 handshake at `url` within 3 s.
///
/// Tests call `require_rabbitmq(&url)?` (or `.unwrap()`) first: they fail with a message that
/// says how to start a broker, and never skip.
pub fn require_rabbitmq(url: &str) -> Result<(), String> {
    let (host, port) =
        host_port(url).ok_or_else(|| unreachable(url, "cannot read host:port from the URL"))?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| unreachable(url, &e.to_string()))?
        .next()
        .ok_or_else(|| unreachable(url, "host has no address"))?;
    let timeout = Duration::from_secs(3);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| unreachable(url, &e.to_string()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| unreachable(url, &e.to_string()))?;
    // A broker answers the protocol header with a Connection.Start method frame (type 1).
    stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .map_err(|e| unreachable(url, &e.to_string()))?;
    let mut frame_type = [0u8; 1];
    stream
        .read_exact(&mut frame_type)
        .map_err(|e| unreachable(url, &format!("no AMQP handshake: {e}")))?;
    if frame_type[0] == 1 {
        Ok(())
    } else {
        Err(unreachable(
            url,
            &format!("unexpected AMQP frame type {}", frame_type[0]),
        ))
    }
}

fn unreachable(url: &str, reason: &str) -> String {
    format!(
        "RabbitMQ is not reachable at {} ({reason}); start it with `rabbitmq-server -detached` \
         or set AMQP_URL",
        without_password(url)
    )
}

fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_info = &url[scheme + 3..at];
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let default_port = if url.starts_with("amqps://") {
        5671
    } else {
        5672
    };
    if let Some(stripped) = host_port.strip_prefix('[') {
        // [ipv6]:port
        let (host, tail) = stripped.split_once(']')?;
        let port = tail
            .strip_prefix(':')
            .map_or(Some(default_port), |p| p.parse().ok())?;
        return Some((host.to_owned(), port));
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None if !host_port.is_empty() => Some((host_port.to_owned(), default_port)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn parses_host_and_port() {
        assert_eq!(
            host_port("amqp://guest:guest@rabbit:5673/%2f"),
            Some(("rabbit".into(), 5673))
        );
        assert_eq!(
            host_port("amqp://localhost"),
            Some(("localhost".into(), 5672))
        );
        assert_eq!(host_port("amqps://[::1]/vhost"), Some(("::1".into(), 5671)));
        assert_eq!(host_port("amqp://"), None);
    }

    #[test]
    fn unreachable_broker_fails_with_instructions_and_no_password() {
        // A port that accepts nothing.
        let port = crate::free_port();
        let error =
            require_rabbitmq(&format!("amqp://guest:s3cret@127.0.0.1:{port}/%2f")).unwrap_err();
        assert!(error.contains("rabbitmq-server -detached"), "{error}");
        assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn a_non_amqp_server_is_not_a_broker() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut header = [0u8; 8];
            conn.read_exact(&mut header).unwrap();
            conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        });
        let error = require_rabbitmq(&format!("amqp://127.0.0.1:{port}")).unwrap_err();
        assert!(error.contains("unexpected AMQP frame type"), "{error}");
        server.join().unwrap();
    }
}
