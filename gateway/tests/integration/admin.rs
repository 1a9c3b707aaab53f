use serde_json::Value;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn admin_needs_the_token_beyond_health_and_redacts_the_config() {
    let up = Upstream::start("u").await;
    let keys = Keys::generate();
    let jwks = JwksServer::start(keys.jwks()).await;
    let secret_url = jwks.url.replace("http://", "http://svc:hunter2@");
    let body = format!(
        "{}upstreams:\n  u: {{endpoints: [\"{}\"]}}\nroutes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: u, auth: none}}\n",
        issuer_yaml(&secret_url),
        up.addr
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    assert_eq!(
        c.get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(gw.admin_url("/metrics"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(gw.admin_url("/config"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    c.get(gw.url("/x")).send().await.unwrap();
    // The request is counted in its logging phase, just after the response went out: poll.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let text = loop {
        let m = c
            .get(gw.admin_url("/metrics"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(m.status(), 200);
        let content_type = m.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        let text = m.text().await.unwrap();
        if text.contains("http_server_request_duration_seconds_bucket{")
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(text.trim_end().ends_with("# EOF"));
    assert!(
        text.contains("http_server_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("route=\"all\""));

    let cfg = c
        .get(gw.admin_url("/config"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(cfg.status(), 200);
    let text = cfg.text().await.unwrap();
    assert!(!text.contains("hunter2"), "password leaked in /config");
    assert!(!text.contains(ADMIN_TOKEN), "admin token leaked in /config");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["routes"][0]["name"], "all");
    assert_eq!(v["upstream_state"]["u"]["circuit"], "closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn not_ready_until_issuer_keys_load_and_tokens_fail_closed() {
    let up = Upstream::start("u").await;
    let dead = format!("http://127.0.0.1:{}/jwks.json", test_support::free_port());
    let body = format!(
        "{}upstreams:\n  u: {{endpoints: [\"{}\"]}}\nroutes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: u, auth: required}}\n",
        issuer_yaml(&dead),
        up.addr
    );
    let gw = Gateway::start_live(&body).await;
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["issuers_without_keys"][0], "test");
    let keys = Keys::generate();
    let token = sign_es(&keys.es, "es-1", &claims("u", ""));
    let r = client()
        .get(gw.url("/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn admin_on_a_public_address_needs_explicit_consent() {
    let dir = temp_dir("admin-bind");
    let path = dir.join("c.yaml");
    let routes = "upstreams:\n  u: {endpoints: [\"127.0.0.1:1\"]}\nroutes:\n  - {name: a, match: {path_prefix: /}, upstream: u, auth: none}\n";
    std::fs::write(
        &path,
        format!("listeners: {{admin: \"0.0.0.0:9901\"}}\n{routes}"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_public_bind"));
    std::fs::write(
        &path,
        format!(
            "listeners: {{admin: \"0.0.0.0:9901\"}}\nadmin: {{allow_public_bind: true}}\n{routes}"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}
