use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use service_kit::{Admin, AppError, Query};

use crate::{query, stats, AppState, AuditEntry};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/audit/events", get(events))
        .route("/api/audit/stats", get(get_stats))
        .with_state(state)
}

#[derive(Deserialize)]
struct EventsQuery {
    order_id: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    limit: Option<i64>,
}

async fn events(
    State(s): State<AppState>,
    _admin: Admin,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<AuditEntry>>, AppError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::BadRequest("limit must be 1 to 1000".into()));
    }
    Ok(Json(
        s.db.call(move |c| query(c, q.order_id.as_deref(), q.ty.as_deref(), limit))
            .await?,
    ))
}

async fn get_stats(
    State(s): State<AppState>,
    _admin: Admin,
) -> Result<Json<serde_json::Value>, AppError> {
    Ok(Json(s.db.call(|c| stats(c)).await?))
}
