//! Upstream failure semantics under the default policy: what the client gets for each kind of
//! failure, where retries go, and when the circuit opens — the table in docs/gateway-config.md.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

async fn status_and_type(gw: &Gateway, path: &str) -> (u16, String) {
    let r = client().get(gw.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let slug = body["type"]
        .as_str()
        .map(|t| {
            t.trim_start_matches("https://vantage.dev/problems/")
                .to_string()
        })
        .unwrap_or_default();
    (status, slug)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_single_endpoint_gives_one_504_after_one_timeout() {
    let frozen = Upstream::start("frozen").await;
    frozen.delay_ms.store(3000, Ordering::SeqCst);
    // Default retries (1): with one endpoint there is nowhere else to go.
    let gw = Gateway::start(&format!(
        "upstreams:\n  u: {{endpoints: [\"{}\"], read_timeout_ms: 400}}\n\
         routes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: u, auth: none}}\n",
        frozen.addr
    ))
    .await;
    let started = Instant::now();
    let (status, slug) = status_and_type(&gw, "/x").await;
    let took = started.elapsed();
    assert_eq!((status, slug.as_str()), (504, "upstream-timeout"));
    assert!(
        took < Duration::from_millis(750),
        "one timeout, not two: {took:?}"
    );
    assert_eq!(
        frozen.hits.load(Ordering::SeqCst),
        1,
        "not retried onto the same endpoint"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_goes_to_the_other_endpoint_never_back_to_the_failed_one() {
    let frozen = Upstream::start("frozen").await;
    frozen.delay_ms.store(3000, Ordering::SeqCst);
    let good = Upstream::start("good").await;
    let gw = Gateway::start(&format!(
        "upstreams:\n  u: {{endpoints: [\"{}\", \"{}\"], read_timeout_ms: 300, passive_ejection: {{consecutive_failures: 100}}}}\n\
         routes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: u, auth: none}}\n",
        frozen.addr, good.addr
    ))
    .await;
    for _ in 0..4 {
        let (status, _) = status_and_type(&gw, "/x").await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        good.hits.load(Ordering::SeqCst),
        4,
        "every request ended on the good one"
    );
    let frozen_hits = frozen.hits.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&frozen_hits),
        "frozen hit {frozen_hits} times"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connect_timeout_is_504() {
    // A listener that never accepts, its queue filled: further connects hang in SYN.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fill = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fill.push(s);
        }
    }
    let gw = Gateway::start(&format!(
        "upstreams:\n  u: {{endpoints: [\"{addr}\"], connect_timeout_ms: 300, retries: 0}}\n\
         routes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: u, auth: none}}\n"
    ))
    .await;
    let (status, slug) = status_and_type(&gw, "/x").await;
    assert_eq!((status, slug.as_str()), (504, "upstream-timeout"));
    let m = gw
        .metrics_containing(
            "gateway_upstream_errors_total{upstream=\"u\",kind=\"connect_timeout\"}",
        )
        .await;
    assert!(m.contains("kind=\"connect_timeout\"} 1"), "{m}");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_default_policy_the_circuit_opens_is_visible_and_recovers() {
    let frozen = Upstream::start("frozen").await;
    frozen.delay_ms.store(3000, Ordering::SeqCst);
    // Only the timings are shortened; thresholds and retries are the defaults.
    let gw = Gateway::start(&format!(
        "upstreams:\n  u: {{endpoints: [\"{}\"], read_timeout_ms: 200, passive_ejection: {{ejection_secs: 1}}, circuit_breaker: {{open_secs: 1}}}}\n\
         routes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: u, auth: none}}\n",
        frozen.addr
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(status_and_type(&gw, "/x").await);
    }
    let slugs: Vec<&str> = seen.iter().map(|(_, s)| s.as_str()).collect();
    // 3 timeouts eject the endpoint; 2 "no healthy endpoint" make 5 failures in a row; open.
    assert_eq!(
        slugs,
        [
            "upstream-timeout",
            "upstream-timeout",
            "upstream-timeout",
            "no-healthy-upstream",
            "no-healthy-upstream",
            "circuit-open",
            "circuit-open"
        ],
        "{seen:?}"
    );
    let m = gw
        .metrics_containing("gateway_circuit_state{upstream=\"u\"} 2")
        .await;
    assert!(m.contains("gateway_circuit_state{upstream=\"u\"} 2"), "{m}");
    let ready: Value = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["upstreams"]["u"]["circuit"], "open", "{ready}");
    assert_eq!(frozen.hits.load(Ordering::SeqCst), 3);

    // The upstream recovers; after open_secs one trial closes the circuit.
    frozen.delay_ms.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, slug) = status_and_type(&gw, "/x").await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recovered: {status} {slug}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = gw
        .metrics_containing("gateway_circuit_state{upstream=\"u\"} 0")
        .await;
    assert!(m.contains("gateway_circuit_state{upstream=\"u\"} 0"), "{m}");
}
