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
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
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
        Metrics {
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
    /// ([`crate::shadow::count`]).
    pub(crate) fn record_request(&self, ctx: &RequestCtx, method: &http::Method, status: u16) {
        let route = ctx.route_name();
        self.request_duration
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                http_request_method: Method::from_http(method),
                http_response_status_code: status,
            })
            .observe(
                ctx.start.elapsed().as_secs_f64(),
                observability::metrics::trace_exemplar_of(ctx.span.span_context()),
                None,
            );
        if ctx.route.is_some() && !crate::shadow::auth_shadowed(ctx) {
            self.auth_decisions
                .get_or_create(&AuthLabels {
                    route: route.to_string(),
                    result: ctx.auth.result().as_str(),
                    reason: ctx.auth.reason(),
                })
                .inc();
        }
        for d in &ctx.limits {
            self.ratelimit_decisions
                .get_or_create(&LimitLabels {
                    route: route.to_string(),
                    policy: d.policy.clone(),
                    result: d.result(),
                })
                .inc();
        }
        crate::shadow::count(self, ctx);
    }

    /// OpenMetrics text, ending in `# EOF`.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
