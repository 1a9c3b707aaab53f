//! Token revocation: `POST /revocations` on one gateway's admin listener, shared through Redis,
//! refuses the token on every gateway within a second — cached tokens included.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::redis_fixture::*;

async fn get(gw: &Gateway, token: &str) -> reqwest::Response {
    client()
        .get(gw.url("/secure/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn revoke(gw: &Gateway, body: Value, admin_token: &str) -> reqwest::Response {
    client()
        .post(gw.admin_url("/revocations"))
        .bearer_auth(admin_token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Polls until `gw` refuses `token` as revoked, or panics after `within`.
async fn refused_within(gw: &Gateway, token: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let resp = get(gw, token).await;
        if resp.status() == 401 {
            let challenge = resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_string();
            assert!(
                challenge.contains("error=\"invalid_token\"")
                    && challenge.contains("error_description=\"token revoked\""),
                "{challenge}"
            );
            return;
        }
        assert_eq!(resp.status(), 200);
        assert!(Instant::now() < deadline, "still accepted after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_on_one_gateway_is_refused_by_every_gateway_sharing_redis() {
    redis().await;
    let keys = Keys::generate();
    let jwks = JwksServer::start(keys.jwks()).await;
    let upstream = Upstream::start("api").await;
    let prefix = key_prefix("revoke");
    let body = format!(
        "stores:\n  shared: {{redis: \"redis://{REDIS_ADDR}/0\", timeout_ms: 1000, key_prefix: \"{prefix}\"}}\n\
         revocations: {{store: shared}}\n{}\
         upstreams:\n  api: {{endpoints: [\"{}\"]}}\n\
         routes:\n  - {{name: secure, match: {{path_prefix: /secure}}, upstream: api, auth: required}}\n",
        issuer_yaml(&jwks.url),
        upstream.addr
    );
    let (a, b) = (Gateway::start(&body).await, Gateway::start(&body).await);

    let mut leaked = claims("alice", "shop");
    leaked["jti"] = json!("leaked-1");
    let leaked = sign_es(&keys.es, "es-1", &leaked);
    let mut other = claims("alice", "shop");
    other["jti"] = json!("other-1");
    let other = sign_es(&keys.es, "es-1", &other);
    // Both gateways have verified (and cached) the token.
    for gw in [&a, &b] {
        assert_eq!(get(gw, &leaked).await.status(), 200);
    }

    // The admin token is required.
    let resp = revoke(&a, json!({"jti": "leaked-1"}), "wrong").await;
    assert_eq!(resp.status(), 401);
    let resp = revoke(&a, json!({"jti": "leaked-1", "sub": "alice"}), ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 400, "one of jti or sub");

    let resp = revoke(&a, json!({"jti": "leaked-1"}), ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 201);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["shared"], true, "{answer}");
    refused_within(&a, &leaked, Duration::from_millis(100)).await;
    // The other replica learns of it by polling Redis (every 500 ms): within a second, with
    // margin for a loaded machine. (Until then it still forwards the token.)
    refused_within(&b, &leaked, Duration::from_secs(2)).await;
    let hits_before = upstream.hits.load(Ordering::SeqCst);
    for gw in [&a, &b] {
        refused_within(gw, &leaked, Duration::ZERO).await;
    }
    assert_eq!(
        upstream.hits.load(Ordering::SeqCst),
        hits_before,
        "a revoked token never reaches the upstream"
    );
    for gw in [&a, &b] {
        assert_eq!(
            get(gw, &other).await.status(),
            200,
            "only that jti is revoked"
        );
    }

    // By subject: every token of bob issued up to now, on both gateways; one issued later
    // still works.
    let bob_old = sign_es(&keys.es, "es-1", &claims("bob", "shop"));
    assert_eq!(get(&b, &bob_old).await.status(), 200);
    let resp = revoke(&b, json!({"sub": "bob"}), ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 201);
    refused_within(&b, &bob_old, Duration::from_millis(100)).await;
    refused_within(&a, &bob_old, Duration::from_secs(2)).await;
    let mut later = claims("bob", "shop");
    later["iat"] = json!(now() + 2);
    let bob_new = sign_es(&keys.es, "es-1", &later);
    for gw in [&a, &b] {
        assert_eq!(
            get(gw, &bob_new).await.status(),
            200,
            "issued after the revocation"
        );
    }
    let log = a.log();
    assert!(!log.contains("leaked-1"), "revoked ids are not logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_store_a_revocation_applies_to_the_gateway_that_received_it() {
    let keys = Keys::generate();
    let jwks = JwksServer::start(keys.jwks()).await;
    let upstream = Upstream::start("api").await;
    let body = format!(
        "{}upstreams:\n  api: {{endpoints: [\"{}\"]}}\n\
         routes:\n  - {{name: secure, match: {{path_prefix: /secure}}, upstream: api, auth: required}}\n",
        issuer_yaml(&jwks.url),
        upstream.addr
    );
    let gw = Gateway::start(&body).await;
    let mut c = claims("carol", "shop");
    c["jti"] = json!("local-1");
    let token = sign_es(&keys.es, "es-1", &c);
    assert_eq!(get(&gw, &token).await.status(), 200);
    let resp = revoke(&gw, json!({"jti": "local-1"}), ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 201);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["shared"], false, "{answer}");
    refused_within(&gw, &token, Duration::from_millis(100)).await;
}
