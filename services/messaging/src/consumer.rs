use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::broker::Reconnect;
use crate::events::SagaEvent;
use crate::outbox::Writer;
use crate::provenance::Provenance;
use crate::retry::{self, Retried, RetryBackoff};
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
    /// The service the handler's events are from (their CloudEvents `source`). Default: `name`.
    pub source: String,
    /// Routing keys bound to the queue (`#` for everything).
    pub bindings: Vec<String>,
    /// Unacked deliveries the broker may push at once. Default 64.
    pub prefetch: u16,
    /// Deliveries already received that are handled in one SQLite transaction (each in its own
    /// savepoint, so one failure does not undo the others). Default 64; 1 disables batching.
    pub max_batch: usize,
    /// Transient failures retried before the message is dead-lettered. Default 5: the sixth
    /// failure dead-letters it. Also the quorum queue's `x-delivery-limit`, which counts
    /// deliveries returned unacked (a consumer lost mid-handle).
    pub delivery_limit: u32,
    /// How long a transiently failed delivery waits in the retry queues before its next
    /// attempt ([`RetryBackoff`]; default 1 s doubling up to 60 s).
    pub retry: RetryBackoff,
    /// Which publishers are accepted (checked on the AMQP `user_id` of every delivery).
    /// Default [`Provenance::Contract`]: each type only from the service that owns it.
    pub provenance: Provenance,
}

impl ConsumerConfig {
    pub fn new(amqp: AmqpConfig, name: &str, bindings: &[&str]) -> Self {
        Self {
            amqp,
            name: name.to_owned(),
            source: name.to_owned(),
            bindings: bindings.iter().map(|s| (*s).to_owned()).collect(),
            prefetch: 64,
            max_batch: 64,
            delivery_limit: crate::DEFAULT_DELIVERY_LIMIT,
            retry: RetryBackoff::default(),
            provenance: Provenance::Contract,
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
    /// The envelope as received.
    pub event: CloudEvent,
    /// Continue this trace in events the handler emits.
    pub trace: TraceContext,
    pub redelivered: bool,
}

impl Incoming {
    /// The saga event inside, to `match` on: `Ok(None)` for a routing key outside the catalogue,
    /// a [`HandlerError::Permanent`] (dead-letter) for a payload that does not fit its key.
    pub fn saga(&self) -> Result<Option<SagaEvent>, HandlerError> {
        Ok(SagaEvent::decode(&self.event)?)
    }

    /// The routing key the event travels under.
    pub fn routing_key(&self) -> &str {
        self.event.routing_key()
    }
}

/// A service's reaction to events.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// What [`prepare`](Self::prepare) hands to [`apply`](Self::apply) (a provider's answer);
    /// `()` for handlers that prepare nothing.
    type Prepared: Default + Send + 'static;

    /// Work done before the transaction, outside the database lock: calls to outside systems,
    /// simulated latency. Its result is handed to [`apply`](Self::apply). Runs again on
    /// redelivery unless the inbox already has the message, so it must be safe to repeat.
    /// Default: nothing (`Prepared::default()`).
    async fn prepare(&self, _msg: &Incoming) -> Result<Self::Prepared, HandlerError> {
        Ok(Self::Prepared::default())
    }

    /// True when [`prepare`](Self::prepare) does real work for `msg` (reads state, calls out,
    /// waits). The consumer then commits the messages before it first, so `prepare` sees their
    /// effects exactly as if every message had its own transaction. Default: false.
    fn prepares(&self, _msg: &Incoming) -> bool {
        false
    }

    /// The effect, inside the transaction (a savepoint of it) that also writes the inbox row.
    /// `tx` derefs to the connection; write outbox rows through [`Writer::enqueue`] (as the
    /// consumer's service; the relay is woken after the commit). An error rolls back this
    /// message's writes only.
    fn apply(
        &self,
        tx: &Writer<'_>,
        msg: &Incoming,
        prepared: Self::Prepared,
    ) -> Result<(), HandlerError>;
}

enum Outcome {
    Processed,
    Duplicate,
}

/// A reconnecting queue consumer: manual ack after commit, nack-with-requeue on transient
/// failure (counted by the quorum queue), reject on poison and on an event from a publisher
/// that does not own its type ([`Provenance`]).
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
        let task = format!("consumer:{}", self.config.name);
        let reconnect = Reconnect::new(&task, &self.status, &self.metrics);
        reconnect
            .run(&shutdown, || self.run_connected(&shutdown, &reconnect))
            .await;
    }

    async fn run_connected(
        &self,
        shutdown: &CancellationToken,
        reconnect: &Reconnect<'_>,
    ) -> Result<(), MessagingError> {
        let cfg = &self.config;
        let role = format!("consumer-{}", cfg.name);
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = cfg.amqp.connect(&role) => c?,
        };
        cfg.amqp
            .topology
            .ensure_consumer(
                &conn,
                &cfg.name,
                &cfg.bindings,
                cfg.delivery_limit,
                &cfg.amqp.user(),
            )
            .await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(cfg.prefetch, BasicQosOptions::default())
            .await?;
        // Retries are republished with confirms, and the original acked only after the confirm.
        let retry_ch = conn.create_channel().await?;
        retry_ch
            .confirm_select(ConfirmSelectOptions::default())
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
        reconnect.connected();
        self.status.attach(&conn, &ch);
        info!(consumer = %cfg.name, %queue, "Consumer attached.");
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = ch.close(200, "shutdown".into()).await;
                    let _ = conn.close(200, "shutdown".into()).await;
                    return Ok(());
                }
                d = deliveries.next() => d,
            };
            let mut batch = vec![delivered(first)?];
            // Take whatever the broker already pushed (up to prefetch) without waiting.
            while batch.len() < cfg.max_batch.max(1) {
                match deliveries.next().now_or_never() {
                    Some(d) => batch.push(delivered(d)?),
                    None => break,
                }
            }
            self.handle_batch(batch, &retry_ch, shutdown).await?;
        }
    }

    async fn handle_batch(
        &self,
        batch: Vec<Delivery>,
        retry_ch: &lapin::Channel,
        shutdown: &CancellationToken,
    ) -> Result<(), MessagingError> {
        let name = self.config.name.as_str();
        let own_user = self.config.amqp.user();
        let queue = self.config.amqp.topology.queue(name);
        let received_at = std::time::Instant::now();
        let mut items = Vec::with_capacity(batch.len());
        for delivery in batch {
            let span = trace_context::consumer_span(&queue, &delivery);
            let received = TraceContext::from_amqp_headers(delivery.properties.headers().as_ref());
            let event: CloudEvent = match serde_json::from_slice(&delivery.data) {
                Ok(e) => e,
                Err(error) => {
                    span.in_scope(|| {
                        warn!(consumer = name, %error, "Unparseable message; dead-lettering it.")
                    });
                    self.metrics.consumed(name, "dead_lettered");
                    delivery
                        .reject(BasicRejectOptions { requeue: false })
                        .await?;
                    continue;
                }
            };
            // A retry is our own republished copy: its headers say who published the event
            // and under which key (trusted only because the broker vouches it is ours).
            let origin = Retried::of(&delivery, &own_user).unwrap_or_else(|| Retried {
                failures: 0,
                publisher: delivery
                    .properties
                    .user_id()
                    .as_ref()
                    .map(|u| u.as_str().to_owned())
                    .unwrap_or_default(),
                routing_key: delivery.routing_key.as_str().to_owned(),
            });
            let publisher = Some(origin.publisher.as_str()).filter(|p| !p.is_empty());
            let checked = self.config.provenance.check(
                &self.config.amqp.topology,
                &event,
                &origin.routing_key,
                publisher,
            );
            if let Err(forgery) = checked {
                span.in_scope(|| {
                    warn!(
                        consumer = name,
                        event_id = %event.id,
                        event_type = %event.ty,
                        claimed_source = %event.source,
                        actual_publisher = %publisher.unwrap_or("(none)"),
                        %forgery,
                        "Event not from the service that owns its type; dead-lettering it."
                    )
                });
                self.metrics.consumed(name, "forged");
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                continue;
            }
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned())
                .unwrap_or_else(|| event.id.clone());
            // Ids are deduplicated per publisher, so no service can make another's event look
            // handled by sending its id first.
            let message_id = match (self.config.provenance, publisher) {
                (Provenance::Unchecked, _) | (_, None) => id,
                (_, Some(user)) => format!("{user}/{id}"),
            };
            let msg = Incoming {
                event,
                trace: trace_context::handler_context(&span, received),
                redelivered: delivery.redelivered || origin.failures > 0,
            };
            items.push((delivery, span, message_id, msg, origin));
        }
        if items.is_empty() {
            return Ok(());
        }

        // Skip `prepare` (which may call outside systems) for messages already handled.
        let ids: Vec<String> = items.iter().map(|(_, _, id, _, _)| id.clone()).collect();
        let consumer = self.config.name.clone();
        let seen = self
            .db
            .call(move |c| {
                ids.iter()
                    .map(|id| inbox::seen(c, &consumer, id))
                    .collect::<Result<Vec<bool>, _>>()
            })
            .await;
        let seen = match seen {
            Ok(s) => s,
            Err(e) => {
                let e = HandlerError::from(e);
                for (delivery, span, id, _, origin) in &items {
                    let failed = Some(Err(HandlerError::Transient(e.to_string())));
                    let settle = span.in_scope(|| self.account(id, failed, received_at));
                    self.settle(settle, delivery, origin, retry_ch).await?;
                }
                return Ok(());
            }
        };

        let mut work = Vec::with_capacity(items.len());
        let mut outcomes: Vec<Option<Result<Outcome, HandlerError>>> =
            Vec::with_capacity(items.len());
        for ((_, span, id, msg, _), seen) in items.iter().zip(seen) {
            if seen {
                outcomes.push(Some(Ok(Outcome::Duplicate)));
                continue;
            }
            if self.handler.prepares(msg) && !work.is_empty() {
                self.flush(&mut work, &mut outcomes).await;
            }
            let prepared = tokio::select! {
                // Shutting down: leave the rest unacked; the broker redelivers them.
                _ = shutdown.cancelled() => { outcomes.push(None); continue; }
                p = self.handler.prepare(msg).instrument(span.clone()) => p,
            };
            match prepared {
                Ok(p) => {
                    work.push((outcomes.len(), id.clone(), msg.clone(), p, span.clone()));
                    outcomes.push(Some(Ok(Outcome::Processed)));
                }
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        self.flush(&mut work, &mut outcomes).await;

        // Acks go out as one `multiple` ack per run of acknowledged deliveries, so the broker
        // settles a run in one step. Anything else (nack, reject, left for redelivery) ends the
        // run first, so a `multiple` ack never covers it; after a delivery left unsettled at
        // shutdown, acks are single again for the rest of the batch.
        let mut run_end: Option<&Delivery> = None;
        let mut multiple = true;
        for ((delivery, span, id, _, origin), outcome) in items.iter().zip(outcomes) {
            let settle = span.in_scope(|| self.account(id, outcome, received_at));
            if settle == Settle::Ack && multiple {
                run_end = Some(delivery);
                continue;
            }
            if let Some(last) = run_end.take() {
                last.ack(BasicAckOptions { multiple: true }).await?;
            }
            multiple &= settle != Settle::Leave;
            self.settle(settle, delivery, origin, retry_ch).await?;
        }
        if let Some(last) = run_end {
            last.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }

    /// Settles one delivery. A transient failure goes to the retry queues with its back-off
    /// delay (acked once the broker confirmed the copy), or past the delivery limit to the
    /// dead-letter queue; when the copy cannot be published it is returned to the queue.
    async fn settle(
        &self,
        settle: Settle,
        delivery: &Delivery,
        origin: &Retried,
        retry_ch: &lapin::Channel,
    ) -> Result<(), MessagingError> {
        if settle != Settle::Requeue {
            return settle.apply(delivery).await;
        }
        let cfg = &self.config;
        let failures = origin.failures + 1;
        if failures > cfg.delivery_limit {
            warn!(consumer = %cfg.name, failures, "Failed too often; dead-lettering it.");
            return Settle::DeadLetter.apply(delivery).await;
        }
        let delay = cfg.retry.delay(failures);
        let next = Retried {
            failures,
            ..origin.clone()
        };
        let user = cfg.amqp.user();
        let topology = &cfg.amqp.topology;
        match retry::republish(retry_ch, topology, &cfg.name, &user, delivery, &next, delay).await {
            Ok(true) => {
                debug!(consumer = %cfg.name, failures, ?delay, "Retrying after a delay.");
                Settle::Ack.apply(delivery).await
            }
            Ok(false) => {
                warn!(consumer = %cfg.name, "Retry copy not confirmed; returning the message.");
                settle.apply(delivery).await
            }
            Err(e) => {
                warn!(consumer = %cfg.name, error = %e, "Cannot publish the retry copy; returning the message.");
                settle.apply(delivery).await?;
                Err(e)
            }
        }
    }

    /// Commits the prepared messages in one transaction and records each one's outcome.
    async fn flush(
        &self,
        work: &mut Vec<Work<H::Prepared>>,
        outcomes: &mut [Option<Result<Outcome, HandlerError>>],
    ) {
        if work.is_empty() {
            return;
        }
        let batch = std::mem::take(work);
        let indexes: Vec<usize> = batch.iter().map(|w| w.0).collect();
        let handler = self.handler.clone();
        let consumer = self.config.name.clone();
        let source = self.config.source.clone();
        let applied = self
            .db
            .call(move |c| apply_all(c, &consumer, &source, handler.as_ref(), batch))
            .await;
        match applied {
            Ok(results) => {
                for (index, result) in results {
                    outcomes[index] = Some(result);
                }
            }
            // The transaction did not commit: none of these messages happened.
            Err(e) => {
                for index in indexes {
                    outcomes[index] =
                        Some(Err(HandlerError::Transient(format!("commit failed: {e}"))));
                }
            }
        }
    }

    /// Counts and logs what became of a delivery, and says how to settle it. Call inside the
    /// delivery's CONSUMER span: the duration's exemplar is its trace.
    fn account(
        &self,
        message_id: &str,
        outcome: Option<Result<Outcome, HandlerError>>,
        received_at: std::time::Instant,
    ) -> Settle {
        let name = self.config.name.as_str();
        let label = match &outcome {
            None => "shutdown",
            Some(Ok(Outcome::Processed)) => "processed",
            Some(Ok(Outcome::Duplicate)) => "duplicate",
            Some(Err(HandlerError::Permanent(_))) => "dead_lettered",
            Some(Err(_)) => "retried",
        };
        self.metrics
            .process_took(name, label, received_at.elapsed());
        match outcome {
            None => Settle::Leave, // shutting down mid-prepare: the broker redelivers it
            Some(Ok(Outcome::Processed)) => {
                self.metrics.consumed(name, "processed");
                if let Some(n) = &self.notifier {
                    n.wake();
                }
                Settle::Ack
            }
            Some(Ok(Outcome::Duplicate)) => {
                self.metrics.consumed(name, "duplicate");
                debug!(consumer = name, %message_id, "Duplicate delivery; already handled.");
                Settle::Ack
            }
            Some(Err(HandlerError::Permanent(reason))) => {
                self.metrics.consumed(name, "dead_lettered");
                warn!(consumer = name, %message_id, %reason, "Message can never be handled; dead-lettering it.");
                Settle::DeadLetter
            }
            Some(Err(error)) => {
                self.metrics.consumed(name, "retried");
                warn!(consumer = name, %message_id, %error, "Handler failed; returning the message to the queue.");
                Settle::Requeue
            }
        }
    }
}

/// How one delivery is settled with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Handled (or already handled): ack.
    Ack,
    /// Can never be handled: reject without requeue, so the queue dead-letters it.
    DeadLetter,
    /// Failed for now: to the retry queues ([`Consumer::settle`]); as a plain settlement
    /// (when no retry copy could be published), nack with requeue.
    Requeue,
    /// Shutting down: leave it unacked; the broker redelivers it to the next consumer.
    Leave,
}

impl Settle {
    async fn apply(self, delivery: &Delivery) -> Result<(), MessagingError> {
        match self {
            Settle::Ack => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Settle::DeadLetter => {
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
            Settle::Requeue => {
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
            }
            Settle::Leave => {}
        }
        Ok(())
    }
}

/// One prepared message: (index in the batch, message id, message, prepared data, span).
type Work<P> = (usize, String, Incoming, P, tracing::Span);

/// What became of one message of a batch: (index in the batch, outcome).
type Applied = (usize, Result<Outcome, HandlerError>);

/// The next delivery, or why there is none.
fn delivered(d: Option<Result<Delivery, lapin::Error>>) -> Result<Delivery, MessagingError> {
    match d {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(e.into()),
        None => Err(MessagingError::Amqp(lapin::Error::from(
            lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
        ))),
    }
}

/// Applies each prepared message in its own savepoint of one transaction, with its inbox row.
/// Returns each message's outcome by index; `Err` only when the transaction itself failed.
fn apply_all<H: Handler>(
    c: &mut rusqlite::Connection,
    consumer: &str,
    source: &str,
    handler: &H,
    work: Vec<Work<H::Prepared>>,
) -> Result<Vec<Applied>, rusqlite::Error> {
    let mut tx = c.transaction()?;
    let mut results = Vec::with_capacity(work.len());
    for (index, message_id, msg, prepared, span) in work {
        let _entered = span.enter();
        let sp = tx.savepoint()?;
        let result = match inbox::claim(&sp, consumer, &message_id, &msg.event.ty) {
            Ok(false) => Ok(Outcome::Duplicate),
            Ok(true) => handler
                .apply(&Writer::new(&sp, source), &msg, prepared)
                .map(|()| Outcome::Processed),
            Err(e) => Err(e.into()),
        };
        if result.is_ok() {
            sp.commit()?;
        } // else: dropping the savepoint rolls this message back
        results.push((index, result));
    }
    tx.commit()?;
    Ok(results)
}
