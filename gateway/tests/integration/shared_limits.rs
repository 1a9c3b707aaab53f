//! Rate limits shared through Redis (`stores` + `store:` on a policy): several gateway
//! processes count against one quota, and a Redis that hangs or goes away is decided by the
//! store's `on_error` within `timeout_ms`, and used again once it is back.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::Value;

use crate::common::*;
use crate::redis_fixture::*;

fn shared_policy(url: &str, prefix: &str, on_error: &str, timeout_ms: u64, burst: u32) -> String {
    format!(
        "stores:\n  shared: {{redis: \"{url}\", timeout_ms: {timeout_ms}, on_error: {on_error}, key_prefix: \"{prefix}\"}}\n\
         rate_limits:\n  quota: {{key: [route], rate: 1, per: hour, burst: {burst}, store: shared}}\n"
    )
}

fn route_to(upstream: &Upstream, policies: &str) -> String {
    format!(
        "upstreams:\n  u: {{endpoints: [\"{}\"]}}\nroutes:\n  - {{name: api, match: {{path_prefix: /}}, upstream: u, auth: none, rate_limits: [{policies}]}}\n",
        upstream.addr
    )
}

async fn status(url: String) -> u16 {
    client().get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_sharing_redis_admit_one_shared_quota_under_concurrent_load() {
    redis().await;
    let upstream = Upstream::start("u").await;
    let prefix = key_prefix("quota");
    let url = format!("redis://{REDIS_ADDR}/0");
    // A generous timeout and on_error: deny, so a slow moment on a loaded machine can only
    // refuse, never admit more than the quota.
    let body = format!(
        "{}{}",
        shared_policy(&url, &prefix, "deny", 2000, 100),
        route_to(&upstream, "quota")
    );
    let gateways = join_all((0..3).map(|_| Gateway::start(&body))).await;

    // 300 requests, 100 through each gateway, 30 in flight at a time.
    let urls: Vec<String> = (0..300)
        .map(|i| gateways[i % 3].url(&format!("/r{i}")))
        .collect();
    let mut statuses = Vec::new();
    for chunk in urls.chunks(30) {
        statuses.extend(join_all(chunk.iter().cloned().map(status)).await);
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    // Every request goes to Redis (no local decisions), so the documented bound is 0: exactly
    // the burst is admitted across the three, and at one hour per request nothing refills.
    assert_eq!(admitted, 100, "statuses: {statuses:?}");
    assert_eq!(limited, 200);
    assert_eq!(
        upstream.hits.load(Ordering::SeqCst),
        100,
        "the upstream received exactly the shared quota"
    );
    for gw in &gateways {
        let m = gw.metrics().await;
        let errors: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("gateway_store_errors_total{") && !l.ends_with(" 0"))
            .collect();
        assert!(errors.is_empty(), "no store errors expected: {errors:?}");
    }
    let keys = keys_under(&prefix).await;
    assert_eq!(
        keys,
        vec![format!("{prefix}:rl:quota::route=api")],
        "one shared bucket"
    );

    // The bucket is in Redis, not in the gateways: a fourth gateway is refused at once.
    let late = Gateway::start(&body).await;
    let resp = client().get(late.url("/late")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "Retry-After {retry}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_does_not_answer_is_decided_by_on_error_within_timeout_ms() {
    let silent = silent_redis().await;
    let upstream = Upstream::start("u").await;
    let url = format!("redis://{silent}/0");
    let body = format!(
        "stores:\n  open: {{redis: \"{url}\", timeout_ms: 50, on_error: allow}}\n  closed: {{redis: \"{url}\", timeout_ms: 50, on_error: deny}}\n\
         rate_limits:\n  o: {{key: [client_ip], rate: 1, per: hour, burst: 1, store: open}}\n  c: {{key: [client_ip], rate: 1, per: hour, burst: 1, store: closed}}\n\
         upstreams:\n  u: {{endpoints: [\"{}\"]}}\n\
         routes:\n  - {{name: open, match: {{path_prefix: /open}}, upstream: u, auth: none, rate_limits: [o]}}\n  - {{name: closed, match: {{path_prefix: /closed}}, upstream: u, auth: none, rate_limits: [c]}}\n",
        upstream.addr
    );
    let gw = Gateway::start(&body).await;

    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(
            status(gw.url("/open")).await,
            200,
            "on_error: allow lets it through"
        );
        let resp = client().get(gw.url("/closed")).send().await.unwrap();
        // Bounded by timeout_ms (50 ms) plus scheduling; far below the 10 s client timeout.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a hanging Redis held requests for {:?}",
            started.elapsed()
        );
        assert_eq!(resp.status(), 429, "on_error: deny refuses");
        assert_eq!(resp.headers()["retry-after"], "1");
    }
    assert_eq!(
        upstream.hits.load(Ordering::SeqCst),
        3,
        "only the fail-open route reached the upstream"
    );
    let m = gw
        .metrics_containing("gateway_store_errors_total{store=\"closed\",kind=\"timeout\"} 3")
        .await;
    assert!(
        m.contains("gateway_store_errors_total{store=\"open\",kind=\"timeout\"} 3"),
        "{m}"
    );
    assert!(m.contains("gateway_store_up{store=\"open\"} 0"), "{m}");
    let ready: Value = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["status"], "ready",
        "a store outage does not fail readiness"
    );
    assert_eq!(ready["stores"]["closed"]["status"], "down", "{ready}");
    assert_eq!(ready["stores"]["closed"]["last_error"], "timeout");
    assert_eq!(ready["stores"]["closed"]["on_error"], "deny");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cut_mid_test_follows_on_error_and_is_used_again_when_it_returns() {
    redis().await;
    let proxy = RedisProxy::start().await;
    let upstream = Upstream::start("u").await;
    let prefix = key_prefix("cut");
    let body = format!(
        "{}{}",
        shared_policy(&proxy.url(), &prefix, "deny", 300, 3),
        route_to(&upstream, "quota")
    );
    let gw = Gateway::start(&body).await;
    assert_eq!(status(gw.url("/a")).await, 200);
    assert_eq!(status(gw.url("/b")).await, 200);

    proxy.cut();
    let started = Instant::now();
    let resp = client().get(gw.url("/c")).send().await.unwrap();
    assert_eq!(resp.status(), 429, "on_error: deny while Redis is away");
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(started.elapsed() < Duration::from_secs(3));
    let ready: Value = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["stores"]["shared"]["status"], "down", "{ready}");
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 2);

    // Back: the gateway reconnects by itself, and the bucket kept in Redis still holds the
    // two requests counted before the cut: one more is admitted, then the quota refuses.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match status(gw.url("/d")).await {
            200 => break,
            429 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!(
                "no recovery after Redis returned (last status {other}); log:\n{}",
                gw.log()
            ),
        }
    }
    let resp = client().get(gw.url("/e")).send().await.unwrap();
    assert_eq!(resp.status(), 429, "the shared quota of 3 is used up");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry > 1,
        "a real limit (Retry-After {retry}), not on_error's"
    );
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 3);
    let ready: Value = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["stores"]["shared"]["status"], "up", "{ready}");
    let m = gw.metrics().await;
    assert!(m.contains("gateway_store_up{store=\"shared\"} 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_span_names_the_store_and_the_failure_on_error_decided() {
    redis().await;
    let silent = silent_redis().await;
    let receiver = test_support::OtlpReceiver::start();
    let upstream = Upstream::start("u").await;
    let prefix = key_prefix("span");
    let body = format!(
        "stores:\n  shared: {{redis: \"redis://{REDIS_ADDR}/0\", timeout_ms: 2000, on_error: deny, key_prefix: \"{prefix}\"}}\n  \
         hanging: {{redis: \"redis://{silent}/0\", timeout_ms: 50, on_error: allow}}\n\
         rate_limits:\n  s: {{key: [route], rate: 1, per: hour, burst: 5, store: shared}}\n  h: {{key: [route], rate: 1, per: hour, burst: 5, store: hanging}}\n\
         upstreams:\n  u: {{endpoints: [\"{}\"]}}\n\
         routes:\n  - {{name: shared, match: {{path_prefix: /shared}}, upstream: u, auth: none, rate_limits: [s]}}\n  - {{name: hanging, match: {{path_prefix: /hanging}}, upstream: u, auth: none, rate_limits: [h]}}\n",
        upstream.addr
    );
    let endpoint = receiver.grpc_endpoint();
    let gw = Gateway::start_with_env(
        &body,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .await;
    assert_eq!(status(gw.url("/shared/x")).await, 200);
    assert_eq!(
        status(gw.url("/hanging/x")).await,
        200,
        "on_error: allow admits while the store hangs"
    );
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 2);

    let spans = receiver
        .wait_for(
            |s| {
                s.iter()
                    .filter(|s| s.kind() == test_support::SpanKind::Server)
                    .count()
                    >= 2
            },
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    let server = |route: &str| {
        spans
            .iter()
            .find(|s| {
                s.kind() == test_support::SpanKind::Server
                    && s.attr_str("vantage.route").as_deref() == Some(route)
            })
            .unwrap_or_else(|| panic!("no SERVER span for route {route}"))
    };
    let shared = server("shared");
    assert_eq!(
        shared.attr_str("vantage.ratelimit.policy").as_deref(),
        Some("s")
    );
    assert_eq!(
        shared.attr_str("vantage.ratelimit.store").as_deref(),
        Some("shared")
    );
    assert_eq!(
        shared.attr_str("vantage.ratelimit.result").as_deref(),
        Some("allowed")
    );
    assert_eq!(
        shared
            .attr("vantage.ratelimit.remaining")
            .and_then(|v| v.as_i64()),
        Some(4),
        "the remaining count came from the Redis bucket"
    );
    assert!(shared.attr("vantage.ratelimit.store_error").is_none());
    let hanging = server("hanging");
    assert_eq!(
        hanging.attr_str("vantage.ratelimit.store").as_deref(),
        Some("hanging")
    );
    assert_eq!(
        hanging.attr_str("vantage.ratelimit.store_error").as_deref(),
        Some("timeout"),
        "the span says on_error decided, and why"
    );
    assert_eq!(
        hanging
            .attr("http.response.status_code")
            .and_then(|v| v.as_i64()),
        Some(200)
    );
}
