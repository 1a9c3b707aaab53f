//! Integration tests against the real RabbitMQ at `AMQP_URL`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`) and real SQLite files.
//!
//! Run with `cargo test -p messaging`. Each test uses its own name prefix and deletes its queues.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use messaging::{
    outbox, AmqpConfig, BrokerEndpoint, CloudEvent, Consumer, ConsumerConfig, Contract, Db,
    Handler, HandlerError, Incoming, MessagingMetrics, Provenance, Relay, RetryBackoff, Topology,
    TraceContext, Writer,
};

use tokio_util::sync::CancellationToken;

use test_support::amqp_url;

/// Connects or fails the test with instructions; never skips.
async fn broker() -> Connection {
    let url = amqp_url();
    if let Err(why) = test_support::require_rabbitmq(&url) {
        panic!("{why}");
    }
    match tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(c)) => c,
        other => panic!(
            "RabbitMQ answers at {} but refused the connection: {:?}",
            observability::redact::redact_url(&url),
            other.map(|r| r.err()),
        ),
    }
}

struct Fixture {
    amqp: AmqpConfig,
    db: Db,
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
    metrics: MessagingMetrics,
}

async fn fixture() -> Fixture {
    let prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("svc.db")).unwrap();
    messaging::migrate(&db).await.unwrap();
    db.call(|c| c.execute_batch("CREATE TABLE effects (key TEXT NOT NULL)"))
        .await
        .unwrap();
    Fixture {
        amqp: AmqpConfig {
            endpoint: BrokerEndpoint::url(amqp_url()),
            topology: Topology::new(prefix.clone()),
            connection_name: prefix,
            subscriptions: &[],
        },
        db,
        _dir: dir,
        shutdown: CancellationToken::new(),
        metrics: MessagingMetrics::default(),
    }
}

impl Fixture {
    async fn effects(&self, key: &str) -> i64 {
        let key = key.to_owned();
        self.db
            .call(move |c| {
                c.query_row("SELECT COUNT(*) FROM effects WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
            })
            .await
            .unwrap()
    }

    fn consumer<H: Handler>(&self, handler: Arc<H>, limit: u32) -> Consumer<H> {
        self.consumer_with(
            handler,
            limit,
            RetryBackoff {
                base: Duration::from_millis(20),
                max: Duration::from_millis(200),
            },
        )
    }

    fn consumer_with<H: Handler>(
        &self,
        handler: Arc<H>,
        limit: u32,
        retry: RetryBackoff,
    ) -> Consumer<H> {
        let mut cfg = ConsumerConfig::new(self.amqp.clone(), "svc", &["test.#"]);
        cfg.delivery_limit = limit;
        cfg.retry = retry;
        // One shared user (guest) publishes everything here; tests/secured.rs checks publishers.
        cfg.provenance = Provenance::Unchecked;
        Consumer::new(cfg, self.db.clone(), handler, None, self.metrics.clone())
    }

    fn consumed(&self, outcome: &'static str) -> u64 {
        self.metrics
            .consumed
            .get_or_create(&messaging_labels("svc", outcome))
            .get()
    }

    async fn cleanup(self) {
        self.shutdown.cancel();
        let conn = broker().await;
        let ch = conn.create_channel().await.unwrap();
        self.amqp.topology.delete(&ch, &["svc"]).await.unwrap();
    }
}

fn messaging_labels(consumer: &str, outcome: &'static str) -> messaging::ConsumeLabels {
    messaging::ConsumeLabels {
        consumer: consumer.to_owned(),
        outcome,
    }
}

/// A test event: `data.key` names the effect; `data.mode` is `ok`, `transient` or `permanent`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct TestEvent {
    order_id: String,
    key: String,
    mode: String,
}

impl messaging::Event for TestEvent {
    const KEY: &'static str = "test.event";
    fn subject(&self) -> String {
        self.order_id.clone()
    }
}

fn event(key: &str, mode: &str) -> CloudEvent {
    CloudEvent::new(
        "tests",
        &TestEvent {
            order_id: "o-1".into(),
            key: key.into(),
            mode: mode.into(),
        },
    )
    .unwrap()
}

/// Records one `effects` row per handled message; fails on demand.
#[derive(Default)]
struct Recorder {
    calls: AtomicU32,
}

impl Handler for Recorder {
    type Prepared = ();

    fn apply(&self, tx: &Writer<'_>, msg: &Incoming, _prepared: ()) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let ev: TestEvent = msg.event.decode()?;
        match ev.mode.as_str() {
            "transient" => return Err(HandlerError::Transient("always fails".into())),
            "permanent" => return Err(HandlerError::Permanent("cannot ever work".into())),
            _ => {}
        }
        tx.execute("INSERT INTO effects (key) VALUES (?1)", [&ev.key])?;
        Ok(())
    }
}

/// Notes when each delivery reached the handler, then fails as its `mode` says.
#[derive(Default)]
struct Stopwatch {
    seen: std::sync::Mutex<Vec<(String, tokio::time::Instant)>>,
}

impl Stopwatch {
    fn times(&self, key: &str) -> Vec<tokio::time::Instant> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, t)| *t)
            .collect()
    }
}

impl Handler for Stopwatch {
    type Prepared = ();

    fn apply(&self, _tx: &Writer<'_>, msg: &Incoming, _prepared: ()) -> Result<(), HandlerError> {
        let ev: TestEvent = msg.event.decode()?;
        let now = tokio::time::Instant::now();
        self.seen.lock().unwrap().push((ev.key.clone(), now));
        match ev.mode.as_str() {
            "permanent" => Err(HandlerError::Permanent("cannot ever work".into())),
            _ => Err(HandlerError::Transient("not now".into())),
        }
    }
}

async fn publish_raw(ch: &Channel, topology: &Topology, message_id: &str, body: &[u8]) {
    ch.basic_publish(
        topology.exchange().as_str().into(),
        "test.event".into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default()
            .with_message_id(message_id.into())
            .with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dlq_messages(ch: &Channel, topology: &Topology) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(
            topology.dead_letter_queue("svc").as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        out.push(m.delivery.data.clone());
    }
    out
}

/// Declares the topology up front so raw publishes are routed even before the consumer attaches.
async fn declare(fx: &Fixture, limit: u32) -> Channel {
    let conn = broker().await;
    let ch = conn.create_channel().await.unwrap();
    fx.amqp
        .topology
        .declare_consumer(&ch, "svc", &["test.#".to_owned()], limit)
        .await
        .unwrap();
    // Keep the connection alive as long as the channel is used.
    std::mem::forget(conn);
    ch
}

#[tokio::test]
async fn the_same_message_delivered_twice_has_one_effect() {
    let fx = fixture().await;
    let ch = declare(&fx, 5).await;
    let ev = event("dup", "ok");
    let body = serde_json::to_vec(&ev).unwrap();
    publish_raw(&ch, &fx.amqp.topology, &ev.id, &body).await;
    publish_raw(&ch, &fx.amqp.topology, &ev.id, &body).await;

    let handler = Arc::new(Recorder::default());
    tokio::spawn(fx.consumer(handler.clone(), 5).run(fx.shutdown.clone()));
    eventually(
        "both deliveries handled",
        Duration::from_secs(10),
        || async { fx.consumed("processed") + fx.consumed("duplicate") == 2 },
    )
    .await;
    assert_eq!(fx.effects("dup").await, 1);
    assert_eq!(fx.consumed("duplicate"), 1);
    fx.cleanup().await;
}

#[tokio::test]
async fn poison_messages_land_in_the_dlq_while_others_flow() {
    let fx = fixture().await;
    let limit = 2;
    let ch = declare(&fx, limit).await;
    let t = fx.amqp.topology.clone();
    // Interleaved, so one batch holds handled deliveries on both sides of failing ones: the
    // consumer's `multiple` acks must never cover a delivery it nacks or rejects.
    let transient = event("never", "transient");
    let permanent = event("never", "permanent");
    let good: Vec<CloudEvent> = (0..3).map(|i| event(&format!("good-{i}"), "ok")).collect();
    publish_raw(&ch, &t, &good[0].id, &serde_json::to_vec(&good[0]).unwrap()).await;
    publish_raw(&ch, &t, "garbage-1", b"{not json").await;
    for e in [&transient, &good[1], &permanent, &good[2]] {
        publish_raw(&ch, &t, &e.id, &serde_json::to_vec(e).unwrap()).await;
    }

    let handler = Arc::new(Recorder::default());
    tokio::spawn(fx.consumer(handler.clone(), limit).run(fx.shutdown.clone()));
    eventually("good messages handled", Duration::from_secs(10), || async {
        fx.consumed("processed") == 3
    })
    .await;
    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while dead.len() < 3 && tokio::time::Instant::now() < deadline {
        dead.extend(dlq_messages(&ch, &t).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        dead.len(),
        3,
        "exactly the poison messages are dead-lettered"
    );
    assert!(dead.iter().any(|d| d == b"{not json"));
    let dead_ids: Vec<String> = dead
        .iter()
        .filter_map(|d| serde_json::from_slice::<CloudEvent>(d).ok())
        .map(|e| e.id)
        .collect();
    assert!(dead_ids.contains(&transient.id));
    assert!(dead_ids.contains(&permanent.id));
    // The transient one was tried more than once before the quorum queue gave up on it.
    assert!(
        fx.consumed("retried") >= 2,
        "retried {}",
        fx.consumed("retried")
    );
    for i in 0..3 {
        assert_eq!(fx.effects(&format!("good-{i}")).await, 1);
    }
    assert_eq!(
        fx.consumed("duplicate"),
        0,
        "a handled message was delivered again: its ack was lost"
    );
    assert_eq!(fx.effects("never").await, 0);
    fx.cleanup().await;
}

/// Forwards TCP connections from `listen` to the broker; the "broker coming back".
async fn start_forwarder(listen: std::net::SocketAddr, shutdown: CancellationToken) {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let target = {
        let url = amqp_url();
        let hostport = url
            .rsplit('@')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        hostport
    };
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a.unwrap(),
            };
            let target = target.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                }
            });
        }
    });
}

#[tokio::test]
async fn an_outbox_row_written_while_the_broker_is_down_is_published_when_it_returns() {
    let fx = fixture().await;
    let ch = declare(&fx, 5).await;
    // A port where nothing listens yet: the relay's broker is "down".
    let port = test_support::free_port();
    let url = amqp_url();
    let user = &url[..url.rfind('@').unwrap()];
    let vhost = url.rsplit('/').next().unwrap();
    let mut down = fx.amqp.clone();
    down.endpoint = BrokerEndpoint::url(format!("{user}@127.0.0.1:{port}/{vhost}"));

    let ev = event("outbox", "ok");
    let trace = TraceContext {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        ..Default::default()
    };
    {
        let (ev, trace) = (ev.clone(), trace.clone());
        fx.db
            .call(move |c| {
                let tx = c.transaction()?;
                tx.execute("INSERT INTO effects (key) VALUES ('state-change')", [])?;
                outbox::enqueue_event(&tx, &ev, &trace).unwrap();
                tx.commit()
            })
            .await
            .unwrap();
    }
    let (relay, notifier) = Relay::new(down, fx.db.clone(), fx.metrics.clone());
    let relay_up = relay.status();
    tokio::spawn(relay.run(fx.shutdown.clone()));
    notifier.wake();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = ev.id.clone();
    assert_eq!(
        fx.db.call(move |c| outbox::sent_at(c, &id)).await.unwrap(),
        None,
        "nothing can be published while the broker is down"
    );
    assert!(!relay_up.is_up());
    assert!(fx.metrics.reconnects.get() >= 1);

    // The broker comes back on the same address.
    start_forwarder(([127, 0, 0, 1], port).into(), fx.shutdown.clone()).await;
    let id = ev.id.clone();
    eventually("outbox row published", Duration::from_secs(15), || {
        let id = id.clone();
        let db = fx.db.clone();
        async move {
            db.call(move |c| outbox::sent_at(c, &id))
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
    let got = ch
        .basic_get(
            fx.amqp.topology.queue("svc").as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the published event is in the queue");
    let props = &got.delivery.properties;
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), ev.id);
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        messaging::CONTENT_TYPE
    );
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(
        props.user_id().as_ref().map(|u| u.as_str().to_owned()),
        Some(fx.amqp.user()),
        "the relay names its broker user, which RabbitMQ checks"
    );
    assert_eq!(
        TraceContext::from_amqp_headers(props.headers().as_ref()),
        trace
    );
    let body: CloudEvent = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(body, ev);
    assert_eq!(fx.db.call(|c| outbox::pending(c)).await.unwrap(), 0);
    fx.cleanup().await;
}

/// On its first call, writes the effect and then holds the transaction open until the test
/// says the consumer's connection is gone, so the commit and the ack come after the kill
/// however long `rabbitmqctl` takes (a fixed sleep raced it on a loaded machine).
struct SlowFirst {
    inner: Recorder,
    first: std::sync::Mutex<Option<Handshake>>,
}

struct Handshake {
    entered: std::sync::mpsc::Sender<()>,
    killed: std::sync::mpsc::Receiver<()>,
}

impl Handler for SlowFirst {
    type Prepared = ();

    fn apply(&self, tx: &Writer<'_>, msg: &Incoming, prepared: ()) -> Result<(), HandlerError> {
        self.inner.apply(tx, msg, prepared)?;
        if let Some(hs) = self.first.lock().unwrap().take() {
            hs.entered.send(()).unwrap();
            // The effect is written but not committed or acked while the connection dies.
            hs.killed
                .recv_timeout(Duration::from_secs(60))
                .expect("the test kills the consumer's connection within 60 s");
        }
        Ok(())
    }
}

/// Closes the broker's connections whose client properties mention `name`; each
/// `rabbitmqctl` call is bounded (`test_support::RABBITMQCTL_DEADLINE`).
fn close_connections_named(name: &str) -> usize {
    let ctl = |args: &[&str]| {
        test_support::rabbitmqctl(args)
            .unwrap_or_else(|e| panic!("killing the consumer's connection needs rabbitmqctl: {e}"))
    };
    let listed = ctl(&["list_connections", "-q", "pid", "client_properties"]);
    let mut closed = 0;
    for line in listed.lines().filter(|l| l.contains(name)) {
        let pid = line.split_whitespace().next().unwrap();
        ctl(&["close_connection", pid, "test kills the consumer"]);
        closed += 1;
    }
    closed
}

#[tokio::test]
async fn a_consumer_killed_before_ack_gets_the_message_again_and_the_effect_happens_once() {
    let fx = fixture().await;
    let ch = declare(&fx, 5).await;
    let ev = event("killed", "ok");
    publish_raw(
        &ch,
        &fx.amqp.topology,
        &ev.id,
        &serde_json::to_vec(&ev).unwrap(),
    )
    .await;

    let (entered, in_tx) = std::sync::mpsc::channel();
    let (killed, kill_seen) = std::sync::mpsc::channel();
    let handler = Arc::new(SlowFirst {
        inner: Recorder::default(),
        first: std::sync::Mutex::new(Some(Handshake {
            entered,
            killed: kill_seen,
        })),
    });
    let consumer = fx.consumer(handler.clone(), 5);
    let up = consumer.status();
    tokio::spawn(consumer.run(fx.shutdown.clone()));
    tokio::task::spawn_blocking(move || {
        in_tx
            .recv_timeout(Duration::from_secs(10))
            .expect("the consumer got the message within 10 s")
    })
    .await
    .unwrap();
    let name = format!("{}-consumer-svc", fx.amqp.connection_name);
    let closed = tokio::task::spawn_blocking(move || close_connections_named(&name))
        .await
        .unwrap();
    assert_eq!(closed, 1, "the consumer's connection was found and closed");
    // Only now may the handler commit and try to ack, on a connection that is gone.
    killed.send(()).unwrap();

    eventually(
        "redelivery recognised as a duplicate",
        Duration::from_secs(20),
        || async { fx.consumed("duplicate") == 1 },
    )
    .await;
    assert_eq!(fx.effects("killed").await, 1, "the effect happened once");
    assert!(fx.metrics.reconnects.get() >= 1, "the consumer reconnected");
    eventually(
        "consumer attached again",
        Duration::from_secs(5),
        || async { up.is_up() },
    )
    .await;
    fx.cleanup().await;
}

static SUBSCRIPTIONS: &[Contract] = &[
    Contract {
        service: "svc",
        produces: &[],
        consumes: &["test.#"],
    },
    Contract {
        service: "other",
        produces: &[],
        consumes: &["#"],
    },
];

#[tokio::test]
async fn an_event_published_before_its_consumer_ever_started_waits_in_its_queue() {
    let mut fx = fixture().await;
    fx.amqp.subscriptions = SUBSCRIPTIONS;
    let ev = event("early", "ok");
    {
        let ev = ev.clone();
        fx.db
            .call(move |c| outbox::enqueue_event(c, &ev, &TraceContext::default()))
            .await
            .unwrap();
    }
    // No consumer has declared anything: the relay declares every subscribed queue itself.
    let (relay, _notifier) = Relay::new(fx.amqp.clone(), fx.db.clone(), fx.metrics.clone());
    tokio::spawn(relay.run(fx.shutdown.clone()));
    let id = ev.id.clone();
    eventually("outbox row published", Duration::from_secs(10), || {
        let (id, db) = (id.clone(), fx.db.clone());
        async move {
            db.call(move |c| outbox::sent_at(c, &id))
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
    let conn = broker().await;
    let ch = conn.create_channel().await.unwrap();
    for queue in ["svc", "other"] {
        let got = ch
            .basic_get(
                fx.amqp.topology.queue(queue).as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("the event waits in {queue}"));
        assert_eq!(
            got.delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .as_str(),
            ev.id
        );
    }
    fx.shutdown.cancel();
    fx.amqp
        .topology
        .delete(&ch, &["svc", "other"])
        .await
        .unwrap();
}

#[tokio::test]
async fn connections_ask_for_small_frames_and_a_short_heartbeat_unless_the_url_says_otherwise() {
    let fx = fixture().await;
    // lapin keeps 2 × 32 frames of buffer per connection: RabbitMQ's 128 KiB default would be
    // 8 MiB of every service's memory per connection.
    let conn = fx.amqp.connect("frames").await.unwrap();
    assert_eq!(conn.configuration().frame_max(), 16 * 1024);
    // RabbitMQ proposes 60 s; a frozen broker is noticed after two heartbeats.
    assert_eq!(
        conn.configuration().heartbeat(),
        messaging::DEFAULT_HEARTBEAT_SECS
    );
    let _ = conn.close(200, "done".into()).await;

    let mut explicit = fx.amqp.clone();
    let url = amqp_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    explicit.endpoint = BrokerEndpoint::url(format!("{url}{sep}frame_max=65536&heartbeat=30"));
    let conn = explicit.connect("frames").await.unwrap();
    assert_eq!(conn.configuration().frame_max(), 65536);
    assert_eq!(conn.configuration().heartbeat(), 30);
    let _ = conn.close(200, "done".into()).await;

    let mut bad = fx.amqp.clone();
    bad.endpoint = BrokerEndpoint::url("amqp://app:s3cret@broker:notaport/%2f");
    let error = bad.connect("frames").await.unwrap_err().to_string();
    assert!(error.contains("invalid AMQP URL"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
    fx.cleanup().await;
}

/// Issue 14: a transient failure is retried after a growing delay (the consumer's retry queues,
/// per-message expiration, dead-lettered back to its queue), and dead-lettered after the limit;
/// a poison message still goes to the dead-letter queue at once.
#[tokio::test]
async fn transient_failures_come_back_after_growing_delays_then_go_to_the_dlq() {
    let fx = fixture().await;
    let limit = 3;
    let ch = declare(&fx, limit).await;
    let t = fx.amqp.topology.clone();
    let retry = RetryBackoff {
        base: Duration::from_millis(200),
        max: Duration::from_secs(2),
    };
    let flaky = event("flaky", "transient");
    let poison = event("poison", "permanent");
    for e in [&flaky, &poison] {
        publish_raw(&ch, &t, &e.id, &serde_json::to_vec(e).unwrap()).await;
    }
    let handler = Arc::new(Stopwatch::default());
    tokio::spawn(
        fx.consumer_with(handler.clone(), limit, retry)
            .run(fx.shutdown.clone()),
    );

    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while dead.len() < 2 && tokio::time::Instant::now() < deadline {
        dead.extend(dlq_messages(&ch, &t).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead_ids: Vec<String> = dead
        .iter()
        .filter_map(|d| serde_json::from_slice::<CloudEvent>(d).ok())
        .map(|e| e.id)
        .collect();
    assert_eq!(dead_ids.len(), 2, "both end in the DLQ: {dead_ids:?}");
    assert!(dead_ids.contains(&flaky.id) && dead_ids.contains(&poison.id));

    assert_eq!(
        handler.times("poison").len(),
        1,
        "poison: dead-lettered at once"
    );
    let times = handler.times("flaky");
    assert_eq!(
        times.len(),
        limit as usize + 1,
        "the first try and {limit} retries"
    );
    // Each retry came no sooner than its back-off: 200, 400, 800 ms.
    for (i, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let wanted = retry.delay(i as u32 + 1);
        assert!(
            gap >= wanted,
            "retry {}: after {gap:?}, before {wanted:?}",
            i + 1
        );
    }
    assert_eq!(fx.consumed("retried"), u64::from(limit) + 1);
    // Nothing is left waiting in the retry queues.
    for q in t.retry_queues("svc") {
        let state = ch
            .queue_declare(
                q.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        assert_eq!(state.message_count(), 0, "{q}");
    }
    fx.cleanup().await;
}
