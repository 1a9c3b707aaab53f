use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::{MessagingError, Topology};

/// Where the broker is and how names are prefixed. Inert data; cheap to clone.
#[derive(Debug, Clone)]
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
