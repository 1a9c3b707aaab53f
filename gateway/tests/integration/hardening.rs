//! Edge hardening, tried as a hostile client would: every spelling of a request that could walk
//! around the policy is refused or neutralised — asserted on what the upstream received.

use serde_json::{json, Value};

use crate::common::*;
use crate::raw_upstream::{request, send_raw, RawUpstream};

/// A public API with a protected `/api/audit` (GET only) and a protected regex route, in front
/// of one recording upstream.
async fn setup() -> (Keys, JwksServer, RawUpstream, Gateway) {
    let keys = Keys::generate();
    let jwks = JwksServer::start(keys.jwks()).await;
    let up = RawUpstream::start().await;
    let body = format!(
        "{}identity_headers: [x-tenant]\n\
         upstreams:\n  api: {{endpoints: [\"{}\"]}}\n\
         rate_limits:\n  by_key: {{key: [\"header:x-api-key\"], rate: 100, per: second}}\n\
         routes:\n\
         \x20 - {{name: audit, match: {{path_prefix: /api/audit, methods: [GET]}}, upstream: api, scopes: [admin]}}\n\
         \x20 - {{name: secret, match: {{path_regex: \"/api/items/[^/]+/secret\"}}, upstream: api, scopes: [admin]}}\n\
         \x20 - {{name: files, match: {{path_prefix: /files}}, upstream: api, auth: none, allow_encoded_slashes: true}}\n\
         \x20 - {{name: keyed, match: {{path_prefix: /keyed}}, upstream: api, auth: none, rate_limits: [by_key]}}\n\
         \x20 - {{name: admin-host, match: {{host: admin.example, path_prefix: /}}, upstream: api, scopes: [admin]}}\n\
         \x20 - {{name: public, match: {{path_prefix: /}}, upstream: api, auth: none}}\n",
        issuer_yaml(&jwks.url),
        up.addr
    );
    let gw = Gateway::start(&body).await;
    (keys, jwks, up, gw)
}

fn admin_token(keys: &Keys) -> String {
    sign_es(&keys.es, "es-1", &claims("root", "admin"))
}

#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_protected_path_reaches_the_upstream_anonymously() {
    let (_keys, _jwks, up, gw) = setup().await;
    // Each of these normalises to a path under /api/audit (or /api/items/x/secret): without a
    // token the answer is 401, and the upstream sees nothing.
    for target in [
        "/api/audit/log",
        "/api/x/../audit/log",
        "/api/x/%2e%2e/audit/log",
        "/api/x/%2E%2E/audit/log",
        "/api/./audit/log",
        "//api//audit//log",
        "/api/%61udit/log",
        "/api/audit",
        "/api/audit/",
        "/api/items/7/secret",
        "/api/items/7/secret/",
        "/api/items/7/./secret",
        // The parameter segment is resolved away before routing, as Tomcat would.
        "/api/audit;x=1/../../api/audit/log",
    ] {
        let r = send_raw(gw.public, &request("GET", target, &[])).await;
        assert_eq!(r.status, 401, "{target}");
    }
    // These cannot be normalised safely: 400, and the upstream sees nothing either.
    for target in [
        "/api/x%2F..%2Faudit/log",
        "/api/x%2f..%2faudit/log",
        "/api/x%5C..%5Caudit/log",
        "/api/x\\..\\audit/log",
        "/api/x/%252e%252e/audit/log",
        "/api/x/%252fx",
        "/api/%00/audit",
        "/api/x/%C0%AE%C0%AE/audit/log",
        "/api/x/..;/audit/log",
        "/api/x/%zz",
        "/api/%3b/audit/log",
    ] {
        let r = send_raw(gw.public, &request("GET", target, &[])).await;
        assert_eq!(r.status, 400, "{target}");
    }
    assert!(
        up.received().is_empty(),
        "the upstream received: {:?}",
        up.received()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_receives_the_path_the_route_was_chosen_on() {
    let (_keys, _jwks, up, gw) = setup().await;
    for (sent, forwarded) in [
        ("/shop/./a//b/../c?q=%2e", "/shop/a/c?q=%2e"),
        ("/shop/%7Euser/%41", "/shop/~user/A"),
        ("/shop/a%3fb", "/shop/a%3Fb"),
        ("/shop/products;v=1/x", "/shop/products;v=1/x"),
        ("/files/a%2fb", "/files/a%2Fb"),
        ("/plain/path", "/plain/path"),
    ] {
        up.clear();
        let r = send_raw(gw.public, &request("GET", sent, &[])).await;
        assert_eq!(r.status, 200, "{sent}");
        let got = up.received();
        assert_eq!(got.len(), 1, "{sent}");
        assert_eq!(got[0].target(), forwarded, "{sent}");
        assert_eq!(got[0].request_line, format!("GET {forwarded} HTTP/1.1"));
    }
    // An encoded slash is refused on a route that did not opt in.
    let r = send_raw(gw.public, &request("GET", "/shop/a%2Fb", &[])).await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_method_the_protected_route_does_not_list_gets_405_not_the_public_route() {
    let (keys, _jwks, up, gw) = setup().await;
    for method in ["HEAD", "POST", "DELETE", "OPTIONS"] {
        let r = send_raw(gw.public, &request(method, "/api/audit/log", &[])).await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET"), "{method}");
    }
    assert!(up.received().is_empty(), "{:?}", up.received());
    // The listed method with a token still works.
    let token = admin_token(&keys);
    let auth = format!("Authorization: Bearer {token}");
    let r = send_raw(gw.public, &request("GET", "/api/audit/log", &[&auth])).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.received()[0].values("x-user-id"), ["root"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_are_compared_in_one_spelling_and_ambiguous_ones_refused() {
    let (_keys, _jwks, up, gw) = setup().await;
    let host_only = |host: &str| {
        format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
    };
    // Every spelling of the admin host is the admin host: it needs a token.
    for host in [
        "admin.example",
        "ADMIN.Example",
        "admin.example.",
        "admin.example:80",
        "Admin.Example.:8080",
    ] {
        assert_eq!(
            send_raw(gw.public, &host_only(host)).await.status,
            401,
            "{host}"
        );
    }
    // Two Host headers, or a Host that disagrees with an absolute-form target: 400.
    let two = b"GET /x HTTP/1.1\r\nHost: shop.example\r\nHost: admin.example\r\nConnection: close\r\n\r\n";
    assert_eq!(send_raw(gw.public, two).await.status, 400);
    let absolute =
        b"GET http://admin.example/x HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";
    assert_eq!(send_raw(gw.public, absolute).await.status, 400);
    let agreeing =
        b"GET http://admin.example/x HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n";
    assert_eq!(send_raw(gw.public, agreeing).await.status, 401);
    assert!(up.received().is_empty(), "{:?}", up.received());
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_and_client_claims_never_reach_the_upstream_in_any_spelling() {
    let (keys, _jwks, up, gw) = setup().await;
    let spoofs = [
        "x-user-id: admin",
        "X_User_Id: admin",
        "x_user_scopes: admin",
        "X-USER-SCOPES: admin",
        "x_tenant: other",
        "X-Original-URL: /api/audit",
        "X-Rewrite-URL: /api/audit",
        "Forwarded: for=10.0.0.1;host=admin.example",
        "X-Real-IP: 10.0.0.1",
        "True-Client-IP: 10.0.0.1",
    ];
    let r = send_raw(gw.public, &request("GET", "/shop", &spoofs)).await;
    assert_eq!(r.status, 200);
    let got = &up.received()[0];
    for name in [
        "x-user-id",
        "x-user-scopes",
        "x-tenant",
        "x-original-url",
        "x-rewrite-url",
        "forwarded",
        "x-real-ip",
        "true-client-ip",
    ] {
        assert!(
            !got.has_any_spelling_of(name),
            "{name} leaked: {:?}",
            got.headers
        );
    }

    // With a token the upstream gets exactly one, gateway-written copy of each.
    up.clear();
    let auth = format!("Authorization: Bearer {}", admin_token(&keys));
    let mut lines = vec![auth.as_str()];
    lines.extend(spoofs);
    let r = send_raw(gw.public, &request("GET", "/api/audit/x", &lines)).await;
    assert_eq!(r.status, 200);
    let got = &up.received()[0];
    assert_eq!(got.values("x-user-id"), ["root"]);
    assert_eq!(got.values("x-user-scopes"), ["admin"]);
    assert!(
        !got.headers.iter().any(|(n, _)| n.contains('_')),
        "{:?}",
        got.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_header_cannot_remove_the_gateways_own_headers() {
    let (keys, _jwks, up, gw) = setup().await;
    let auth = format!("Authorization: Bearer {}", admin_token(&keys));
    let nominate = "Connection: x-user-id, x-user-scopes, x-request-id, traceparent, x-custom";
    let r = send_raw(
        gw.public,
        &request(
            "GET",
            "/api/audit/x",
            &[&auth, nominate, "X-Request-Id: req-1", "x-custom: hop"],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let got = &up.received()[0];
    assert_eq!(got.values("x-user-id"), ["root"], "{:?}", got.headers);
    assert_eq!(got.values("x-user-scopes"), ["admin"]);
    assert_eq!(got.values("x-request-id"), ["req-1"]);
    assert_eq!(got.values("x-forwarded-for"), ["127.0.0.1"]);
    // What the client nominated of its own is hop-by-hop and goes.
    assert!(got.values("x-custom").is_empty(), "{:?}", got.headers);
    // Nominating a header Pingora protects is refused outright.
    let r = send_raw(
        gw.public,
        &request("GET", "/shop", &["Connection: x-forwarded-for"]),
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_get_431_and_414() {
    let (_keys, _jwks, up, gw) = setup().await;
    let many: Vec<String> = (0..101).map(|i| format!("x-h{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = send_raw(gw.public, &request("GET", "/shop", &many)).await;
    assert_eq!(r.status, 431);
    let big = format!("x-big: {}", "v".repeat(9000));
    assert_eq!(
        send_raw(gw.public, &request("GET", "/shop", &[&big]))
            .await
            .status,
        431
    );
    let fields: Vec<String> = (0..5)
        .map(|i| format!("x-f{i}: {}", "v".repeat(7000)))
        .collect();
    let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    assert_eq!(
        send_raw(gw.public, &request("GET", "/shop", &fields))
            .await
            .status,
        431
    );
    let long = format!("/shop/{}", "a".repeat(9000));
    assert_eq!(
        send_raw(gw.public, &request("GET", &long, &[]))
            .await
            .status,
        414
    );
    assert!(up.received().is_empty(), "{:?}", up.received());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_key_header_sent_twice_is_refused() {
    let (_keys, _jwks, up, gw) = setup().await;
    let r = send_raw(
        gw.public,
        &request("GET", "/keyed", &["x-api-key: a", "x-api-key: b"]),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(up.received().is_empty());
    let r = send_raw(gw.public, &request("GET", "/keyed", &["x-api-key: a"])).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_with_unsafe_claims_are_refused_with_a_reason() {
    let (keys, _jwks, up, gw) = setup().await;
    let t = now();
    let base = claims("root", "admin");
    let with = |patch: Value| {
        let mut c = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    // (claims, expected auth_reason); the issuer allows 5 s leeway and 3600 s lifetime.
    let cases = [
        (with(json!({"iat": t + 120})), "iat_in_future"),
        // exp - iat is within the bound, exp - now is not.
        (
            with(json!({"iat": t + 4, "exp": t + 3602})),
            "lifetime_too_long",
        ),
        (with(json!({"scope": "admin\tshop"})), "invalid_scope"),
        (with(json!({"scope": "shop  admin"})), "invalid_scope"),
        (with(json!({"scp": ["shop admin"]})), "invalid_scope"),
    ];
    for (c, reason) in &cases {
        let token = sign_es(&keys.es, "es-1", c);
        let auth = format!("Authorization: Bearer {token}");
        let r = send_raw(gw.public, &request("GET", "/api/audit/x", &[&auth])).await;
        assert_eq!(r.status, 401, "{reason}");
        let challenge = r.header("www-authenticate").unwrap_or("").to_string();
        assert!(challenge.contains("invalid_token"), "{reason}: {challenge}");
        gw.log_containing(&format!("\"auth_reason\":\"{reason}\""))
            .await;
    }

    // A correctly signed token that names a critical extension.
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let header = json!({"alg": "ES256", "kid": "es-1", "crit": ["exp-ext"], "exp-ext": 1});
    let input = format!("{}.{}", b64(&header), b64(&base));
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), &keys.es, jsonwebtoken::Algorithm::ES256)
            .unwrap();
    let auth = format!("Authorization: Bearer {input}.{sig}");
    let r = send_raw(gw.public, &request("GET", "/api/audit/x", &[&auth])).await;
    assert_eq!(r.status, 401);
    let log = gw
        .log_containing("\"auth_reason\":\"crit_unsupported\"")
        .await;
    assert!(log.contains("crit_unsupported"), "{log}");
    assert!(up.received().is_empty(), "{:?}", up.received());
}
