//! One service's handler behind the real [`Consumer`], on the real broker at `AMQP_URL` with a
//! queue bound exactly as the service's [`Contract`] says, and a real SQLite file: for tests
//! of what a handler does with events as they arrive (twice, late, out of order).
//!
//! # How to use
//!
//! ```text
//! let h = ConsumerHarness::start(&contract::SHIPPING, shipping::MIGRATIONS, |_db| {
//!     Arc::new(ShippingHandler { delay: Duration::ZERO })
//! }).await;
//! h.publish("orders", &OrderCancelled { .. }).await;     // a fresh message id each time
//! h.wait_settled(1).await;                              // handled, duplicate or dead-lettered
//! assert_eq!(h.outbox_keys().await, Vec::<String>::new()); // what the handler emitted
//! h.cleanup().await;                                    // deletes the queues and exchanges
//! ```
//!
//! Every event is published by the broker's `guest` user, so the consumer does not check
//! publishers ([`Provenance::Unchecked`]); `messaging/tests/secured.rs` tests that check.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use messaging::{
    AmqpConfig, BrokerEndpoint, CloudEvent, ConsumeLabels, Consumer, ConsumerConfig, Contract, Db,
    Event, Handler, MessagingMetrics, Provenance, Topology,
};
use tokio_util::sync::CancellationToken;

/// How long [`ConsumerHarness::wait_settled`] waits.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// A running consumer of one service; see the module documentation.
pub struct ConsumerHarness {
    /// The service's database (messaging tables and its own migrations applied).
    pub db: Db,
    pub topology: Topology,
    service: &'static str,
    metrics: MessagingMetrics,
    conn: Connection,
    channel: lapin::Channel,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl ConsumerHarness {
    /// Opens a fresh database, applies `migrations`, builds the handler with `handler(db)` and
    /// starts the consumer of `contract.service` under a unique prefix; returns once the
    /// consumer is attached to its queue. Panics (with how to start one) without a broker.
    pub async fn start<H: Handler>(
        contract: &'static Contract,
        migrations: &'static str,
        handler: impl FnOnce(Db) -> Arc<H>,
    ) -> ConsumerHarness {
        Self::start_with(contract, migrations, handler, |_| {}).await
    }

    /// [`start`](Self::start), with `adjust` changing the consumer's settings first.
    pub async fn start_with<H: Handler>(
        contract: &'static Contract,
        migrations: &'static str,
        handler: impl FnOnce(Db) -> Arc<H>,
        adjust: impl FnOnce(&mut ConsumerConfig),
    ) -> ConsumerHarness {
        let url = crate::amqp_url();
        crate::require_rabbitmq(&url).unwrap_or_else(|why| panic!("{why}"));
        let prefix = format!("{}.", crate::unique_name("harness"));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = Db::open(&dir.path().join(format!("{}.db", contract.service)))
            .expect("open the database");
        messaging::migrate(&db).await.expect("messaging tables");
        db.call(move |c| c.execute_batch(migrations))
            .await
            .expect("the service's migrations");
        let amqp = AmqpConfig {
            endpoint: BrokerEndpoint::url(url.clone()),
            topology: Topology::new(prefix.clone()),
            connection_name: prefix.clone(),
            subscriptions: &[],
        };
        let mut config = ConsumerConfig::new(amqp.clone(), contract.service, contract.consumes);
        config.provenance = Provenance::Unchecked;
        adjust(&mut config);
        let metrics = MessagingMetrics::default();
        let consumer = Consumer::new(
            config,
            db.clone(),
            handler(db.clone()),
            None,
            metrics.clone(),
        );
        let status = consumer.status();
        let shutdown = CancellationToken::new();
        tokio::spawn(consumer.run(shutdown.clone()));
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        while !status.is_up() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {} consumer did not attach to the broker at AMQP_URL",
                contract.service
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("a publishing connection");
        let channel = conn.create_channel().await.expect("a channel");
        ConsumerHarness {
            db,
            topology: amqp.topology,
            service: contract.service,
            metrics,
            conn,
            channel,
            shutdown,
            _dir: dir,
        }
    }

    /// Publishes `data` as an event of `source` under a fresh event and message id (as a
    /// producer re-publishing it would); returns the envelope.
    pub async fn publish<E: Event>(&self, source: &str, data: &E) -> CloudEvent {
        let event = CloudEvent::new(source, data).expect("an event serialises");
        self.publish_event(&event).await;
        event
    }

    /// Publishes `event` as it is (same id: a redelivery as far as the inbox can tell).
    pub async fn publish_event(&self, event: &CloudEvent) {
        let body = serde_json::to_vec(event).expect("an event serialises");
        self.channel
            .basic_publish(
                self.topology.exchange().as_str().into(),
                event.routing_key().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_message_id(event.id.as_str().into())
                    .with_content_type(messaging::CONTENT_TYPE.into())
                    .with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("publish confirm");
    }

    /// Deliveries settled so far with `outcome` (`processed`, `duplicate`, `retried`,
    /// `dead_lettered`).
    pub fn settled(&self, outcome: &'static str) -> u64 {
        self.metrics
            .consumed
            .get_or_create(&ConsumeLabels {
                consumer: self.service.to_owned(),
                outcome,
            })
            .get()
    }

    /// Waits until `n` deliveries in all were processed, found duplicate or dead-lettered.
    pub async fn wait_settled(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let done: u64 = ["processed", "duplicate", "dead_lettered"]
                .into_iter()
                .map(|o| self.settled(o))
                .sum();
            if done >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} deliveries to {} settled within {SETTLE_TIMEOUT:?}",
                done,
                self.service
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The routing keys of the events the handler wrote to its outbox, in order (nothing
    /// publishes them here).
    pub async fn outbox_keys(&self) -> Vec<String> {
        self.db
            .call(|c| {
                let mut stmt = c.prepare("SELECT routing_key FROM outbox ORDER BY seq")?;
                let keys = stmt.query_map([], |r| r.get(0))?;
                keys.collect::<Result<Vec<String>, _>>()
            })
            .await
            .expect("read the outbox")
    }

    /// Stops the consumer and deletes the queues and exchanges.
    pub async fn cleanup(self) {
        self.shutdown.cancel();
        let ch = self.conn.create_channel().await.expect("a channel");
        let _ = self.topology.delete(&ch, &[self.service]).await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}
