//! Route matching and path rewriting.

use http::Method;

use crate::config::{PathMatch, Rewrite, RouteConfig};

/// Whether `route` matches a request. `host` is lower-case without port.
pub(crate) fn matches(
    route: &RouteConfig,
    host: Option<&str>,
    path: &str,
    method: &Method,
) -> bool {
    if let Some(want) = &route.host {
        if host != Some(want.as_str()) {
            return false;
        }
    }
    if !route.methods.is_empty() && !route.methods.contains(method) {
        return false;
    }
    match &route.path {
        PathMatch::Prefix(prefix) => prefix_matches(prefix, path),
        PathMatch::Exact(exact) => path == exact,
        PathMatch::Regex(re) => re.is_match(path),
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

/// The host of a request: the `Host` header (or URI authority), lower-cased, port removed.
pub(crate) fn request_host(header: Option<&str>, uri: &http::Uri) -> Option<String> {
    let raw = header.or_else(|| uri.authority().map(|a| a.as_str()))?;
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    Some(host.to_ascii_lowercase())
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
        }
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

    #[test]
    fn host_normalisation() {
        let uri: http::Uri = "/x".parse().unwrap();
        assert_eq!(
            request_host(Some("Shop.Example:8080"), &uri).as_deref(),
            Some("shop.example")
        );
        assert_eq!(
            request_host(Some("[::1]:80"), &uri).as_deref(),
            Some("[::1]")
        );
        assert_eq!(request_host(None, &uri), None);
    }
}
