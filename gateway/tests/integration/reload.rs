use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

fn routes_to(upstream: &str, a: &Upstream, b: &Upstream) -> String {
    format!(
        "upstreams:\n  a: {{endpoints: [\"{}\"]}}\n  b: {{endpoints: [\"{}\"]}}\nroutes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: {upstream}, auth: none}}\n",
        a.addr, b.addr
    )
}

async fn served_by(gw: &Gateway, path: &str) -> String {
    let v: Value = client()
        .get(gw.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["upstream"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_file_change_is_swapped_in_without_dropping_requests() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&routes_to("a", &a, &b)).await;
    assert_eq!(served_by(&gw, "/x").await, "a");

    // A slow request is in flight across the reload.
    let url = gw.url("/slow/1500");
    let in_flight = tokio::spawn(async move { client().get(url).send().await.unwrap().status() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.rewrite_config(&routes_to("b", &a, &b));
    let deadline = Instant::now() + Duration::from_secs(5);
    while served_by(&gw, "/x").await != "b" {
        assert!(
            Instant::now() < deadline,
            "reload not applied; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request was dropped by the reload"
    );
    assert!(gw
        .metrics()
        .await
        .contains("gateway_config_reloads_total{result=\"applied\"} 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_is_rejected_with_every_error_and_the_old_one_keeps_serving() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&routes_to("a", &a, &b)).await;
    let broken = format!(
        "upstreams:\n  a: {{endpoints: [\"{}\"], load_balancing: random}}\nroutes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: nowhere, auth: none}}\n",
        a.addr
    );
    gw.rewrite_config(&broken);
    gw.sighup();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.log().contains("Config rejected") {
        assert!(
            Instant::now() < deadline,
            "rejection not logged:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = gw.log();
    assert!(
        log.contains("upstreams.a.load_balancing"),
        "first error missing:\n{log}"
    );
    assert!(
        log.contains("routes[0] \\\"all\\\".upstream"),
        "second error missing:\n{log}"
    );
    assert_eq!(
        served_by(&gw, "/x").await,
        "a",
        "the old config must keep serving"
    );
    assert!(gw
        .metrics()
        .await
        .contains("gateway_config_reloads_total{result=\"rejected\"}"));

    // Fixing the file is picked up by SIGHUP too.
    gw.rewrite_config(&routes_to("b", &a, &b));
    gw.sighup();
    let deadline = Instant::now() + Duration::from_secs(5);
    while served_by(&gw, "/x").await != "b" {
        assert!(Instant::now() < deadline, "fixed config not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A reload requested as soon as the gateway is ready (an orchestrator that writes the file and
/// signals right after the start) is applied, and the process lives. (The race this guards — a
/// SIGHUP before the watcher task had registered its handler ended debug builds — showed in the
/// e2e dashboards test; here the harness's readiness wait usually outlasts it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_sighup_right_after_start_reloads_and_never_ends_the_process() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&routes_to("a", &a, &b)).await;
    gw.rewrite_config(&routes_to("b", &a, &b));
    gw.sighup();
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_by(&gw, "/x").await != "b" {
        assert!(
            Instant::now() < deadline,
            "the early SIGHUP was lost or ended the gateway; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn validate_passes_the_shipped_configs_and_lists_every_error_of_a_broken_one() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["validate", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "example config invalid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let dir = temp_dir("validate");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "listeners: {admin: \"0.0.0.0:9901\"}\n\
         server: {trusted_proxies: [\"10.0.0.0/8\", \"10.0.0.0/33\", \"0.0.0.0/0\"]}\n\
         upstreams:\n  u: {endpoints: [\"not-an-address\"], connect_timeout_ms: 0}\n\
         issuers:\n  i: {issuer: x, algorithms: [HS256], jwks_url: \"ftp://x\"}\n\
         rate_limits:\n  r: {key: [cookie], rate: 10, per: fortnight}\n\
         routes:\n  - {name: a, match: {path_prefix: /a}, upstream: missing, auth: required, rate_limits: [nope]}\n  - {name: b, match: {path_regex: \"(\"}, upstream: u, auth: maybe}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for location in [
        "listeners.admin",
        "server.trusted_proxies[1]",
        "server.trusted_proxies[2]",
        "upstreams.u.endpoints[0]",
        "upstreams.u.connect_timeout_ms",
        "issuers.i.algorithms[0]",
        "issuers.i.jwks_url",
        "rate_limits.r.key[0]",
        "rate_limits.r.per",
        "routes[0] \"a\".upstream",
        "routes[0] \"a\".rate_limits[0]",
        "routes[1] \"b\".match.path_regex",
        "routes[1] \"b\".auth",
    ] {
        assert!(
            stderr.contains(location),
            "missing error at {location}:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("server.trusted_proxies[0]"),
        "a valid network is not an error:\n{stderr}"
    );
    assert!(stderr.contains("trusts every address"), "{stderr}");
    // Binding nothing: validating a config whose ports are taken still works.
    let _ = std::fs::remove_dir_all(dir);
}

/// A policy with a limited route (local bucket of `burst`), a route to a failing upstream
/// whose breaker opens at the first failure, and an unrelated route at `other`.
fn stateful(a: &Upstream, flaky: &Upstream, jwks_url: &str, burst: u32, other: &str) -> String {
    format!(
        "{}upstreams:\n  a: {{endpoints: [\"{}\"]}}\n  flaky: {{endpoints: [\"{}\"], retries: 0, passive_ejection: {{consecutive_failures: 100}}, circuit_breaker: {{failure_threshold: 1, open_secs: 60}}}}\n\
         rate_limits:\n  tight: {{key: [client_ip], rate: 1, per: hour, burst: {burst}}}\n\
         routes:\n  - {{name: limited, match: {{path_prefix: /limited}}, upstream: a, auth: none, rate_limits: [tight]}}\n  - {{name: flaky, match: {{path_prefix: /flaky}}, upstream: flaky, auth: none}}\n  - {{name: other, match: {{path_prefix: {other}}}, upstream: a, auth: none}}\n",
        issuer_yaml(jwks_url),
        a.addr,
        flaky.addr
    )
}

async fn status_of(gw: &Gateway, path: &str) -> u16 {
    client()
        .get(gw.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Rewrites the policy and waits until `probe` is served (the reload was applied).
async fn reload_to(gw: &Gateway, body: &str, probe: &str) {
    gw.rewrite_config(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of(gw, probe).await != 200 {
        assert!(
            Instant::now() < deadline,
            "reload not applied; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn circuit(gw: &Gateway, upstream: &str) -> String {
    let ready: Value = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    ready["upstreams"][upstream]["circuit"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_state_of_everything_it_did_not_change() {
    let keys = Keys::generate();
    let jwks = JwksServer::start(keys.jwks()).await;
    let a = Upstream::start("a").await;
    let flaky = Upstream::start("flaky").await;
    flaky
        .fail_status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let gw = Gateway::start(&stateful(&a, &flaky, &jwks.url, 3, "/other1")).await;

    // The bucket is used up and the breaker opens.
    for _ in 0..3 {
        assert_eq!(status_of(&gw, "/limited").await, 200);
    }
    assert_eq!(status_of(&gw, "/limited").await, 429);
    assert_eq!(status_of(&gw, "/flaky").await, 503);
    assert_eq!(circuit(&gw, "flaky").await, "open");
    let fetches = jwks.fetches.load(std::sync::atomic::Ordering::SeqCst);

    // A reload that changes only an unrelated route keeps the bucket, the open breaker and
    // the issuer's keys (no new JWKS fetch).
    flaky
        .fail_status
        .store(0, std::sync::atomic::Ordering::SeqCst);
    reload_to(
        &gw,
        &stateful(&a, &flaky, &jwks.url, 3, "/other2"),
        "/other2",
    )
    .await;
    assert_eq!(
        status_of(&gw, "/limited").await,
        429,
        "the exhausted bucket was kept"
    );
    assert_eq!(
        circuit(&gw, "flaky").await,
        "open",
        "the open breaker was kept"
    );
    let hits = flaky.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(status_of(&gw, "/flaky").await, 503);
    assert_eq!(
        flaky.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits,
        "an open breaker does not contact the upstream"
    );
    assert_eq!(
        jwks.fetches.load(std::sync::atomic::Ordering::SeqCst),
        fetches,
        "an unchanged issuer keeps its keys"
    );

    // A changed policy starts fresh; so does a changed upstream.
    let changed = stateful(&a, &flaky, &jwks.url, 4, "/other3").replace(
        "failure_threshold: 1, open_secs: 60",
        "failure_threshold: 2, open_secs: 60",
    );
    reload_to(&gw, &changed, "/other3").await;
    assert_eq!(
        status_of(&gw, "/limited").await,
        200,
        "a changed policy starts fresh"
    );
    assert_eq!(
        circuit(&gw, "flaky").await,
        "closed",
        "a changed upstream starts fresh"
    );
    assert_eq!(status_of(&gw, "/flaky").await, 200);
}
