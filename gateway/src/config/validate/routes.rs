//! `routes`: what each route matches, where it goes, and what it requires. Checked last,
//! against the upstreams, issuers and rate-limit policies the other sections defined, with a
//! "did you mean …?" for a misspelt reference.

use std::collections::{BTreeMap, BTreeSet};

use http::Method;
use regex::Regex;

use super::super::raw::{RawMatch, RawRoute};
use super::super::suggest;
use super::super::ConfigError;
use super::super::{
    AuthMode, AuthPolicy, IssuerConfig, KeyPart, Mode, PathMatch, Quotas, RateLimitConfig, Rewrite,
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

/// Warnings about routes that are valid but may not mean what their author thinks: a route no
/// request can reach (an earlier route claims all its paths), and overlapping routes whose
/// protection differs (for paths both match, the earlier one decides — every method included).
pub(super) fn overlap_warnings(routes: &[RouteConfig]) -> Vec<ConfigError> {
    let mut warnings = Vec::new();
    let loc = |i: usize, r: &RouteConfig| format!("routes[{i}] {:?}", r.name);
    for (j, later) in routes.iter().enumerate() {
        for (i, earlier) in routes[..j].iter().enumerate() {
            if !hosts_overlap(earlier, later) {
                continue;
            }
            let grouped = crate::routing::same_target(earlier, later)
                && routes[i..=j]
                    .iter()
                    .all(|r| crate::routing::same_target(r, later));
            if grouped {
                continue;
            }
            if covers(earlier, later) {
                warnings.push(ConfigError {
                    location: loc(j, later),
                    message: format!(
                        "is unreachable: {} (earlier) matches every path it matches, and the first \
                         path match decides",
                        loc(i, earlier)
                    ),
                });
                break;
            }
            if earlier.auth != later.auth {
                if let Some(example) = overlap(earlier, later) {
                    warnings.push(ConfigError {
                        location: loc(j, later),
                        message: format!(
                            "overlaps {} (e.g. {example}) with different protection ({} vs {}); \
                             for paths both match, the earlier route decides",
                            loc(i, earlier),
                            protection(&later.auth),
                            protection(&earlier.auth),
                        ),
                    });
                }
            }
        }
    }
    warnings
}

fn protection(auth: &AuthPolicy) -> String {
    match auth {
        AuthPolicy::None => "auth: none".into(),
        AuthPolicy::Required {
            scopes,
            mode: Mode::Shadow,
            ..
        } => format!("auth in shadow, scopes [{}]", scopes.join(", ")),
        AuthPolicy::Required { scopes, .. } if scopes.is_empty() => "auth: required".into(),
        AuthPolicy::Required { scopes, .. } => format!("scopes [{}]", scopes.join(", ")),
    }
}

fn hosts_overlap(a: &RouteConfig, b: &RouteConfig) -> bool {
    match (&a.host, &b.host) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    }
}

/// Whether every path `b` matches is matched by `a` too (on hosts `a` covers).
fn covers(a: &RouteConfig, b: &RouteConfig) -> bool {
    if a.host.is_some() && a.host != b.host {
        return false;
    }
    match (&a.path, &b.path) {
        (PathMatch::Prefix(pa), PathMatch::Prefix(pb)) => prefix_under(pa, pb),
        (PathMatch::Prefix(pa), PathMatch::Exact(eb)) => prefix_under(pa, eb),
        (PathMatch::Exact(ea), PathMatch::Exact(eb)) => ea == eb,
        (PathMatch::Regex(ra), PathMatch::Regex(rb)) => ra.as_str() == rb.as_str(),
        (PathMatch::Regex(ra), PathMatch::Exact(eb)) => ra.is_match(eb),
        (PathMatch::Prefix(pa), PathMatch::Regex(rb)) => {
            pa.is_empty()
                || prefix_under(pa, literal_prefix(rb).trim_end_matches('/'))
                    && literal_prefix(rb).len() > pa.len()
        }
        _ => false,
    }
}

/// A path both routes match, if one is easy to find.
fn overlap(a: &RouteConfig, b: &RouteConfig) -> Option<String> {
    let samples = |r: &RouteConfig| -> Vec<String> {
        match &r.path {
            PathMatch::Exact(e) => vec![e.clone()],
            PathMatch::Prefix(p) => vec![format!("{p}/"), format!("{p}/x"), format!("{p}/x/y/z")],
            PathMatch::Regex(re) => {
                let lit = literal_prefix(re).to_string();
                let mut v = vec![lit.clone(), format!("{lit}x"), format!("{lit}x/stock")];
                v.retain(|s| re.is_match(s));
                v
            }
        }
    };
    samples(a)
        .into_iter()
        .chain(samples(b))
        .find(|p| {
            crate::routing::matches_target(a, b.host.as_deref().or(a.host.as_deref()), p)
                && crate::routing::matches_target(b, b.host.as_deref().or(a.host.as_deref()), p)
        })
        .or_else(|| {
            // A regex whose literal start lies under a prefix route overlaps it somewhere.
            let (prefix, re) = match (&a.path, &b.path) {
                (PathMatch::Prefix(p), PathMatch::Regex(r))
                | (PathMatch::Regex(r), PathMatch::Prefix(p)) => (p, r),
                _ => return None,
            };
            let lit = literal_prefix(re);
            (prefix.is_empty() || lit == prefix.as_str() || lit.starts_with(&format!("{prefix}/")))
                .then(|| format!("{lit}…"))
        })
}

/// Whether `path` is `prefix` or under it at a segment boundary.
fn prefix_under(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The literal text a regex route's paths start with (up to its first metacharacter).
fn literal_prefix(re: &Regex) -> &str {
    let src = re.as_str();
    let src = src
        .strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(src);
    let end = src
        .find(|c: char| "\\.+*?()|[]{}^$".contains(c))
        .unwrap_or(src.len());
    &src[..end]
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
        auth_mode,
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
    let auth = auth_policy(
        errs,
        loc,
        (auth.as_deref(), auth_mode.as_deref()),
        scopes,
        issuers,
        defined,
    );
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
    (mode, enforcement): (Option<&str>, Option<&str>),
    scopes: Vec<String>,
    issuers: Vec<String>,
    defined: &Defined<'_>,
) -> AuthPolicy {
    let enforcement = super::mode(errs, &format!("{loc}.auth_mode"), enforcement);
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
            if enforcement == Mode::Shadow {
                errs.push(
                    format!("{loc}.auth_mode"),
                    "auth: none has nothing to shadow; use auth: required with auth_mode: shadow",
                );
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
            AuthPolicy::Required {
                scopes,
                issuers,
                mode: enforcement,
            }
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
