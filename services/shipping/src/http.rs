use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use service_kit::{AppError, OwnerOrAdmin, Query};

use crate::{list as list_shipments, AppState, Shipment};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/shipments", get(list))
        .with_state(state)
}

#[derive(Deserialize)]
struct ListQuery {
    order_id: Option<String>,
}

async fn list(
    State(s): State<AppState>,
    who: OwnerOrAdmin,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Shipment>>, AppError> {
    let owner = who.into_owner();
    Ok(Json(
        s.db.call(move |c| list_shipments(c, owner.as_deref(), q.order_id.as_deref()))
            .await?,
    ))
}
