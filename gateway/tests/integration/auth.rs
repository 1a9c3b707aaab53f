use std::sync::atomic::Ordering;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::common::*;

async fn setup() -> (Keys, JwksServer, Upstream, Gateway) {
    let keys = Keys::generate();
    let jwks = JwksServer::start(keys.jwks()).await;
    let up = Upstream::start("api").await;
    let body = format!(
        "{}upstreams:\n  api: {{endpoints: [\"{}\"]}}\nroutes:\n  - {{name: open, match: {{path_prefix: /open}}, upstream: api, auth: none}}\n  - {{name: secure, match: {{path_prefix: /secure}}, upstream: api, auth: required, scopes: [shop]}}\n  - {{name: admin, match: {{path_prefix: /admin}}, upstream: api, auth: required, scopes: [admin]}}\n",
        issuer_yaml(&jwks.url),
        up.addr
    );
    let gw = Gateway::start(&body).await;
    (keys, jwks, up, gw)
}

async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client().get(gw.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_token_is_forwarded_as_identity_and_spoofed_headers_are_stripped() {
    let (keys, _jwks, _up, gw) = setup().await;
    let token = sign_es(&keys.es, "es-1", &claims("user-42", "shop extra"));
    let resp = client()
        .get(gw.url("/secure/profile"))
        .bearer_auth(&token)
        .header("x-user-id", "admin")
        .header("x-user-scopes", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["headers"]["x-user-id"], "user-42");
    assert_eq!(echo["headers"]["x-user-scopes"], "extra shop");

    // On a public route, client-sent identity headers never reach the upstream either.
    let resp = client()
        .get(gw.url("/open/x"))
        .header("x-user-id", "admin")
        .header("X-User-Scopes", "admin")
        .send()
        .await
        .unwrap();
    let echo: Value = resp.json().await.unwrap();
    assert!(
        echo["headers"].get("x-user-id").is_none(),
        "spoofed x-user-id leaked: {echo}"
    );
    assert!(echo["headers"].get("x-user-scopes").is_none());

    // The token never appears in the gateway's logs.
    let log = gw.log_containing("\"auth_result\":\"allowed\"").await;
    assert!(
        log.contains("\"auth_result\":\"allowed\""),
        "access log lacks the auth decision:\n{log}"
    );
    assert!(!log.contains(&token), "bearer token leaked into the log");
    assert!(
        !log.contains(token.split('.').nth(2).unwrap()),
        "token signature leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_token_gets_a_bare_bearer_challenge() {
    let (_keys, _jwks, up, gw) = setup().await;
    let resp = get(&gw, "/secure", None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"vantage\""
    );
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "https://vantage.dev/problems/unauthorized");
    assert_eq!(body["status"], 401);
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "a refused request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_invalid_token_class_is_a_401_with_its_reason() {
    let (keys, _jwks, up, gw) = setup().await;
    let t = now();
    let base = claims("u1", "shop");
    let with = |patch: Value| {
        let mut c = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let good = sign_es(&keys.es, "es-1", &base);
    let mut tampered = good.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("rsa-1".into());
    let hs_confusion = jsonwebtoken::encode(
        &hs_header,
        &base,
        &EncodingKey::from_secret(&keys.rsa_public_der),
    )
    .unwrap();

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            unsigned(
                json!({"alg": "none", "typ": "JWT", "kid": "es-1"}),
                &base,
                "",
            ),
            "alg_not_allowed",
        ),
        (
            "HS256 signed with the RSA public key",
            hs_confusion,
            "alg_not_allowed",
        ),
        (
            "RS256 header on an ES256 key",
            unsigned(json!({"alg": "RS256", "kid": "es-1"}), &base, "c2ln"),
            "alg_mismatch",
        ),
        (
            "signed by another key",
            sign_es(&keys.es2, "es-1", &base),
            "bad_signature",
        ),
        ("tampered signature", tampered, "bad_signature"),
        (
            "expired",
            sign_es(
                &keys.es,
                "es-1",
                &with(json!({"iat": t - 400, "nbf": t - 400, "exp": t - 100})),
            ),
            "expired",
        ),
        (
            "nbf in the future",
            sign_es(&keys.es, "es-1", &with(json!({"nbf": t + 120}))),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            sign_es(
                &keys.es,
                "es-1",
                &with(json!({"iss": "https://evil.example"})),
            ),
            "wrong_issuer",
        ),
        (
            "wrong audience",
            sign_es(&keys.es, "es-1", &with(json!({"aud": "other-api"}))),
            "wrong_audience",
        ),
        (
            "exp as a string",
            sign_es(
                &keys.es,
                "es-1",
                &with(json!({"exp": (t + 300).to_string()})),
            ),
            "bad_claim",
        ),
        (
            "lifetime over the maximum",
            sign_es(&keys.es, "es-1", &with(json!({"exp": t + 7200}))),
            "lifetime_too_long",
        ),
        ("not a JWT", "abc.def".to_string(), "malformed"),
        (
            "unknown kid",
            sign_es(&keys.es2, "es-2", &base),
            "unknown_kid",
        ),
    ];
    for (name, token, _) in &cases {
        let resp = get(&gw, "/secure", Some(token)).await;
        assert_eq!(resp.status(), 401, "{name}: expected 401");
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with(
                "Bearer realm=\"vantage\", error=\"invalid_token\", error_description=\""
            ),
            "{name}: {challenge}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body["type"], "https://vantage.dev/problems/unauthorized",
            "{name}"
        );
        assert!(
            !body["detail"].as_str().unwrap().contains(token.as_str()),
            "{name}: token echoed"
        );
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "an invalid token reached the upstream"
    );
    // The reason of each refusal is in the access log and the metrics.
    let log = gw.log_containing("\"auth_reason\":\"unknown_kid\"").await;
    let metrics = gw.metrics_containing("reason=\"unknown_kid\"").await;
    for (name, _, reason) in &cases {
        assert!(
            log.contains(&format!("\"auth_reason\":\"{reason}\"")),
            "{name}: reason {reason} not logged"
        );
        assert!(
            metrics.contains(&format!("gateway_auth_decisions_total{{route=\"secure\",result=\"denied\",reason=\"{reason}\"}}")),
            "{name}: reason {reason} not counted"
        );
    }
    // The good token still works.
    assert_eq!(get(&gw, "/secure", Some(&good)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_token_without_scope_is_403_insufficient_scope() {
    let (keys, _jwks, up, gw) = setup().await;
    let token = sign_es(&keys.es, "es-1", &claims("u1", "shop"));
    let resp = get(&gw, "/admin/stats", Some(&token)).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"vantage\", error=\"insufficient_scope\", scope=\"admin\""
    );
    // scp arrays count too.
    let mut c = claims("u2", "");
    c["scp"] = json!(["admin"]);
    assert_eq!(
        get(&gw, "/admin/stats", Some(&sign_es(&keys.es, "es-1", &c)))
            .await
            .status(),
        200
    );
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_kid_triggers_one_refresh_then_rotation_is_picked_up() {
    let (keys, jwks, _up, gw) = setup().await;
    let rotated = sign_es(&keys.es2, "es-2", &claims("u1", "shop"));
    let before = jwks.fetches.load(Ordering::SeqCst);
    // Many requests with an unknown kid at once: refreshes are single-flight and rate limited
    // to one per min_refresh_interval_secs (1 s here), so however long the burst takes on a
    // loaded machine, it makes at most one fetch per started second.
    let started = std::time::Instant::now();
    let requests = (0..20).map(|_| get(&gw, "/secure", Some(&rotated)));
    for resp in futures::future::join_all(requests).await {
        assert_eq!(resp.status(), 401);
    }
    let took = started.elapsed();
    let after = jwks.fetches.load(Ordering::SeqCst);
    let allowed = 1 + took.as_secs() as usize;
    assert!(
        after - before <= allowed,
        "20 unknown kids in {took:?} caused {} JWKS fetches (at most {allowed})",
        after - before
    );

    // The issuer rotates: the new key appears in its JWKS.
    *jwks.body.write().unwrap() = keys.rotated_jwks();
    tokio::time::sleep(Duration::from_millis(1100)).await; // min_refresh_interval_secs: 1
    assert_eq!(get(&gw, "/secure", Some(&rotated)).await.status(), 200);
    // Tokens of the old key still verify.
    let old = sign_es(&keys.es, "es-1", &claims("u1", "shop"));
    assert_eq!(get(&gw, "/secure", Some(&old)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_outage_keeps_the_last_good_keys() {
    let (keys, jwks, _up, gw) = setup().await;
    let token = sign_es(&keys.es, "es-1", &claims("u1", "shop"));
    // The JWKS endpoint starts serving garbage; an unknown kid forces a refresh attempt.
    *jwks.body.write().unwrap() = json!({"not": "a jwks"});
    let unknown = sign_es(&keys.es2, "es-2", &claims("u1", "shop"));
    assert_eq!(get(&gw, "/secure", Some(&unknown)).await.status(), 401);
    // A new token (not cached) signed with the old key still verifies.
    let fresh = sign_es(&keys.es, "es-1", &claims("u9", "shop"));
    assert_ne!(fresh, token);
    assert_eq!(get(&gw, "/secure", Some(&fresh)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn file_keys_work_and_cached_tokens_still_expire() {
    let keys = Keys::generate();
    let up = Upstream::start("api").await;
    let dir = temp_dir("filekeys");
    std::fs::write(dir.join("jwks.json"), keys.jwks().to_string()).unwrap();
    // A PEM public key for the second issuer, derived from the same JWK.
    let pem = ec_public_pem(&keys.es2_jwk);
    std::fs::write(dir.join("es2.pem"), pem).unwrap();
    let body = format!(
        "issuers:\n  file:\n    issuer: test-issuer\n    audiences: [test-api]\n    algorithms: [ES256]\n    jwks_file: {}\n    leeway_secs: 0\n  pem:\n    issuer: pem-issuer\n    audiences: [test-api]\n    algorithms: [ES256]\n    pem_file: {}\n    pem_kid: es-2\n    leeway_secs: 0\nupstreams:\n  api: {{endpoints: [\"localhost:{}\"]}}\nroutes:\n  - {{name: file-only, match: {{path_prefix: /file}}, upstream: api, auth: required, issuers: [file]}}\n  - {{name: any, match: {{path_prefix: /any}}, upstream: api, auth: required}}\n",
        dir.join("jwks.json").display(),
        dir.join("es2.pem").display(),
        up.addr.port()
    );
    let gw = Gateway::start(&body).await;
    let mut short = claims("u1", "");
    short["exp"] = (now() + 2).into();
    let token = sign_es(&keys.es, "es-1", &short);
    assert_eq!(
        get(&gw, "/file", Some(&token)).await.status(),
        200,
        "JWKS file key"
    );
    assert_eq!(
        get(&gw, "/file", Some(&token)).await.status(),
        200,
        "served from the cache"
    );
    let mut pem_claims = claims("u2", "");
    pem_claims["iss"] = "pem-issuer".into();
    let pem_token = sign_es(&keys.es2, "es-2", &pem_claims);
    assert_eq!(
        get(&gw, "/any", Some(&pem_token)).await.status(),
        200,
        "PEM file key"
    );
    assert_eq!(
        get(&gw, "/file", Some(&pem_token)).await.status(),
        401,
        "issuer not allowed on this route"
    );
    // The cached token expires like any other: exp is checked on every hit.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = get(&gw, "/file", Some(&token)).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("expired"));
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}

/// SubjectPublicKeyInfo PEM for a P-256 JWK (fixed DER prefix + uncompressed point).
fn ec_public_pem(jwk: &jsonwebtoken::jwk::Jwk) -> String {
    use base64::Engine;
    let jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm else {
        panic!("not EC")
    };
    let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut der = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
    ];
    der.extend(b64u.decode(&ec.x).unwrap());
    der.extend(b64u.decode(&ec.y).unwrap());
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}
