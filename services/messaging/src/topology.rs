use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use tracing::info;

use crate::MessagingError;

/// Retry levels per consumer: a delivery that failed transiently `n` times waits in level
/// `min(n, RETRY_LEVELS)`. With the default delivery limit (5) failures 1..5 are retried and
/// the sixth dead-letters, so levels 1..5 are all a consumer uses.
pub const RETRY_LEVELS: u32 = crate::DEFAULT_DELIVERY_LIMIT;

/// Exchange, queue and broker user names, all behind one prefix so tests and parallel runs never
/// share them.
///
/// With prefix `p.`: exchange `p.shop.events` (topic), dead-letter exchange `p.shop.dlx` (direct),
/// per consumer `p.<consumer>` (quorum, dead-lettering to `p.<consumer>.dlq`) and its retries
/// (exchange `p.<consumer>.retry`, queues `p.<consumer>.retry.1`..`5`), per service the broker
/// user `p.<service>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Prepended verbatim to every name; empty by default.
    pub prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn exchange(&self) -> String {
        format!("{}shop.events", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}shop.dlx", self.prefix)
    }

    pub fn queue(&self, consumer: &str) -> String {
        format!("{}{consumer}", self.prefix)
    }

    pub fn dead_letter_queue(&self, consumer: &str) -> String {
        format!("{}{consumer}.dlq", self.prefix)
    }

    /// Where `consumer` republishes a delivery that failed transiently (direct; routing key
    /// the retry level `1`..[`RETRY_LEVELS`]).
    pub fn retry_exchange(&self, consumer: &str) -> String {
        format!("{}{consumer}.retry", self.prefix)
    }

    /// The queue holding `consumer`'s retries of `level` until their per-message expiration,
    /// which dead-letters them back to `consumer`'s queue. One queue per level, so every message
    /// in one has the same delay and none waits behind a longer one.
    pub fn retry_queue(&self, consumer: &str, level: u32) -> String {
        format!("{}{consumer}.retry.{level}", self.prefix)
    }

    /// Every retry queue of `consumer`, level 1 first.
    pub fn retry_queues(&self, consumer: &str) -> Vec<String> {
        (1..=RETRY_LEVELS)
            .map(|l| self.retry_queue(consumer, l))
            .collect()
    }

    /// The arguments of a retry queue (the broker definitions carry the same): quorum,
    /// dead-lettering at least once through the default exchange to `consumer`'s queue.
    pub fn retry_queue_arguments(&self, consumer: &str) -> Vec<(&'static str, AMQPValue)> {
        vec![
            (
                "x-queue-type",
                AMQPValue::LongString(LongString::from("quorum")),
            ),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString(LongString::from("")),
            ),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(LongString::from(self.queue(consumer).as_str())),
            ),
            (
                "x-dead-letter-strategy",
                AMQPValue::LongString(LongString::from("at-least-once")),
            ),
            (
                "x-overflow",
                AMQPValue::LongString(LongString::from("reject-publish")),
            ),
        ]
    }

    /// The broker user of `service`: the AMQP `user_id` its events carry.
    pub fn user(&self, service: &str) -> String {
        format!("{}{service}", self.prefix)
    }

    /// The quorum queue arguments of `consumer`'s queue, exactly as declared (the broker
    /// definitions carry the same, or a service's redeclaration would be refused).
    pub fn queue_arguments(
        &self,
        consumer: &str,
        delivery_limit: u32,
    ) -> Vec<(&'static str, AMQPValue)> {
        vec![
            (
                "x-queue-type",
                AMQPValue::LongString(LongString::from("quorum")),
            ),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString(LongString::from(self.dead_letter_exchange().as_str())),
            ),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(LongString::from(consumer)),
            ),
            (
                "x-delivery-limit",
                AMQPValue::LongLongInt(i64::from(delivery_limit)),
            ),
        ]
    }

    /// Makes sure the events exchange exists: checks it without needing any permission
    /// (a passive declare), and declares it only when it is missing. On a broker provisioned
    /// from the definitions that is never the case; on a broker where `user` may not configure
    /// it, a missing exchange is [`MessagingError::NotProvisioned`].
    pub async fn ensure_exchange(
        &self,
        conn: &Connection,
        user: &str,
    ) -> Result<(), MessagingError> {
        if exists(conn, Resource::Exchange(&self.exchange())).await? {
            return Ok(());
        }
        let ch = conn.create_channel().await?;
        let declared = self.declare_exchange(&ch).await;
        refused_as_missing(declared, || format!("exchange {}", self.exchange()), user)?;
        let _ = ch.close(200, "ok".into()).await;
        Ok(())
    }

    /// Makes sure `consumer`'s queue, dead-letter queue, both exchanges and the bindings
    /// exist: checks them (passive declares), and only when one is missing declares them all
    /// (see [`declare_consumer`](Self::declare_consumer)), which needs configure, read and write
    /// permissions that a service's user has not on a provisioned broker: there a missing queue
    /// is [`MessagingError::NotProvisioned`]. Existing bindings are not checked (AMQP cannot).
    pub async fn ensure_consumer(
        &self,
        conn: &Connection,
        consumer: &str,
        bindings: &[impl AsRef<str>],
        delivery_limit: u32,
        user: &str,
    ) -> Result<(), MessagingError> {
        let (queue, dlq) = (self.queue(consumer), self.dead_letter_queue(consumer));
        let (exchange, dlx) = (self.exchange(), self.dead_letter_exchange());
        let retry_exchange = self.retry_exchange(consumer);
        let retry_queues = self.retry_queues(consumer);
        let mut wanted = vec![
            Resource::Exchange(&exchange),
            Resource::Exchange(&dlx),
            Resource::Exchange(&retry_exchange),
            Resource::Queue(&dlq),
            Resource::Queue(&queue),
        ];
        wanted.extend(retry_queues.iter().map(|q| Resource::Queue(q)));
        let mut missing = None;
        for r in wanted {
            if !exists(conn, r).await? {
                missing = Some(r);
                break;
            }
        }
        let Some(missing) = missing else {
            return Ok(());
        };
        info!(%missing, "Declaring what is missing of the topology.");
        let ch = conn.create_channel().await?;
        let declared = self
            .declare_consumer(&ch, consumer, bindings, delivery_limit)
            .await;
        refused_as_missing(declared, || missing.to_string(), user)?;
        let _ = ch.close(200, "ok".into()).await;
        Ok(())
    }

    /// Declares the durable topic exchange events are published to.
    pub async fn declare_exchange(&self, ch: &Channel) -> Result<(), lapin::Error> {
        ch.exchange_declare(
            self.exchange().as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    }

    /// Declares the consumer's quorum queue, its bindings, and its dead-letter queue.
    ///
    /// `delivery_limit` is how many times a message may be returned (nack with requeue) before
    /// the quorum queue dead-letters it.
    pub async fn declare_consumer(
        &self,
        ch: &Channel,
        consumer: &str,
        bindings: &[impl AsRef<str>],
        delivery_limit: u32,
    ) -> Result<(), lapin::Error> {
        self.declare_exchange(ch).await?;
        let dlx = self.dead_letter_exchange();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        let dlq = self.dead_letter_queue(consumer);
        ch.queue_declare(dlq.as_str().into(), durable, quorum_args())
            .await?;
        ch.queue_bind(
            dlq.as_str().into(),
            dlx.as_str().into(),
            consumer.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

        let mut args = FieldTable::default();
        for (k, v) in self.queue_arguments(consumer, delivery_limit) {
            args.insert(k.into(), v);
        }
        let queue = self.queue(consumer);
        ch.queue_declare(queue.as_str().into(), durable, args)
            .await?;
        let retry = self.retry_exchange(consumer);
        ch.exchange_declare(
            retry.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        for level in 1..=RETRY_LEVELS {
            let mut args = FieldTable::default();
            for (k, v) in self.retry_queue_arguments(consumer) {
                args.insert(k.into(), v);
            }
            let q = self.retry_queue(consumer, level);
            ch.queue_declare(q.as_str().into(), durable, args).await?;
            ch.queue_bind(
                q.as_str().into(),
                retry.as_str().into(),
                level.to_string().as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        for key in bindings {
            ch.queue_bind(
                queue.as_str().into(),
                self.exchange().as_str().into(),
                key.as_ref().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes everything [`declare_consumer`](Self::declare_consumer) created for these
    /// consumers, and both exchanges. For tests that clean up after themselves.
    pub async fn delete(&self, ch: &Channel, consumers: &[&str]) -> Result<(), lapin::Error> {
        for c in consumers {
            let mut queues = vec![self.queue(c), self.dead_letter_queue(c)];
            queues.extend(self.retry_queues(c));
            for q in queues {
                ch.queue_delete(q.as_str().into(), Default::default())
                    .await?;
            }
            ch.exchange_delete(
                ShortString::from(self.retry_exchange(c).as_str()),
                Default::default(),
            )
            .await?;
        }
        for x in [self.exchange(), self.dead_letter_exchange()] {
            ch.exchange_delete(ShortString::from(x.as_str()), Default::default())
                .await?;
        }
        Ok(())
    }
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args
}

/// Something the topology needs, checked by name.
#[derive(Debug, Clone, Copy)]
enum Resource<'a> {
    Exchange(&'a str),
    Queue(&'a str),
}

impl std::fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Exchange(n) => write!(f, "exchange {n}"),
            Resource::Queue(n) => write!(f, "queue {n}"),
        }
    }
}

/// Whether `r` exists: a passive declare, which needs no permission; a missing one closes the
/// channel with NOT_FOUND, so each check has its own channel.
async fn exists(conn: &Connection, r: Resource<'_>) -> Result<bool, MessagingError> {
    let ch = conn.create_channel().await?;
    let checked = match r {
        Resource::Exchange(name) => {
            ch.exchange_declare(
                name.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        }
        Resource::Queue(name) => ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|_| ()),
    };
    match checked {
        Ok(()) => {
            let _ = ch.close(200, "ok".into()).await;
            Ok(true)
        }
        Err(e) if soft_error(&e) == Some(AMQPSoftError::NOTFOUND) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A declaration refused for want of permission becomes [`MessagingError::NotProvisioned`].
fn refused_as_missing(
    declared: Result<(), lapin::Error>,
    what: impl FnOnce() -> String,
    user: &str,
) -> Result<(), MessagingError> {
    match declared {
        Ok(()) => Ok(()),
        Err(e) if soft_error(&e) == Some(AMQPSoftError::ACCESSREFUSED) => {
            Err(MessagingError::NotProvisioned {
                what: what(),
                user: user.to_owned(),
                reason: amqp_message(&e).unwrap_or_default(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// The AMQP soft (channel) error the broker answered with, if that is what `e` is.
pub fn soft_error(e: &lapin::Error) -> Option<AMQPSoftError> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// The broker's reply text for a protocol error (`ACCESS_REFUSED - access to … refused`).
pub fn amqp_message(e: &lapin::Error) -> Option<String> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_message().to_string()),
        _ => None,
    }
}
