use std::sync::Arc;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::broker::backoff;
use crate::{
    inbox, trace_context, AmqpConfig, BrokerStatus, CloudEvent, Db, MessagingError,
    MessagingMetrics, OutboxNotifier, TraceContext,
};

/// What a consumer listens to. Inert data.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub amqp: AmqpConfig,
    /// Consumer name: the queue is `<prefix><name>`, the inbox rows are keyed by it.
    pub name: String,
    /// Routing keys bound to the queue (`#` for everything).
    pub bindings: Vec<String>,
    /// Unacked deliveries the broker may push at once. Default 16.
    pub prefetch: u16,
    /// Returns (nack with requeue) allowed before the message is dead-lettered. Default 5.
    pub delivery_limit: u32,
}

impl ConsumerConfig {
    pub fn new(amqp: AmqpConfig, name: &str, bindings: &[&str]) -> Self {
        Self {
            amqp,
            name: name.to_owned(),
            bindings: bindings.iter().map(|s| (*s).to_owned()).collect(),
            prefetch: 16,
            delivery_limit: crate::DEFAULT_DELIVERY_LIMIT,
        }
    }
}

/// Why a handler could not process a message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth another attempt: the message is returned to the queue and counts toward the
    /// delivery limit.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed: the message goes to the dead-letter queue now.
    #[error("permanent: {0}")]
    Permanent(String),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Messaging(#[from] MessagingError),
}

impl From<serde_json::Error> for HandlerError {
    fn from(e: serde_json::Error) -> Self {
        HandlerError::Permanent(format!("bad payload: {e}"))
    }
}

/// A delivery as handlers see it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub event: CloudEvent,
    /// Continue this trace in events the handler emits.
    pub trace: TraceContext,
    pub redelivered: bool,
}

/// A service's reaction to events.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Work done before the transaction, outside the database lock: calls to outside systems,
    /// simulated latency. Its result is handed to [`apply`](Self::apply). Runs again on
    /// redelivery unless the inbox already has the message, so it must be safe to repeat.
    async fn prepare(&self, _msg: &Incoming) -> Result<Option<serde_json::Value>, HandlerError> {
        Ok(None)
    }

    /// The effect, inside the transaction that also writes the inbox row (and any outbox rows).
    fn apply(
        &self,
        tx: &rusqlite::Transaction<'_>,
        msg: &Incoming,
        prepared: Option<serde_json::Value>,
    ) -> Result<(), HandlerError>;
}

enum Outcome {
    Processed,
    Duplicate,
}

/// A reconnecting queue consumer: manual ack after commit, nack-with-requeue on transient
/// failure (counted by the quorum queue), reject on poison.
pub struct Consumer<H> {
    config: ConsumerConfig,
    db: Db,
    handler: Arc<H>,
    notifier: Option<OutboxNotifier>,
    metrics: MessagingMetrics,
    status: BrokerStatus,
}

impl<H: Handler> Consumer<H> {
    pub fn new(
        config: ConsumerConfig,
        db: Db,
        handler: Arc<H>,
        notifier: Option<OutboxNotifier>,
        metrics: MessagingMetrics,
    ) -> Self {
        Self {
            config,
            db,
            handler,
            notifier,
            metrics,
            status: BrokerStatus::default(),
        }
    }

    /// Whether the consumer is attached to its queue (for `/readyz`).
    pub fn status(&self) -> BrokerStatus {
        self.status.clone()
    }

    /// Runs until `shutdown` is cancelled. An in-flight delivery that has not committed is
    /// left unacked, so the broker hands it to the next consumer.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut attempt = 0u32;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.run_connected(&shutdown, &mut attempt) => r,
            };
            self.status.set(false);
            match result {
                Ok(()) => break,
                Err(error) => {
                    let delay = backoff(attempt);
                    attempt += 1;
                    self.metrics.reconnects.inc();
                    warn!(consumer = %self.config.name, %error, ?delay, "Consumer lost the broker; reconnecting.");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.status.set(false);
        debug!(consumer = %self.config.name, "Consumer stopped.");
    }

    async fn run_connected(
        &self,
        shutdown: &CancellationToken,
        attempt: &mut u32,
    ) -> Result<(), MessagingError> {
        let cfg = &self.config;
        let conn = cfg.amqp.connect(&format!("consumer-{}", cfg.name)).await?;
        let ch = conn.create_channel().await?;
        cfg.amqp
            .topology
            .declare_consumer(&ch, &cfg.name, &cfg.bindings, cfg.delivery_limit)
            .await?;
        ch.basic_qos(cfg.prefetch, BasicQosOptions::default())
            .await?;
        let queue = cfg.amqp.topology.queue(&cfg.name);
        let mut deliveries = ch
            .basic_consume(
                queue.as_str().into(),
                format!("{}-{}", cfg.name, uuid::Uuid::new_v4())
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.status.set(true);
        *attempt = 0;
        info!(consumer = %cfg.name, %queue, "Consumer attached.");
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = conn.close(200, "shutdown".into()).await;
                    return Ok(());
                }
                d = deliveries.next() => d,
            };
            match delivery {
                Some(Ok(delivery)) => self.handle(delivery, shutdown).await?,
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(MessagingError::Amqp(lapin::Error::from(
                        lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                    )))
                }
            }
        }
    }

    async fn handle(
        &self,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> Result<(), MessagingError> {
        let name = self.config.name.as_str();
        let queue = self.config.amqp.topology.queue(name);
        let span = trace_context::consumer_span(&queue, &delivery);
        let received = TraceContext::from_amqp_headers(delivery.properties.headers().as_ref());
        let event: CloudEvent = match serde_json::from_slice(&delivery.data) {
            Ok(e) => e,
            Err(error) => {
                span.in_scope(
                    || warn!(consumer = name, %error, "Unparseable message; dead-lettering it."),
                );
                self.metrics.consumed(name, "dead_lettered");
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                return Ok(());
            }
        };
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_else(|| event.id.clone());
        let msg = Incoming {
            event,
            trace: trace_context::handler_context(&span, received),
            redelivered: delivery.redelivered,
        };
        let outcome = self
            .process(&message_id, msg, shutdown)
            .instrument(span.clone())
            .await;
        self.settle(&delivery, &message_id, outcome)
            .instrument(span)
            .await
    }

    /// Acks, nacks or rejects the delivery according to the outcome.
    async fn settle(
        &self,
        delivery: &Delivery,
        message_id: &str,
        outcome: Option<Result<Outcome, HandlerError>>,
    ) -> Result<(), MessagingError> {
        let name = self.config.name.as_str();
        match outcome {
            None => Ok(()), // shutting down mid-prepare: leave unacked
            Some(Ok(Outcome::Processed)) => {
                self.metrics.consumed(name, "processed");
                if let Some(n) = &self.notifier {
                    n.wake();
                }
                delivery.ack(BasicAckOptions::default()).await?;
                Ok(())
            }
            Some(Ok(Outcome::Duplicate)) => {
                self.metrics.consumed(name, "duplicate");
                debug!(consumer = name, %message_id, "Duplicate delivery; already handled.");
                delivery.ack(BasicAckOptions::default()).await?;
                Ok(())
            }
            Some(Err(HandlerError::Permanent(reason))) => {
                self.metrics.consumed(name, "dead_lettered");
                warn!(consumer = name, %message_id, %reason, "Message can never be handled; dead-lettering it.");
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                Ok(())
            }
            Some(Err(error)) => {
                self.metrics.consumed(name, "retried");
                warn!(consumer = name, %message_id, %error, "Handler failed; returning the message to the queue.");
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
                Ok(())
            }
        }
    }

    /// `None` when shutdown interrupted the handler before anything was committed.
    async fn process(
        &self,
        message_id: &str,
        msg: Incoming,
        shutdown: &CancellationToken,
    ) -> Option<Result<Outcome, HandlerError>> {
        let name = self.config.name.clone();
        let id = message_id.to_owned();
        let seen = {
            let (name, id) = (name.clone(), id.clone());
            self.db.call(move |c| inbox::seen(c, &name, &id)).await
        };
        match seen {
            Ok(true) => return Some(Ok(Outcome::Duplicate)),
            Ok(false) => {}
            Err(e) => return Some(Err(e.into())),
        }
        let prepared = tokio::select! {
            _ = shutdown.cancelled() => return None,
            p = self.handler.prepare(&msg) => p,
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let handler = self.handler.clone();
        let result = self
            .db
            .call(move |c| {
                let tx = c.transaction()?;
                if !inbox::claim(&tx, &name, &id, &msg.event.ty)? {
                    tx.commit()?;
                    return Ok(Outcome::Duplicate);
                }
                handler.apply(&tx, &msg, prepared)?;
                tx.commit()?;
                Ok(Outcome::Processed)
            })
            .await;
        Some(result)
    }
}
