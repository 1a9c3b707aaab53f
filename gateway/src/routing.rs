//! Route selection, host normalisation and path rewriting.
//!
//! Selection runs on the normalised path (see [`crate::normalize`]) and follows one rule:
//! **the first route, in file order, whose host and path match decides.** If it does not list
//! the request's method, the routes right after it with the very same host and path match are
//! tried for the method (so `GET` and `POST` of one path may be separate routes); if none lists
//! it, the answer is 405 with `Allow`. A method never falls through to a later route with another
//! path match, so `HEAD /api/admin/x` cannot reach a public `/api` route because the protected
//! `/api/admin` route lists only `GET`. A trailing slash is insignificant for exact and regex
//! matches (`/x/` matches `path_exact: /x`), as it is for prefixes.

use std::sync::Arc;

use http::Method;

use crate::config::{PathMatch, Rewrite, RouteConfig};
use crate::normalize;
use crate::problem::GatewayError;
use crate::state::Route;

/// Chooses the route for a request; `path` is normalised, `host` lower-case without port.
pub(crate) fn select<'r>(
    routes: &'r [Arc<Route>],
    host: Option<&str>,
    path: &str,
    method: &Method,
) -> Result<&'r Arc<Route>, GatewayError> {
    let chosen = select_on(routes, host, path, method)?;
    // A server that drops `;params` (Tomcat, Spring) reads another path: it must lead to the
    // same route, or the policy would be judged on a path the upstream never serves.
    if let Some(stripped) = normalize::without_params(path) {
        let other = select_on(routes, host, &stripped, method).ok();
        if other.is_none_or(|o| !Arc::ptr_eq(o, chosen)) {
            return Err(GatewayError::AmbiguousPath);
        }
    }
    Ok(chosen)
}

fn select_on<'r>(
    routes: &'r [Arc<Route>],
    host: Option<&str>,
    path: &str,
    method: &Method,
) -> Result<&'r Arc<Route>, GatewayError> {
    let Some(first) = routes
        .iter()
        .position(|r| matches_target(&r.config, host, path))
    else {
        return Err(GatewayError::NoRoute);
    };
    let decider = &routes[first].config;
    let group = routes[first..]
        .iter()
        .take_while(|r| same_target(&r.config, decider));
    let mut allow: Vec<&Method> = Vec::new();
    for route in group {
        if route.config.methods.is_empty() || route.config.methods.contains(method) {
            return Ok(route);
        }
        for m in &route.config.methods {
            if !allow.contains(&m) {
                allow.push(m);
            }
        }
    }
    Err(GatewayError::MethodNotAllowed {
        allow: allow
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Whether `route` matches a request's host and path (methods aside).
pub(crate) fn matches_target(route: &RouteConfig, host: Option<&str>, path: &str) -> bool {
    if let Some(want) = &route.host {
        if host != Some(want.as_str()) {
            return false;
        }
    }
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    match &route.path {
        PathMatch::Prefix(prefix) => prefix_matches(prefix, path),
        PathMatch::Exact(exact) => path == exact || trimmed == exact,
        PathMatch::Regex(re) => re.is_match(path) || re.is_match(trimmed),
    }
}

/// Whether two routes match exactly the same hosts and paths.
pub(crate) fn same_target(a: &RouteConfig, b: &RouteConfig) -> bool {
    a.host == b.host
        && match (&a.path, &b.path) {
            (PathMatch::Prefix(x), PathMatch::Prefix(y))
            | (PathMatch::Exact(x), PathMatch::Exact(y)) => x == y,
            (PathMatch::Regex(x), PathMatch::Regex(y)) => x.as_str() == y.as_str(),
            _ => false,
        }
}

/// Prefix match at a segment boundary. Prefixes are stored without a trailing `/`, so the root
/// prefix is empty and matches everything.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The route's path pattern as `http.route` (low cardinality): `/api/cart/*` for a prefix,
/// the exact path, or the regular expression as written.
pub(crate) fn template(route: &RouteConfig) -> String {
    match &route.path {
        PathMatch::Prefix(p) => format!("{p}/*"),
        PathMatch::Exact(p) => p.clone(),
        PathMatch::Regex(re) => {
            let src = re.as_str();
            src.strip_prefix("^(?:")
                .and_then(|s| s.strip_suffix(")$"))
                .unwrap_or(src)
                .to_string()
        }
    }
}

/// The host of a request, from its `Host` header (or URI authority), lower-cased, port and
/// trailing dot removed. `target_authority` is the authority of an absolute-form target
/// (`GET http://host/path`), which must name the same host as `Host`.
pub(crate) fn request_host(
    headers: &http::HeaderMap,
    uri: &http::Uri,
    target_authority: Option<&str>,
) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all(http::header::HOST).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(GatewayError::BadHost("several Host headers"));
    }
    let header = match header {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| GatewayError::BadHost("the Host header is not ASCII"))?,
        ),
        None => None,
    };
    let authority = target_authority.or_else(|| uri.authority().map(|a| a.as_str()));
    let host = match (header.map(host_of), authority.map(host_of)) {
        (Some(h), Some(a)) if h != a => {
            return Err(GatewayError::BadHost(
                "the Host header disagrees with the request target",
            ))
        }
        (Some(h), _) | (None, Some(h)) => h,
        (None, None) => return Ok(None),
    };
    Ok(Some(host))
}

/// `host[:port]` → the host, lower-case, without a trailing dot (`Shop.Example.:80` →
/// `shop.example`). An IPv6 literal keeps its brackets.
fn host_of(raw: &str) -> String {
    let host = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// The authority of an absolute-form request target (`http://host:port/path` → `host:port`).
pub(crate) fn target_authority(raw_target: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(raw_target).ok()?;
    let (_, rest) = s.split_once("://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The path (and query) to send upstream.
pub(crate) fn rewrite(route: &RouteConfig, path: &str, query: Option<&str>) -> Option<String> {
    let PathMatch::Prefix(prefix) = &route.path else {
        return None;
    };
    let rest = path.strip_prefix(prefix.as_str()).unwrap_or(path);
    let new_path = match &route.rewrite {
        Rewrite::Keep => return None,
        Rewrite::StripPrefix => {
            if rest.is_empty() {
                "/".to_string()
            } else {
                rest.to_string()
            }
        }
        Rewrite::ReplacePrefix(to) => {
            let to = to.trim_end_matches('/');
            match (to.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_string(),
                (_, true) => to.to_string(),
                _ => format!("{to}{rest}"),
            }
        }
    };
    Some(match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    })
}

#[cfg(test)]
/// The routes of a policy with `routes:` as given, every upstream `u`.
pub(crate) fn compile(routes_yaml: &str) -> Vec<Arc<Route>> {
    let text = format!(
        "issuers:\n  i: {{issuer: x, algorithms: [ES256], jwks_url: \"http://127.0.0.1:1/k\"}}\n\
         upstreams:\n  u: {{endpoints: [\"127.0.0.1:1\"]}}\nroutes:\n{routes_yaml}"
    );
    let config = crate::config::Config::parse(&text, std::path::Path::new(".")).unwrap();
    let upstream =
        crate::upstream::Upstream::new("u".into(), config.upstreams["u"].clone(), vec![], None);
    config
        .routes
        .into_iter()
        .map(|config| Arc::new(Route::new(config, Arc::clone(&upstream), vec![])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthPolicy;

    fn route(path: PathMatch, rewrite: Rewrite) -> RouteConfig {
        RouteConfig {
            name: "r".into(),
            host: None,
            path,
            methods: vec![],
            upstream: "u".into(),
            rewrite,
            auth: AuthPolicy::None,
            rate_limits: vec![],
            max_body_bytes: 1,
            allow_encoded_slashes: false,
        }
    }

    fn chosen(routes: &[Arc<Route>], method: &str, path: &str) -> Result<String, GatewayError> {
        select(routes, None, path, &method.parse().unwrap()).map(|r| r.config.name.clone())
    }

    const SHOP: &str = "  - {name: stock, match: {path_regex: \"/api/products/[^/]+/stock\", methods: [GET, PUT]}, upstream: u, scopes: [admin]}
  - {name: catalogue, match: {path_prefix: /api/products, methods: [GET, HEAD]}, upstream: u, auth: none}
  - {name: login, match: {path_exact: /api/login, methods: [POST]}, upstream: u, auth: none}
  - {name: login-get, match: {path_exact: /api/login, methods: [GET]}, upstream: u, auth: none}
  - {name: audit, match: {path_prefix: /api/audit, methods: [GET]}, upstream: u, scopes: [admin]}
  - {name: public, match: {path_prefix: /api}, upstream: u, auth: none}
";

    #[test]
    fn a_method_never_falls_through_to_another_path_match() {
        let routes = compile(SHOP);
        assert_eq!(
            chosen(&routes, "GET", "/api/products/7/stock").unwrap(),
            "stock"
        );
        match chosen(&routes, "HEAD", "/api/products/7/stock") {
            Err(GatewayError::MethodNotAllowed { allow }) => assert_eq!(allow, "GET, PUT"),
            other => panic!("expected 405, got {other:?}"),
        }
        assert!(matches!(
            chosen(&routes, "POST", "/api/audit/x"),
            Err(GatewayError::MethodNotAllowed { .. })
        ));
        assert_eq!(
            chosen(&routes, "GET", "/api/products/7").unwrap(),
            "catalogue"
        );
        assert_eq!(chosen(&routes, "POST", "/api/other").unwrap(), "public");
        assert!(matches!(
            chosen(&routes, "GET", "/elsewhere"),
            Err(GatewayError::NoRoute)
        ));
    }

    #[test]
    fn routes_with_the_same_match_share_the_path_by_method() {
        let routes = compile(SHOP);
        assert_eq!(chosen(&routes, "POST", "/api/login").unwrap(), "login");
        assert_eq!(chosen(&routes, "GET", "/api/login").unwrap(), "login-get");
        match chosen(&routes, "DELETE", "/api/login") {
            Err(GatewayError::MethodNotAllowed { allow }) => assert_eq!(allow, "POST, GET"),
            other => panic!("expected 405, got {other:?}"),
        }
    }

    #[test]
    fn a_trailing_slash_does_not_escape_an_exact_or_regex_route() {
        let routes = compile(SHOP);
        assert_eq!(
            chosen(&routes, "GET", "/api/products/7/stock/").unwrap(),
            "stock"
        );
        assert_eq!(chosen(&routes, "POST", "/api/login/").unwrap(), "login");
    }

    #[test]
    fn params_that_change_the_route_are_refused() {
        let routes = compile(SHOP);
        // Tomcat reads `/api/x;/../audit/y` as `/api/audit/y`.
        assert!(matches!(
            chosen(&routes, "GET", "/api/x/..;/audit/y"),
            Err(GatewayError::AmbiguousPath)
        ));
        assert!(matches!(
            chosen(&routes, "GET", "/api/products;v=1/7/stock"),
            Err(GatewayError::AmbiguousPath)
        ));
        // Parameters that lead to the same route are fine and forwarded as they are.
        assert_eq!(
            chosen(&routes, "GET", "/api/products/7;v=2").unwrap(),
            "catalogue"
        );
    }

    #[test]
    fn prefix_is_segment_aware() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("", "/anything"));
    }

    #[test]
    fn rewrites() {
        let strip = route(PathMatch::Prefix("/api/users".into()), Rewrite::StripPrefix);
        assert_eq!(
            rewrite(&strip, "/api/users/me", Some("a=1")).as_deref(),
            Some("/me?a=1")
        );
        assert_eq!(rewrite(&strip, "/api/users", None).as_deref(), Some("/"));
        let replace = route(
            PathMatch::Prefix("/v1".into()),
            Rewrite::ReplacePrefix("/v2/".into()),
        );
        assert_eq!(rewrite(&replace, "/v1/x", None).as_deref(), Some("/v2/x"));
        let keep = route(PathMatch::Prefix("/v1".into()), Rewrite::Keep);
        assert_eq!(rewrite(&keep, "/v1/x", None), None);
    }

    fn host(values: &[&str], target: Option<&str>) -> Result<Option<String>, GatewayError> {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(http::header::HOST, v.parse().unwrap());
        }
        request_host(&h, &"/x".parse().unwrap(), target)
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(
            host(&["Shop.Example:8080"], None).unwrap().as_deref(),
            Some("shop.example")
        );
        assert_eq!(
            host(&["shop.example."], None).unwrap().as_deref(),
            Some("shop.example")
        );
        assert_eq!(host(&["[::1]:80"], None).unwrap().as_deref(), Some("[::1]"));
        assert_eq!(host(&[], None).unwrap(), None);
        assert_eq!(
            host(&[], Some("API.example:80")).unwrap().as_deref(),
            Some("api.example")
        );
        assert_eq!(
            host(&["api.example"], Some("api.example.:8080"))
                .unwrap()
                .as_deref(),
            Some("api.example")
        );
    }

    #[test]
    fn ambiguous_hosts_are_refused() {
        assert!(matches!(
            host(&["a", "b"], None),
            Err(GatewayError::BadHost(_))
        ));
        assert!(matches!(
            host(&["a", "a"], None),
            Err(GatewayError::BadHost(_))
        ));
        assert!(matches!(
            host(&["public.example"], Some("admin.example")),
            Err(GatewayError::BadHost(_))
        ));
        assert_eq!(
            target_authority(b"http://a.example:81/x?y"),
            Some("a.example:81")
        );
        assert_eq!(target_authority(b"/x"), None);
    }
}
