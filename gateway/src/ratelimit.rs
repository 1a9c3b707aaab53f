//! Rate limiting with GCRA (governor), keyed by client IP, claim, header, route or a mix.
//!
//! Each named policy holds one keyed limiter per tier. Keys idle long enough to be fully
//! replenished are pruned on a timer, so memory stays bounded by the keys active within one
//! replenish window. A policy with `store:` keeps its buckets in that store instead
//! ([`crate::store::redis_gcra`]), so every replica shares one quota per key; when the store
//! fails, the store's `on_error` decides. Responses carry `RateLimit-Policy` / `RateLimit` fields as defined in
//! draft-ietf-httpapi-ratelimit-headers-09, and `Retry-After` on 429.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::RateLimiter;
use http::HeaderMap;
use observability::lines::push_decimal;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::auth::jwt::Identity;
use crate::config::{KeyPart, Mode, OnError, Quota, Quotas, RateLimitConfig};
use crate::problem::GatewayError;
use crate::store::{Store, StoreError};

/// Counts one request against each of its route's `policies` in order, recording every
/// enforced decision in `decisions` (they all go into the `RateLimit` fields) and every
/// decision of a policy in shadow mode in `shadow` (see [`crate::shadow`]); stops at the first
/// enforced policy that refuses, with the 429 to answer. A shadow policy never stops the loop.
pub(crate) async fn check(
    policies: &[Arc<Policy>],
    input: &KeyInput<'_>,
    decisions: &mut Vec<Decision>,
    shadow: &mut Vec<Decision>,
) -> Result<(), GatewayError> {
    for policy in policies {
        let decision = policy.check(input).await?;
        if policy.mode() == Mode::Shadow {
            shadow.push(decision);
            continue;
        }
        let refused = (!decision.allowed).then(|| decision.retry_after_secs.unwrap_or(1));
        decisions.push(decision);
        if let Some(retry_after_secs) = refused {
            return Err(GatewayError::RateLimited {
                policy: policy.name.clone(),
                retry_after_secs,
                fields: header_values(decisions),
            });
        }
    }
    Ok(())
}

type KeyedLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

struct Limiter {
    quota: Quota,
    inner: KeyedLimiter,
}

impl Limiter {
    fn new(quota: Quota) -> Self {
        let period = quota.per / quota.rate.max(1);
        let gq = governor::Quota::with_period(period.max(Duration::from_nanos(1)))
            .expect("period is non-zero")
            .allow_burst(NonZeroU32::new(quota.burst.max(1)).expect("non-zero"));
        Limiter {
            quota,
            inner: RateLimiter::keyed(gq).with_middleware::<StateInformationMiddleware>(),
        }
    }

    fn replenish(&self) -> Duration {
        self.quota.per / self.quota.rate.max(1)
    }

    /// The span over which a full burst is earned back: the draft's `w`.
    fn window_secs(&self) -> u64 {
        ceil_secs(self.replenish() * self.quota.burst).max(1)
    }
}

/// What one policy decided for one request.
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    /// Policy name.
    pub(crate) policy: String,
    /// Tier used, for tiered policies.
    pub(crate) tier: Option<String>,
    /// Whether the request was admitted.
    pub(crate) allowed: bool,
    /// Requests a full bucket admits at once (the draft's `q`).
    pub(crate) limit: u32,
    /// Requests still admitted right now (the draft's `r`).
    pub(crate) remaining: u32,
    /// Seconds until the bucket is full again (the draft's `t`).
    pub(crate) reset_secs: u64,
    /// The draft's `w`.
    pub(crate) window_secs: u64,
    /// Seconds to wait before retrying, when refused.
    pub(crate) retry_after_secs: Option<u64>,
    /// For a policy with `store:`: the store, and why it failed when `on_error` decided.
    pub(crate) store: Option<StoreUse>,
}

/// How a shared policy's decision used its store.
#[derive(Debug, Clone)]
pub(crate) struct StoreUse {
    /// The store's name.
    pub(crate) name: Arc<str>,
    /// Set when the store failed and its `on_error` made the decision.
    pub(crate) error: Option<StoreError>,
}

impl Decision {
    /// `allowed` or `limited`: the `result` label of `gateway_ratelimit_decisions_total`.
    pub(crate) fn result(&self) -> &'static str {
        if self.allowed {
            "allowed"
        } else {
            "limited"
        }
    }
}

impl Decision {
    /// Appends `policy[tier]:result:remaining` (the tier only when there is one).
    pub(crate) fn write_brief(&self, out: &mut String) {
        out.push_str(&self.policy);
        if let Some(tier) = &self.tier {
            out.push('[');
            out.push_str(tier);
            out.push(']');
        }
        out.push(':');
        out.push_str(self.result());
        out.push(':');
        observability::lines::push_decimal(out, u64::from(self.remaining));
    }
}

/// `policy[tier]:result:remaining` for each decision, comma-separated: the access log's
/// `ratelimit` field.
pub(crate) fn summary(decisions: &[Decision]) -> String {
    let mut out = String::with_capacity(48 * decisions.len());
    for (i, d) in decisions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        d.write_brief(&mut out);
    }
    out
}

/// What a key can be built from.
pub(crate) struct KeyInput<'a> {
    /// The client's canonical address, when known.
    pub(crate) client: Option<IpAddr>,
    pub(crate) route: &'a str,
    pub(crate) identity: Option<&'a Identity>,
    pub(crate) headers: &'a HeaderMap,
}

/// A named policy with its keyed state.
pub(crate) struct Policy {
    pub(crate) name: String,
    pub(crate) config: RateLimitConfig,
    limiters: BTreeMap<String, Limiter>,
    /// The store named by `store:`; the local limiters are then unused.
    store: Option<Arc<Store>>,
}

const SINGLE: &str = "";

impl Policy {
    /// The policy `name`; `store` is the store its config names (resolved by the caller).
    pub(crate) fn new(
        name: String,
        config: RateLimitConfig,
        store: Option<Arc<Store>>,
    ) -> Arc<Self> {
        let limiters = match &config.quotas {
            Quotas::Single { quota } => {
                BTreeMap::from([(SINGLE.to_string(), Limiter::new(*quota))])
            }
            Quotas::Tiered { tiers, .. } => tiers
                .iter()
                .map(|(t, q)| (t.clone(), Limiter::new(*q)))
                .collect(),
        };
        Arc::new(Policy {
            name,
            config,
            limiters,
            store,
        })
    }

    /// Whether the policy's refusals are enforced (`mode`).
    pub(crate) fn mode(&self) -> Mode {
        self.config.mode
    }

    /// The policy's configuration.
    pub(crate) fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// The store holding this policy's buckets, if any.
    pub(crate) fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Number of keys currently tracked, across tiers.
    pub(crate) fn tracked_keys(&self) -> usize {
        self.limiters.values().map(|l| l.inner.len()).sum()
    }

    /// Removes keys whose buckets are full again (they are indistinguishable from new keys).
    pub(crate) fn prune(&self) {
        for l in self.limiters.values() {
            l.inner.retain_recent();
            l.inner.shrink_to_fit();
        }
    }

    /// Prunes on the policy's interval until `stop` is cancelled.
    pub(crate) fn start_pruning(self: &Arc<Self>, background: &Handle, stop: CancellationToken) {
        let this = Arc::clone(self);
        background.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(this.config.idle_prune) => this.prune(),
                }
            }
        });
    }

    /// The bucket key of a request. A header the key uses must come at most once: keying on
    /// one copy while the upstream reads another would let a client pick its bucket.
    pub(crate) fn key(&self, input: &KeyInput<'_>) -> Result<String, GatewayError> {
        // Pushed into one buffer (no `format!` per part): this runs for every request.
        let mut key = String::with_capacity(64);
        for (i, part) in self.config.key.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            let pushed = match part {
                KeyPart::ClientIp => false,
                KeyPart::Route => {
                    key.push_str("route=");
                    key.push_str(input.route);
                    true
                }
                KeyPart::Claim(c) => input.identity.is_some_and(|id| {
                    let start = key.len();
                    key.push_str(c);
                    key.push('=');
                    let found = id.push_claim(c, &mut key);
                    if !found {
                        key.truncate(start);
                    }
                    found
                }),
                KeyPart::Header(h) => {
                    let mut values = input.headers.get_all(h).iter();
                    let first = values.next();
                    if values.next().is_some() {
                        return Err(GatewayError::DuplicateHeader(h.as_str().to_string()));
                    }
                    match first.and_then(|v| v.to_str().ok()) {
                        Some(v) => {
                            key.push_str(h.as_str());
                            key.push('=');
                            key.push_str(v);
                            true
                        }
                        None => false,
                    }
                }
            };
            // `client_ip`, and the fallback for a missing claim or header (which must not pool
            // every such caller into one bucket).
            if !pushed {
                key.push_str("ip=");
                key.push_str(&self.client_key(input.client));
            }
        }
        Ok(key)
    }

    /// An IPv4 address as is; an IPv6 address as its network of `ipv6_prefix_len` bits.
    fn client_key(&self, client: Option<IpAddr>) -> String {
        match client {
            Some(IpAddr::V6(v6)) if self.config.ipv6_prefix_len < 128 => {
                match ipnet::Ipv6Net::new(v6, self.config.ipv6_prefix_len) {
                    Ok(net) => net.trunc().to_string(),
                    Err(_) => v6.to_string(),
                }
            }
            Some(ip) => ip.to_string(),
            None => "unknown".to_string(),
        }
    }

    fn tier(&self, input: &KeyInput<'_>) -> &str {
        match &self.config.quotas {
            Quotas::Single { .. } => SINGLE,
            Quotas::Tiered { claim, .. } => input
                .identity
                .and_then(|id| id.claim_str(claim))
                .and_then(|t| {
                    self.limiters
                        .get_key_value(t.as_str())
                        .map(|(k, _)| k.as_str())
                })
                .unwrap_or("default"),
        }
    }

    /// Counts one request against the policy.
    pub(crate) async fn check(&self, input: &KeyInput<'_>) -> Result<Decision, GatewayError> {
        let tier = self.tier(input);
        let limiter = &self.limiters[tier];
        let key = self.key(input)?;
        let replenish = limiter.replenish();
        let base = Decision {
            policy: self.name.clone(),
            tier: (!tier.is_empty()).then(|| tier.to_string()),
            allowed: true,
            limit: limiter.quota.burst,
            remaining: 0,
            reset_secs: 0,
            window_secs: limiter.window_secs(),
            retry_after_secs: None,
            store: None,
        };
        if let Some(store) = &self.store {
            return Ok(self.check_shared(store, tier, &key, limiter, base).await);
        }
        Ok(match limiter.inner.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = limiter.quota.burst.saturating_sub(remaining);
                Decision {
                    remaining,
                    reset_secs: ceil_secs(replenish * used),
                    ..base
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let retry = ceil_secs(wait).max(1);
                Decision {
                    allowed: false,
                    remaining: 0,
                    reset_secs: ceil_secs(replenish * limiter.quota.burst),
                    retry_after_secs: Some(retry),
                    ..base
                }
            }
        })
    }
}

impl Policy {
    /// Counts one request in the store: `prefix:rl:policy:tier:key`, one bucket for every
    /// replica.
    async fn check_shared(
        &self,
        store: &Arc<Store>,
        tier: &str,
        key: &str,
        limiter: &Limiter,
        base: Decision,
    ) -> Decision {
        let bucket = store.key(&["rl", &self.name, tier, key]);
        let quota = limiter.quota;
        let used = StoreUse {
            name: Arc::clone(&store.name),
            error: None,
        };
        match store.gcra(&bucket, &quota).await {
            Ok(v) if v.admitted => Decision {
                remaining: v.remaining,
                reset_secs: ceil_secs(v.wait),
                store: Some(used),
                ..base
            },
            Ok(v) => Decision {
                allowed: false,
                remaining: 0,
                reset_secs: ceil_secs(limiter.replenish() * quota.burst),
                retry_after_secs: Some(ceil_secs(v.wait).max(1)),
                store: Some(used),
                ..base
            },
            Err(error) => {
                let on_error = store.on_error();
                let store = Some(StoreUse {
                    error: Some(error),
                    ..used
                });
                match on_error {
                    // Not counted: say the full quota is left rather than guess.
                    OnError::Allow => Decision {
                        remaining: quota.burst,
                        store,
                        ..base
                    },
                    OnError::Deny => Decision {
                        allowed: false,
                        remaining: 0,
                        reset_secs: 1,
                        retry_after_secs: Some(1),
                        store,
                        ..base
                    },
                }
            }
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs();
    if d.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

/// `RateLimit-Policy` and `RateLimit` field values for a set of decisions (draft-09 syntax:
/// a list of `"name";q=…;w=…` and `"name";r=…;t=…` items).
pub(crate) fn header_values(decisions: &[Decision]) -> Option<(String, String)> {
    if decisions.is_empty() {
        return None;
    }
    // Plain pushes, not `format!`: this runs for every rate-limited response.
    let item = |out: &mut String, d: &Decision, a: &str, x: u64, b: &str, y: u64| {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push('"');
        out.push_str(&d.policy);
        out.push_str(a);
        push_decimal(out, x);
        out.push_str(b);
        push_decimal(out, y);
    };
    let mut policy = String::with_capacity(32 * decisions.len());
    let mut limit = String::with_capacity(32 * decisions.len());
    for d in decisions {
        item(
            &mut policy,
            d,
            "\";q=",
            u64::from(d.limit),
            ";w=",
            d.window_secs,
        );
        item(
            &mut limit,
            d,
            "\";r=",
            u64::from(d.remaining),
            ";t=",
            d.reset_secs,
        );
    }
    Some((policy, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Policy {
        fn check_ok(&self, input: &KeyInput<'_>) -> Decision {
            self.check_now(input).unwrap()
        }

        /// A local policy's check never waits, so it completes on first poll.
        fn check_now(&self, input: &KeyInput<'_>) -> Result<Decision, GatewayError> {
            now_or_never(self.check(input))
        }
    }

    fn now_or_never<T>(f: impl std::future::Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a local policy waited"),
        }
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_and_ipv4_is_per_address() {
        let p = policy(1, 60, 1);
        let h = HeaderMap::new();
        assert!(p.check_ok(&input("2001:db8:1:2::1", &h)).allowed);
        assert!(
            !p.check_ok(&input("2001:db8:1:2:ffff::9", &h)).allowed,
            "same /64, same bucket"
        );
        assert!(p.check_ok(&input("2001:db8:1:3::1", &h)).allowed);
        assert_eq!(
            p.client_key("2001:db8:1:2:3:4:5:6".parse().ok()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(p.client_key("192.0.2.7".parse().ok()), "192.0.2.7");
    }

    #[test]
    fn a_key_header_sent_twice_is_refused() {
        let p = Policy::new(
            "h".into(),
            RateLimitConfig {
                key: vec![KeyPart::Header(http::HeaderName::from_static("x-api-key"))],
                ..policy(1, 1, 1).config.clone()
            },
            None,
        );
        let mut h = HeaderMap::new();
        h.append("x-api-key", "a".parse().unwrap());
        assert!(p.check_now(&input("1.1.1.1", &h)).is_ok());
        h.append("x-api-key", "b".parse().unwrap());
        assert!(matches!(
            p.check_now(&input("1.1.1.1", &h)),
            Err(GatewayError::DuplicateHeader(name)) if name == "x-api-key"
        ));
    }

    fn policy(rate: u32, per: u64, burst: u32) -> Arc<Policy> {
        Policy::new(
            "p".into(),
            RateLimitConfig {
                key: vec![KeyPart::ClientIp],
                quotas: Quotas::Single {
                    quota: Quota {
                        rate,
                        per: Duration::from_secs(per),
                        burst,
                    },
                },
                idle_prune: Duration::from_secs(60),
                ipv6_prefix_len: 64,
                mode: Mode::Enforce,
                store: None,
            },
            None,
        )
    }

    fn input<'a>(ip: &str, headers: &'a HeaderMap) -> KeyInput<'a> {
        KeyInput {
            client: Some(ip.parse().unwrap()),
            route: "r",
            identity: None,
            headers,
        }
    }

    #[test]
    fn keys_join_every_part_and_fall_back_to_the_client_address() {
        let mut config = policy(10, 1, 5).config.clone();
        config.key = vec![
            KeyPart::Route,
            KeyPart::Claim("tenant".into()),
            KeyPart::Claim("plan".into()),
            KeyPart::Claim("missing".into()),
            KeyPart::Header(http::HeaderName::from_static("x-api-key")),
            KeyPart::ClientIp,
        ];
        let p = Policy::new("p".into(), config, None);
        let mut claims = serde_json::Map::new();
        claims.insert("tenant".into(), "acme".into());
        claims.insert("plan".into(), 3.into());
        let identity = Identity::for_test("alice", claims);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "k1".parse().unwrap());
        let mut with = input("10.0.0.1", &headers);
        with.identity = Some(&identity);
        assert_eq!(
            p.key(&with).unwrap(),
            "route=r|tenant=acme|plan=3|ip=10.0.0.1|x-api-key=k1|ip=10.0.0.1"
        );
        // No identity, no header: every claim and header part falls back to the address.
        let empty = HeaderMap::new();
        assert_eq!(
            p.key(&input("2001:db8::1", &empty)).unwrap(),
            "route=r|ip=2001:db8::/64|ip=2001:db8::/64|ip=2001:db8::/64|ip=2001:db8::/64|ip=2001:db8::/64"
        );
    }

    #[test]
    fn burst_then_refuse_with_retry_after() {
        let p = policy(1, 60, 3);
        let h = HeaderMap::new();
        let results: Vec<_> = (0..5).map(|_| p.check_ok(&input("1.1.1.1", &h))).collect();
        assert_eq!(results.iter().filter(|d| d.allowed).count(), 3);
        assert_eq!(results[0].remaining, 2);
        assert_eq!(results[2].remaining, 0);
        let refused = &results[3];
        assert!(!refused.allowed);
        let retry = refused.retry_after_secs.unwrap();
        assert!((1..=60).contains(&retry), "retry after {retry}");
        // Another key has its own bucket.
        assert!(p.check_ok(&input("2.2.2.2", &h)).allowed);
    }

    #[test]
    fn idle_keys_are_pruned() {
        let p = policy(1000, 1, 1);
        let h = HeaderMap::new();
        for i in 0..500 {
            p.check_ok(&input(&format!("10.0.{}.{}", i / 256, i % 256), &h));
        }
        assert_eq!(p.tracked_keys(), 500);
        std::thread::sleep(Duration::from_millis(20));
        p.prune();
        assert_eq!(p.tracked_keys(), 0);
    }

    #[test]
    fn check_stops_at_the_first_refusing_policy_and_keeps_every_decision() {
        let (tight, loose) = (policy(1, 60, 1), policy(100, 1, 100));
        let h = HeaderMap::new();
        let mut decisions = Vec::new();
        let mut shadow = Vec::new();
        let both = [Arc::clone(&tight), Arc::clone(&loose)];
        assert!(now_or_never(check(
            &both,
            &input("3.3.3.3", &h),
            &mut decisions,
            &mut shadow
        ))
        .is_ok());
        assert_eq!(decisions.len(), 2);
        decisions.clear();
        let refused = now_or_never(check(
            &both,
            &input("3.3.3.3", &h),
            &mut decisions,
            &mut shadow,
        ))
        .unwrap_err();
        assert!(shadow.is_empty());
        assert_eq!(decisions.len(), 1, "the loose policy is not consulted");
        match refused {
            GatewayError::RateLimited {
                retry_after_secs,
                fields,
                ..
            } => {
                assert!((1..=60).contains(&retry_after_secs));
                assert_eq!(fields.unwrap().1, "\"p\";r=0;t=60");
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert_eq!(summary(&decisions), "p:limited:0");
    }

    #[test]
    fn a_shadow_policy_counts_and_records_but_never_refuses_or_stops_the_loop() {
        let shadowed = Policy::new(
            "s".into(),
            RateLimitConfig {
                mode: Mode::Shadow,
                ..policy(1, 60, 1).config.clone()
            },
            None,
        );
        let after = policy(100, 1, 100);
        let both = [Arc::clone(&shadowed), Arc::clone(&after)];
        let h = HeaderMap::new();
        let (mut decisions, mut shadow) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let req = input("4.4.4.4", &h);
            assert!(now_or_never(check(&both, &req, &mut decisions, &mut shadow)).is_ok());
        }
        assert_eq!(
            shadow.iter().map(|d| d.allowed).collect::<Vec<_>>(),
            [true, false, false],
            "the shadow bucket is really consumed"
        );
        assert_eq!(
            decisions.len(),
            3,
            "the enforced policy after it is consulted"
        );
        assert!(decisions.iter().all(|d| d.policy == "p" && d.allowed));
    }

    #[test]
    fn header_syntax_follows_draft_09() {
        let p = policy(10, 1, 5);
        let h = HeaderMap::new();
        let d = p.check_ok(&input("1.1.1.1", &h));
        let (policy, limit) = header_values(std::slice::from_ref(&d)).unwrap();
        assert_eq!(policy, "\"p\";q=5;w=1");
        assert_eq!(limit, "\"p\";r=4;t=1");
        // Several policies: one list item each, in order.
        let mut hourly = d.clone();
        hourly.policy = "per-hour".into();
        hourly.limit = 1000;
        hourly.window_secs = 3600;
        hourly.remaining = 998;
        hourly.reset_secs = 3599;
        let (policy, limit) = header_values(&[d, hourly]).unwrap();
        assert_eq!(policy, "\"p\";q=5;w=1, \"per-hour\";q=1000;w=3600");
        assert_eq!(limit, "\"p\";r=4;t=1, \"per-hour\";r=998;t=3599");
        assert!(header_values(&[]).is_none());
    }
}
