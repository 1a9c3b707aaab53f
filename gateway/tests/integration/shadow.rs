//! Shadow mode through the real proxy: decisions computed, counted, logged and put on the span,
//! never enforced — and identity forwarded only when it was actually verified.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use test_support::{OtlpReceiver, SpanKind};

use crate::common::*;

/// A route whose auth is in shadow, and a route with a shadow limit before an enforced one.
fn policy(jwks_url: &str, upstream: std::net::SocketAddr) -> String {
    format!(
        "{}upstreams:\n  api: {{endpoints: [\"{upstream}\"]}}\n\
         rate_limits:\n  trial: {{key: [client_ip], rate: 1, per: minute, burst: 1, mode: shadow}}\n  \
         roomy: {{key: [client_ip], rate: 100, per: second, burst: 100}}\n\
         routes:\n  - {{name: trial-auth, match: {{path_prefix: /secure}}, upstream: api, auth: required, scopes: [shop], auth_mode: shadow}}\n  \
         - {{name: trial-limit, match: {{path_prefix: /open}}, upstream: api, auth: none, rate_limits: [trial, roomy]}}\n",
        issuer_yaml(jwks_url)
    )
}

async fn echo(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), 200, "shadow mode refused a request");
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_auth_lets_refused_requests_through_without_identity_and_counts_them() {
    let receiver = OtlpReceiver::start();
    let keys = Keys::generate();
    let jwks = JwksServer::start(keys.jwks()).await;
    let up = Upstream::start("api").await;
    let endpoint = receiver.grpc_endpoint();
    let gw = Gateway::start_with_env(
        &policy(&jwks.url, up.addr),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .await;
    let c = client();
    let url = gw.url("/secure/profile");

    // No token, and a spoofed identity: forwarded, but the upstream learns no identity.
    let got = echo(
        c.get(&url)
            .header("x-user-id", "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        got["headers"].get("x-user-id").is_none(),
        "identity reached the upstream: {got}"
    );
    // A token lacking the scope: verified, but not admitted, so no identity either.
    let no_scope = sign_es(&keys.es, "es-1", &claims("user-9", "other"));
    let got = echo(c.get(&url).bearer_auth(&no_scope).send().await.unwrap()).await;
    assert!(got["headers"].get("x-user-id").is_none(), "{got}");
    assert!(got["headers"].get("x-user-scopes").is_none(), "{got}");
    // A valid token with the scope: the identity is forwarded, as in enforce mode.
    let good = sign_es(&keys.es, "es-1", &claims("user-7", "shop"));
    let got = echo(c.get(&url).bearer_auth(&good).send().await.unwrap()).await;
    assert_eq!(got["headers"]["x-user-id"], "user-7");
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        3,
        "every request reached the upstream"
    );

    let m = gw
        .metrics_containing("gateway_shadow_decisions_total{kind=\"auth\",policy=\"trial-auth\",outcome=\"allowed\"")
        .await;
    let families = test_support::parse_openmetrics(&m).unwrap();
    let shadow = |outcome: &str, reason: &str| {
        families.value(
            "gateway_shadow_decisions_total",
            &[
                ("kind", "auth"),
                ("policy", "trial-auth"),
                ("outcome", outcome),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(shadow("denied", "missing_token"), Some(1.0), "{m}");
    assert_eq!(shadow("forbidden", "insufficient_scope"), Some(1.0), "{m}");
    assert_eq!(shadow("allowed", ""), Some(1.0), "{m}");
    assert!(
        !m.contains("gateway_auth_decisions_total{route=\"trial-auth\""),
        "shadow decisions were counted as enforced ones:\n{m}"
    );

    // The access log says what was decided, and that it was not enforced.
    let log = gw.log_containing("auth:denied:missing_token(shadow)").await;
    let line = log
        .lines()
        .find(|l| l.contains("auth:denied:missing_token(shadow)"))
        .unwrap_or_else(|| panic!("no shadow decision in the access log:\n{log}"));
    let line: Value = serde_json::from_str(line).unwrap();
    let fields = line.get("fields").unwrap_or(&line);
    assert_eq!(fields["auth_shadow"], true, "{line}");
    assert_eq!(fields["status"], 200, "{line}");
    assert!(!log.contains(&good), "a token reached the log");

    // The span carries the decision and the shadow flag.
    let spans = receiver
        .wait_for(
            |s| s.iter().filter(|s| s.kind() == SpanKind::Server).count() >= 3,
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    let denied = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Server)
        .find(|s| s.attr_str("vantage.auth.reason").as_deref() == Some("missing_token"))
        .expect("a span of the tokenless request");
    assert_eq!(
        denied.attr("vantage.auth.shadow"),
        Some(test_support::AttrValue::Bool(true))
    );
    assert_eq!(
        denied.attr_str("vantage.auth.result").as_deref(),
        Some("denied")
    );
    assert_eq!(
        denied.attr_str("vantage.decision").as_deref(),
        Some("route:trial-auth > auth:denied:missing_token(shadow) > upstream:api => 200")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_limit_counts_what_it_would_refuse_and_refuses_nothing() {
    let receiver = OtlpReceiver::start();
    let keys = Keys::generate();
    let jwks = JwksServer::start(keys.jwks()).await;
    let up = Upstream::start("api").await;
    let endpoint = receiver.grpc_endpoint();
    let gw = Gateway::start_with_env(
        &policy(&jwks.url, up.addr),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .await;
    let c = client();
    for _ in 0..3 {
        let resp = c.get(gw.url("/open/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "a shadow limit refused");
        // Only the enforced policy is advertised to the client.
        let fields = resp
            .headers()
            .get("ratelimit")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(fields.contains("\"roomy\""), "{fields}");
        assert!(
            !fields.contains("trial"),
            "a shadow quota was advertised: {fields}"
        );
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 3);

    let m = gw.metrics_containing("outcome=\"limited\"").await;
    let families = test_support::parse_openmetrics(&m).unwrap();
    let shadow = |outcome: &str| {
        families.value(
            "gateway_shadow_decisions_total",
            &[
                ("kind", "ratelimit"),
                ("policy", "trial"),
                ("outcome", outcome),
                ("reason", ""),
            ],
        )
    };
    assert_eq!(shadow("allowed"), Some(1.0), "{m}");
    assert_eq!(shadow("limited"), Some(2.0), "{m}");
    assert!(
        !m.contains("policy=\"trial\",result="),
        "the shadow policy was counted as enforced:\n{m}"
    );

    let log = gw
        .log_containing("\"ratelimit_shadow\":\"trial:limited:0\"")
        .await;
    assert!(
        log.contains("\"ratelimit_shadow\":\"trial:limited:0\""),
        "no shadow limit in the access log:\n{log}"
    );

    let spans = receiver
        .wait_for(
            |s| {
                s.iter().any(|s| {
                    s.attr_str("vantage.ratelimit.shadow.result").as_deref() == Some("limited")
                })
            },
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    let limited = spans
        .iter()
        .find(|s| s.attr_str("vantage.ratelimit.shadow.result").as_deref() == Some("limited"))
        .unwrap();
    assert_eq!(
        limited
            .attr_str("vantage.ratelimit.shadow.policy")
            .as_deref(),
        Some("trial")
    );
    assert_eq!(
        limited.attr_str("vantage.ratelimit.policy").as_deref(),
        Some("roomy"),
        "the enforced attributes describe the enforced policy"
    );
    let trail = limited.attr_str("vantage.decision").unwrap();
    assert!(
        trail.starts_with("route:trial-limit > auth:none > limit:trial:limited:0/1(shadow) > limit:roomy:allowed:"),
        "{trail}"
    );
}
