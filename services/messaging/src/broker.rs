use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::{Connect as _, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::contract::Contract;
use crate::{BrokerEndpoint, MessagingError, MessagingMetrics, Topology};

/// Where the broker is, as whom, and how names are prefixed. Inert data; cheap to clone. Its
/// `Debug` hides the URL's credentials.
#[derive(Clone)]
pub struct AmqpConfig {
    /// URL, password and CA bundle (`AMQP_URL`, `AMQP_PASSWORD_FILE`, `AMQP_CA_FILE`). Never
    /// logged: the URL may hold a password.
    pub endpoint: BrokerEndpoint,
    /// Exchange, queue and broker user names.
    pub topology: Topology,
    /// Name shown in the broker's connection list (`rabbitmqctl list_connections client_properties`).
    pub connection_name: String,
    /// Services whose queues (and bindings) the relay makes sure exist before publishing, so
    /// nothing it publishes is lost for want of a queue. Services pass
    /// [`contract::SERVICES`](crate::contract::SERVICES) (those without a queue are skipped);
    /// empty checks none. On a broker provisioned from the definitions they already exist and
    /// are only checked; on a broker where the user may create them, missing ones are declared.
    pub subscriptions: &'static [Contract],
}

/// Returns (nack + requeue) a quorum queue allows before dead-lettering. Every declaration of
/// a queue must use the same value, or the broker refuses the redeclaration.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;

impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("endpoint", &self.endpoint)
            .field("topology", &self.topology)
            .field("connection_name", &self.connection_name)
            .finish_non_exhaustive()
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest AMQP frame we ask the broker for, unless the URL says otherwise (`?frame_max=`).
///
/// lapin keeps a send and a receive buffer of 32 frames per connection, and RabbitMQ offers
/// 128 KiB frames: 8 MiB per connection, most of a service's memory. Events are a few KiB; a
/// larger message is simply split into more frames.
pub(crate) const FRAME_MAX: u32 = 16 * 1024;

/// AMQP heartbeat interval we ask the broker for, in seconds, unless the URL says otherwise
/// (`?heartbeat=`; `0` takes the broker's, 60 s on RabbitMQ by default).
///
/// It is what notices a broker that stops answering without closing its sockets (its process
/// frozen, a network black hole): lapin closes a connection after two intervals without a frame
/// from the broker, the task is then `down` in `/readyz` and reconnects. RabbitMQ's own default
/// is 60 s, which left a frozen broker unnoticed for two minutes; 10 s (detected in 20–25 s) is
/// in the 5–20 s range RabbitMQ recommends. Much lower values risk closing healthy connections
/// of a busy broker.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

impl AmqpConfig {
    /// Opens a connection (TLS for `amqps://`, the broker's certificate verified against the CA
    /// bundle only), giving up after five seconds. The password and CA files are read now. It
    /// asks for `FRAME_MAX`-byte (16 KiB) frames and a [`DEFAULT_HEARTBEAT_SECS`] heartbeat unless
    /// the URL names `frame_max` or `heartbeat`.
    pub async fn connect(&self, role: &str) -> Result<Connection, MessagingError> {
        let (mut uri, tls) = self.endpoint.resolve()?;
        uri.query.frame_max.get_or_insert(FRAME_MAX);
        uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
        let props = ConnectionProperties::default()
            .with_connection_name(format!("{}-{role}", self.connection_name).into());
        let runtime = lapin::runtime::default_runtime()?;
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            uri.connect_with_config(props, tls, runtime),
        )
        .await
        .map_err(|_| MessagingError::ConnectTimeout(CONNECT_TIMEOUT))?
        .map_err(MessagingError::from)
    }

    /// The broker user the connections authenticate as: the AMQP `user_id` of what they publish.
    pub fn user(&self) -> String {
        self.endpoint.user()
    }
}

/// Whether a long-running broker task currently holds a working channel on a connection the
/// broker lets it use; `/readyz` reads it ([`BrokerStatus::state`]).
#[derive(Clone, Default)]
pub struct BrokerStatus(Arc<StatusInner>);

#[derive(Default)]
struct StatusInner {
    up: AtomicBool,
    /// The live connection and channel of the task, read at every check: lapin updates them
    /// when the broker blocks the connection (`connection.blocked`, a resource alarm) or closes
    /// the channel, before the task itself notices.
    link: std::sync::Mutex<Option<(lapin::ConnectionStatus, lapin::ChannelStatus)>>,
}

impl std::fmt::Debug for BrokerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BrokerStatus").field(&self.state()).finish()
    }
}

/// What a broker task can do right now. A closed set: `/readyz` names each case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// Connected, channel open, not blocked.
    Up,
    /// Not connected (connecting, or reconnecting after a failure).
    Down,
    /// The broker has blocked the connection (`connection.blocked`: a memory or disk alarm):
    /// nothing it publishes goes through until it is unblocked.
    Blocked,
    /// The channel the task works on was closed.
    ChannelLost,
}

impl BrokerState {
    /// The name `/readyz` and the readiness metric use.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Up => "up",
            BrokerState::Down => "down",
            BrokerState::Blocked => "blocked",
            BrokerState::ChannelLost => "channel_lost",
        }
    }
}

impl BrokerStatus {
    pub fn set(&self, up: bool) {
        self.0.up.store(up, Ordering::Relaxed);
        if !up {
            *self.0.link.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Watches `conn` and `ch` (the task's working channel) from now on, and marks the task up.
    pub fn attach(&self, conn: &Connection, ch: &lapin::Channel) {
        *self.0.link.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((conn.status().clone(), ch.status().clone()));
        self.0.up.store(true, Ordering::Relaxed);
    }

    /// The task's state now.
    pub fn state(&self) -> BrokerState {
        if !self.0.up.load(Ordering::Relaxed) {
            return BrokerState::Down;
        }
        let link = self.0.link.lock().unwrap_or_else(|e| e.into_inner());
        match link.as_ref() {
            Some((conn, _)) if !conn.connected() => BrokerState::Down,
            Some((conn, _)) if conn.blocked() => BrokerState::Blocked,
            Some((_, ch)) if !ch.connected() => BrokerState::ChannelLost,
            _ => BrokerState::Up,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state() == BrokerState::Up
    }
}

/// Exponential back-off between reconnect attempts: 100 ms doubling up to 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(5))
}

/// The reconnect loop every long-running broker task (relay, consumers) runs under.
pub(crate) struct Reconnect<'a> {
    /// Names the task in logs (`relay`, `consumer:orders`).
    pub(crate) task: &'a str,
    pub(crate) status: &'a BrokerStatus,
    pub(crate) metrics: &'a MessagingMetrics,
    /// Failed attempts since the last successful connect; sets the back-off.
    failures: AtomicU32,
}

impl<'a> Reconnect<'a> {
    pub(crate) fn new(
        task: &'a str,
        status: &'a BrokerStatus,
        metrics: &'a MessagingMetrics,
    ) -> Self {
        Self {
            task,
            status,
            metrics,
            failures: AtomicU32::new(0),
        }
    }

    /// Call once connected and set up: marks the task up and resets the back-off.
    pub(crate) fn connected(&self) {
        self.status.set(true);
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Runs `connected_run` until it returns `Ok` (a clean stop, e.g. on shutdown) or `shutdown`
    /// is cancelled while waiting; after an error, waits with exponential back-off and runs it
    /// again. `connected_run` is not raced against `shutdown`: it watches the token itself and
    /// closes its channel and connection cleanly.
    pub(crate) async fn run<F, Fut>(&self, shutdown: &CancellationToken, mut connected_run: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), MessagingError>>,
    {
        loop {
            let result = connected_run().await;
            self.status.set(false);
            let Err(error) = result else { break };
            let delay = backoff(self.failures.fetch_add(1, Ordering::Relaxed));
            self.metrics.reconnects.inc();
            warn!(task = self.task, %error, ?delay, "Lost the broker; reconnecting.");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.status.set(false);
        debug!(task = self.task, "Stopped.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_credentials() {
        let c = AmqpConfig {
            endpoint: BrokerEndpoint::url("amqp://app:s3cret@broker:5672/%2f"),
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
    }
}
