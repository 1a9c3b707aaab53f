//! Service authorization: which calling workloads may use which methods and paths, declared
//! once per service (like an Istio `AuthorizationPolicy`), enforced on every API request before
//! routing.
//!
//! The caller is the [`Caller`] [`peer`](crate::peer) established: the SPIFFE ID of the client
//! certificate (mutual TLS), or a mesh sidecar's header. A request no rule allows gets **403**
//! problem+json (`forbidden`) that names neither the policy nor the caller, and is counted in
//! `shop_authorization_denials_total{caller,route}`. `x-user-id` and `x-user-scopes` are
//! removed from every request whose caller is not the gateway, so no handler can see a user
//! identity another workload made up.
//!
//! # How to use
//!
//! ```
//! use service_kit::authz::{AuthzPolicy, Rule, Verb};
//!
//! /// inventory: the gateway may call the catalogue; cart may read products (for prices).
//! pub const AUTHZ: AuthzPolicy = AuthzPolicy::new(&[
//!     Rule::new(&["gateway"], &[], &["/api/products"]),
//!     Rule::new(&["cart"], &[Verb::Get], &["/api/products"]),
//! ]);
//! assert!(AUTHZ.allows(Some("cart"), "GET", "/api/products/p-1"));
//! assert!(!AUTHZ.allows(Some("cart"), "PUT", "/api/products/p-1/stock"));
//! assert!(!AUTHZ.allows(Some("orders"), "GET", "/api/products"));
//! ```
//!
//! Every service also lets the gateway `GET`/`HEAD` `/healthz` and `/readyz` on the API port
//! ([`HEALTH_RULE`]), for its health checks over the same mTLS as its requests.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::peer::{Caller, ConnInfo, IdentityConfig};
use crate::AppError;

/// An HTTP method a rule can name (a closed set: what the services serve).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl Verb {
    /// The method's name, `GET` …
    pub const fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Head => "HEAD",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Patch => "PATCH",
            Verb::Delete => "DELETE",
        }
    }
}

/// One allow rule: any of `callers` (workload names, mapped to SPIFFE IDs by the ID template)
/// may use any of `methods` (empty: every method) on any path under one of `paths` (a prefix
/// matching whole segments: `/api/cart` covers `/api/cart` and `/api/cart/items`, not
/// `/api/carts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub callers: &'static [&'static str],
    pub methods: &'static [Verb],
    pub paths: &'static [&'static str],
}

impl Rule {
    /// See [`Rule`].
    pub const fn new(
        callers: &'static [&'static str],
        methods: &'static [Verb],
        paths: &'static [&'static str],
    ) -> Rule {
        Rule {
            callers,
            methods,
            paths,
        }
    }

    fn allows(&self, caller: &str, method: &str, path: &str) -> bool {
        self.callers.contains(&caller)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m.as_str() == method))
            && self.paths.iter().any(|p| under(path, p))
    }
}

/// The gateway's health checks: `GET`/`HEAD` `/healthz` and `/readyz`, part of every policy.
pub const HEALTH_RULE: Rule = Rule::new(
    &["gateway"],
    &[Verb::Get, Verb::Head],
    &["/healthz", "/readyz"],
);

/// A service's authorization policy: the rules, any of which allows a request. Nothing else
/// is allowed (besides [`HEALTH_RULE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthzPolicy {
    pub rules: &'static [Rule],
}

impl AuthzPolicy {
    /// See [`AuthzPolicy`].
    pub const fn new(rules: &'static [Rule]) -> AuthzPolicy {
        AuthzPolicy { rules }
    }

    /// The policy of a service that declares none: only the gateway, on every path.
    pub const GATEWAY_ONLY: AuthzPolicy = AuthzPolicy::new(&[Rule::new(&["gateway"], &[], &["/"])]);

    /// Whether `caller` (a workload name; `None` for an unidentified caller or one outside the
    /// trust domain) may call `method path`.
    pub fn allows(&self, caller: Option<&str>, method: &str, path: &str) -> bool {
        let Some(caller) = caller else {
            return false;
        };
        HEALTH_RULE.allows(caller, method, path)
            || self.rules.iter().any(|r| r.allows(caller, method, path))
    }

    /// The metric label for `path`: the longest path prefix of the policy that covers it,
    /// whoever calls, or `other` — a closed set, however many paths clients try.
    pub fn route_label(&self, path: &str) -> &'static str {
        self.rules
            .iter()
            .chain(std::iter::once(&HEALTH_RULE))
            .flat_map(|r| r.paths.iter().copied())
            .filter(|p| under(path, p))
            .max_by_key(|p| p.len())
            .unwrap_or("other")
    }
}

/// Whether `path` is `prefix` or below it, by whole segments.
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

// === metrics ===

/// Labels of `shop_authorization_denials_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DenialLabels {
    /// The caller's workload name, `other` (an ID outside the template or trust domain) or
    /// `anonymous`.
    caller: String,
    /// See [`AuthzPolicy::route_label`].
    route: &'static str,
}

/// The denial counter, registered once per service.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthzMetrics {
    denials: Family<DenialLabels, Counter>,
}

impl AuthzMetrics {
    pub(crate) fn register(registry: &observability::metrics::MetricsRegistry) -> Self {
        let m = AuthzMetrics::default();
        registry.register(
            "shop_authorization_denials",
            "API requests refused because the calling workload is not allowed, by caller and policy route",
            m.denials.clone(),
        );
        m
    }
}

// === the layer ===

/// What [`Authorize`] needs, shared by every connection.
#[derive(Debug)]
pub(crate) struct Authorizer {
    pub(crate) policy: AuthzPolicy,
    pub(crate) identity: IdentityConfig,
    pub(crate) metrics: AuthzMetrics,
}

/// Wraps the whole API router: resolves the [`Caller`], strips user headers unless it is the
/// gateway, refuses what the policy does not allow, and hands the caller to the handlers (the
/// [`Identity`](crate::Identity) extractor reads it).
#[derive(Clone)]
pub(crate) struct Authorize<S> {
    pub(crate) inner: S,
    pub(crate) authorizer: Arc<Authorizer>,
}

/// The headers only the gateway may set.
const USER_HEADERS: [&str; 2] = ["x-user-id", "x-user-scopes"];

impl<S> tower::Service<Request<Body>> for Authorize<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let a = &self.authorizer;
        let caller = match req.extensions().get::<ConnInfo>() {
            Some(conn) => a.identity.caller(conn, req.headers()),
            None => Caller::Anonymous,
        };
        if !caller.is_gateway() {
            for h in USER_HEADERS {
                req.headers_mut().remove(h);
            }
        }
        let workload = match &caller {
            Caller::Workload {
                workload: Some(w), ..
            } => Some(w.as_str()),
            _ => None,
        };
        let path = req.uri().path();
        if !a.policy.allows(workload, req.method().as_str(), path) {
            let route = a.policy.route_label(path);
            a.metrics
                .denials
                .get_or_create(&DenialLabels {
                    caller: caller.label().to_owned(),
                    route,
                })
                .inc();
            tracing::debug!(
                caller = caller.label(),
                route,
                method = %req.method(),
                "Refused a caller the authorization policy does not allow."
            );
            return Box::pin(std::future::ready(Ok(
                AppError::CallerNotAllowed.into_response()
            )));
        }
        req.extensions_mut().insert(caller);
        // The clone that was polled ready is the one that serves (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: AuthzPolicy = AuthzPolicy::new(&[
        Rule::new(&["gateway"], &[], &["/api/cart"]),
        Rule::new(&["cart"], &[Verb::Get, Verb::Head], &["/api/products/"]),
    ]);

    #[test]
    fn rules_match_caller_method_and_whole_segments() {
        assert!(P.allows(Some("gateway"), "POST", "/api/cart/items"));
        assert!(P.allows(Some("gateway"), "GET", "/api/cart"));
        assert!(!P.allows(Some("gateway"), "GET", "/api/carts"));
        assert!(!P.allows(Some("gateway"), "GET", "/api/products"));
        assert!(P.allows(Some("cart"), "GET", "/api/products/p-1"));
        assert!(P.allows(Some("cart"), "GET", "/api/products"));
        assert!(!P.allows(Some("cart"), "POST", "/api/products/p-1"));
        assert!(!P.allows(Some("cart"), "GET", "/api/cart"));
        assert!(!P.allows(None, "GET", "/api/cart"));
        assert!(P.allows(Some("gateway"), "GET", "/healthz"));
        assert!(!P.allows(Some("cart"), "GET", "/healthz"));
        assert!(!P.allows(Some("gateway"), "POST", "/readyz"));
    }

    #[test]
    fn route_labels_are_the_policy_prefixes() {
        assert_eq!(P.route_label("/api/cart/items/x"), "/api/cart");
        assert_eq!(P.route_label("/api/products/p-1"), "/api/products/");
        assert_eq!(P.route_label("/api/anything/else"), "other");
        assert_eq!(P.route_label("/readyz"), "/readyz");
    }
}
