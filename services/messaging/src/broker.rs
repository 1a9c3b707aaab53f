use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::{MessagingError, Topology};

/// Where the broker is and how names are prefixed. Inert data; cheap to clone. Its `Debug`
/// hides the URL's credentials.
#[derive(Clone)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:port/vhost`. Never logged: it may hold a password.
    pub url: String,
    /// Exchange and queue names.
    pub topology: Topology,
    /// Name shown in the broker's connection list (`rabbitmqctl list_connections client_properties`).
    pub connection_name: String,
    /// Consumer queues the relay declares before publishing: `(consumer, routing keys)`.
    /// Services pass [`events::SUBSCRIPTIONS`](crate::events::SUBSCRIPTIONS); empty declares none.
    pub subscriptions: &'static [(&'static str, &'static [&'static str])],
}

/// Returns (nack + requeue) a quorum queue allows before dead-lettering. Every declaration of
/// a queue must use the same value, or the broker refuses the redeclaration.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;

impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact_url(&self.url))
            .field("topology", &self.topology)
            .field("connection_name", &self.connection_name)
            .finish_non_exhaustive()
    }
}

/// `amqp://user:pass@host/vhost` → `amqp://***@host/vhost`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl AmqpConfig {
    /// Opens a connection, giving up after five seconds.
    pub async fn connect(&self, role: &str) -> Result<Connection, MessagingError> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("{}-{role}", self.connection_name).into());
        tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.url, props))
            .await
            .map_err(|_| MessagingError::ConnectTimeout(CONNECT_TIMEOUT))?
            .map_err(MessagingError::from)
    }
}

/// Whether a long-running broker task currently holds a working channel; `/readyz` reads it.
#[derive(Debug, Clone, Default)]
pub struct BrokerStatus(Arc<AtomicBool>);

impl BrokerStatus {
    pub fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }

    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Exponential back-off between reconnect attempts: 100 ms doubling up to 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_credentials() {
        let c = AmqpConfig {
            url: "amqp://app:s3cret@broker:5672/%2f".into(),
            topology: Topology::default(),
            connection_name: "x".into(),
            subscriptions: &[],
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("app:"),
            "{shown}"
        );
        assert!(shown.contains("amqp://***@broker:5672/%2f"), "{shown}");
        assert_eq!(redact_url("amqp://localhost"), "amqp://localhost");
    }
}
