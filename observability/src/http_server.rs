//! A tower layer that gives axum services SERVER spans and HTTP server metrics.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use observability::{http_server, metrics::{HttpServerMetrics, MetricsRegistry}};
//!
//! let registry = MetricsRegistry::new();
//! let app: Router = Router::new()
//!     .route("/orders/{id}", get(|| async { "order" }))
//!     // `Router::layer` runs after routing, so the layer sees the matched route template.
//!     .layer(http_server::HttpServerLayer::new(HttpServerMetrics::new(&registry)))
//!     .route("/metrics", http_server::metrics_endpoint(registry.clone()));
//! ```
//!
//! Per request: a SERVER span `{method} {route}` continuing the caller's trace, the HTTP
//! semantic-convention attributes, `http_server_request_duration_seconds` with a trace exemplar,
//! and `http_server_active_requests`. `/metrics` is added after the layer so scrapes are not traced.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath};
use http::{Request, Response};
use tracing::Instrument as _;

use crate::http_trace::{self, ServerRequest, Side};
use crate::metrics::{self, HttpServerLabels, HttpServerMetrics, MetricsRegistry};

/// Wraps services with [`HttpServer`].
#[derive(Clone, Debug)]
pub struct HttpServerLayer {
    metrics: HttpServerMetrics,
    scheme: &'static str,
}

impl HttpServerLayer {
    /// Records into `metrics`; `url.scheme` is `http`.
    pub fn new(metrics: HttpServerMetrics) -> Self {
        Self {
            metrics,
            scheme: "http",
        }
    }

    /// For services behind TLS termination they do themselves.
    pub fn with_scheme(mut self, scheme: &'static str) -> Self {
        self.scheme = scheme;
        self
    }
}

impl<S> tower::Layer<S> for HttpServerLayer {
    type Service = HttpServer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpServer {
            inner,
            metrics: self.metrics.clone(),
            scheme: self.scheme,
        }
    }
}

/// The service made by [`HttpServerLayer`].
#[derive(Clone, Debug)]
pub struct HttpServer<S> {
    inner: S,
    metrics: HttpServerMetrics,
    scheme: &'static str,
}

// === impl HttpServer ===

impl<S, B, RB> tower::Service<Request<B>> for HttpServer<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_owned());
        let mut info = ServerRequest::new(req.method(), req.uri(), req.version(), req.headers());
        info.scheme = self.scheme;
        info.route = route.as_deref();
        info.client_address = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let span = http_trace::server_span(&info);
        let method = http_trace::method_label(req.method());

        let metrics = self.metrics.clone();
        metrics.active_requests.inc();
        let start = Instant::now();
        // Call inside the span so anything the handler sets up synchronously is attributed to it.
        let response = span.in_scope(|| self.inner.call(req));

        Box::pin(async move {
            let result = response.instrument(span.clone()).await;
            metrics.active_requests.dec();
            let (status, error_type) = match &result {
                Ok(response) => {
                    let status = response.status();
                    http_trace::record_status(&span, status, Side::Server);
                    (
                        status.as_u16(),
                        status.is_server_error().then(|| status.as_str().to_owned()),
                    )
                }
                Err(_) => {
                    http_trace::record_error(&span, "_OTHER");
                    (500, Some("_OTHER".to_owned()))
                }
            };
            let labels = HttpServerLabels {
                http_request_method: method.to_owned(),
                http_route: route.unwrap_or_default(),
                http_response_status_code: status,
                error_type,
            };
            metrics.record(&labels, start.elapsed(), metrics::trace_exemplar_for(&span));
            result
        })
    }
}

/// `GET` handler that serves `registry` as OpenMetrics text.
pub fn metrics_endpoint<St: Clone + Send + Sync + 'static>(
    registry: MetricsRegistry,
) -> axum::routing::MethodRouter<St> {
    axum::routing::get(move || {
        let body = registry.encode();
        async move {
            (
                [(
                    http::header::CONTENT_TYPE,
                    metrics::OPENMETRICS_CONTENT_TYPE,
                )],
                body,
            )
        }
    })
}
