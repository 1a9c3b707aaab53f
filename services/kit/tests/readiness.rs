//! Issue 14: `/readyz` tells the truth about the broker. A RabbitMQ node of this test binary's
//! own (`test_support::BrokerNode`) is memory-alarmed, stopped and frozen; the shared broker is
//! never touched. The tests take turns with the node ([`NODE_TURN`]), because each changes it
//! for everyone in the binary.
//!
//! Run with `cargo test -p service-kit --test readiness` (needs `rabbitmq-server` installed).

use std::time::Duration;

use axum::Router;
use messaging::events::OrderCancelled;
use messaging::Outbox;
use messaging::TraceContext;
use serde_json::Value;
use service_kit::{BaseConfig, IdentityConfig, Kit, Service};
use test_support::BrokerNode;
use tokio_util::sync::CancellationToken;

const SERVICE: Service = Service::new(messaging::contract::ORDERS, 0, "0");
const WAIT: Duration = Duration::from_secs(30);

/// One test at a time changes the node: held for a whole test.
static NODE_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn readyz(base: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls `/readyz` until `done(status, body)`; panics with the last answer after `within`.
async fn until_within(
    base: &str,
    what: &str,
    within: Duration,
    done: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, body) = readyz(base).await;
        if done(status, &body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: last /readyz {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`until_within`] [`WAIT`].
async fn until(base: &str, what: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    until_within(base, what, WAIT, done).await
}

fn failing(body: &Value) -> Vec<String> {
    body["failing"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn ctl(node: &BrokerNode, args: &[&str]) {
    node.rabbitmqctl(args)
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail()));
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The orders service's kit against the test node, in a vhost and as a broker user of its own,
/// serving `/readyz` and `/metrics` on a plain-HTTP ops port.
struct Running {
    node: &'static BrokerNode,
    /// `http://<ops address>`.
    base: String,
    outbox: Outbox,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts it; `url_query` is appended to its `AMQP_URL` (`?heartbeat=2`), if any.
    async fn start(url_query: &str) -> Running {
        let node = tokio::task::spawn_blocking(BrokerNode::shared)
            .await
            .unwrap();
        let vhost = test_support::unique_name("readiness");
        let password = test_support::unique_name("pw");
        let definitions = serde_json::json!({
            "vhosts": [{"name": vhost}],
            "users": [{"name": "orders", "password": password, "tags": []}],
            "permissions": [{"user": "orders", "vhost": vhost,
                             "configure": ".*", "write": ".*", "read": ".*"}],
        });
        node.import_definitions(&definitions.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap();
        let ca = identity::dev_ca::DevCa::new("readiness test CA").unwrap();
        let svid = dir.path().join("svid");
        ca.write_svid(
            &svid,
            &"spiffe://vantage.local/orders".parse().unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
        let url = format!("{}{url_query}", node.amqp_url("orders", &password, &vhost));
        let config = BaseConfig {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            database_path: dir.path().join("orders.db"),
            amqp: messaging::BrokerEndpoint::url(url),
            queue_prefix: String::new(),
            ops_addr: "127.0.0.1:0".parse().unwrap(),
            identity: IdentityConfig::mtls(svid),
            retry: messaging::RetryBackoff::default(),
            outbox_max_age: Duration::from_secs(1),
        };
        let shutdown = CancellationToken::new();
        let kit = Kit::start(SERVICE, config, "SELECT 1", shutdown.clone())
            .await
            .unwrap();
        let outbox = kit.outbox();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", ops.local_addr().unwrap());
        let task =
            tokio::spawn(async move { kit.serve_on(listener, ops, Router::new()).await.unwrap() });
        Running {
            node,
            base,
            outbox,
            shutdown,
            task,
            _dir: dir,
        }
    }

    /// Writes one event to the outbox, for the relay to publish.
    async fn publish(&self) {
        self.outbox
            .transaction(|w| {
                w.enqueue(
                    &OrderCancelled {
                        order_id: "o-1".into(),
                        user_id: "u-1".into(),
                        reason: "timeout".into(),
                    },
                    &TraceContext::default(),
                )
                .map(|_| ())
            })
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_memory_alarm_and_a_stopped_broker() {
    let _turn = NODE_TURN.lock().await;
    // A short heartbeat, to show that a blocked connection is not taken for a frozen broker;
    // not shorter than RabbitMQ's recommended 5 s, so a loaded machine does not miss two.
    let svc = Running::start(&format!("?heartbeat={BLOCKED_HEARTBEAT_SECS}")).await;
    let (node, base) = (svc.node, svc.base.as_str());

    until(base, "ready at first", |s, _| s == 200).await;
    svc.publish().await;
    until(base, "the event confirmed", |s, _| s == 200).await;

    // A memory alarm: the broker blocks publishing connections (connection.blocked), and what
    // the service writes meanwhile waits in its outbox.
    ctl(node, &["set_vm_memory_high_watermark", "0.00001"]);
    svc.publish().await;
    let body = until(base, "not ready while blocked", |s, b| {
        s == 503
            && failing(b).contains(&"broker:relay (blocked)".to_owned())
            && failing(b)
                .iter()
                .any(|f| f.starts_with("outbox (oldest unsent"))
    })
    .await;
    assert_eq!(
        body["type"], "https://vantage.dev/problems/not-ready",
        "{body}"
    );
    let metrics = metrics(base).await;
    assert!(
        metrics.contains("shop_readiness_failing{check=\"broker:relay\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shop_readiness_failing{check=\"outbox\"} 1"),
        "{metrics}"
    );
    // The broker keeps sending heartbeats on a blocked connection: for more than two
    // intervals it stays blocked, never closed as missing its heartbeats.
    let blocked_for = Duration::from_secs(2 * BLOCKED_HEARTBEAT_SECS + 2);
    let end = tokio::time::Instant::now() + blocked_for;
    while tokio::time::Instant::now() < end {
        let (status, body) = readyz(base).await;
        assert!(
            status == 503 && failing(&body).contains(&"broker:relay (blocked)".to_owned()),
            "blocked for less than {blocked_for:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Alarm cleared: unblocked, the backlog drains, ready again.
    ctl(node, &["set_vm_memory_high_watermark", "0.4"]);
    until(base, "ready after the alarm", |s, _| s == 200).await;

    // The broker stopped: down; back: ready again.
    ctl(node, &["stop_app"]);
    let body = until(base, "not ready without the broker", |s, _| s == 503).await;
    assert!(
        failing(&body).contains(&"broker:relay (down)".to_owned()),
        "{body}"
    );
    ctl(node, &["start_app"]);
    until(base, "ready once the broker is back", |s, _| s == 200).await;

    svc.stop().await;
}

/// The AMQP heartbeat the frozen-broker test asks for (`?heartbeat=`), in seconds: short, so
/// the freeze is noticed quickly. The services' default is `messaging::DEFAULT_HEARTBEAT_SECS`
/// (10).
const HEARTBEAT_SECS: u64 = 2;

/// The heartbeat of the memory-alarm test, which checks a blocked connection outlives it.
const BLOCKED_HEARTBEAT_SECS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_the_broker_freezes_and_200_when_it_thaws() {
    let _turn = NODE_TURN.lock().await;
    let svc = Running::start(&format!("?heartbeat={HEARTBEAT_SECS}")).await;
    let (node, base) = (svc.node, svc.base.as_str());
    until(base, "ready at first", |s, _| s == 200).await;
    svc.publish().await;
    until(base, "the event confirmed", |s, _| s == 200).await;

    // SIGSTOP: the broker's sockets stay open and nothing is answered, so only the heartbeat
    // can tell. lapin gives up on a connection after two heartbeat intervals without a frame
    // from the broker; the bound adds room for its check interval (half a heartbeat), the
    // relay noticing, and a loaded machine. The guard thaws the node however this test ends.
    let frozen = node
        .freeze()
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail()));
    svc.publish().await;
    let detection = Duration::from_secs(2 * HEARTBEAT_SECS + 15);
    let body = until_within(base, "not ready while frozen", detection, |s, b| {
        s == 503 && failing(b).contains(&"broker:relay (down)".to_owned())
    })
    .await;
    assert_eq!(
        body["type"], "https://vantage.dev/problems/not-ready",
        "{body}"
    );
    let metrics = metrics(base).await;
    assert!(
        metrics.contains("shop_readiness_failing{check=\"broker:relay\"} 1"),
        "{metrics}"
    );
    // Still frozen: reconnecting cannot get past the AMQP handshake, so it stays not ready.
    tokio::time::sleep(Duration::from_secs(2 * HEARTBEAT_SECS)).await;
    let (status, body) = readyz(base).await;
    assert_eq!(status, 503, "not ready while still frozen: {body}");

    // Thawed: the relay reconnects and publishes what waited in the outbox (an unsent event
    // older than outbox_max_age, 1 s here, would keep /readyz at 503).
    frozen.thaw().unwrap();
    until(base, "ready once the broker thaws", |s, b| {
        s == 200 && failing(b).is_empty()
    })
    .await;

    svc.stop().await;
}
