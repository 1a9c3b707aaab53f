use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use messaging::{BrokerStatus, Db};
use observability::metrics::{MetricsRegistry, OPENMETRICS_CONTENT_TYPE};
use observability::problem::Problem;

use crate::error::problem_response;

/// What `/readyz` checks and `/metrics` renders.
#[derive(Clone)]
pub struct Health {
    pub(crate) db: Db,
    pub(crate) brokers: Vec<(String, BrokerStatus)>,
    pub(crate) registry: MetricsRegistry,
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

    /// `/healthz` and `/readyz` alone, for the API port: the gateway's health checks come over
    /// the same mTLS as its requests. `/metrics` is on the ops port only.
    pub(crate) fn api_router(&self) -> Router {
        Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }
}

/// 200 `{"status":"ready"}`, or a 503 problem (`not-ready`) naming what is down in `failing`
/// (component names only).
async fn readyz(State(h): State<Health>) -> Response {
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
        return axum::Json(serde_json::json!({"status": "ready"})).into_response();
    }
    let detail = format!("not ready: {}", down.join(", "));
    problem_response(Problem::new("not-ready", 503, detail).with_extension("failing", down))
}

async fn metrics(State(h): State<Health>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        h.registry.encode(),
    )
        .into_response()
}
