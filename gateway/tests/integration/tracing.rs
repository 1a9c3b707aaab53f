//! The gateway's spans, checked at a real OTLP receiver.

use std::time::Duration;

use test_support::{OtlpReceiver, SpanKind};

use crate::common::*;

const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread")]
async fn server_and_client_spans_carry_decisions_and_continue_the_trace() {
    let receiver = OtlpReceiver::start();
    let keys = Keys::generate();
    let jwks = JwksServer::start(keys.jwks()).await;
    let good = Upstream::start("good").await;
    let dead = format!("127.0.0.1:{}", test_support::free_port());
    // The test client is the trusted load balancer: spans report the client it vouches for.
    let body = format!(
        "server: {{trusted_proxies: [127.0.0.1/32]}}\n{}upstreams:\n  api: {{endpoints: [\"{dead}\", \"{}\"], retries: 1, passive_ejection: {{consecutive_failures: 100}}}}\nrate_limits:\n  tight: {{key: [claim:sub], rate: 1, per: minute, burst: 1}}\nroutes:\n  - {{name: secure, match: {{path_prefix: /api/secure}}, upstream: api, auth: required, scopes: [shop], rate_limits: [tight]}}\n",
        issuer_yaml(&jwks.url),
        good.addr
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
    let token = sign_es(&keys.es, "es-1", &claims("user-7", "shop"));
    let c = client();

    // 1. Allowed, continuing the caller's trace; the first attempt hits a dead endpoint.
    let mut statuses = Vec::new();
    for _ in 0..1 {
        let r = c
            .get(gw.url("/api/secure/items"))
            .bearer_auth(&token)
            .header("x-forwarded-for", "203.0.113.9")
            .header(
                "traceparent",
                format!("00-{INCOMING_TRACE}-00f067aa0ba902b7-01"),
            )
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        let echo: serde_json::Value = r.json().await.unwrap();
        let tp = echo["headers"]["traceparent"]
            .as_str()
            .expect("traceparent injected upstream")
            .to_string();
        assert!(
            tp.contains(INCOMING_TRACE),
            "upstream got another trace: {tp}"
        );
        assert!(
            !tp.contains("00f067aa0ba902b7"),
            "the caller's span id was passed through unchanged"
        );
    }
    assert_eq!(statuses, vec![200]);
    // 2. Rate limited (same user again). 3. Invalid token.
    let limited = c
        .get(gw.url("/api/secure/items"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    let bad = c
        .get(gw.url("/api/secure/items"))
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);

    let spans = receiver
        .wait_for(
            |s| s.iter().filter(|s| s.kind() == SpanKind::Server).count() >= 3,
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    let servers: Vec<_> = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Server)
        .collect();
    for s in &servers {
        assert_eq!(s.service_name, "gateway");
        assert_eq!(s.name(), "GET /api/secure/*");
        assert_eq!(s.attr_str("http.route").as_deref(), Some("/api/secure/*"));
        assert_eq!(s.attr_str("vantage.route").as_deref(), Some("secure"));
        assert_eq!(s.attr_str("url.path").as_deref(), Some("/api/secure/items"));
        assert!(s.attr("client.address").is_some());
        assert!(!s.contains_text(&token), "bearer token in a span");
        assert!(!s.contains_text("not.a.jwt"), "bearer token in a span");
    }
    let allowed = servers
        .iter()
        .find(|s| s.trace_id() == INCOMING_TRACE)
        .expect("the caller's trace was continued");
    assert_eq!(
        allowed.parent_span_id().as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert_eq!(
        allowed.attr_str("vantage.auth.result").as_deref(),
        Some("allowed")
    );
    assert_eq!(
        allowed.attr_str("vantage.auth.issuer").as_deref(),
        Some("test")
    );
    assert_eq!(allowed.attr_str("enduser.id").as_deref(), Some("user-7"));
    assert_eq!(
        allowed.attr_str("client.address").as_deref(),
        Some("203.0.113.9"),
        "the client behind the trusted proxy"
    );
    assert_eq!(
        allowed.attr_str("vantage.ratelimit.policy").as_deref(),
        Some("tight")
    );
    assert_eq!(
        allowed.attr_str("vantage.ratelimit.result").as_deref(),
        Some("allowed")
    );
    assert_eq!(
        allowed
            .attr("vantage.ratelimit.remaining")
            .and_then(|v| v.as_i64()),
        Some(0)
    );
    assert_eq!(
        allowed
            .attr("http.response.status_code")
            .and_then(|v| v.as_i64()),
        Some(200)
    );

    // One CLIENT span per attempt: the failed one and the retry, both children of the server span.
    let attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Client && s.parent_span_id() == Some(allowed.span_id()))
        .collect();
    assert_eq!(attempts.len(), 2, "expected a failed attempt and a retry");
    assert!(attempts
        .iter()
        .any(|a| a.is_error() && a.attr_str("error.type").as_deref() == Some("connect_refused")));
    assert!(attempts
        .iter()
        .any(|a| a.attr("http.request.resend_count").and_then(|v| v.as_i64()) == Some(1)));

    let limited = servers
        .iter()
        .find(|s| s.attr_str("vantage.ratelimit.result").as_deref() == Some("limited"))
        .expect("429 span");
    assert_eq!(
        limited
            .attr("http.response.status_code")
            .and_then(|v| v.as_i64()),
        Some(429)
    );
    assert_eq!(
        limited.attr_str("error.type").as_deref(),
        Some("rate-limited")
    );
    let denied = servers
        .iter()
        .find(|s| s.attr_str("vantage.auth.result").as_deref() == Some("denied"))
        .expect("401 span");
    assert_eq!(
        denied.attr_str("vantage.auth.reason").as_deref(),
        Some("malformed")
    );
    assert_eq!(
        denied
            .attr("http.response.status_code")
            .and_then(|v| v.as_i64()),
        Some(401)
    );

    // Counters say why too, and the duration histogram carries a trace exemplar.
    let m = gw.metrics_containing("result=\"limited\"} 1").await;
    assert!(m.contains("gateway_auth_decisions_total{route=\"secure\",result=\"denied\",reason=\"malformed\"} 1"), "{m}");
    assert!(m.contains(
        "gateway_ratelimit_decisions_total{route=\"secure\",policy=\"tight\",result=\"limited\"} 1"
    ));
    // The whole exposition is valid OpenMetrics, and a duration bucket's exemplar is the trace.
    let parsed = test_support::parse_openmetrics(&m)
        .unwrap_or_else(|e| panic!("invalid OpenMetrics: {e}\n{m}"));
    let exemplar_traces: Vec<String> = parsed
        .samples_named("http_server_request_duration_seconds_bucket")
        .filter_map(|s| s.exemplar.as_ref())
        .filter_map(|e| e.labels.get("trace_id").cloned())
        .collect();
    assert!(
        exemplar_traces.iter().any(|t| t == INCOMING_TRACE),
        "no exemplar with the trace id: {exemplar_traces:?}"
    );

    // The access log line of the request carries its trace and span id, as the top-level keys
    // every log line uses, so a log search leads to the exact SERVER span.
    let log = gw.log_containing(INCOMING_TRACE).await;
    let line: serde_json::Value = log
        .lines()
        .filter(|l| l.contains("\"target\":\"access\"") && l.contains(INCOMING_TRACE))
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no access log line with the trace id:\n{log}"));
    assert_eq!(line["trace_id"], INCOMING_TRACE, "{line}");
    assert_eq!(line["span_id"], allowed.span_id().as_str(), "{line}");
}

/// What the upstream receives of the client's trace headers: its trace continues under the
/// gateway's span, and nothing else of its context (a stray `tracestate`, a `b3` header no
/// propagator reads) reaches the upstream unchanged. Requests without any get the gateway's
/// `traceparent` only.
#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_gets_the_gateways_trace_headers_and_none_of_the_clients_stale_ones() {
    let up = Upstream::start("up").await;
    let body = format!(
        "upstreams:\n  up: {{endpoints: [\"{}\"]}}\nroutes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: up, auth: none}}\n",
        up.addr
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    let incoming = format!("00-{INCOMING_TRACE}-00f067aa0ba902b7-01");
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
    let send = |headers: Vec<(&'static str, String)>| {
        let mut req = c.get(gw.url("/x"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let echo: serde_json::Value = r.json().await.unwrap();
            echo["headers"].clone()
        }
    };
    let traceparent = |h: &serde_json::Value| -> (String, String) {
        let tp = h["traceparent"].as_str().expect("a traceparent upstream");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        (parts[1].to_string(), parts[2].to_string())
    };

    // The caller's trace, its trace state and a B3 header: the trace continues (same trace id,
    // the gateway's span as the parent), the trace state with it; the b3 header is dropped.
    let h = send(vec![
        ("traceparent", incoming.clone()),
        ("tracestate", "vendor=abc".into()),
        ("b3", b3.into()),
    ])
    .await;
    let (trace, parent) = traceparent(&h);
    assert_eq!(trace, INCOMING_TRACE);
    assert_ne!(
        parent, "00f067aa0ba902b7",
        "the caller's span id passed through"
    );
    assert_eq!(h["tracestate"], "vendor=abc");
    assert!(h.get("b3").is_none(), "b3 passed through: {h}");

    // With baggage (the propagator writes the headers itself): baggage goes on, b3 does not.
    let h = send(vec![
        ("traceparent", incoming.clone()),
        ("baggage", "k=v".into()),
        ("b3", b3.into()),
    ])
    .await;
    assert_eq!(traceparent(&h).0, INCOMING_TRACE);
    assert_eq!(h["baggage"], "k=v");
    assert!(h.get("b3").is_none(), "b3 passed through: {h}");

    // A trace state and a b3 header without a traceparent: no trace to continue, so a new
    // one starts and neither of the strays goes upstream.
    let h = send(vec![("tracestate", "vendor=abc".into()), ("b3", b3.into())]).await;
    assert_ne!(traceparent(&h).0, INCOMING_TRACE);
    assert!(
        h.get("tracestate").is_none(),
        "tracestate passed through: {h}"
    );
    assert!(h.get("b3").is_none(), "b3 passed through: {h}");

    // A b3 header alone (no installed propagator reads it): still not passed on.
    let h = send(vec![("b3", b3.into())]).await;
    assert!(h.get("b3").is_none(), "b3 passed through: {h}");

    // None at all: the gateway's traceparent and nothing else.
    let h = send(vec![]).await;
    let (trace, _) = traceparent(&h);
    assert_ne!(trace, INCOMING_TRACE);
    for name in ["tracestate", "baggage", "b3"] {
        assert!(h.get(name).is_none(), "{name} upstream: {h}");
    }
}
