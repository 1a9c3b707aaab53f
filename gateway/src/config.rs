//! The gateway's policy file: parsed once into typed values, with every error reported.
//!
//! # How to use
//! [`Config::load`] reads a YAML file and returns either a [`Config`] or *all* the problems found,
//! each with its location (`routes[2] "orders".upstream: …`). `gateway validate FILE` prints them;
//! hot reload logs them and keeps the running config. The fields are documented for security teams
//! in `docs/gateway-config.md`; `gateway/config/example.yaml` is a commented example.

pub mod defaults;
mod raw;
pub(crate) mod suggest;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, Method};
use jsonwebtoken::Algorithm;
use regex::Regex;
use serde::Serialize;

/// One problem in a policy file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: a line/column for syntax errors, a path such as `routes[1] "cart".scopes` otherwise.
    pub location: String,
    /// What is wrong, in words a policy author can act on.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found in a policy file. Never empty.
#[derive(Debug, thiserror::Error)]
#[error("{} error(s) in the gateway config:\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// The validated gateway configuration. Built only by [`Config::load`] / [`Config::parse`].
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Where the public proxy and the admin endpoints listen.
    pub listeners: Listeners,
    /// Admin endpoint protection.
    pub admin: AdminSettings,
    /// Process-wide settings.
    pub server: ServerSettings,
    /// What the public TLS listener serves.
    pub edge_tls: Option<EdgeTlsConfig>,
    /// Request headers that carry identity to upstreams; always removed from what clients send.
    #[serde(serialize_with = "ser_header_names")]
    pub identity_headers: Vec<HeaderName>,
    /// Named upstream pools.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Trusted token issuers.
    pub issuers: BTreeMap<String, IssuerConfig>,
    /// Named shared-state stores (Redis) that rate-limit policies and revocations may use.
    /// Default: none; every limit is local to the process.
    pub stores: BTreeMap<String, StoreConfig>,
    /// Where token revocations are shared.
    pub revocations: RevocationSettings,
    /// Named rate-limit policies.
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// Routes, matched in order; the first match wins.
    pub routes: Vec<RouteConfig>,
    /// Things that are valid but probably not what the author meant (e.g. overlapping routes
    /// with different protection). `gateway validate` prints them; they never block a load.
    #[serde(skip)]
    pub warnings: Vec<ConfigError>,
}

/// Listener addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listeners {
    /// Public proxy listener. Default `0.0.0.0:8080`.
    pub public: SocketAddr,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`, `/config`). Default `127.0.0.1:9901`.
    pub admin: SocketAddr,
    /// Public TLS listener (HTTP/1.1 and HTTP/2 by ALPN), serving `edge_tls`. Default: none.
    pub public_tls: Option<SocketAddr>,
}

/// The certificate the public TLS listener serves, and what plain HTTP clients are told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeTlsConfig {
    /// PEM certificate chain, leaf first. Re-read when it changes.
    pub cert_file: PathBuf,
    /// PEM private key of the leaf. Never shown in `/config`.
    pub key_file: PathBuf,
    /// Answer plain-HTTP requests with 308 to the same URL on the TLS listener. Default `false`.
    pub redirect_http: bool,
    /// `Strict-Transport-Security: max-age=…` on responses over TLS; 0 sends none. Default 0.
    pub hsts_max_age_secs: u64,
}

/// Mutual TLS to an upstream: the gateway's SVID as client certificate, the trust bundle, and
/// the SPIFFE IDs the upstream may present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamTlsConfig {
    /// Where the gateway's SVID and trust bundle come from.
    pub svid: SvidConfig,
    /// SPIFFE IDs the upstream may present (its certificate's URI SAN); anything else is
    /// refused before a request byte is sent.
    pub spiffe_ids: Vec<String>,
    /// The name sent as SNI. Default: the upstream's name.
    pub server_name: String,
}

/// Where the gateway's own SVID comes from (`svid_dir`, the three files, or `workload_api`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SvidConfig {
    /// PEM files, re-read when they change.
    Files {
        /// The gateway's SVID (PEM chain).
        cert_file: PathBuf,
        /// Its private key (PEM). Never read into `/config`, only named.
        key_file: PathBuf,
        /// The trust bundle the peer's certificate must chain to (PEM).
        bundle_file: PathBuf,
    },
    /// The SPIFFE Workload API of a SPIRE agent (`unix:///run/spire/agent.sock`), followed
    /// for rotations; one stream per endpoint, shared by every upstream that names it.
    WorkloadApi {
        /// The endpoint, as `SPIFFE_ENDPOINT_SOCKET` would give it.
        endpoint: String,
    },
}

impl SvidConfig {
    /// The three files, as the `identity` crate names them.
    pub fn files(paths: identity::SvidPaths) -> SvidConfig {
        SvidConfig::Files {
            cert_file: paths.cert,
            key_file: paths.key,
            bundle_file: paths.bundle,
        }
    }

    /// The files it names; `None` for the Workload API.
    pub fn paths(&self) -> Option<identity::SvidPaths> {
        match self {
            SvidConfig::Files {
                cert_file,
                key_file,
                bundle_file,
            } => Some(identity::SvidPaths {
                cert: cert_file.clone(),
                key: key_file.clone(),
                bundle: bundle_file.clone(),
            }),
            SvidConfig::WorkloadApi { .. } => None,
        }
    }
}

/// Admin endpoint protection.
#[derive(Debug, Clone, Serialize)]
pub struct AdminSettings {
    /// Name of the environment variable holding the admin bearer token. Default
    /// `VANTAGE_ADMIN_TOKEN`. If the variable is unset, `/metrics` and `/config` refuse everyone.
    pub token_env: String,
    /// Allow the admin listener on a non-loopback address. Default `false`.
    pub allow_public_bind: bool,
}

/// Process-wide settings.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSettings {
    /// Worker threads for the proxy. Default: the number of CPUs.
    pub workers: usize,
    /// Largest request body accepted, unless a route overrides it. Default 1 MiB.
    pub max_body_bytes: u64,
    /// How long to keep accepting after a shutdown signal. Default 0 s.
    #[serde(serialize_with = "ser_duration")]
    pub grace_period: Duration,
    /// How long in-flight requests may take to finish on shutdown. Default 10 s.
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_timeout: Duration,
    /// How often the config file is checked for changes. Default 1000 ms; 0 disables watching
    /// (SIGHUP still reloads).
    #[serde(serialize_with = "ser_duration")]
    pub reload_poll: Duration,
    /// The realm named in `WWW-Authenticate`. Default `vantage`.
    pub realm: String,
    /// Networks of the proxies in front of the gateway (load balancers, CDNs) whose
    /// `X-Forwarded-For` / `X-Forwarded-Proto` are believed. Default none: the gateway is the
    /// edge, the TCP peer is the client, and forwarding headers from clients are discarded.
    #[serde(serialize_with = "ser_networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Size and count limits of the request head.
    pub limits: HeadLimits,
    /// Client connection hygiene.
    pub connections: ConnectionSettings,
}

/// How client connections are kept in check (see the gateway's `downstream` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConnectionSettings {
    /// A request head must be complete this long after it is due (the connection opened, or
    /// the first byte of a kept-alive request arrived); else the connection is closed.
    /// Default 10000 ms.
    #[serde(serialize_with = "ser_duration")]
    pub request_head_timeout: Duration,
    /// Idle keep-alive connections are closed after this. Default 60 s.
    pub keepalive_timeout_secs: u64,
    /// Client connections open at once on the public listeners; past it new ones are closed at
    /// once (logged, counted). Keep it below the process's file-descriptor limit. Default 10000.
    pub max_connections: usize,
    /// Read buffer of each plain-HTTP client connection, in bytes; 0 (the default) reads straight
    /// from the socket. TLS connections use at least [`defaults::TLS_CONNECTION_BUFFER_BYTES`].
    pub buffer_bytes: usize,
}

/// Limits on the request head; a request over one is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HeadLimits {
    /// Longest request target (path and query) in bytes; longer gets 414. Default 8192.
    pub max_uri_bytes: usize,
    /// Largest single header field (name + value) in bytes; larger gets 431. Default 8192.
    pub max_header_bytes: usize,
    /// Largest header section (request target + every field) in bytes; larger gets 431.
    /// Default 32768.
    pub max_request_header_bytes: usize,
    /// Most header fields; more get 431. Default 100.
    pub max_headers: usize,
}

fn ser_networks<S: serde::Serializer>(v: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

/// A value outside one of the policy file's closed sets; the message lists the set and
/// suggests the closest spelling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownValue(String);

/// Gives a fieldless enum its policy-file spellings: `NAMES`, `name()` and `FromStr`.
macro_rules! closed_set {
    ($ty:ident { $($name:literal => $variant:ident),+ $(,)? }) => {
        impl $ty {
            /// Every value, as spelled in the policy file.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// How this value is spelled in the policy file.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl FromStr for $ty {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err(UnknownValue(suggest::not_one_of(other, Self::NAMES))),
                }
            }
        }
    };
}

/// Load-balancing policy of an upstream (`load_balancing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Each healthy endpoint in turn. The default.
    RoundRobin,
    /// The healthy endpoint with the fewest requests in flight (ties broken round-robin).
    LeastConnections,
}

closed_set!(LoadBalancing {
    "round_robin" => RoundRobin,
    "least_connections" => LeastConnections,
});

/// What a store-backed decision does when the store does not answer within `timeout_ms`
/// (`on_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Let the request through (fail open). The default: a Redis outage never takes the API
    /// down, at the price of limits not being enforced while it lasts.
    Allow,
    /// Refuse the request with 429 and `Retry-After: 1` (fail closed), for limits that protect
    /// against abuse (login, signup) where letting everything through is worse than an outage.
    Deny,
}

closed_set!(OnError {
    "allow" => Allow,
    "deny" => Deny,
});

/// A shared-state store: one Redis that every replica of the gateway talks to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreConfig {
    /// `redis://[user:password@]host:port/db`. Any user-info is redacted from `/config`.
    #[serde(serialize_with = "ser_redacted_url")]
    pub redis: String,
    /// Longest wait for one store operation; past it `on_error` decides. Default 5 ms.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// Default `allow`.
    pub on_error: OnError,
    /// Prefix of every key the gateway writes, so gateways of different deployments (or
    /// tests) can share one Redis. Default `vantage`.
    pub key_prefix: String,
}

/// Token revocation (`POST /revocations` on the admin listener).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RevocationSettings {
    /// The store that shares revocations between replicas (each polls it every 500 ms).
    /// Default: none; a revocation then applies only to the gateway that received it.
    pub store: Option<String>,
}

/// Whether a route needs a token (`auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No token needed.
    None,
    /// A valid token is needed. The default: a route is protected unless it says otherwise.
    Required,
}

closed_set!(AuthMode {
    "none" => None,
    "required" => Required,
});

/// Whether a policy's decisions are enforced or only recorded (`mode` of a rate-limit policy,
/// `auth_mode` of a route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refusals are enforced. The default.
    #[default]
    Enforce,
    /// The decision is computed, logged, put on the span and counted
    /// (`gateway_shadow_decisions_total`), but the request goes on as if it were allowed. Use it
    /// to roll a new policy out: watch what it would refuse before it refuses anything.
    Shadow,
}

closed_set!(Mode {
    "enforce" => Enforce,
    "shadow" => Shadow,
});

/// The period of a rate quota (`per`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
}

closed_set!(Per {
    "second" => Second,
    "minute" => Minute,
    "hour" => Hour,
});

impl Per {
    /// The period's length.
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
        })
    }
}

/// A named pool of upstream endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamConfig {
    /// `host:port` addresses. Host names are resolved when the config is loaded (at start and
    /// on every reload), not per request.
    pub endpoints: Vec<String>,
    /// Default `round_robin`.
    pub load_balancing: LoadBalancing,
    /// TCP connect timeout; on expiry the client gets 504. Default 1000 ms.
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Time to wait for each read from the upstream; on expiry 504. Default 10000 ms.
    #[serde(serialize_with = "ser_duration")]
    pub read_timeout: Duration,
    /// Extra attempts after a failure: connection failures for any method, other failures only
    /// for idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS, TRACE). Default 1.
    pub retries: u32,
    /// Active HTTP health checks. Default: off.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection of an endpoint after consecutive failures. Default 3 failures, 10 s.
    pub passive_ejection: PassiveEjectionConfig,
    /// Circuit breaker over the whole upstream. Default 5 failures, open 10 s.
    pub circuit_breaker: CircuitBreakerConfig,
    /// Mutual TLS with SPIFFE identities. Default: plain HTTP.
    pub tls: Option<UpstreamTlsConfig>,
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheckConfig {
    /// Path probed with GET; any 2xx is healthy. Default `/healthz`.
    pub path: String,
    /// Default 2000 ms.
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    /// Default 1000 ms.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// Successes in a row to mark an endpoint healthy again. Default 1.
    pub healthy_threshold: u32,
    /// Failures in a row to mark an endpoint unhealthy. Default 2.
    pub unhealthy_threshold: u32,
}

/// Passive ejection settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PassiveEjectionConfig {
    /// Consecutive failures (connect errors, timeouts, 502/503/504) that eject an endpoint. Default 3.
    pub consecutive_failures: u32,
    /// How long an ejected endpoint gets no traffic. Default 10 s.
    #[serde(serialize_with = "ser_duration")]
    pub ejection: Duration,
}

/// Circuit breaker settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CircuitBreakerConfig {
    /// Consecutive failed requests that open the circuit. Default 5.
    pub failure_threshold: u32,
    /// How long the circuit stays open (503 without contacting the upstream) before one trial
    /// request is let through. Default 10 s.
    #[serde(serialize_with = "ser_duration")]
    pub open_for: Duration,
}

/// Where an issuer's verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KeySource {
    /// A JWKS document fetched over HTTP(S): at start, every `refresh_interval`, and when a token
    /// names an unknown `kid` (at most once per `min_refresh_interval`).
    JwksUrl {
        /// The URL; any userinfo in it is redacted from `/config`.
        #[serde(serialize_with = "ser_redacted_url")]
        url: String,
    },
    /// A JWKS document on disk, read at (re)load.
    JwksFile {
        /// Path to the JSON file.
        path: PathBuf,
    },
    /// One public key in PEM, read at (re)load.
    PemFile {
        /// Path to the PEM file.
        path: PathBuf,
        /// The `kid` tokens must carry; `None` means tokens may omit it.
        kid: Option<String>,
    },
}

/// A trusted token issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuerConfig {
    /// The exact `iss` claim value.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one. Empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Allowed signature algorithms. Symmetric (HS*) algorithms are refused.
    #[serde(serialize_with = "ser_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Where the keys come from.
    pub keys: KeySource,
    /// Mutual TLS for fetching `jwks_url` (an `https://` URL) from a service that serves it over
    /// mTLS only, as the shop's `users` does: the same settings as `upstreams.*.tls`. Default:
    /// none (plain HTTPS or HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_tls: Option<UpstreamTlsConfig>,
    /// Default 300 s.
    #[serde(serialize_with = "ser_duration")]
    pub refresh_interval: Duration,
    /// Default 10 s.
    #[serde(serialize_with = "ser_duration")]
    pub min_refresh_interval: Duration,
    /// Clock skew allowed on `exp` and `nbf`. Default 30 s.
    pub leeway_secs: u64,
    /// Longest accepted token lifetime (`exp - iat`, or `exp - now` without `iat`). Default 86400 s.
    pub max_lifetime_secs: u64,
}

/// A rate quota: `rate` requests per `per`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Quota {
    /// Requests per period.
    pub rate: u32,
    /// The period.
    #[serde(serialize_with = "ser_duration")]
    pub per: Duration,
    /// Requests admitted at once from a full bucket. Default: `rate`.
    pub burst: u32,
}

/// What a rate-limit key is made of. Parts are joined; a missing claim or header falls back to
/// the client IP so anonymous callers never share one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "name", rename_all = "snake_case")]
pub enum KeyPart {
    /// The TCP peer address.
    ClientIp,
    /// The matched route's name.
    Route,
    /// A claim of the verified token, e.g. `sub`.
    Claim(String),
    /// A request header, e.g. an API key.
    Header(#[serde(serialize_with = "ser_header_name")] HeaderName),
}

impl KeyPart {
    /// The spellings of key parts, for error messages.
    pub const FORMS: &'static [&'static str] = &["client_ip", "route", "claim:NAME", "header:NAME"];
}

impl FromStr for KeyPart {
    type Err = UnknownValue;

    /// `client_ip`, `route`, `claim:NAME` or `header:NAME`.
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        match s.split_once(':') {
            None if s == "client_ip" => Ok(KeyPart::ClientIp),
            None if s == "route" => Ok(KeyPart::Route),
            Some(("claim", "")) => Err(UnknownValue(format!(
                "{s:?} names no claim; write claim:NAME, e.g. claim:sub"
            ))),
            Some(("claim", c)) => Ok(KeyPart::Claim(c.to_string())),
            Some(("header", h)) => HeaderName::from_str(h)
                .map(KeyPart::Header)
                .map_err(|_| UnknownValue(format!("{h:?} is not a valid header name"))),
            Some((kind, name)) => {
                let hint = suggest::did_you_mean(kind, ["claim", "header"])
                    .map(|k| format!("; did you mean \"{k}:{name}\"?"))
                    .unwrap_or_default();
                Err(UnknownValue(format!(
                    "{s:?} is not one of {}{hint}",
                    Self::FORMS.join(", ")
                )))
            }
            None => Err(UnknownValue(format!(
                "{s:?} is not one of {}{}",
                Self::FORMS.join(", "),
                suggest::hint(s, ["client_ip", "route"])
            ))),
        }
    }
}

/// A named rate-limit policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitConfig {
    /// What identifies one bucket.
    pub key: Vec<KeyPart>,
    /// The quota, or quotas by tier.
    pub quotas: Quotas,
    /// How often idle, fully replenished keys are pruned. Default 60 s.
    #[serde(serialize_with = "ser_duration")]
    pub idle_prune: Duration,
    /// `client_ip` keys of IPv6 clients cover this many leading bits (one customer usually
    /// holds a whole /64, so per-address keys would give each of them 2^64 buckets). Default 64.
    pub ipv6_prefix_len: u8,
    /// `enforce` (the default) or `shadow`: a shadow policy counts every request against its
    /// buckets and records what it would have refused, but never refuses (and never sends
    /// `RateLimit` fields).
    pub mode: Mode,
    /// The store holding the buckets, so every replica shares one quota per key. Default:
    /// none; the buckets are in this process (each replica enforces its own copy).
    pub store: Option<String>,
}

/// One quota for everyone, or a quota chosen by a token claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Quotas {
    /// The same quota for every key.
    Single {
        /// The quota.
        quota: Quota,
    },
    /// The claim's value names the tier; tokens without it (or unknown values) get `default`.
    Tiered {
        /// The claim naming the tier, e.g. `tier`.
        claim: String,
        /// Quotas by tier; always contains `default`.
        tiers: BTreeMap<String, Quota>,
    },
}

/// How a route's path is matched.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum PathMatch {
    /// The path starts with this, at a segment boundary (`/api` matches `/api` and `/api/x`,
    /// not `/apix`).
    Prefix(String),
    /// The path equals this.
    Exact(String),
    /// The path matches this regular expression (anchored).
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

/// How the path is changed before it is sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Rewrite {
    /// Sent as received.
    Keep,
    /// The matched prefix is removed (`/api/users/me` → `/me`).
    StripPrefix,
    /// The matched prefix is replaced (`/api/v1/x` → `/v2/x`).
    ReplacePrefix(String),
}

/// A route's authentication policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuthPolicy {
    /// No token needed; identity headers are still stripped.
    None,
    /// A valid token from one of `issuers` (all issuers when empty) with every scope in `scopes`.
    Required {
        /// Scopes the token must carry (`scope` string and/or `scp` array).
        scopes: Vec<String>,
        /// Issuer names allowed on this route; empty means any configured issuer.
        issuers: Vec<String>,
        /// `enforce` (the default) or `shadow` (the route's `auth_mode`): in shadow a request
        /// the policy refuses goes upstream anyway, without identity headers.
        mode: Mode,
    },
}

impl AuthPolicy {
    /// Whether refusals are enforced; `auth: none` has nothing to enforce and reports `enforce`.
    pub fn mode(&self) -> Mode {
        match self {
            AuthPolicy::None => Mode::Enforce,
            AuthPolicy::Required { mode, .. } => *mode,
        }
    }
}

/// A route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    /// Unique name, used in logs, spans and metric labels.
    pub name: String,
    /// Host to match (case-insensitive, port ignored); `None` matches any host.
    pub host: Option<String>,
    /// Path match.
    pub path: PathMatch,
    /// Methods to match; empty matches any.
    #[serde(serialize_with = "ser_methods")]
    pub methods: Vec<Method>,
    /// Upstream name.
    pub upstream: String,
    /// Path rewrite.
    pub rewrite: Rewrite,
    /// Authentication policy.
    pub auth: AuthPolicy,
    /// Rate-limit policy names, all applied in order.
    pub rate_limits: Vec<String>,
    /// Body limit for this route.
    pub max_body_bytes: u64,
    /// Accept an encoded slash (`%2F`) in the path, kept encoded; refused (400) otherwise.
    /// Default `false`.
    pub allow_encoded_slashes: bool,
}

impl Config {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                location: path.display().to_string(),
                message: format!("cannot read file: {e}"),
            }])
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Config::parse(&text, base)
    }

    /// Validates policy text; relative key file paths are resolved against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        validate::parse(text, base_dir)
    }

    /// The effective configuration as JSON, with secrets redacted, for the admin `/config`.
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

// === serde helpers: how typed values appear in /config ===

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn ser_header_name<S: serde::Serializer>(h: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_str())
}

fn ser_header_names<S: serde::Serializer>(h: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(|h| h.as_str()))
}

fn ser_methods<S: serde::Serializer>(m: &[Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter().map(|m| m.as_str()))
}

fn ser_algorithms<S: serde::Serializer>(a: &[Algorithm], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(a.iter().map(|a| format!("{a:?}")))
}

fn ser_regex<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

fn ser_redacted_url<S: serde::Serializer>(u: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(u))
}

/// The URL with any user-info hidden: the one redactor, shared with the services.
pub(crate) use observability::redact::redact_url;

#[cfg(test)]
mod tests;
