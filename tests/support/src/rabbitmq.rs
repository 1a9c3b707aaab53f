//! Making sure a real broker is there before a test relies on it.

use std::time::Duration;

/// Used when `AMQP_URL` is unset: the broker `rabbitmq-server -detached` starts locally.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long [`require_rabbitmq`] waits to connect and for the broker's greeting.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// `AMQP_URL` from the environment, or [`DEFAULT_AMQP_URL`].
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned())
}

/// `Ok` if a RabbitMQ broker answers the AMQP 0-9-1 handshake at `url` within 3 s
/// ([`messaging::probe::greet`]).
///
/// Tests call `require_rabbitmq(&url)?` (or `.unwrap()`) first: they fail with a message that
/// says how to start a broker, and never skip.
pub fn require_rabbitmq(url: &str) -> Result<(), String> {
    messaging::probe::greet(url, PROBE_TIMEOUT).map_err(|e| {
        format!(
            "RabbitMQ is not reachable at {} ({}); start it with `rabbitmq-server -detached` \
             or set AMQP_URL",
            e.address(),
            e.reason()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let server = crate::OneShotServer::start(8, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        let error = require_rabbitmq(&format!("amqp://127.0.0.1:{}", server.port)).unwrap_err();
        assert!(error.contains("unexpected AMQP frame type"), "{error}");
        server.join();
    }
}
