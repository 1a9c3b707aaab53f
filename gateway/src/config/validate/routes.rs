//! `routes`: what each route matches, where it goes, and what it requires. Checked last,
//! against the upstreams, issuers and rate-limit policies the other sections defined, with a
//! "did you mean …?" for a misspelt reference.

use std::collections::{BTreeMap, BTreeSet};

use http::Method;
use regex::Regex;

use super::super::raw::{RawMatch, RawRoute};
use super::super::suggest;
use super::super::{
    AuthMode, AuthPolicy, IssuerConfig, KeyPart, PathMatch, Quotas, RateLimitConfig, Rewrite,
    RouteConfig, UpstreamConfig,
};
use super::Errors;

/// The names routes may refer to, and the body limit they inherit.
pub(super) struct Defined<'a> {
    pub(super) upstreams: &'a BTreeMap<String, UpstreamConfig>,
    pub(super) issuers: &'a BTreeMap<String, IssuerConfig>,
    pub(super) rate_limits: &'a BTreeMap<String, RateLimitConfig>,
    pub(super) max_body_bytes: u64,
}

pub(super) fn routes(
    errs: &mut Errors,
    raw: Vec<serde_yaml::Value>,
    defined: &Defined<'_>,
) -> Vec<RouteConfig> {
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (i, v) in raw.into_iter().enumerate() {
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
        if let Some(r) = route(errs, &loc, raw, defined) {
            out.push(r);
        }
    }
    if out.is_empty() && errs.count() == 0 {
        errs.push("routes", "at least one route is needed");
    }
    out
}

fn route(
    errs: &mut Errors,
    loc: &str,
    raw: RawRoute,
    defined: &Defined<'_>,
) -> Option<RouteConfig> {
    let RawRoute {
        name,
        matcher,
        upstream,
        strip_prefix,
        rewrite_prefix,
        auth,
        scopes,
        issuers,
        rate_limits,
        max_body_bytes,
        allow_encoded_slashes,
    } = raw;
    let before = errs.count();
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
    let path = path_match(errs, loc, path_prefix, path_exact, path_regex);
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
    if !defined.upstreams.contains_key(&upstream) {
        errs.push(
            format!("{loc}.upstream"),
            format!(
                "unknown upstream {upstream:?} (defined: {}){}",
                defined
                    .upstreams
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                suggest::hint(&upstream, defined.upstreams.keys().map(String::as_str)),
            ),
        );
    }
    let rewrite = rewrite(errs, loc, strip_prefix, rewrite_prefix);
    if rewrite != Rewrite::Keep && !matches!(path, PathMatch::Prefix(_)) {
        errs.push(
            loc,
            "strip_prefix and rewrite_prefix need match.path_prefix",
        );
    }
    let auth = auth_policy(errs, loc, auth.as_deref(), scopes, issuers, defined);
    check_rate_limits(errs, loc, &rate_limits, &auth, defined);
    if errs.count() > before {
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
        rate_limits,
        max_body_bytes: max_body_bytes.unwrap_or(defined.max_body_bytes),
        allow_encoded_slashes: allow_encoded_slashes.unwrap_or(false),
    })
}

fn path_match(
    errs: &mut Errors,
    loc: &str,
    prefix: Option<String>,
    exact: Option<String>,
    regex: Option<String>,
) -> PathMatch {
    match (prefix, exact, regex) {
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
    }
}

fn rewrite(
    errs: &mut Errors,
    loc: &str,
    strip_prefix: Option<bool>,
    rewrite_prefix: Option<String>,
) -> Rewrite {
    match (strip_prefix.unwrap_or(false), rewrite_prefix) {
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
    }
}

fn auth_policy(
    errs: &mut Errors,
    loc: &str,
    mode: Option<&str>,
    scopes: Vec<String>,
    issuers: Vec<String>,
    defined: &Defined<'_>,
) -> AuthPolicy {
    let mode = match mode.map(str::parse::<AuthMode>) {
        None => AuthMode::Required,
        Some(Ok(mode)) => mode,
        Some(Err(e)) => {
            errs.push(format!("{loc}.auth"), e.to_string());
            return AuthPolicy::None;
        }
    };
    match mode {
        AuthMode::None => {
            if !scopes.is_empty() || !issuers.is_empty() {
                errs.push(loc, "scopes and issuers need auth: required");
            }
            AuthPolicy::None
        }
        AuthMode::Required => {
            if defined.issuers.is_empty() {
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
            for (i, iss) in issuers.iter().enumerate() {
                if !defined.issuers.contains_key(iss) {
                    errs.push(
                        format!("{loc}.issuers[{i}]"),
                        format!(
                            "unknown issuer {iss:?}{}",
                            suggest::hint(iss, defined.issuers.keys().map(String::as_str))
                        ),
                    );
                }
            }
            AuthPolicy::Required { scopes, issuers }
        }
    }
}

fn check_rate_limits(
    errs: &mut Errors,
    loc: &str,
    limits: &[String],
    auth: &AuthPolicy,
    defined: &Defined<'_>,
) {
    for (i, l) in limits.iter().enumerate() {
        match defined.rate_limits.get(l) {
            None => errs.push(
                format!("{loc}.rate_limits[{i}]"),
                format!(
                    "unknown rate-limit policy {l:?}{}",
                    suggest::hint(l, defined.rate_limits.keys().map(String::as_str))
                ),
            ),
            Some(policy) => {
                let needs_token = policy.key.iter().any(|k| matches!(k, KeyPart::Claim(_)))
                    || matches!(policy.quotas, Quotas::Tiered { .. });
                if needs_token && *auth == AuthPolicy::None {
                    errs.push(
                        format!("{loc}.rate_limits[{i}]"),
                        format!("policy {l:?} keys on a token claim but the route has auth: none"),
                    );
                }
            }
        }
    }
}
