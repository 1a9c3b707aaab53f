use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Exchange and queue names, all behind one prefix so tests and parallel runs never share them.
///
/// With prefix `p.`: exchange `p.shop.events` (topic), dead-letter exchange `p.shop.dlx` (direct),
/// per consumer `p.<consumer>` (quorum, dead-lettering to `p.<consumer>.dlq`).
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

        let mut args = quorum_args();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(dlx.as_str())),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(consumer)),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(delivery_limit)),
        );
        let queue = self.queue(consumer);
        ch.queue_declare(queue.as_str().into(), durable, args)
            .await?;
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
            for q in [self.queue(c), self.dead_letter_queue(c)] {
                ch.queue_delete(q.as_str().into(), Default::default())
                    .await?;
            }
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
