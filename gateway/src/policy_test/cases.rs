//! The cases file: parsed once into typed cases, with every error reported with its location
//! (`cases[3] "name".expect.route: …`), checked against the policy's routes, issuers and
//! rate-limit policies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;

use super::keys::{TestKey, GENERATED};
use crate::auth::{AuthResult, Reject};
use crate::config::{suggest, Config, ConfigError};
use crate::explain::ExplainRequest;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    keys: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    cases: Vec<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    issuer: String,
    algorithm: Option<String>,
    kid: Option<String>,
    trusted: Option<bool>,
    private_key_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    request: RawRequest,
    repeat: Option<u32>,
    expect: RawExpect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    client_ip: Option<String>,
    token: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMinted {
    key: String,
    #[serde(default)]
    claims: serde_json::Map<String, Value>,
    expires_in_secs: Option<i64>,
    kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    status: Option<u16>,
    route: Option<String>,
    auth: Option<String>,
    limit: Option<String>,
    identity: Option<String>,
    trail_contains: Option<String>,
}

/// A token to send: minted from a test key, or given as is.
pub(super) enum Token {
    /// Sent as is (e.g. `not.a.jwt`).
    Raw(String),
    /// Minted at run time.
    Minted {
        key: String,
        /// Claims over the defaults; `null` removes a default.
        claims: serde_json::Map<String, Value>,
        expires_in_secs: i64,
        kid: Option<String>,
    },
}

/// One case.
pub(super) struct Case {
    pub(super) name: String,
    pub(super) request: ExplainRequest,
    pub(super) token: Option<Token>,
    /// Times the request is sent; the expectation is checked on the last.
    pub(super) repeat: u32,
    pub(super) expect: Expect,
}

/// What a case expects; absent fields are not checked.
#[derive(Default)]
pub(super) struct Expect {
    pub(super) status: Option<u16>,
    /// A route name, or `none`.
    pub(super) route: Option<String>,
    /// An auth result (`allowed`, `skipped`, `denied`, `forbidden`) or reason code.
    pub(super) auth: Option<String>,
    /// `policy` (consulted) or `policy:allowed` / `policy:limited`.
    pub(super) limit: Option<(String, Option<String>)>,
    /// The `x-user-id` the upstream receives, or `none`.
    pub(super) identity: Option<String>,
    pub(super) trail_contains: Option<String>,
}

/// A parsed cases file.
pub(super) struct Cases {
    pub(super) keys: BTreeMap<String, TestKey>,
    pub(super) cases: Vec<Case>,
}

/// Default `expires_in_secs` of a minted token.
const DEFAULT_EXPIRES_IN_SECS: i64 = 300;

/// Reads and checks the cases file at `path` against `config`.
pub(super) fn load(path: &Path, config: &Config) -> Result<Cases, Vec<ConfigError>> {
    let err = |location: String, message: String| ConfigError { location, message };
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![err(
            path.display().to_string(),
            format!("cannot read file: {e}"),
        )]
    })?;
    let raw: RawFile = serde_yaml::from_str(&text).map_err(|e| {
        let location = e
            .location()
            .map(|l| format!("line {}, column {}", l.line(), l.column()))
            .unwrap_or_else(|| "file".into());
        vec![err(location, e.to_string())]
    })?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let mut errors = Vec::new();
    let keys = parse_keys(raw.keys, config, base, &mut errors);
    let mut names = BTreeSet::new();
    let mut cases = Vec::new();
    if raw.cases.is_empty() {
        errors.push(err("cases".into(), "list at least one case".into()));
    }
    for (i, value) in raw.cases.into_iter().enumerate() {
        let hint = value
            .get("name")
            .and_then(|n| n.as_str())
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        let loc = format!("cases[{i}]{hint}");
        let raw: RawCase = match serde_yaml::from_value(value) {
            Ok(r) => r,
            Err(e) => {
                errors.push(err(loc, e.to_string()));
                continue;
            }
        };
        if !names.insert(raw.name.clone()) {
            errors.push(err(format!("{loc}.name"), "duplicate case name".into()));
        }
        let before = errors.len();
        let case = parse_case(&loc, raw, config, &keys, &mut errors);
        if errors.len() == before {
            cases.push(case);
        }
    }
    if errors.is_empty() {
        Ok(Cases { keys, cases })
    } else {
        Err(errors)
    }
}

fn parse_keys(
    raw: BTreeMap<String, serde_yaml::Value>,
    config: &Config,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, TestKey> {
    let mut keys = BTreeMap::new();
    for (name, value) in raw {
        let loc = format!("keys.{name}");
        let raw: RawKey = match serde_yaml::from_value(value) {
            Ok(r) => r,
            Err(e) => {
                errors.push(ConfigError {
                    location: loc,
                    message: e.to_string(),
                });
                continue;
            }
        };
        let RawKey {
            issuer,
            algorithm,
            kid,
            trusted,
            private_key_file,
        } = raw;
        let mut push = |at: &str, message: String| {
            errors.push(ConfigError {
                location: format!("{loc}{at}"),
                message,
            })
        };
        let Some(issuer_cfg) = config.issuers.get(&issuer) else {
            push(
                ".issuer",
                format!(
                    "unknown issuer {issuer:?} (the policy's: {}){}",
                    config
                        .issuers
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    suggest::hint(&issuer, config.issuers.keys().map(String::as_str))
                ),
            );
            continue;
        };
        let alg = match algorithm.as_deref().map(Algorithm::from_str) {
            None => Algorithm::ES256,
            Some(Ok(alg)) => alg,
            Some(Err(_)) => {
                push(
                    ".algorithm",
                    format!("{:?} is not a JWS algorithm", algorithm.unwrap_or_default()),
                );
                continue;
            }
        };
        let trusted = trusted.unwrap_or(true);
        if trusted && !issuer_cfg.algorithms.contains(&alg) {
            push(
                ".algorithm",
                format!(
                    "issuer {issuer} accepts {:?}, not {alg:?} (set trusted: false to test a refused algorithm)",
                    issuer_cfg.algorithms
                ),
            );
            continue;
        }
        if private_key_file.is_none() && !GENERATED.contains(&alg) {
            push(
                ".private_key_file",
                format!("{alg:?} keys are not generated; give a PEM private key"),
            );
            continue;
        }
        let file = private_key_file.map(|f| base.join(f));
        match TestKey::new(issuer, alg, kid, trusted, file.as_deref()) {
            Ok(key) => {
                keys.insert(name, key);
            }
            Err(message) => push("", message),
        }
    }
    keys
}

fn parse_case(
    loc: &str,
    raw: RawCase,
    config: &Config,
    keys: &BTreeMap<String, TestKey>,
    errors: &mut Vec<ConfigError>,
) -> Case {
    let RawCase {
        name,
        request,
        repeat,
        expect,
    } = raw;
    let mut push = |at: &str, message: String| {
        errors.push(ConfigError {
            location: format!("{loc}.{at}"),
            message,
        })
    };
    if name.is_empty() {
        push("name", "must not be empty".into());
    }
    let RawRequest {
        method,
        url,
        headers,
        client_ip,
        token,
    } = request;
    let client_ip = match client_ip.as_deref().map(IpAddr::from_str) {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(Ok(ip)) => ip,
        Some(Err(_)) => {
            push(
                "request.client_ip",
                format!("{:?} is not an IP address", client_ip.unwrap_or_default()),
            );
            IpAddr::from([127, 0, 0, 1])
        }
    };
    let request = ExplainRequest {
        method,
        url,
        headers: headers
            .into_iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect(),
        client_ip,
    };
    if let Err(message) = crate::explain::request_head(&request) {
        push("request", message);
    }
    let token = token.and_then(|t| match t {
        serde_yaml::Value::String(s) => Some(Token::Raw(s)),
        other => match serde_yaml::from_value::<RawMinted>(other) {
            Ok(m) => {
                if !keys.contains_key(&m.key) {
                    push(
                        "request.token.key",
                        format!(
                            "unknown key {:?} (the file's: {}){}",
                            m.key,
                            keys.keys().cloned().collect::<Vec<_>>().join(", "),
                            suggest::hint(&m.key, keys.keys().map(String::as_str))
                        ),
                    );
                }
                Some(Token::Minted {
                    key: m.key,
                    claims: m.claims,
                    expires_in_secs: m.expires_in_secs.unwrap_or(DEFAULT_EXPIRES_IN_SECS),
                    kid: m.kid,
                })
            }
            Err(e) => {
                push("request.token", e.to_string());
                None
            }
        },
    });
    let repeat = repeat.unwrap_or(1);
    if repeat == 0 {
        push("repeat", "must be at least 1".into());
    }
    let RawExpect {
        status,
        route,
        auth,
        limit,
        identity,
        trail_contains,
    } = expect;
    if status.is_none()
        && route.is_none()
        && auth.is_none()
        && limit.is_none()
        && identity.is_none()
        && trail_contains.is_none()
    {
        push(
            "expect",
            "expect at least one of status, route, auth, limit, identity, trail_contains".into(),
        );
    }
    if let Some(s) = status.filter(|s| !(100..=599).contains(s)) {
        push("expect.status", format!("{s} is not an HTTP status"));
    }
    if let Some(r) = route.as_deref().filter(|r| *r != "none") {
        if !config.routes.iter().any(|c| c.name == r) {
            push(
                "expect.route",
                format!(
                    "unknown route {r:?} (or none){}",
                    suggest::hint(r, config.routes.iter().map(|c| c.name.as_str()))
                ),
            );
        }
    }
    if let Some(a) = &auth {
        let known = auth_values();
        if !known.contains(&a.as_str()) {
            push(
                "expect.auth",
                format!(
                    "{a:?} is not an auth result or reason ({}){}",
                    known.join(", "),
                    suggest::hint(a, known.iter().copied())
                ),
            );
        }
    }
    let limit = limit.map(|l| {
        let (policy, result) = match l.split_once(':') {
            Some((p, r)) => (p.to_string(), Some(r.to_string())),
            None => (l.clone(), None),
        };
        if !config.rate_limits.contains_key(&policy) {
            push(
                "expect.limit",
                format!(
                    "unknown rate-limit policy {policy:?}{}",
                    suggest::hint(&policy, config.rate_limits.keys().map(String::as_str))
                ),
            );
        }
        if let Some(r) = result
            .as_deref()
            .filter(|r| !["allowed", "limited"].contains(r))
        {
            push(
                "expect.limit",
                format!("{r:?} is not allowed or limited (write policy or policy:limited)"),
            );
        }
        (policy, result)
    });
    Case {
        name,
        request,
        token,
        repeat,
        expect: Expect {
            status,
            route,
            auth,
            limit,
            identity,
            trail_contains,
        },
    }
}

/// The values `expect.auth` may take: results and reasons.
fn auth_values() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = [
        AuthResult::Skipped,
        AuthResult::Allowed,
        AuthResult::Denied,
        AuthResult::Forbidden,
    ]
    .iter()
    .map(|r| r.as_str())
    .collect();
    v.push("insufficient_scope");
    v.extend(Reject::ALL.iter().map(|r| r.code()));
    v
}
