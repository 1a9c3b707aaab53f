use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

fn dead_addr() -> String {
    format!("127.0.0.1:{}", test_support::free_port())
}

async fn upstream_name(gw: &Gateway, path: &str) -> (u16, Option<String>) {
    let r = client().get(gw.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    let v: Option<Value> = r.json().await.ok();
    (
        status,
        v.and_then(|v| v["upstream"].as_str().map(str::to_string)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn active_health_checks_take_an_endpoint_out_and_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let body = format!(
        "upstreams:\n  pool:\n    endpoints: [\"{}\", \"{}\"]\n    health_check: {{path: /healthz, interval_ms: 100, timeout_ms: 200, unhealthy_threshold: 1, healthy_threshold: 1}}\nroutes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: pool, auth: none}}\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&body).await;
    a.healthy.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..6 {
        assert_eq!(upstream_name(&gw, "/x").await, (200, Some("b".into())));
    }
    assert!(gw
        .metrics()
        .await
        .contains("gateway_upstream_available_endpoints{upstream=\"pool\"} 1"));
    a.healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(upstream_name(&gw, "/x").await.1.unwrap());
    }
    assert!(
        names.contains(&"a".to_string()),
        "a never came back: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn passive_ejection_after_consecutive_failures() {
    let b = Upstream::start("b").await;
    let body = format!(
        "upstreams:\n  pool:\n    endpoints: [\"{}\", \"{}\"]\n    retries: 0\n    passive_ejection: {{consecutive_failures: 2, ejection_secs: 30}}\n    circuit_breaker: {{failure_threshold: 100}}\nroutes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: pool, auth: none}}\n",
        dead_addr(),
        b.addr
    );
    let gw = Gateway::start(&body).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(upstream_name(&gw, "/x").await.0);
    }
    let failures = statuses.iter().filter(|s| **s == 502).count();
    assert_eq!(
        failures, 2,
        "expected exactly 2 failures before ejection: {statuses:?}"
    );
    assert!(statuses[6..].iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_are_504_and_connect_failures_502() {
    let slow = Upstream::start("slow").await;
    let body = format!(
        "upstreams:\n  slow: {{endpoints: [\"{}\"], read_timeout_ms: 300, retries: 0}}\n  dead: {{endpoints: [\"{}\"], retries: 0}}\nroutes:\n  - {{name: slow, match: {{path_prefix: /slow}}, upstream: slow, auth: none}}\n  - {{name: dead, match: {{path_prefix: /dead}}, upstream: dead, auth: none}}\n",
        slow.addr,
        dead_addr()
    );
    let gw = Gateway::start(&body).await;
    let r = client().get(gw.url("/slow/1500")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://vantage.dev/problems/upstream-timeout");
    let r = client().get(gw.url("/dead")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://vantage.dev/problems/bad-gateway");
    let text = p.to_string();
    assert!(
        !text.contains("127.0.0.1"),
        "upstream address leaked to the client: {text}"
    );
    assert!(gw
        .metrics()
        .await
        .contains("gateway_upstream_errors_total{upstream=\"dead\",kind=\"connect_refused\"}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_only_repeat_what_is_safe() {
    let good = Upstream::start("good").await;
    // Connect failures are retried for any method: the request never left.
    let slow = Upstream::start("slow").await;
    slow.delay_ms.store(1000, Ordering::SeqCst);
    let body = format!(
        "upstreams:\n  flaky: {{endpoints: [\"{}\", \"{}\"], retries: 1, passive_ejection: {{consecutive_failures: 100}}, circuit_breaker: {{failure_threshold: 100}}}}\n  \
         slowpool: {{endpoints: [\"{}\", \"{}\"], retries: 1, read_timeout_ms: 300, passive_ejection: {{consecutive_failures: 100}}, circuit_breaker: {{failure_threshold: 100}}}}\n\
         routes:\n  - {{name: flaky, match: {{path_prefix: /flaky}}, upstream: flaky, auth: none}}\n  - {{name: slowpool, match: {{path_prefix: /sp}}, upstream: slowpool, auth: none}}\n",
        dead_addr(),
        good.addr,
        slow.addr,
        good.addr
    );
    let gw = Gateway::start(&body).await;
    for _ in 0..4 {
        assert_eq!(
            client()
                .post(gw.url("/flaky"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "connect failure not retried"
        );
    }
    // A read timeout on GET is retried on the other endpoint.
    for _ in 0..4 {
        assert_eq!(
            client().get(gw.url("/sp")).send().await.unwrap().status(),
            200,
            "GET not retried"
        );
    }
    // POST may have reached the upstream: never retried.
    let before = slow.hits.load(Ordering::SeqCst);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(
            client()
                .post(gw.url("/sp"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    statuses.sort();
    assert_eq!(
        statuses,
        vec![200, 504],
        "one POST hit the slow endpoint and must not be retried"
    );
    assert_eq!(slow.hits.load(Ordering::SeqCst) - before, 1);
    assert!(
        gw.log_containing("\"attempts\":2")
            .await
            .contains("\"attempts\":2"),
        "retries are visible in the access log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn circuit_breaker_fails_fast_then_recovers() {
    let up = Upstream::start("u").await;
    up.fail_status.store(503, Ordering::SeqCst);
    let body = format!(
        "upstreams:\n  u: {{endpoints: [\"{}\"], retries: 0, passive_ejection: {{consecutive_failures: 100}}, circuit_breaker: {{failure_threshold: 3, open_secs: 1}}}}\nroutes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: u, auth: none}}\n",
        up.addr
    );
    let gw = Gateway::start(&body).await;
    for _ in 0..3 {
        let r = client().get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(
            r.text().await.unwrap(),
            "failing",
            "the upstream's own 503 is passed through"
        );
    }
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://vantage.dev/problems/circuit-open");
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        3,
        "an open circuit must not contact the upstream"
    );

    up.fail_status.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        client().get(gw.url("/x")).send().await.unwrap().status(),
        200,
        "half-open trial"
    );
    assert_eq!(
        client().get(gw.url("/x")).send().await.unwrap().status(),
        200,
        "closed again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn body_limit_and_smuggling_guards() {
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n  u: {{endpoints: [\"{}\"]}}\nroutes:\n  - {{name: small, match: {{path_prefix: /small}}, upstream: u, auth: none, max_body_bytes: 1024}}\n  - {{name: all, match: {{path_prefix: /}}, upstream: u, auth: none}}\n",
        up.addr
    );
    let gw = Gateway::start(&body).await;
    let r = client()
        .post(gw.url("/small"))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://vantage.dev/problems/payload-too-large");
    let ok = client()
        .post(gw.url("/small"))
        .body(vec![b'x'; 500])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["body_len"], 500);
    // A chunked body has no Content-Length: it is counted as it streams.
    let chunked = format!(
        "POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n",
        "y".repeat(2000)
    );
    assert_eq!(gw.raw_status(chunked.as_bytes()), 413);
    // Default limit is 1 MiB.
    let r = client()
        .post(gw.url("/big"))
        .body(vec![b'x'; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let hits = up.hits.load(Ordering::SeqCst);
    let cl_te = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(gw.raw_status(cl_te), 400, "CL + TE must be refused");
    let two_cl =
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    assert_eq!(
        gw.raw_status(two_cl),
        400,
        "two Content-Length headers must be refused"
    );
    let list_cl = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello";
    assert_eq!(
        gw.raw_status(list_cl),
        400,
        "a Content-Length list must be refused"
    );
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        hits,
        "an ambiguous request reached the upstream"
    );
}
