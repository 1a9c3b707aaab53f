//! Issue 14: `/readyz` tells the truth about the broker. A RabbitMQ node of this test binary's
//! own (`test_support::BrokerNode`) is memory-alarmed and stopped; the shared broker is never
//! touched. One test, because it changes the node for everyone in the binary.
//!
//! Run with `cargo test -p service-kit --test readiness` (needs `rabbitmq-server` installed).

use std::time::Duration;

use axum::Router;
use messaging::events::OrderCancelled;
use messaging::TraceContext;
use serde_json::Value;
use service_kit::{BaseConfig, IdentityConfig, Kit, Service};
use test_support::BrokerNode;
use tokio_util::sync::CancellationToken;

const SERVICE: Service = Service::new(messaging::contract::ORDERS, 0, "0");
const WAIT: Duration = Duration::from_secs(30);

async fn readyz(base: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls `/readyz` until `done(status, body)`; panics with the last answer after [`WAIT`].
async fn until(base: &str, what: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_memory_alarm_and_a_stopped_broker() {
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
    let config = BaseConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        database_path: dir.path().join("orders.db"),
        amqp: messaging::BrokerEndpoint::url(node.amqp_url("orders", &password, &vhost)),
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
    // /readyz and /metrics over plain HTTP on the ops port.
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", ops.local_addr().unwrap());
    let task =
        tokio::spawn(async move { kit.serve_on(listener, ops, Router::new()).await.unwrap() });
    let publish = || {
        let outbox = outbox.clone();
        async move {
            outbox
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
    };

    until(&base, "ready at first", |s, _| s == 200).await;
    publish().await;
    until(&base, "the event confirmed", |s, _| s == 200).await;

    // A memory alarm: the broker blocks publishing connections (connection.blocked), and what
    // the service writes meanwhile waits in its outbox.
    ctl(node, &["set_vm_memory_high_watermark", "0.00001"]);
    publish().await;
    let body = until(&base, "not ready while blocked", |s, b| {
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
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("shop_readiness_failing{check=\"broker:relay\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shop_readiness_failing{check=\"outbox\"} 1"),
        "{metrics}"
    );

    // Alarm cleared: unblocked, the backlog drains, ready again.
    ctl(node, &["set_vm_memory_high_watermark", "0.4"]);
    until(&base, "ready after the alarm", |s, _| s == 200).await;

    // The broker stopped: down; back: ready again.
    ctl(node, &["stop_app"]);
    let body = until(&base, "not ready without the broker", |s, _| s == 503).await;
    assert!(
        failing(&body).contains(&"broker:relay (down)".to_owned()),
        "{body}"
    );
    ctl(node, &["start_app"]);
    until(&base, "ready once the broker is back", |s, _| s == 200).await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
