//! Prometheus metrics of the gateway, exposed in OpenMetrics text on the admin `/metrics`.
//!
//! Labels are bounded: route and upstream *names* from the config, fixed result/reason codes,
//! status codes. Never raw paths, tokens or user ids. The request-duration histogram carries
//! OpenMetrics exemplars with the request's `trace_id`, so a slow bucket leads to a trace.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use observability::lines::TraceIds;

use crate::context::RequestCtx;

/// Labels of the request-duration histogram: the semantic-convention names mapped to Prometheus
/// (as the services use), plus the gateway's route name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) route: String,
    pub(crate) http_request_method: Method,
    pub(crate) http_response_status_code: u16,
}

/// HTTP method, bounded: anything unusual is `_OTHER` (as in the HTTP semantic conventions).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub(crate) enum Method {
    GET,
    HEAD,
    POST,
    PUT,
    DELETE,
    PATCH,
    OPTIONS,
    _OTHER,
}

impl Method {
    pub(crate) fn from_http(m: &http::Method) -> Self {
        match *m {
            http::Method::GET => Method::GET,
            http::Method::HEAD => Method::HEAD,
            http::Method::POST => Method::POST,
            http::Method::PUT => Method::PUT,
            http::Method::DELETE => Method::DELETE,
            http::Method::PATCH => Method::PATCH,
            http::Method::OPTIONS => Method::OPTIONS,
            _ => Method::_OTHER,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AuthLabels {
    pub(crate) route: String,
    pub(crate) result: &'static str,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LimitLabels {
    pub(crate) route: String,
    pub(crate) policy: String,
    pub(crate) result: &'static str,
}

/// Labels of `gateway_shadow_decisions_total`: `kind` `auth` (policy = route name) or
/// `ratelimit` (policy = rate-limit policy name); `outcome` what the policy would have done;
/// `reason` the auth reject code (empty otherwise).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ShadowLabels {
    pub(crate) kind: &'static str,
    pub(crate) policy: String,
    pub(crate) outcome: &'static str,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamErrorLabels {
    pub(crate) upstream: String,
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct IdentityRefusalLabels {
    pub(crate) upstream: String,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CertificateLabels {
    /// `edge`, or `upstream:<name>` for the SVID the gateway presents to that upstream.
    pub(crate) certificate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamLabels {
    pub(crate) upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PolicyLabels {
    pub(crate) policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReloadLabels {
    pub(crate) result: &'static str,
}

use observability::metrics::TraceExemplar;

/// Every gateway metric.
///
/// The per-request series are reached through [`Resolved`] handles: a finished request costs no
/// label `String`, no hash of its labels and no family lock, only a short scan of the label sets
/// already seen.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) request_duration: Family<RequestLabels, HistogramWithExemplars<TraceExemplar>>,
    pub(crate) auth_decisions: Family<AuthLabels, Counter>,
    pub(crate) ratelimit_decisions: Family<LimitLabels, Counter>,
    pub(crate) shadow_decisions: Family<ShadowLabels, Counter>,
    pub(crate) upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub(crate) upstream_attempts: Family<UpstreamLabels, Counter>,
    pub(crate) available_endpoints: Family<UpstreamLabels, Gauge>,
    pub(crate) circuit_state: Family<UpstreamLabels, Gauge>,
    pub(crate) inflight: Gauge,
    pub(crate) ratelimit_keys: Family<PolicyLabels, Gauge>,
    pub(crate) reloads: Family<ReloadLabels, Counter>,
    pub(crate) upstream_identity_refusals: Family<IdentityRefusalLabels, Counter>,
    pub(crate) certificate_expiry: Family<CertificateLabels, Gauge>,
    pub(crate) connections: crate::downstream::ConnectionMetrics,
    pub(crate) stores: crate::store::StoreMetrics,
    resolved_durations: Resolved<RequestLabels, HistogramWithExemplars<TraceExemplar>>,
    resolved_auth: Resolved<AuthLabels, Counter>,
    resolved_limits: Resolved<LimitLabels, Counter>,
    resolved_attempts: Resolved<UpstreamLabels, Counter>,
}

/// Label sets resolved to their series once, for the metrics every request updates.
///
/// A family's `get_or_create` builds the owned label set (a `String` per name), hashes it with
/// SipHash and takes the family's lock; here the label sets seen so far are kept next to their
/// series and found by comparing borrowed values (status, then method, then the route name). The
/// families never drop a series, so a kept handle stays the one `/metrics` reports. Label sets
/// are bounded by the policy (routes, policies, upstreams) and by status codes; past
/// [`RESOLVED_MAX`] the family is asked directly, as before.
struct Resolved<K, M> {
    entries: parking_lot::Mutex<Vec<(K, M)>>,
}

/// Label sets kept per [`Resolved`].
const RESOLVED_MAX: usize = 256;

impl<K, M> Default for Resolved<K, M> {
    fn default() -> Self {
        Self {
            entries: parking_lot::Mutex::new(Vec::new()),
        }
    }
}

impl<K, M> Resolved<K, M> {
    /// Runs `update` on the series whose labels `matches`; `labels` builds them on a miss and
    /// `family` resolves them.
    fn with(
        &self,
        matches: impl Fn(&K) -> bool,
        labels: impl FnOnce() -> K,
        family: impl FnOnce(&K) -> M,
        update: impl FnOnce(&M),
    ) {
        let mut entries = self.entries.lock();
        if let Some((_, m)) = entries.iter().find(|(k, _)| matches(k)) {
            update(m);
            return;
        }
        let k = labels();
        let m = family(&k);
        update(&m);
        if entries.len() < RESOLVED_MAX {
            entries.push((k, m));
        }
    }
}

/// Latency buckets in seconds, as the HTTP semantic conventions recommend.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let request_duration =
            Family::<RequestLabels, HistogramWithExemplars<TraceExemplar>>::new_with_constructor(
                || HistogramWithExemplars::new(BUCKETS.into_iter()),
            );
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP requests handled by the gateway (semconv http.server.request.duration)",
            prometheus_client::registry::Unit::Seconds,
            request_duration.clone(),
        );
        let auth_decisions = Family::<AuthLabels, Counter>::default();
        registry.register(
            "gateway_auth_decisions",
            "Authentication decisions by route, result and reason",
            auth_decisions.clone(),
        );
        let ratelimit_decisions = Family::<LimitLabels, Counter>::default();
        registry.register(
            "gateway_ratelimit_decisions",
            "Rate-limit decisions by route, policy and result",
            ratelimit_decisions.clone(),
        );
        let shadow_decisions = Family::<ShadowLabels, Counter>::default();
        registry.register(
            "gateway_shadow_decisions",
            "Decisions of policies in shadow mode (computed, not enforced) by kind, policy, outcome and reason",
            shadow_decisions.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "gateway_upstream_errors",
            "Failed upstream attempts by upstream and kind",
            upstream_errors.clone(),
        );
        let upstream_attempts = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "gateway_upstream_attempts",
            "Upstream attempts, retries included",
            upstream_attempts.clone(),
        );
        let available_endpoints = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "gateway_upstream_available_endpoints",
            "Endpoints currently taking traffic (healthy and not ejected)",
            available_endpoints.clone(),
        );
        let circuit_state = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "gateway_circuit_state",
            "Circuit breaker of each upstream: 0 closed, 1 half-open (a trial is out), 2 open",
            circuit_state.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "gateway_inflight_requests",
            "Requests being handled now",
            inflight.clone(),
        );
        let ratelimit_keys = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "gateway_ratelimit_keys",
            "Keys tracked by each rate-limit policy",
            ratelimit_keys.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "gateway_config_reloads",
            "Config reload attempts by result",
            reloads.clone(),
        );
        let upstream_identity_refusals = Family::<IdentityRefusalLabels, Counter>::default();
        registry.register(
            "gateway_upstream_identity_refusals",
            "Upstream TLS connections refused after the handshake because the SPIFFE ID was not allowed",
            upstream_identity_refusals.clone(),
        );
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register_with_unit(
            "gateway_certificate_expiry",
            "Time until each certificate the gateway serves or presents expires",
            prometheus_client::registry::Unit::Seconds,
            certificate_expiry.clone(),
        );
        let connections = crate::downstream::ConnectionMetrics::default();
        registry.register(
            "gateway_open_connections",
            "Client connections open on the public listeners",
            connections.open.clone(),
        );
        registry.register(
            "gateway_connections_refused",
            "Client connections closed at once because server.max_connections were open",
            connections.refused.clone(),
        );
        registry.register(
            "gateway_request_head_timeouts",
            "Client connections closed because a request head took longer than server.request_head_timeout_ms",
            connections.head_timeouts.clone(),
        );
        let stores = crate::store::StoreMetrics::default();
        registry.register(
            "gateway_store_errors",
            "Store (Redis) operations that failed or timed out, by store and kind; each one was decided by the store's on_error",
            stores.errors.clone(),
        );
        registry.register(
            "gateway_store_up",
            "Whether the last operation on each store succeeded (1) or failed (0)",
            stores.up.clone(),
        );
        Metrics {
            stores,
            resolved_durations: Resolved::default(),
            resolved_auth: Resolved::default(),
            resolved_limits: Resolved::default(),
            resolved_attempts: Resolved::default(),
            connections,
            registry,
            upstream_identity_refusals,
            certificate_expiry,
            request_duration,
            auth_decisions,
            ratelimit_decisions,
            shadow_decisions,
            upstream_errors,
            upstream_attempts,
            available_endpoints,
            circuit_state,
            inflight,
            ratelimit_keys,
            reloads,
        }
    }

    /// Counts a finished request: its duration (with the trace as exemplar), the auth decision
    /// and every rate-limit decision; decisions made in shadow mode are counted apart
    /// ([`crate::shadow::count`]). `trace` is the SERVER span's ids, formatted once for the
    /// access line too; a sampled span's trace id becomes the exemplar.
    pub(crate) fn record_request(
        &self,
        ctx: &RequestCtx,
        method: &http::Method,
        status: u16,
        trace: Option<&TraceIds>,
    ) {
        let route = ctx.route_name();
        let method = Method::from_http(method);
        let exemplar = trace
            .filter(|_| ctx.span.span_context().is_sampled())
            .map(observability::metrics::trace_exemplar_from);
        let elapsed = ctx.start.elapsed().as_secs_f64();
        self.resolved_durations.with(
            |k| {
                k.http_response_status_code == status
                    && k.http_request_method == method
                    && k.route == route
            },
            || RequestLabels {
                route: route.to_string(),
                http_request_method: method,
                http_response_status_code: status,
            },
            |k| self.request_duration.get_or_create(k).clone(),
            |h| h.observe(elapsed, exemplar, None),
        );
        if ctx.route.is_some() && !crate::shadow::auth_shadowed(ctx) {
            let (result, reason) = (ctx.auth.result().as_str(), ctx.auth.reason());
            self.resolved_auth.with(
                |k| k.result == result && k.reason == reason && k.route == route,
                || AuthLabels {
                    route: route.to_string(),
                    result,
                    reason,
                },
                |k| self.auth_decisions.get_or_create(k).clone(),
                |c| {
                    c.inc();
                },
            );
        }
        for d in &ctx.limits {
            let result = d.result();
            self.resolved_limits.with(
                |k| k.result == result && k.policy == d.policy && k.route == route,
                || LimitLabels {
                    route: route.to_string(),
                    policy: d.policy.clone(),
                    result,
                },
                |k| self.ratelimit_decisions.get_or_create(k).clone(),
                |c| {
                    c.inc();
                },
            );
        }
        crate::shadow::count(self, ctx);
    }

    /// Counts one attempt to `upstream`.
    pub(crate) fn count_attempt(&self, upstream: &str) {
        self.resolved_attempts.with(
            |k| k.upstream == upstream,
            || UpstreamLabels {
                upstream: upstream.to_string(),
            },
            |k| self.upstream_attempts.get_or_create(k).clone(),
            |c| {
                c.inc();
            },
        );
    }

    /// OpenMetrics text, ending in `# EOF`.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
