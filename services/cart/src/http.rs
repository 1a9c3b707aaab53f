use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use observability::{http_trace, propagation};
use serde::Deserialize;
use service_kit::{AppError, Body, Identity, Trace};
use tracing::Instrument;

use crate::domain::{self, Cart, CartItem, CheckoutError, MAX_QUANTITY};
use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/cart", get(show))
        .route("/api/cart/items", post(add))
        .route("/api/cart/items/{product_id}", delete(remove))
        .route("/api/cart/checkout", post(checkout))
        .with_state(state)
}

async fn show(State(s): State<AppState>, id: Identity) -> Result<Json<Cart>, AppError> {
    Ok(Json(
        s.db.call(move |c| domain::cart(c, &id.user_id)).await?,
    ))
}

#[derive(Deserialize)]
struct AddItem {
    product_id: String,
    quantity: u32,
}

#[derive(Deserialize)]
struct ProductView {
    id: String,
    name: String,
    price_cents: i64,
    currency: String,
}

async fn add(
    State(s): State<AppState>,
    id: Identity,
    Trace(trace): Trace,
    Body(req): Body<AddItem>,
) -> Result<Json<Cart>, AppError> {
    if req.quantity == 0 || req.quantity > MAX_QUANTITY {
        return Err(AppError::BadRequest(format!(
            "quantity must be 1 to {MAX_QUANTITY}"
        )));
    }
    if req.product_id.is_empty()
        || req.product_id.len() > 64
        || !req
            .product_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(AppError::BadRequest("product_id is not a valid id".into()));
    }
    let url = format!("{}/api/products/{}", s.config.inventory_url, req.product_id);
    // CLIENT span for the call; its context travels in the request headers. Without an
    // OpenTelemetry layer the incoming traceparent is passed on as it came.
    let span = http_trace::client_span(&tracing::Span::current(), &reqwest::Method::GET, &url, 0);
    let mut headers = reqwest::header::HeaderMap::new();
    propagation::inject_http(&span.in_scope(propagation::current_context), &mut headers);
    if headers.is_empty() {
        if let Some(tp) = trace.traceparent.as_deref().and_then(|t| t.parse().ok()) {
            headers.insert("traceparent", tp);
        }
    }
    let resp = s
        .http
        .get(&url)
        .headers(headers)
        .send()
        .instrument(span.clone())
        .await
        .map_err(|e| {
            http_trace::record_error(&span, "transport");
            AppError::Unavailable(format!("inventory: {e}"))
        })?;
    http_trace::record_status(&span, resp.status(), http_trace::Side::Client);
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(AppError::NotFound("product"));
    }
    if !resp.status().is_success() {
        return Err(AppError::Unavailable(format!(
            "inventory answered {}",
            resp.status()
        )));
    }
    let product: ProductView = resp
        .json()
        .await
        .map_err(|e| AppError::Unavailable(format!("inventory: {e}")))?;
    let item = CartItem {
        product_id: product.id,
        name: product.name,
        quantity: req.quantity,
        price_cents: product.price_cents,
        currency: product.currency,
    };
    let user = id.user_id;
    let cart =
        s.db.call(move |c| {
            domain::add(c, &user, &item)?;
            domain::cart(c, &user)
        })
        .await?;
    Ok(Json(cart))
}

async fn remove(
    State(s): State<AppState>,
    id: Identity,
    Path(product_id): Path<String>,
) -> Result<StatusCode, AppError> {
    if s.db
        .call(move |c| domain::remove(c, &id.user_id, &product_id))
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound("cart item"))
    }
}

#[derive(Deserialize)]
struct Checkout {
    payment_token: String,
}

async fn checkout(
    State(s): State<AppState>,
    id: Identity,
    Trace(trace): Trace,
    headers: HeaderMap,
    Body(req): Body<Checkout>,
) -> Result<impl IntoResponse, AppError> {
    let token = req.payment_token;
    if !token.starts_with("tok_")
        || token.len() > 64
        || !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(AppError::BadRequest(
            "payment_token must look like tok_…".into(),
        ));
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 128 => Some(k.to_owned()),
            _ => {
                return Err(AppError::BadRequest(
                    "Idempotency-Key must be 1 to 128 visible characters".into(),
                ))
            }
        },
    };
    let user = id.user_id;
    let timeout = s.config.payment_timeout;
    let result = s
        .outbox
        .transaction(move |tx| domain::checkout(tx, &user, key.as_deref(), &token, timeout, &trace))
        .await;
    let (order_id, created) = match result {
        Ok(r) => r,
        Err(CheckoutError::Empty) => return Err(AppError::BadRequest("the cart is empty".into())),
        Err(CheckoutError::Db(e)) => return Err(e.into()),
        Err(CheckoutError::Messaging(e)) => return Err(e.into()),
    };
    if created {
        tracing::info!(%order_id, "Checked out.");
    }
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/orders/{order_id}"))],
        Json(serde_json::json!({ "order_id": order_id })),
    ))
}
