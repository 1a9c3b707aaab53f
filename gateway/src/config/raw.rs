//! The policy file exactly as a security team writes it.
//!
//! Every struct denies unknown fields so a typo (`scoeps:`) is an error, not a silently ignored
//! policy. Nothing here is interpreted: [`super::validate`] turns these into typed values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The root of a policy file. Sections are kept as raw YAML so that every section, route and
/// upstream can be checked on its own and every error reported, not just the first.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) listeners: Option<serde_yaml::Value>,
    #[serde(default)]
    pub(crate) admin: Option<serde_yaml::Value>,
    #[serde(default)]
    pub(crate) server: Option<serde_yaml::Value>,
    #[serde(default)]
    pub(crate) edge_tls: Option<serde_yaml::Value>,
    #[serde(default)]
    pub(crate) identity_headers: Option<serde_yaml::Value>,
    #[serde(default)]
    pub(crate) upstreams: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub(crate) issuers: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub(crate) stores: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub(crate) revocations: Option<serde_yaml::Value>,
    #[serde(default)]
    pub(crate) rate_limits: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub(crate) routes: Vec<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListeners {
    pub(crate) public: Option<String>,
    pub(crate) admin: Option<String>,
    pub(crate) public_tls: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEdgeTls {
    pub(crate) cert_file: String,
    pub(crate) key_file: String,
    pub(crate) redirect_http: Option<bool>,
    pub(crate) hsts_max_age_secs: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) svid_dir: Option<String>,
    pub(crate) cert_file: Option<String>,
    pub(crate) key_file: Option<String>,
    pub(crate) bundle_file: Option<String>,
    pub(crate) workload_api: Option<String>,
    #[serde(default)]
    pub(crate) spiffe_ids: Vec<String>,
    pub(crate) server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) token_env: Option<String>,
    pub(crate) allow_public_bind: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) workers: Option<usize>,
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) grace_period_secs: Option<u64>,
    pub(crate) shutdown_timeout_secs: Option<u64>,
    pub(crate) reload_poll_ms: Option<u64>,
    pub(crate) realm: Option<String>,
    pub(crate) trusted_proxies: Option<Vec<String>>,
    pub(crate) max_uri_bytes: Option<usize>,
    pub(crate) max_header_bytes: Option<usize>,
    pub(crate) max_request_header_bytes: Option<usize>,
    pub(crate) max_headers: Option<usize>,
    pub(crate) request_head_timeout_ms: Option<u64>,
    pub(crate) keepalive_timeout_secs: Option<u64>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) connection_buffer_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) endpoints: Vec<String>,
    pub(crate) load_balancing: Option<String>,
    pub(crate) connect_timeout_ms: Option<u64>,
    pub(crate) read_timeout_ms: Option<u64>,
    pub(crate) retries: Option<u32>,
    pub(crate) health_check: Option<RawHealthCheck>,
    pub(crate) passive_ejection: Option<RawPassive>,
    pub(crate) circuit_breaker: Option<RawBreaker>,
    pub(crate) tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub(crate) path: Option<String>,
    pub(crate) interval_ms: Option<u64>,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) healthy_threshold: Option<u32>,
    pub(crate) unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassive {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) ejection_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    pub(crate) failure_threshold: Option<u32>,
    pub(crate) open_secs: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIssuer {
    pub(crate) issuer: String,
    #[serde(default)]
    pub(crate) audiences: Vec<String>,
    pub(crate) algorithms: Vec<String>,
    pub(crate) jwks_url: Option<String>,
    pub(crate) jwks_tls: Option<RawUpstreamTls>,
    pub(crate) jwks_file: Option<String>,
    pub(crate) pem_file: Option<String>,
    pub(crate) pem_kid: Option<String>,
    pub(crate) refresh_interval_secs: Option<u64>,
    pub(crate) min_refresh_interval_secs: Option<u64>,
    pub(crate) leeway_secs: Option<u64>,
    pub(crate) max_lifetime_secs: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub(crate) redis: String,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) on_error: Option<String>,
    pub(crate) key_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRevocations {
    pub(crate) store: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuota {
    pub(crate) rate: u32,
    pub(crate) per: String,
    pub(crate) burst: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub(crate) key: Vec<String>,
    pub(crate) rate: Option<u32>,
    pub(crate) per: Option<String>,
    pub(crate) burst: Option<u32>,
    pub(crate) tier_claim: Option<String>,
    pub(crate) tiers: Option<BTreeMap<String, RawQuota>>,
    pub(crate) idle_prune_secs: Option<u64>,
    pub(crate) ipv6_prefix_len: Option<u8>,
    pub(crate) mode: Option<String>,
    pub(crate) store: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) name: String,
    #[serde(rename = "match")]
    pub(crate) matcher: RawMatch,
    pub(crate) upstream: String,
    pub(crate) strip_prefix: Option<bool>,
    pub(crate) rewrite_prefix: Option<String>,
    pub(crate) auth: Option<String>,
    pub(crate) auth_mode: Option<String>,
    #[serde(default)]
    pub(crate) scopes: Vec<String>,
    #[serde(default)]
    pub(crate) issuers: Vec<String>,
    #[serde(default)]
    pub(crate) rate_limits: Vec<String>,
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) allow_encoded_slashes: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub(crate) host: Option<String>,
    pub(crate) path_prefix: Option<String>,
    pub(crate) path_exact: Option<String>,
    pub(crate) path_regex: Option<String>,
    #[serde(default)]
    pub(crate) methods: Vec<String>,
}
