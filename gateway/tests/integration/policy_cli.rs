//! `gateway explain` and `gateway test`, run as the built binary is run by people and CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::common::*;

fn gateway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the gateway binary")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

// === gateway test ===

/// CI runs the shop policy's cases through this test (`cargo test --workspace`).
#[test]
fn policy_cases_of_the_example_policy_pass() {
    let out = gateway(&[
        "test",
        "--config",
        "config/example.yaml",
        "config/example.cases.yaml",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let cases: Value = serde_yaml::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.cases.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.len() >= 15, "the example should cover the policy");
    for name in &names {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with("PASS") && l.contains(name)),
            "case {name:?} not reported as passing:\n{stdout}"
        );
    }
    assert!(
        stdout.contains(&format!(
            "{} case(s): {} passed, 0 failed",
            names.len(),
            names.len()
        )),
        "{stdout}"
    );
}

fn cases_file(text: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir("cases");
    let path = dir.join("policy.cases.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn a_failing_case_exits_1_and_the_table_names_it_with_what_differed() {
    let (dir, path) = cases_file(
        "keys:\n  shop: {issuer: shop, kid: k1}\n\
         cases:\n  - name: catalogue is public\n    request: {method: GET, url: /api/products/1}\n    expect: {status: 200, route: products-read}\n  \
         - name: wrongly expects the admin route open\n    request: {method: GET, url: /api/audit/log, token: {key: shop, claims: {scope: shop}}}\n    expect: {status: 200, auth: allowed}\n",
    );
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml");
    let out = gateway(&[
        "test",
        "--config",
        config.to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let fail = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("FAIL"))
        .unwrap_or_else(|| panic!("no FAIL row:\n{stdout}"));
    assert!(
        fail.contains("wrongly expects the admin route open"),
        "{fail}"
    );
    assert!(
        fail.contains("403 audit"),
        "the row says what happened: {fail}"
    );
    assert!(stdout.contains("expected status 200, got 403"), "{stdout}");
    assert!(
        stdout.contains("expected auth allowed, got forbidden (insufficient_scope)"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("PASS") && l.contains("catalogue is public")),
        "{stdout}"
    );
    assert!(stdout.contains("2 case(s): 1 passed, 1 failed"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_malformed_cases_file_lists_every_error_with_its_location() {
    let (dir, path) = cases_file(
        "keys:\n  shop: {issuer: shpo}\n  rsa: {issuer: shop, algorithm: RS256}\n\
         cases:\n  - name: a\n    request: {method: GET, url: /x, token: {key: shoq}}\n    expect: {route: users-mee}\n  \
         - name: b\n    request: {method: GET, url: /x}\n    expect: {status: 9999, auth: expird, limit: \"per_ip:maybe\"}\n  \
         - name: c\n    request: {method: GET, url: /x, bogus: 1}\n    expect: {status: 200}\n  \
         - name: d\n    request: {method: GET, url: /x}\n    expect: {}\n",
    );
    let out = gateway(&[
        "test",
        "--config",
        "config/example.yaml",
        path.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{stdout}\n{stderr}");
    for expected in [
        "keys.shop.issuer: unknown issuer \"shpo\"",
        "did you mean \"shop\"?",
        "keys.rsa.algorithm: issuer shop accepts [ES256], not RS256",
        "cases[0] \"a\".request.token.key: unknown key \"shoq\"",
        "cases[0] \"a\".expect.route: unknown route \"users-mee\" (or none); did you mean \"users-me\"?",
        "cases[1] \"b\".expect.status: 9999 is not an HTTP status",
        "cases[1] \"b\".expect.auth: \"expird\" is not an auth result or reason",
        "did you mean \"expired\"?",
        "cases[1] \"b\".expect.limit: \"maybe\" is not allowed or limited",
        "cases[2] \"c\": ",
        "unknown field `bogus`",
        "cases[3] \"d\".expect: expect at least one of",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(
        stdout.is_empty(),
        "no case runs from a broken file: {stdout}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

// === gateway explain ===

/// A policy trusting the test keys through a JWKS file, and the file.
fn explain_policy(keys: &Keys) -> (PathBuf, PathBuf) {
    let dir = temp_dir("explain");
    std::fs::write(dir.join("jwks.json"), keys.jwks().to_string()).unwrap();
    let policy = dir.join("gateway.yaml");
    std::fs::write(
        &policy,
        "issuers:\n  test: {issuer: test-issuer, audiences: [test-api], algorithms: [ES256], jwks_file: jwks.json, max_lifetime_secs: 3600}\n\
         upstreams:\n  api: {endpoints: [\"127.0.0.1:9\"]}\n\
         rate_limits:\n  per_user: {key: [claim:sub], rate: 5, per: second, burst: 10}\n  \
         keyed: {key: [header:x-api-key], rate: 1, per: second, mode: shadow}\n\
         routes:\n  - {name: public, match: {path_prefix: /public}, upstream: api, auth: none, rate_limits: [keyed]}\n  \
         - {name: secure, match: {path_prefix: /secure, methods: [GET]}, upstream: api, scopes: [shop], rate_limits: [per_user], strip_prefix: true}\n",
    )
    .unwrap();
    (dir, policy)
}

fn explain_json(policy: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["explain", "--config", policy.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let out = gateway(&all);
    let (stdout, stderr) = text(&out);
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("explain --json printed no JSON ({e}):\n{stdout}\n{stderr}"));
    (out.status.code(), json)
}

fn steps(v: &Value) -> Vec<(String, bool)> {
    v["auth"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["ok"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn explain_follows_a_valid_token_through_every_step_to_the_upstream() {
    let keys = Keys::generate();
    let (dir, policy) = explain_policy(&keys);
    let token = sign_es(&keys.es, "es-1", &claims("user-7", "shop"));
    let auth = format!("Authorization: Bearer {token}");
    let (code, v) = explain_json(
        &policy,
        &[
            "-H",
            &auth,
            "-H",
            "X-User-Id: admin",
            "GET",
            "http://api.example/secure/orders?x=1",
        ],
    );
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["route"], "secure");
    assert_eq!(v["routes"][0]["name"], "public");
    assert_eq!(v["routes"][0]["matched"], false);
    assert_eq!(
        v["routes"][0]["reason"],
        "/secure/orders is not under /public"
    );
    assert_eq!(v["routes"][1]["matched"], true);
    assert_eq!(
        steps(&v)
            .iter()
            .map(|(s, ok)| format!("{s}:{ok}"))
            .collect::<Vec<_>>(),
        [
            "token:true",
            "header:true",
            "issuer:true",
            "key:true",
            "signature:true",
            "claims:true",
            "scopes:true"
        ]
    );
    assert!(
        v["auth"]["steps"][3]["detail"]
            .as_str()
            .unwrap()
            .contains("kid es-1 (ES256)"),
        "{v:#}"
    );
    assert_eq!(v["auth"]["result"], "allowed");
    assert_eq!(v["limits"][0]["policy"], "per_user");
    assert_eq!(v["limits"][0]["key"], "sub=user-7");
    assert_eq!(v["limits"][0]["remaining"], 9);
    assert_eq!(v["limits"][0]["quota"], "5/1s, burst 10");
    assert_eq!(v["upstream"]["name"], "api");
    assert_eq!(v["upstream"]["endpoint"], "127.0.0.1:9");
    assert_eq!(v["upstream"]["target"], "/orders?x=1");
    assert_eq!(
        v["upstream"]["identity"],
        json!({"x-user-id": "user-7", "x-user-scopes": "shop"}),
        "the verified identity, never the client's"
    );
    assert_eq!(v["outcome"]["status"], 200);
    assert_eq!(
        v["trail"],
        "route:secure > auth:allowed@test > limit:per_user:allowed:9/10 > upstream:api => 200"
    );
    assert!(!v.to_string().contains(&token), "the token was printed");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn explain_says_where_a_bad_or_missing_token_stopped() {
    let keys = Keys::generate();
    let (dir, policy) = explain_policy(&keys);
    // Signed by a key the JWKS does not hold, under a kid it does.
    let forged = sign_es(&keys.es2, "es-1", &claims("user-7", "shop"));
    let auth = format!("Authorization: Bearer {forged}");
    let (code, v) = explain_json(&policy, &["-H", &auth, "GET", "/secure/x"]);
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["outcome"]["status"], 401);
    assert_eq!(v["outcome"]["stage"], "auth");
    assert_eq!(v["auth"]["reason"], "bad_signature");
    assert_eq!(steps(&v).last().unwrap(), &("signature".to_string(), false));
    assert!(v["upstream"].is_null(), "a refused request goes nowhere");
    assert_eq!(
        v["trail"],
        "route:secure > auth:denied:bad_signature@test => 401 unauthorized"
    );

    // No Authorization header at all.
    let (code, v) = explain_json(&policy, &["GET", "/secure/x"]);
    assert_eq!(code, Some(1));
    assert_eq!(v["auth"]["reason"], "missing_token");
    assert_eq!(steps(&v), [("token".to_string(), false)]);

    // Expired: the steps up to the claims pass.
    let mut old = claims("user-7", "shop");
    old["exp"] = json!(now() - 600);
    old["iat"] = json!(now() - 900);
    let auth = format!("Authorization: Bearer {}", sign_es(&keys.es, "es-1", &old));
    let (_, v) = explain_json(&policy, &["-H", &auth, "GET", "/secure/x"]);
    assert_eq!(v["auth"]["reason"], "expired");
    assert_eq!(steps(&v).last().unwrap(), &("claims".to_string(), false));
    assert_eq!(steps(&v).len(), 6);

    // The text form, for people.
    let out = gateway(&[
        "explain",
        "--config",
        policy.to_str().unwrap(),
        "GET",
        "/secure/x",
    ]);
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("NO token: missing_token: no bearer token"),
        "{stdout}"
    );
    assert!(stdout.contains("401 unauthorized at auth"), "{stdout}");
    assert!(
        stdout.contains("trail: route:secure > auth:denied:missing_token => 401 unauthorized"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn explain_lists_why_no_route_matched_and_masks_keyed_headers() {
    let keys = Keys::generate();
    let (dir, policy) = explain_policy(&keys);
    let (code, v) = explain_json(&policy, &["POST", "/nowhere"]);
    assert_eq!(code, Some(1));
    assert_eq!(v["outcome"]["status"], 404);
    assert_eq!(v["outcome"]["stage"], "routing");
    assert!(v["route"].is_null());
    let reasons: Vec<&str> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "/nowhere is not under /public",
            "/nowhere is not under /secure"
        ]
    );
    assert_eq!(v["trail"], "route:none => 404 no-route");

    // Refused before any route is looked at: two Host headers.
    let (code, v) = explain_json(
        &policy,
        &[
            "-H",
            "Host: a.example",
            "-H",
            "Host: b.example",
            "GET",
            "/public/x",
        ],
    );
    assert_eq!(code, Some(1));
    assert_eq!(v["outcome"]["status"], 400, "{v:#}");
    assert_eq!(v["outcome"]["stage"], "request_head");
    assert_eq!(v["routes"], json!([]), "no route was looked at");
    assert_eq!(v["trail"], "route:none => 400 bad-host");

    // A method the path's route does not list.
    let (_, v) = explain_json(&policy, &["DELETE", "/secure/x"]);
    assert_eq!(v["outcome"]["status"], 405);
    assert!(v["routes"][1]["reason"]
        .as_str()
        .unwrap()
        .contains("DELETE is not one of its methods (GET)"));

    // A shadow limit keyed on an API key: counted, never enforced, the key never printed.
    let (code, v) = explain_json(
        &policy,
        &["-H", "X-Api-Key: sk-secret-123", "GET", "/public/a"],
    );
    assert_eq!(code, Some(0));
    assert_eq!(v["limits"][0]["mode"], "shadow");
    assert_eq!(v["limits"][0]["key"], "x-api-key=<13 bytes>");
    assert!(!v.to_string().contains("sk-secret-123"), "{v}");
    assert!(
        v["trail"]
            .as_str()
            .unwrap()
            .contains("limit:keyed:allowed:0/1(shadow)"),
        "{v:#}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn explain_refuses_broken_input_with_a_clear_error() {
    let keys = Keys::generate();
    let (dir, policy) = explain_policy(&keys);
    let out = gateway(&[
        "explain",
        "--config",
        policy.to_str().unwrap(),
        "-H",
        "no colon here",
        "GET",
        "/public",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr.contains("header 1 \"no colon here\" is not `Name: value`"),
        "{stderr}"
    );

    let out = gateway(&[
        "explain",
        "--config",
        policy.to_str().unwrap(),
        "G(T",
        "/public",
    ]);
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out).1.contains("is not an HTTP method"));

    std::fs::write(
        &policy,
        "upstreams: {}\nroutes:\n  - {name: r, match: {path_prefix: /}, upstream: nope, auth: none}\n",
    )
    .unwrap();
    let out = gateway(&["explain", "--config", policy.to_str().unwrap(), "GET", "/"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr.contains("routes[0] \"r\".upstream: unknown upstream \"nope\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
