use std::time::Duration;

use serde_json::Value;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_admits_exactly_the_quota_and_429s_carry_the_draft_headers() {
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n  u: {{endpoints: [\"{}\"]}}\nrate_limits:\n  burst: {{key: [client_ip], rate: 1, per: minute, burst: 5}}\nroutes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: u, auth: none, rate_limits: [burst]}}\n",
        up.addr
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    let responses = futures::future::join_all((0..10).map(|_| c.get(gw.url("/x")).send())).await;
    let mut ok = 0;
    let mut limited = Vec::new();
    for r in responses {
        let r = r.unwrap();
        match r.status().as_u16() {
            200 => {
                ok += 1;
                assert_eq!(r.headers()["ratelimit-policy"], "\"burst\";q=5;w=300");
                assert!(r.headers()["ratelimit"]
                    .to_str()
                    .unwrap()
                    .starts_with("\"burst\";r="));
            }
            429 => limited.push(r),
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(limited.len(), 5);
    let r = limited.pop().unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.headers()["ratelimit-policy"], "\"burst\";q=5;w=300");
    assert!(r.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"burst\";r=0;t="));
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://vantage.dev/problems/rate-limited");
    let m = gw
        .metrics_containing("gateway_ratelimit_decisions_total{route=\"all\",policy=\"burst\",result=\"limited\"} 5")
        .await;
    assert!(m.contains("gateway_ratelimit_decisions_total{route=\"all\",policy=\"burst\",result=\"allowed\"} 5"), "{m}");
    assert!(m.contains(
        "gateway_ratelimit_decisions_total{route=\"all\",policy=\"burst\",result=\"limited\"} 5"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn per_user_quotas_follow_the_tier_claim_and_api_keys_get_their_own_buckets() {
    let keys = Keys::generate();
    let jwks = JwksServer::start(keys.jwks()).await;
    let up = Upstream::start("u").await;
    let body = format!(
        "{}upstreams:\n  u: {{endpoints: [\"{}\"]}}\nrate_limits:\n  per_user:\n    key: [claim:sub]\n    tier_claim: tier\n    tiers:\n      default: {{rate: 1, per: minute, burst: 2}}\n      partner: {{rate: 1, per: minute, burst: 5}}\n  per_key: {{key: [header:x-api-key], rate: 1, per: hour, burst: 2}}\nroutes:\n  - {{name: user, match: {{path_prefix: /user}}, upstream: u, auth: required, rate_limits: [per_user]}}\n  - {{name: keyed, match: {{path_prefix: /keyed}}, upstream: u, auth: none, rate_limits: [per_key]}}\n",
        issuer_yaml(&jwks.url),
        up.addr
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    let admitted = |token: String, n: usize| {
        let c = c.clone();
        let url = gw.url("/user");
        async move {
            let mut ok = 0;
            for _ in 0..n {
                if c.get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    == 200
                {
                    ok += 1;
                }
            }
            ok
        }
    };
    let alice = sign_es(&keys.es, "es-1", &claims("alice", ""));
    let mut partner_claims = claims("bob", "");
    partner_claims["tier"] = "partner".into();
    let bob = sign_es(&keys.es, "es-1", &partner_claims);
    let carol = sign_es(&keys.es, "es-1", &claims("carol", ""));
    assert_eq!(admitted(alice, 8).await, 2, "default tier");
    assert_eq!(admitted(bob, 8).await, 5, "partner tier");
    assert_eq!(admitted(carol, 8).await, 2, "each user has a bucket");

    let mut statuses = Vec::new();
    for key in ["k1", "k1", "k1", "k2"] {
        statuses.push(
            c.get(gw.url("/keyed"))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![200, 200, 429, 200]);
}

#[tokio::test(flavor = "multi_thread")]
async fn keyed_state_is_pruned_when_idle() {
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n  u: {{endpoints: [\"{}\"]}}\nrate_limits:\n  per_key: {{key: [header:x-api-key], rate: 1, per: second, burst: 1, idle_prune_secs: 1}}\nroutes:\n  - {{name: all, match: {{path_prefix: /}}, upstream: u, auth: none, rate_limits: [per_key]}}\n",
        up.addr
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    for i in 0..300 {
        c.get(gw.url("/x"))
            .header("x-api-key", format!("key-{i}"))
            .send()
            .await
            .unwrap();
    }
    let tracked = |m: String| -> i64 {
        m.lines()
            .find(|l| l.starts_with("gateway_ratelimit_keys{policy=\"per_key\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    };
    let before = tracked(gw.metrics().await);
    assert!(
        before > 0,
        "keys should be tracked right after the burst, got {before}"
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(tracked(gw.metrics().await), 0, "idle keys were not pruned");
}
