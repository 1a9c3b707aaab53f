use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use service_kit::{AppError, OwnerOrAdmin, Query};

use crate::domain::{self, Payment};
use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/payments", get(list))
        .with_state(state)
}

#[derive(Deserialize)]
struct ListQuery {
    order_id: Option<String>,
}

/// The caller's payments (an admin sees everyone's), optionally for one order.
async fn list(
    State(s): State<AppState>,
    who: OwnerOrAdmin,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Payment>>, AppError> {
    let owner = who.into_owner();
    Ok(Json(
        s.db.call(move |c| domain::list(c, owner.as_deref(), q.order_id.as_deref()))
            .await?,
    ))
}
