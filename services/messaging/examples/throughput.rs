//! Run with `cargo run --release -p messaging --example throughput -- [events] [max_batch]`
//!
//! Measures the messaging layer alone against the real RabbitMQ at `AMQP_URL`: how fast the
//! relay drains an outbox (publisher confirms, mandatory) and how fast one consumer handles the
//! events (inbox + one insert per event, ack after commit). Defaults: 20,000 events, batch 64.

use std::sync::Arc;
use std::time::{Duration, Instant};

use messaging::events::OrderCancelled;
use messaging::{
    outbox, AmqpConfig, Consumer, ConsumerConfig, Contract, Db, Event, Handler, HandlerError,
    Incoming, MessagingMetrics, Relay, Topology, TraceContext, Writer,
};
use tokio_util::sync::CancellationToken;

struct Insert;

impl Handler for Insert {
    type Prepared = ();

    fn apply(&self, conn: &Writer<'_>, msg: &Incoming, _prepared: ()) -> Result<(), HandlerError> {
        conn.execute("INSERT INTO effects (id) VALUES (?1)", [&msg.event.id])?;
        Ok(())
    }
}

static SUBSCRIPTIONS: &[Contract] = &[Contract {
    service: "bench",
    produces: &[OrderCancelled::KEY],
    consumes: &[OrderCancelled::KEY],
}];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let max_batch: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let url = test_support::amqp_url();
    let prefix = format!("bench-{}.", uuid::Uuid::new_v4().simple());
    let amqp = AmqpConfig {
        endpoint: messaging::BrokerEndpoint::url(url.clone()),
        topology: Topology::new(prefix.clone()),
        connection_name: prefix.clone(),
        subscriptions: SUBSCRIPTIONS,
    };
    let dir = tempfile::tempdir()?;
    let producer = Db::open(&dir.path().join("producer.db"))?;
    let consumer_db = Db::open(&dir.path().join("consumer.db"))?;
    messaging::migrate(&producer).await?;
    messaging::migrate(&consumer_db).await?;
    consumer_db
        .call(|c| c.execute_batch("CREATE TABLE effects (id TEXT PRIMARY KEY)"))
        .await?;

    let start = Instant::now();
    producer
        .call(move |c| {
            let tx = c.transaction()?;
            for i in 0..n {
                let ev = OrderCancelled {
                    order_id: format!("order-{i}"),
                    user_id: "bench".into(),
                    reason: "timeout".into(),
                };
                Writer::new(&tx, "bench")
                    .enqueue(&ev, &TraceContext::default())
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            }
            tx.commit()
        })
        .await?;
    println!("outbox: {n} rows written in {:?}", start.elapsed());

    let shutdown = CancellationToken::new();
    let metrics = MessagingMetrics::default();
    let (relay, notifier) = Relay::new(amqp.clone(), producer.clone(), metrics.clone());
    let publish_start = Instant::now();
    tokio::spawn(relay.run(shutdown.clone()));
    notifier.wake();
    loop {
        if producer.call(|c| outbox::pending(c)).await? == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publish = publish_start.elapsed();
    println!(
        "relay:    {n} published and confirmed in {publish:?} = {:.0} msg/s",
        n as f64 / publish.as_secs_f64()
    );

    let mut cfg = ConsumerConfig::new(amqp.clone(), "bench", SUBSCRIPTIONS[0].consumes);
    cfg.max_batch = max_batch;
    // One broker user (AMQP_URL's) publishes and consumes here.
    cfg.provenance = messaging::Provenance::Unchecked;
    let consumer = Consumer::new(cfg, consumer_db.clone(), Arc::new(Insert), None, metrics);
    let consume_start = Instant::now();
    tokio::spawn(consumer.run(shutdown.clone()));
    loop {
        let done: i64 = consumer_db
            .call(|c| c.query_row("SELECT COUNT(*) FROM effects", [], |r| r.get(0)))
            .await?;
        if done as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let consume = consume_start.elapsed();
    println!(
        "consumer: {n} handled (inbox + effect + ack, batch {max_batch}) in {consume:?} = {:.0} msg/s",
        n as f64 / consume.as_secs_f64()
    );

    shutdown.cancel();
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    amqp.topology.delete(&ch, &["bench"]).await?;
    Ok(())
}
