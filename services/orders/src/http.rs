use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use service_kit::{AppError, Identity, OwnerOrAdmin, Query};

use crate::store::{self, OrderView};
use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/orders", get(list))
        .route("/api/orders/{id}", get(one))
        .with_state(state)
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list(
    State(s): State<AppState>,
    id: Identity,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<OrderView>>, AppError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(AppError::BadRequest("limit must be 1 to 500".into()));
    }
    Ok(Json(
        s.db.call(move |c| store::list(c, &id.user_id, limit))
            .await?,
    ))
}

/// Another user's order is a 404, not a 403: its existence is not revealed. Admins see all.
async fn one(
    State(s): State<AppState>,
    who: OwnerOrAdmin,
    Path(order_id): Path<String>,
) -> Result<Json<OrderView>, AppError> {
    let owner = who.into_owner();
    s.db.call(move |c| store::view(c, &order_id, owner.as_deref()))
        .await?
        .map(Json)
        .ok_or(AppError::NotFound("order"))
}
