use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use service_kit::{Admin, AppError, Body};

use crate::domain::{self, Product, Stock};
use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/products", get(list))
        .route("/api/products/{id}", get(one))
        .route("/api/products/{id}/stock", get(stock).put(set_stock))
        .with_state(state)
}

async fn list(State(s): State<AppState>) -> Result<Json<Vec<Product>>, AppError> {
    Ok(Json(s.db.call(|c| domain::list(c)).await?))
}

async fn one(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Product>, AppError> {
    s.db.call(move |c| domain::get(c, &id))
        .await?
        .map(Json)
        .ok_or(AppError::NotFound("product"))
}

async fn stock(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<Stock>, AppError> {
    s.db.call(move |c| domain::stock(c, &id))
        .await?
        .map(Json)
        .ok_or(AppError::NotFound("product"))
}

#[derive(Deserialize)]
struct SetStock {
    available: i64,
}

async fn set_stock(
    State(s): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Body(req): Body<SetStock>,
) -> Result<Json<Stock>, AppError> {
    if req.available < 0 {
        return Err(AppError::BadRequest(
            "available must be zero or more".into(),
        ));
    }
    s.db.call(move |c| {
        if !domain::set_available(c, &id, req.available)? {
            return Ok(None);
        }
        domain::stock(c, &id)
    })
    .await?
    .map(Json)
    .ok_or(AppError::NotFound("product"))
}
