//! Turns a [`RawConfig`] into a [`Config`], collecting every error with its location.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, Method};
use jsonwebtoken::Algorithm;
use regex::Regex;
use serde::de::DeserializeOwned;

use super::raw::*;
use super::*;

/// Collects errors as validation walks the file.
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            location: location.into(),
            message: message.into(),
        });
    }

    /// Deserializes one section, recording a failure at `location`.
    fn section<T: DeserializeOwned>(
        &mut self,
        location: &str,
        value: serde_yaml::Value,
    ) -> Option<T> {
        match serde_yaml::from_value::<T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(location, e.to_string());
                None
            }
        }
    }
}

pub(super) fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let location = e
                .location()
                .map(|l| format!("line {}, column {}", l.line(), l.column()))
                .unwrap_or_else(|| "file".to_string());
            return Err(ConfigErrors(vec![ConfigError {
                location,
                message: e.to_string(),
            }]));
        }
    };
    let mut errs = Errors(Vec::new());
    let config = build(raw, base_dir, &mut errs);
    if errs.0.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errs.0))
    }
}

/// `server.trusted_proxies`: CIDR networks or single addresses; never "everyone".
fn trusted_networks(errs: &mut Errors, raw: Vec<String>) -> Vec<ipnet::IpNet> {
    let mut networks = Vec::with_capacity(raw.len());
    for (i, entry) in raw.iter().enumerate() {
        let loc = format!("server.trusted_proxies[{i}]");
        let parsed = entry
            .parse::<ipnet::IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) if net.prefix_len() == 0 => errs.push(
                loc,
                format!("{entry:?} trusts every address, so any client could choose its own IP; list your proxies' networks"),
            ),
            Ok(net) => networks.push(net.trunc()),
            Err(_) => errs.push(
                loc,
                format!("{entry:?} is not an IP address or CIDR network (e.g. 10.0.0.0/8, 2001:db8::/32)"),
            ),
        }
    }
    networks
}

fn opt_section<T: DeserializeOwned + Default>(
    errs: &mut Errors,
    loc: &str,
    v: Option<serde_yaml::Value>,
) -> T {
    match v {
        None | Some(serde_yaml::Value::Null) => T::default(),
        Some(v) => errs.section(loc, v).unwrap_or_default(),
    }
}

fn build(raw: RawConfig, base_dir: &Path, errs: &mut Errors) -> Config {
    let RawConfig {
        listeners,
        admin,
        server,
        identity_headers,
        upstreams,
        issuers,
        rate_limits,
        routes,
    } = raw;

    let RawListeners {
        public,
        admin: admin_addr,
    } = opt_section(errs, "listeners", listeners);
    let public = addr(
        errs,
        "listeners.public",
        public.as_deref().unwrap_or("0.0.0.0:8080"),
    );
    let admin_addr = addr(
        errs,
        "listeners.admin",
        admin_addr.as_deref().unwrap_or("127.0.0.1:9901"),
    );

    let RawAdmin {
        token_env,
        allow_public_bind,
    } = opt_section(errs, "admin", admin);
    let allow_public_bind = allow_public_bind.unwrap_or(false);
    if !admin_addr.ip().is_loopback() && !allow_public_bind {
        errs.push(
            "listeners.admin",
            format!(
                "{admin_addr} is not a loopback address; the admin listener exposes metrics and config, \
                 so set admin.allow_public_bind: true if you really mean it"
            ),
        );
    }
    if public == admin_addr {
        errs.push("listeners.admin", "must differ from listeners.public");
    }
    let token_env = token_env.unwrap_or_else(|| "VANTAGE_ADMIN_TOKEN".to_string());
    if token_env.is_empty() {
        errs.push("admin.token_env", "must name an environment variable");
    }

    let RawServer {
        workers,
        max_body_bytes,
        grace_period_secs,
        shutdown_timeout_secs,
        reload_poll_ms,
        realm,
        trusted_proxies,
    } = opt_section(errs, "server", server);
    let workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if workers == 0 {
        errs.push("server.workers", "must be at least 1");
    }
    let max_body_bytes = max_body_bytes.unwrap_or(1024 * 1024);
    let realm = realm.unwrap_or_else(|| "vantage".to_string());
    if realm.contains('"') || realm.contains('\\') {
        errs.push("server.realm", "must not contain quotes or backslashes");
    }
    let trusted_proxies = trusted_networks(errs, trusted_proxies.unwrap_or_default());
    let server = ServerSettings {
        workers,
        max_body_bytes,
        grace_period: Duration::from_secs(grace_period_secs.unwrap_or(0)),
        shutdown_timeout: Duration::from_secs(shutdown_timeout_secs.unwrap_or(10)),
        reload_poll: Duration::from_millis(reload_poll_ms.unwrap_or(1000)),
        realm,
        trusted_proxies,
    };

    let extra: Vec<String> = opt_section(errs, "identity_headers", identity_headers);
    let mut identity = vec![
        HeaderName::from_static("x-user-id"),
        HeaderName::from_static("x-user-scopes"),
    ];
    for (i, h) in extra.iter().enumerate() {
        match HeaderName::from_str(h) {
            Ok(h) if !identity.contains(&h) => identity.push(h),
            Ok(_) => {}
            Err(_) => errs.push(
                format!("identity_headers[{i}]"),
                format!("{h:?} is not a valid header name"),
            ),
        }
    }

    let upstreams: BTreeMap<String, UpstreamConfig> = upstreams
        .into_iter()
        .filter_map(|(name, v)| {
            let loc = format!("upstreams.{name}");
            let raw: RawUpstream = errs.section(&loc, v)?;
            Some((name, upstream(errs, &loc, raw)))
        })
        .collect();

    let issuers: BTreeMap<String, IssuerConfig> = issuers
        .into_iter()
        .filter_map(|(name, v)| {
            let loc = format!("issuers.{name}");
            let raw: RawIssuer = errs.section(&loc, v)?;
            Some((name, issuer(errs, &loc, raw, base_dir)))
        })
        .collect();

    let rate_limits: BTreeMap<String, RateLimitConfig> = rate_limits
        .into_iter()
        .filter_map(|(name, v)| {
            let loc = format!("rate_limits.{name}");
            let raw: RawRateLimit = errs.section(&loc, v)?;
            Some((name, rate_limit(errs, &loc, raw)))
        })
        .collect();

    let mut names = BTreeSet::new();
    let mut out_routes = Vec::new();
    for (i, v) in routes.into_iter().enumerate() {
        let name_hint = v
            .get("name")
            .and_then(|n| n.as_str())
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        let loc = format!("routes[{i}]{name_hint}");
        let Some(raw) = errs.section::<RawRoute>(&loc, v) else {
            continue;
        };
        if !names.insert(raw.name.clone()) {
            errs.push(format!("{loc}.name"), "duplicate route name");
        }
        if let Some(r) = route(
            errs,
            &loc,
            raw,
            &upstreams,
            &issuers,
            &rate_limits,
            max_body_bytes,
        ) {
            out_routes.push(r);
        }
    }
    if out_routes.is_empty() && errs.0.is_empty() {
        errs.push("routes", "at least one route is needed");
    }

    Config {
        listeners: Listeners {
            public,
            admin: admin_addr,
        },
        admin: AdminSettings {
            token_env,
            allow_public_bind,
        },
        server,
        identity_headers: identity,
        upstreams,
        issuers,
        rate_limits,
        routes: out_routes,
    }
}

fn addr(errs: &mut Errors, loc: &str, s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| {
        errs.push(loc, format!("{s:?} is not an address like 127.0.0.1:8080"));
        SocketAddr::from(([0, 0, 0, 0], 0))
    })
}

/// `host:port` with a valid port and a non-empty host (names are resolved at load, not here,
/// so `gateway validate` works anywhere).
fn host_port(errs: &mut Errors, loc: &str, s: &str) -> String {
    if s.parse::<SocketAddr>().is_ok() {
        return s.to_string();
    }
    let ok = s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok_and(|p| p > 0)
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    });
    if !ok {
        errs.push(
            loc,
            format!("{s:?} is not host:port like 127.0.0.1:7001 or users:7001"),
        );
    }
    s.to_string()
}

fn positive(errs: &mut Errors, loc: &str, v: Option<u64>, default: u64) -> u64 {
    let v = v.unwrap_or(default);
    if v == 0 {
        errs.push(loc, "must be greater than 0");
    }
    v
}

fn upstream(errs: &mut Errors, loc: &str, raw: RawUpstream) -> UpstreamConfig {
    let RawUpstream {
        endpoints,
        load_balancing,
        connect_timeout_ms,
        read_timeout_ms,
        retries,
        health_check,
        passive_ejection,
        circuit_breaker,
    } = raw;
    if endpoints.is_empty() {
        errs.push(
            format!("{loc}.endpoints"),
            "at least one endpoint is needed",
        );
    }
    let endpoints = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| host_port(errs, &format!("{loc}.endpoints[{i}]"), e))
        .collect();
    let load_balancing = match load_balancing.as_deref().unwrap_or("round_robin") {
        "round_robin" => LoadBalancing::RoundRobin,
        "least_connections" => LoadBalancing::LeastConnections,
        other => {
            errs.push(
                format!("{loc}.load_balancing"),
                format!("{other:?} is not one of round_robin, least_connections"),
            );
            LoadBalancing::RoundRobin
        }
    };
    let health_check = health_check.map(|h| {
        let RawHealthCheck {
            path,
            interval_ms,
            timeout_ms,
            healthy_threshold,
            unhealthy_threshold,
        } = h;
        let hl = format!("{loc}.health_check");
        let path = path.unwrap_or_else(|| "/healthz".to_string());
        if !path.starts_with('/') {
            errs.push(format!("{hl}.path"), "must start with /");
        }
        HealthCheckConfig {
            path,
            interval: Duration::from_millis(positive(
                errs,
                &format!("{hl}.interval_ms"),
                interval_ms,
                2000,
            )),
            timeout: Duration::from_millis(positive(
                errs,
                &format!("{hl}.timeout_ms"),
                timeout_ms,
                1000,
            )),
            healthy_threshold: positive(
                errs,
                &format!("{hl}.healthy_threshold"),
                healthy_threshold.map(u64::from),
                1,
            ) as u32,
            unhealthy_threshold: positive(
                errs,
                &format!("{hl}.unhealthy_threshold"),
                unhealthy_threshold.map(u64::from),
                2,
            ) as u32,
        }
    });
    let passive_ejection = {
        let RawPassive {
            consecutive_failures,
            ejection_secs,
        } = passive_ejection.unwrap_or(RawPassive {
            consecutive_failures: None,
            ejection_secs: None,
        });
        let pl = format!("{loc}.passive_ejection");
        PassiveEjectionConfig {
            consecutive_failures: positive(
                errs,
                &format!("{pl}.consecutive_failures"),
                consecutive_failures.map(u64::from),
                3,
            ) as u32,
            ejection: Duration::from_secs(positive(
                errs,
                &format!("{pl}.ejection_secs"),
                ejection_secs,
                10,
            )),
        }
    };
    let circuit_breaker = {
        let RawBreaker {
            failure_threshold,
            open_secs,
        } = circuit_breaker.unwrap_or(RawBreaker {
            failure_threshold: None,
            open_secs: None,
        });
        let cl = format!("{loc}.circuit_breaker");
        CircuitBreakerConfig {
            failure_threshold: positive(
                errs,
                &format!("{cl}.failure_threshold"),
                failure_threshold.map(u64::from),
                5,
            ) as u32,
            open_for: Duration::from_secs(positive(
                errs,
                &format!("{cl}.open_secs"),
                open_secs,
                10,
            )),
        }
    };
    UpstreamConfig {
        endpoints,
        load_balancing,
        connect_timeout: Duration::from_millis(positive(
            errs,
            &format!("{loc}.connect_timeout_ms"),
            connect_timeout_ms,
            1000,
        )),
        read_timeout: Duration::from_millis(positive(
            errs,
            &format!("{loc}.read_timeout_ms"),
            read_timeout_ms,
            10_000,
        )),
        retries: retries.unwrap_or(1),
        health_check,
        passive_ejection,
        circuit_breaker,
    }
}

fn issuer(errs: &mut Errors, loc: &str, raw: RawIssuer, base_dir: &Path) -> IssuerConfig {
    let RawIssuer {
        issuer,
        audiences,
        algorithms,
        jwks_url,
        jwks_file,
        pem_file,
        pem_kid,
        refresh_interval_secs,
        min_refresh_interval_secs,
        leeway_secs,
        max_lifetime_secs,
    } = raw;
    if issuer.is_empty() {
        errs.push(format!("{loc}.issuer"), "must not be empty");
    }
    if algorithms.is_empty() {
        errs.push(
            format!("{loc}.algorithms"),
            "list at least one algorithm, e.g. [ES256]",
        );
    }
    let algorithms: Vec<Algorithm> = algorithms
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match Algorithm::from_str(a) {
            Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                errs.push(
                    format!("{loc}.algorithms[{i}]"),
                    format!("{a} is symmetric; only asymmetric algorithms (RS*, PS*, ES*, EdDSA) are accepted"),
                );
                None
            }
            Ok(alg) => Some(alg),
            Err(_) => {
                errs.push(format!("{loc}.algorithms[{i}]"), format!("{a:?} is not a JWS algorithm"));
                None
            }
        })
        .collect();
    let sources = [jwks_url.is_some(), jwks_file.is_some(), pem_file.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if sources != 1 {
        errs.push(loc, "set exactly one of jwks_url, jwks_file, pem_file");
    }
    let keys = if let Some(url) = jwks_url {
        match url::Url::parse(&url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => errs.push(format!("{loc}.jwks_url"), "must be an http(s) URL"),
        }
        KeySource::JwksUrl { url }
    } else if let Some(path) = jwks_file {
        let path = base_dir.join(path);
        if let Err(e) = crate::auth::keys::load_jwks_file(&path, &algorithms) {
            errs.push(format!("{loc}.jwks_file"), e.to_string());
        }
        KeySource::JwksFile { path }
    } else if let Some(path) = pem_file {
        let path = base_dir.join(path);
        if algorithms.len() != 1 {
            errs.push(
                format!("{loc}.algorithms"),
                "a pem_file issuer needs exactly one algorithm",
            );
        } else if let Err(e) =
            crate::auth::keys::load_pem_file(&path, algorithms[0], pem_kid.clone())
        {
            errs.push(format!("{loc}.pem_file"), e.to_string());
        }
        KeySource::PemFile { path, kid: pem_kid }
    } else {
        KeySource::JwksFile {
            path: base_dir.to_path_buf(),
        }
    };
    IssuerConfig {
        issuer,
        audiences,
        algorithms,
        keys,
        refresh_interval: Duration::from_secs(positive(
            errs,
            &format!("{loc}.refresh_interval_secs"),
            refresh_interval_secs,
            300,
        )),
        min_refresh_interval: Duration::from_secs(min_refresh_interval_secs.unwrap_or(10)),
        leeway_secs: leeway_secs.unwrap_or(30),
        max_lifetime_secs: positive(
            errs,
            &format!("{loc}.max_lifetime_secs"),
            max_lifetime_secs,
            86_400,
        ),
    }
}

fn quota(errs: &mut Errors, loc: &str, rate: u32, per: &str, burst: Option<u32>) -> Quota {
    let per = match per {
        "second" => Duration::from_secs(1),
        "minute" => Duration::from_secs(60),
        "hour" => Duration::from_secs(3600),
        other => {
            errs.push(
                format!("{loc}.per"),
                format!("{other:?} is not one of second, minute, hour"),
            );
            Duration::from_secs(1)
        }
    };
    if rate == 0 {
        errs.push(format!("{loc}.rate"), "must be greater than 0");
    }
    let burst = burst.unwrap_or(rate);
    if burst == 0 {
        errs.push(format!("{loc}.burst"), "must be greater than 0");
    }
    Quota { rate, per, burst }
}

fn rate_limit(errs: &mut Errors, loc: &str, raw: RawRateLimit) -> RateLimitConfig {
    let RawRateLimit {
        key,
        rate,
        per,
        burst,
        tier_claim,
        tiers,
        idle_prune_secs,
    } = raw;
    if key.is_empty() {
        errs.push(
            format!("{loc}.key"),
            "list at least one key part, e.g. [client_ip]",
        );
    }
    let key = key
        .iter()
        .enumerate()
        .filter_map(|(i, k)| {
            let kl = format!("{loc}.key[{i}]");
            match k.split_once(':') {
                None if k == "client_ip" => Some(KeyPart::ClientIp),
                None if k == "route" => Some(KeyPart::Route),
                Some(("claim", c)) if !c.is_empty() => Some(KeyPart::Claim(c.to_string())),
                Some(("header", h)) => match HeaderName::from_str(h) {
                    Ok(h) => Some(KeyPart::Header(h)),
                    Err(_) => {
                        errs.push(kl, format!("{h:?} is not a valid header name"));
                        None
                    }
                },
                _ => {
                    errs.push(
                        kl,
                        format!("{k:?} is not one of client_ip, route, claim:NAME, header:NAME"),
                    );
                    None
                }
            }
        })
        .collect();
    let quotas = match (tier_claim, tiers) {
        (Some(claim), Some(tiers)) => {
            if rate.is_some() || per.is_some() || burst.is_some() {
                errs.push(
                    loc,
                    "a tiered policy sets rate/per/burst inside each tier, not at the top",
                );
            }
            if !tiers.contains_key("default") {
                errs.push(
                    format!("{loc}.tiers"),
                    "must contain a `default` tier for tokens without the claim",
                );
            }
            let tiers = tiers
                .into_iter()
                .map(|(name, q)| {
                    let q = quota(
                        errs,
                        &format!("{loc}.tiers.{name}"),
                        q.rate,
                        &q.per,
                        q.burst,
                    );
                    (name, q)
                })
                .collect();
            Quotas::Tiered { claim, tiers }
        }
        (None, None) => match (rate, per) {
            (Some(rate), Some(per)) => Quotas::Single {
                quota: quota(errs, loc, rate, &per, burst),
            },
            _ => {
                errs.push(loc, "set rate and per (or tier_claim and tiers)");
                Quotas::Single {
                    quota: Quota {
                        rate: 1,
                        per: Duration::from_secs(1),
                        burst: 1,
                    },
                }
            }
        },
        _ => {
            errs.push(loc, "tier_claim and tiers go together");
            Quotas::Single {
                quota: Quota {
                    rate: 1,
                    per: Duration::from_secs(1),
                    burst: 1,
                },
            }
        }
    };
    RateLimitConfig {
        key,
        quotas,
        idle_prune: Duration::from_secs(positive(
            errs,
            &format!("{loc}.idle_prune_secs"),
            idle_prune_secs,
            60,
        )),
    }
}

fn route(
    errs: &mut Errors,
    loc: &str,
    raw: RawRoute,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    issuers: &BTreeMap<String, IssuerConfig>,
    rate_limits: &BTreeMap<String, RateLimitConfig>,
    default_body: u64,
) -> Option<RouteConfig> {
    let RawRoute {
        name,
        matcher,
        upstream,
        strip_prefix,
        rewrite_prefix,
        auth,
        scopes,
        issuers: route_issuers,
        rate_limits: limits,
        max_body_bytes,
    } = raw;
    let before = errs.0.len();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        errs.push(
            format!("{loc}.name"),
            "use letters, digits, - and _ (it becomes a metric label)",
        );
    }
    let RawMatch {
        host,
        path_prefix,
        path_exact,
        path_regex,
        methods,
    } = matcher;
    let path = match (path_prefix, path_exact, path_regex) {
        (Some(p), None, None) => {
            if !p.starts_with('/') {
                errs.push(format!("{loc}.match.path_prefix"), "must start with /");
            }
            PathMatch::Prefix(p.trim_end_matches('/').to_string())
        }
        (None, Some(p), None) => {
            if !p.starts_with('/') {
                errs.push(format!("{loc}.match.path_exact"), "must start with /");
            }
            PathMatch::Exact(p)
        }
        (None, None, Some(r)) => match Regex::new(&format!("^(?:{r})$")) {
            Ok(re) => PathMatch::Regex(re),
            Err(e) => {
                errs.push(
                    format!("{loc}.match.path_regex"),
                    format!("invalid regex: {e}"),
                );
                PathMatch::Exact(String::new())
            }
        },
        _ => {
            errs.push(
                format!("{loc}.match"),
                "set exactly one of path_prefix, path_exact, path_regex",
            );
            PathMatch::Exact(String::new())
        }
    };
    let methods = methods
        .iter()
        .enumerate()
        .filter_map(
            |(i, m)| match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    errs.push(
                        format!("{loc}.match.methods[{i}]"),
                        format!("{m:?} is not an HTTP method"),
                    );
                    None
                }
            },
        )
        .collect();
    if !upstreams.contains_key(&upstream) {
        errs.push(
            format!("{loc}.upstream"),
            format!(
                "unknown upstream {upstream:?} (defined: {})",
                upstreams.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    let rewrite = match (strip_prefix.unwrap_or(false), rewrite_prefix) {
        (false, None) => Rewrite::Keep,
        (true, None) => Rewrite::StripPrefix,
        (false, Some(p)) => {
            if !p.starts_with('/') {
                errs.push(format!("{loc}.rewrite_prefix"), "must start with /");
            }
            Rewrite::ReplacePrefix(p)
        }
        (true, Some(_)) => {
            errs.push(loc, "set strip_prefix or rewrite_prefix, not both");
            Rewrite::Keep
        }
    };
    if rewrite != Rewrite::Keep && !matches!(path, PathMatch::Prefix(_)) {
        errs.push(
            loc,
            "strip_prefix and rewrite_prefix need match.path_prefix",
        );
    }
    let auth = match auth.as_deref().unwrap_or("required") {
        "none" => {
            if !scopes.is_empty() || !route_issuers.is_empty() {
                errs.push(loc, "scopes and issuers need auth: required");
            }
            AuthPolicy::None
        }
        "required" => {
            if issuers.is_empty() {
                errs.push(
                    format!("{loc}.auth"),
                    "auth: required but no issuers are configured",
                );
            }
            for (i, s) in scopes.iter().enumerate() {
                if s.is_empty() || s.contains(' ') || s.contains('"') {
                    errs.push(
                        format!("{loc}.scopes[{i}]"),
                        "a scope is one token without spaces or quotes",
                    );
                }
            }
            for (i, iss) in route_issuers.iter().enumerate() {
                if !issuers.contains_key(iss) {
                    errs.push(
                        format!("{loc}.issuers[{i}]"),
                        format!("unknown issuer {iss:?}"),
                    );
                }
            }
            AuthPolicy::Required {
                scopes,
                issuers: route_issuers,
            }
        }
        other => {
            errs.push(
                format!("{loc}.auth"),
                format!("{other:?} is not one of none, required"),
            );
            AuthPolicy::None
        }
    };
    for (i, l) in limits.iter().enumerate() {
        match rate_limits.get(l) {
            None => errs.push(
                format!("{loc}.rate_limits[{i}]"),
                format!("unknown rate-limit policy {l:?}"),
            ),
            Some(policy) => {
                let needs_token = policy.key.iter().any(|k| matches!(k, KeyPart::Claim(_)))
                    || matches!(policy.quotas, Quotas::Tiered { .. });
                if needs_token && auth == AuthPolicy::None {
                    errs.push(
                        format!("{loc}.rate_limits[{i}]"),
                        format!("policy {l:?} keys on a token claim but the route has auth: none"),
                    );
                }
            }
        }
    }
    if errs.0.len() > before {
        return None;
    }
    Some(RouteConfig {
        name,
        host: host.map(|h| h.to_ascii_lowercase()),
        path,
        methods,
        upstream,
        rewrite,
        auth,
        rate_limits: limits,
        max_body_bytes: max_body_bytes.unwrap_or(default_body),
    })
}
