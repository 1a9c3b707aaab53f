use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use messaging::{BrokerStatus, Db};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::AppError;

/// What `/readyz` checks and `/metrics` renders.
#[derive(Clone)]
pub struct Health {
    pub(crate) db: Db,
    pub(crate) brokers: Vec<(String, BrokerStatus)>,
    pub(crate) registry: Arc<Registry>,
}

impl Health {
    /// `/healthz` (process alive), `/readyz` (database answers and every broker task is
    /// connected), `/metrics` (OpenMetrics text).
    pub fn router(self) -> Router {
        Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self)
    }
}

async fn readyz(State(h): State<Health>) -> Result<impl IntoResponse, AppError> {
    let mut down: Vec<String> = h
        .brokers
        .iter()
        .filter(|(_, s)| !s.is_up())
        .map(|(name, _)| format!("broker:{name}"))
        .collect();
    if !h.db.is_usable().await {
        down.push("database".to_owned());
    }
    if down.is_empty() {
        Ok(axum::Json(serde_json::json!({"status": "ready"})))
    } else {
        Err(AppError::Unavailable(down.join(", ")))
    }
}

async fn metrics(State(h): State<Health>) -> Response {
    let mut body = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, &h.registry) {
        return AppError::internal(error).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

/// `shop_http_requests_total` and `shop_http_request_duration_seconds`, labelled by the matched
/// route (not the raw path, to keep cardinality low).
#[derive(Clone)]
pub(crate) struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    duration: Family<HttpLabels, Histogram>,
}

impl HttpMetrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
            }),
        };
        registry.register(
            "shop_http_requests",
            "HTTP requests served",
            m.requests.clone(),
        );
        registry.register(
            "shop_http_request_duration_seconds",
            "HTTP request latency",
            m.duration.clone(),
        );
        m
    }
}

pub(crate) async fn track(State(m): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await;
    let labels = HttpLabels {
        method,
        route,
        status: resp.status().as_u16(),
    };
    m.requests.get_or_create(&labels).inc();
    m.duration
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    if resp.status() == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::debug!(route = %labels.route, "Responded 500.");
    }
    resp
}
