use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_host_path_and_method_with_rewrites_and_forwarding_headers() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let body = format!(
        "upstreams:\n  a: {{endpoints: [\"{}\"]}}\n  b: {{endpoints: [\"{}\"]}}\nroutes:\n\
         - {{name: by-host, match: {{host: api.example, path_prefix: /}}, upstream: b, auth: none}}\n\
         - {{name: strip, match: {{path_prefix: /api/a, methods: [GET]}}, upstream: a, auth: none, strip_prefix: true}}\n\
         - {{name: replace, match: {{path_prefix: /v1}}, upstream: b, auth: none, rewrite_prefix: /v2}}\n\
         - {{name: exact, match: {{path_exact: /exact}}, upstream: a, auth: none}}\n\
         - {{name: regex, match: {{path_regex: \"/items/[0-9]+\"}}, upstream: b, auth: none}}\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    let echo = |r: reqwest::Response| async move { r.json::<Value>().await.unwrap() };

    let r = c.get(gw.url("/api/a/users/7?x=1")).send().await.unwrap();
    let answered_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let e = echo(r).await;
    assert_eq!(e["upstream"], "a");
    assert_eq!(e["uri"], "/users/7?x=1");
    assert_eq!(e["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(e["headers"]["x-forwarded-proto"], "http");
    assert_eq!(e["headers"]["x-forwarded-host"], gw.public.to_string());
    let generated = e["headers"]["x-request-id"].as_str().unwrap().to_string();
    assert_eq!(
        generated.len(),
        36,
        "a UUID is generated when the client sends none"
    );
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    assert_eq!(
        answered_id, generated,
        "the client is told the id the upstream got"
    );

    // A method the matching route does not list never falls through to another route: a
    // problem+json 405 naming what the path accepts (and a/b upstreams saw nothing of it).
    let r = c.post(gw.url("/api/a/users")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["allow"], "GET");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://vantage.dev/problems/method-not-allowed");
    // No route at all is still a 404.
    let r = c
        .get(gw.url("/nothing/here"))
        .header("host", "other.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://vantage.dev/problems/no-route");

    let e = echo(c.get(gw.url("/v1/things")).send().await.unwrap()).await;
    assert_eq!(
        (e["upstream"].as_str(), e["uri"].as_str()),
        (Some("b"), Some("/v2/things"))
    );
    assert_eq!(
        echo(c.get(gw.url("/exact")).send().await.unwrap()).await["upstream"],
        "a"
    );
    assert_eq!(
        c.get(gw.url("/exact/more")).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        echo(c.get(gw.url("/items/42")).send().await.unwrap()).await["upstream"],
        "b"
    );
    assert_eq!(
        c.get(gw.url("/items/abc")).send().await.unwrap().status(),
        404
    );
    let e = echo(
        c.get(gw.url("/anything"))
            .header("host", "API.example:80")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        e["upstream"], "b",
        "host match is case-insensitive and ignores the port"
    );

    // A client X-Request-Id is passed through and echoed; a spoofed X-Forwarded-For is replaced.
    let r = c
        .get(gw.url("/api/a/x"))
        .header("x-request-id", "client-req-1")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-req-1");
    let e = echo(r).await;
    assert_eq!(e["headers"]["x-request-id"], "client-req-1");
    assert_eq!(e["headers"]["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_the_forwarded_client_is_the_client() {
    let up = Upstream::start("a").await;
    // The test client connects from 127.0.0.1: here, that is the load balancer in front.
    let body = format!(
        "server: {{trusted_proxies: [127.0.0.1/32, 10.0.0.0/8]}}\n\
         rate_limits:\n  per_ip: {{key: [client_ip], rate: 1, per: minute, burst: 1}}\n\
         upstreams:\n  a: {{endpoints: [\"{}\"]}}\n\
         routes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: a, auth: none, rate_limits: [per_ip]}}\n",
        up.addr
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    let get = |xff: &'static str| {
        c.get(gw.url("/x"))
            .header("x-forwarded-for", xff)
            .header("x-forwarded-proto", "https")
            .send()
    };

    // A forged first entry is dropped; the trusted 10.0.0.5 hop is skipped; 203.0.113.7 is the client.
    let r = get("6.6.6.6, 203.0.113.7, 10.0.0.5").await.unwrap();
    assert_eq!(r.status(), 200);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e["headers"]["x-forwarded-for"],
        "203.0.113.7, 10.0.0.5, 127.0.0.1"
    );
    assert_eq!(e["headers"]["x-forwarded-proto"], "https");

    // Rate limits key on that client: the same client is limited, another one is not.
    assert_eq!(get("203.0.113.7").await.unwrap().status(), 429);
    assert_eq!(get("198.51.100.1").await.unwrap().status(), 200);

    // The access log names the resolved client.
    let log = gw.log_containing("198.51.100.1").await;
    assert!(
        log.lines()
            .any(|l| l.contains("\"target\":\"access\"")
                && l.contains("\"client_ip\":\"198.51.100.1\"")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_spreads_evenly() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let body = format!(
        "upstreams:\n  pool: {{endpoints: [\"{}\", \"{}\"]}}\nroutes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: pool, auth: none}}\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&body).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let e: Value = client()
            .get(gw.url("/x"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        *seen
            .entry(e["upstream"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(seen.get("a"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&5), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn least_connections_avoids_the_busy_endpoint() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let body = format!(
        "upstreams:\n  pool: {{endpoints: [\"{}\", \"{}\"], load_balancing: least_connections}}\nroutes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: pool, auth: none}}\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&body).await;
    // One request held by its endpoint far longer than the test runs (it is dropped at the
    // end), so it is in flight for every quick request however slow the machine is.
    let slow_url = gw.url("/slow/60000");
    let slow = tokio::spawn(async move { client().get(slow_url).send().await });
    // In flight once an endpoint has it: the gateway counted it when it picked the endpoint.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let busy = loop {
        match (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst)) {
            (0, 0) => {}
            (1, 0) => break "a",
            (0, 1) => break "b",
            other => panic!("one request, hits {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow request reached no endpoint"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut quick = Vec::new();
    for _ in 0..6 {
        let e: Value = client()
            .get(gw.url("/fast"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        quick.push(e["upstream"].as_str().unwrap().to_string());
    }
    assert!(
        !slow.is_finished(),
        "the slow request was no longer in flight: {:?}",
        slow.await
    );
    slow.abort();
    assert!(
        quick.iter().all(|u| *u != busy),
        "quick requests went to the busy endpoint {busy}: {quick:?}"
    );
}
