//! Prometheus / OpenMetrics metrics whose histogram buckets point at traces.
//!
//! Every binary owns one [`MetricsRegistry`], registers its metrics in it at start-up and serves
//! [`MetricsRegistry::encode`] on `/metrics` with [`OPENMETRICS_CONTENT_TYPE`]. Histograms are
//! [`ExemplarHistogram`]s: each observation may carry a [`TraceExemplar`] (`{trace_id="…"}`), which
//! OpenMetrics prints after the bucket line so Grafana can jump from a slow bucket to the trace.
//!
//! Metric names follow the semantic conventions mapped to Prometheus: dots become underscores and
//! the unit becomes a suffix (`http.server.request.duration` → `http_server_request_duration_seconds`).
//! Labels stay low-cardinality: route templates, never raw paths or user ids.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TraceContextExt as _;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry, Unit};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use prometheus_client;

/// The `Content-Type` of [`MetricsRegistry::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket boundaries in seconds, the semantic conventions' advice for HTTP and messaging durations.
pub const DURATION_BUCKETS_SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The exemplar label set: the trace an observation came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    /// 32 lower-case hex digits.
    pub trace_id: String,
}

/// A histogram whose buckets remember the trace of their latest observation.
pub type ExemplarHistogram = HistogramWithExemplars<TraceExemplar>;

/// A labelled family of [`ExemplarHistogram`]s with [`DURATION_BUCKETS_SECONDS`].
pub type DurationFamily<L> = Family<L, ExemplarHistogram, fn() -> ExemplarHistogram>;

/// A new histogram with [`DURATION_BUCKETS_SECONDS`].
pub fn duration_histogram() -> ExemplarHistogram {
    HistogramWithExemplars::new(DURATION_BUCKETS_SECONDS.into_iter())
}

/// A new, empty labelled family of duration histograms.
pub fn duration_family<L: Clone + std::hash::Hash + Eq>() -> DurationFamily<L> {
    Family::new_with_constructor(duration_histogram)
}

/// `{trace_id=…}` for the current span, if it belongs to a sampled trace.
///
/// Pass it to `observe(value, trace_exemplar(), None)`. Unsampled traces get no exemplar:
/// they would point at a trace nobody can open.
pub fn trace_exemplar() -> Option<TraceExemplar> {
    trace_exemplar_for(&tracing::Span::current())
}

/// Like [`trace_exemplar`] for a given span (e.g. the request span kept in a Pingora `CTX`).
pub fn trace_exemplar_for(span: &tracing::Span) -> Option<TraceExemplar> {
    let cx = span.context();
    let otel_span = cx.span();
    trace_exemplar_of(otel_span.span_context())
}

/// Like [`trace_exemplar`] for a span context (e.g. an [`crate::http_span::ServerSpan`]'s).
pub fn trace_exemplar_of(sc: &opentelemetry::trace::SpanContext) -> Option<TraceExemplar> {
    if !sc.is_sampled() {
        return None;
    }
    crate::lines::TraceIds::of(sc).map(|ids| trace_exemplar_from(&ids))
}

/// The exemplar of a sampled span whose ids are already formatted (no second hex encoding);
/// the caller checks that the span is sampled, as [`trace_exemplar_of`] does.
pub fn trace_exemplar_from(ids: &crate::lines::TraceIds) -> TraceExemplar {
    TraceExemplar {
        trace_id: ids.trace_id().to_owned(),
    }
}

/// A shared, thread-safe prometheus-client [`Registry`] that encodes OpenMetrics text.
///
/// Cheap to clone; clones share the registry.
#[derive(Clone, Default)]
pub struct MetricsRegistry {
    inner: Arc<Mutex<Registry>>,
}

impl fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsRegistry").finish_non_exhaustive()
    }
}

// === impl MetricsRegistry ===

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `metric` as `name`. Counters get `_total` appended by the encoder.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.inner.lock().register(name, help, metric);
    }

    /// Registers `metric` as `name_<unit>` (e.g. `Unit::Seconds` → `_seconds`).
    pub fn register_with_unit(&self, name: &str, help: &str, unit: Unit, metric: impl Metric) {
        self.inner
            .lock()
            .register_with_unit(name, help, unit, metric);
    }

    /// Direct access for anything the helpers above do not cover (sub-registries, collectors).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.inner.lock())
    }

    /// Everything registered, in OpenMetrics text format, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.lock());
        out
    }
}

/// Labels of `http_server_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpServerLabels {
    /// Known methods as-is, anything else `_OTHER` (semantic conventions).
    pub http_request_method: String,
    /// The route template (`/orders/{id}`), never the raw path; empty when nothing matched.
    pub http_route: String,
    /// The response status (500 when the service itself failed before producing one).
    pub http_response_status_code: u16,
    /// Set for failures: the status code as text for 5xx, or an error class.
    pub error_type: Option<String>,
}

/// HTTP server RED metrics, shared by the axum layer and the gateway.
#[derive(Clone, Debug)]
pub struct HttpServerMetrics {
    /// `http_server_request_duration_seconds{http_request_method,http_route,http_response_status_code,error_type}`.
    pub request_duration: DurationFamily<HttpServerLabels>,
    /// `http_server_active_requests`: requests being handled right now.
    pub active_requests: Gauge,
}

impl HttpServerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &MetricsRegistry) -> Self {
        let metrics = Self {
            request_duration: duration_family(),
            active_requests: Gauge::default(),
        };
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests",
            Unit::Seconds,
            metrics.request_duration.clone(),
        );
        registry.register(
            "http_server_active_requests",
            "Number of active HTTP server requests",
            metrics.active_requests.clone(),
        );
        metrics
    }

    /// Records one finished request; `exemplar` is usually [`trace_exemplar_for`] the request span.
    pub fn record(
        &self,
        labels: &HttpServerLabels,
        duration: Duration,
        exemplar: Option<TraceExemplar>,
    ) {
        self.request_duration
            .get_or_create(labels)
            .observe(duration.as_secs_f64(), exemplar, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_openmetrics_with_exemplars_and_eof() {
        let registry = MetricsRegistry::new();
        let http = HttpServerMetrics::new(&registry);
        let labels = HttpServerLabels {
            http_request_method: "GET".into(),
            http_route: "/orders/{id}".into(),
            http_response_status_code: 200,
            error_type: None,
        };
        let exemplar = TraceExemplar {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        };
        http.record(&labels, Duration::from_millis(30), Some(exemplar));
        http.active_requests.inc();

        let text = registry.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE http_server_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT http_server_request_duration_seconds seconds"),
            "{text}"
        );
        // The 0.05 bucket holds the 30 ms observation and its trace.
        let bucket = text
            .lines()
            .find(|l| {
                l.starts_with("http_server_request_duration_seconds_bucket")
                    && l.contains("le=\"0.05\"")
            })
            .unwrap();
        assert!(bucket.contains("http_route=\"/orders/{id}\""), "{bucket}");
        assert!(
            bucket.contains("# {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.03"),
            "{bucket}"
        );
        assert!(text.contains("http_server_active_requests 1"), "{text}");
    }

    #[test]
    fn no_span_means_no_exemplar() {
        assert_eq!(trace_exemplar(), None);
    }
}
