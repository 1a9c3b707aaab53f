//! Messaging shared by every shop service: RabbitMQ topology, the CloudEvents envelope, the SQLite
//! transactional outbox and its relay, the inbox, and a reconnecting consumer; the broker
//! endpoint (`AMQP_URL`, password file, AMQPS with a CA bundle), the broker definitions derived
//! from the contract, and the check that an event comes from the service that owns its type.
//!
//! # How to use
//!
//! ```text
//! let db = Db::open(path)?;                      // one SQLite file per service
//! messaging::migrate(&db).await?;                // outbox + inbox tables
//! // spawn the relay and the consumer; both stop when `shutdown` is cancelled:
//! let (relay, notifier) = Relay::new(amqp.clone(), db.clone(), metrics.clone());
//! tokio::spawn(relay.run(shutdown.clone()));
//! let consumer = Consumer::new(config, db.clone(), handler, Some(notifier.clone()), metrics);
//! tokio::spawn(consumer.run(shutdown.clone()));
//! // outside a handler, write events through the service's outbox handle:
//! let outbox = Outbox::new(db, "orders", notifier);
//! outbox.transaction(|w| w.enqueue(&OrderCancelled { .. }, &trace)).await?;
//! // a handler matches on the saga event and writes through the consumer's transaction:
//! match msg.saga()? {
//!     Some(SagaEvent::OrderPlaced(placed)) => { tx.enqueue(&StockReserved { .. }, &msg.trace)?; }
//!     _ => {}
//! }
//! ```
//!
//! Who produces and consumes which routing key is [`contract`]; the event types and
//! [`SagaEvent`] are [`events`].
//!
//! Delivery guarantees: publishing is at-least-once (outbox + publisher confirms), consuming is
//! effectively-once per consumer (inbox row in the handler's transaction, ack after commit).
//! A message a handler cannot process for now is retried after a growing delay through the
//! consumer's retry queues ([`retry`]) and dead-lettered to `<service>.dlq` after the delivery
//! limit. A message that cannot
//! even be parsed is rejected without requeue and goes to the DLQ at once, and so is an event
//! whose AMQP `user_id` (set by the relay, validated by RabbitMQ) is not the broker user of the
//! service that owns its type ([`Provenance`]).

mod broker;
pub mod clock;
mod consumer;
pub mod contract;
mod db;
pub mod definitions;
mod endpoint;
mod envelope;
mod error;
pub mod events;
pub mod inbox;
mod metrics;
pub mod outbox;
pub mod probe;
pub mod provenance;
mod relay;
pub mod retry;
mod topology;
pub mod trace_context;

pub use broker::{
    AmqpConfig, BrokerState, BrokerStatus, DEFAULT_DELIVERY_LIMIT, DEFAULT_HEARTBEAT_SECS,
};
pub use consumer::{Consumer, ConsumerConfig, Handler, HandlerError, Incoming};
pub use contract::Contract;
pub use db::Db;
pub use endpoint::{BrokerEndpoint, DEFAULT_URL};
pub use envelope::{CloudEvent, CONTENT_TYPE};
pub use error::MessagingError;
pub use events::{Event, SagaEvent};
pub use metrics::{ConsumeLabels, MessagingMetrics, PublishLabels};
pub use outbox::{Outbox, Writer};
pub use provenance::{Forgery, Provenance};
pub use relay::{OutboxNotifier, Relay};
pub use retry::RetryBackoff;
pub use topology::{amqp_message, soft_error, Topology, RETRY_LEVELS};
pub use trace_context::TraceContext;

/// Creates the outbox and inbox tables if they do not exist.
pub async fn migrate(db: &Db) -> Result<(), MessagingError> {
    db.call(|conn| {
        conn.execute_batch(outbox::SCHEMA)?;
        conn.execute_batch(inbox::SCHEMA)?;
        Ok(())
    })
    .await
}
