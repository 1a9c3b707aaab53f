use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::AMQPSoftError;
use lapin::{BasicProperties, Confirmation};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use crate::broker::Reconnect;
use crate::outbox::{self, OutboxRow};
use crate::topology::{amqp_message, soft_error};
use crate::{trace_context, AmqpConfig, BrokerStatus, Db, MessagingError, MessagingMetrics};

/// Rows published per round trip; confirms are awaited for the whole batch.
const BATCH: usize = 256;
/// How often the outbox is polled when nobody wakes the relay (rows due for a retry, or rows
/// written by another process).
const POLL: Duration = Duration::from_millis(500);

/// Wakes the relay after a transaction that wrote outbox rows commits.
#[derive(Debug, Clone, Default)]
pub struct OutboxNotifier(Arc<Notify>);

impl OutboxNotifier {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Publishes outbox rows with publisher confirms, the mandatory flag and the connection's broker
/// user as `user_id`, marks them sent, and retries the rest (after a return, a nack, a lost
/// connection or a restart).
#[derive(Debug)]
pub struct Relay {
    amqp: AmqpConfig,
    db: Db,
    metrics: MessagingMetrics,
    notifier: OutboxNotifier,
    status: BrokerStatus,
}

impl Relay {
    pub fn new(amqp: AmqpConfig, db: Db, metrics: MessagingMetrics) -> (Self, OutboxNotifier) {
        let notifier = OutboxNotifier::default();
        let relay = Self {
            amqp,
            db,
            metrics,
            notifier: notifier.clone(),
            status: BrokerStatus::default(),
        };
        (relay, notifier)
    }

    /// Whether the relay is connected (for `/readyz`).
    pub fn status(&self) -> BrokerStatus {
        self.status.clone()
    }

    /// Runs until `shutdown` is cancelled, reconnecting whenever the broker goes away.
    pub async fn run(self, shutdown: CancellationToken) {
        let reconnect = Reconnect::new("relay", &self.status, &self.metrics);
        reconnect
            .run(&shutdown, || self.run_connected(&shutdown, &reconnect))
            .await;
    }

    async fn run_connected(
        &self,
        shutdown: &CancellationToken,
        reconnect: &Reconnect<'_>,
    ) -> Result<(), MessagingError> {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = self.amqp.connect("relay") => c?,
        };
        let user = self.amqp.user();
        let topology = &self.amqp.topology;
        topology.ensure_exchange(&conn, &user).await?;
        for c in self.amqp.subscriptions.iter().filter(|c| c.has_queue()) {
            topology
                .ensure_consumer(
                    &conn,
                    c.service,
                    c.consumes,
                    crate::DEFAULT_DELIVERY_LIMIT,
                    &user,
                )
                .await?;
        }
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        reconnect.connected();
        self.status.attach(&conn, &ch);
        info!("Outbox relay connected.");
        let exchange = self.amqp.topology.exchange();
        loop {
            let (rows, backlog) = self
                .db
                .call(|c| Ok::<_, rusqlite::Error>((outbox::due(c, BATCH)?, outbox::pending(c)?)))
                .await?;
            self.metrics.outbox_backlog.set(backlog);
            if rows.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = ch.close(200, "shutdown".into()).await;
                    let _ = conn.close(200, "shutdown".into()).await;
                        return Ok(());
                    }
                    _ = self.notifier.0.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                // An idle relay sends nothing, so it would never notice a connection the broker
                // dropped (a restart) and stay on it, not ready, until the next event.
                if !conn.status().connected() || !ch.status().connected() {
                    return Err(MessagingError::Amqp(lapin::Error::from(
                        lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
                    )));
                }
                continue;
            }
            let mut pending = Vec::with_capacity(rows.len());
            // A refused publish closes the channel: the publishes and confirms after it fail
            // too. What was confirmed before it is still marked sent, the refused row is held
            // back (so it cannot block the others), and then the relay reconnects.
            let mut broken: Option<lapin::Error> = None;
            for row in rows {
                let span = trace_context::producer_span(
                    &exchange,
                    &row.routing_key,
                    &row.event_id,
                    &row.trace,
                );
                let headers = trace_context::publish_headers(&span, &row.trace);
                let exemplar = observability::metrics::trace_exemplar_for(&span);
                let started = std::time::Instant::now();
                let published = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        row.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &row.payload,
                        properties(&row, &user, headers),
                    )
                    .instrument(span)
                    .await;
                match published {
                    Ok(confirm) => pending.push((row, confirm, started, exemplar)),
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            let mut sent = Vec::with_capacity(pending.len());
            let mut failed = Vec::new();
            for (row, confirm, started, exemplar) in pending {
                let confirmation = match confirm.await {
                    Ok(c) => c,
                    Err(e) => {
                        if broken.is_none() && soft_error(&e) == Some(AMQPSoftError::ACCESSREFUSED)
                        {
                            self.metrics.published("refused");
                            let reason = amqp_message(&e).unwrap_or_default();
                            error!(
                                event_id = %row.event_id,
                                routing_key = %row.routing_key,
                                user = %user,
                                %reason,
                                "The broker refused an event this service may not publish \
                                 (messaging::contract); holding it back."
                            );
                            failed.push((row, format!("refused: {reason}")));
                        }
                        broken.get_or_insert(e);
                        continue;
                    }
                };
                if broken.is_some() {
                    // Confirmed after the channel broke: cannot happen, but never mark a row
                    // sent out of order with what failed before it.
                    continue;
                }
                let outcome = match &confirmation {
                    Confirmation::Ack(None) | Confirmation::NotRequested => "confirmed",
                    Confirmation::Ack(Some(_)) => "returned",
                    Confirmation::Nack(_) => "nacked",
                };
                self.metrics
                    .publish_took(outcome, started.elapsed(), exemplar);
                match confirmation {
                    Confirmation::Ack(None) | Confirmation::NotRequested => {
                        self.metrics.published("confirmed");
                        sent.push(row.seq);
                    }
                    Confirmation::Ack(Some(returned)) => {
                        // Unroutable: no queue bound yet (a consumer not started). Keep it and retry.
                        self.metrics.published("returned");
                        warn!(
                            event_id = %row.event_id,
                            routing_key = %row.routing_key,
                            reply = %returned.reply_text,
                            "Broker returned an event; will retry."
                        );
                        failed.push((row, format!("returned: {}", returned.reply_text)));
                    }
                    Confirmation::Nack(_) => {
                        self.metrics.published("nacked");
                        warn!(event_id = %row.event_id, "Broker nacked an event; will retry.");
                        failed.push((row, "nacked".to_owned()));
                    }
                }
            }
            self.db
                .call(move |c| {
                    outbox::mark_sent(c, &sent)?;
                    for (row, error) in &failed {
                        outbox::mark_failed(c, row, error)?;
                    }
                    Ok::<_, rusqlite::Error>(())
                })
                .await?;
            if let Some(e) = broken {
                return Err(e.into());
            }
        }
    }
}

/// The AMQP properties of a published row. `user_id` is the connection's broker user: RabbitMQ
/// refuses any other, so consumers know who published it (see [`Provenance`](crate::Provenance)).
fn properties(row: &OutboxRow, user: &str, headers: lapin::types::FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(row.event_id.as_str().into())
        .with_user_id(user.into())
        .with_content_type(crate::CONTENT_TYPE.into())
        .with_type(row.routing_key.as_str().into())
        .with_delivery_mode(2)
        .with_headers(headers)
}
