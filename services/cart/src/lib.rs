//! cart: each user's cart, and checkout, which starts the order saga by writing `order.placed`
//! to the outbox in the same transaction that empties the cart.
//!
//! # How to use
//!
//! Run the `cart` binary (default `127.0.0.1:7003`). It looks products up at `INVENTORY_URL`
//! (default `https://127.0.0.1:7002`, over mutual TLS with cart's SVID) when they are added, and
//! keeps the price it saw then.

pub mod config;
pub mod domain;
mod http;

use std::sync::Arc;

use service_kit::{Kit, KitError, Service};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use http::router;

pub const MIGRATIONS: &str = "
CREATE TABLE IF NOT EXISTS cart_items (
    user_id     TEXT NOT NULL,
    product_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    quantity    INTEGER NOT NULL CHECK (quantity > 0),
    price_cents INTEGER NOT NULL,
    currency    TEXT NOT NULL,
    added_at    TEXT NOT NULL,
    PRIMARY KEY (user_id, product_id)
);
CREATE TABLE IF NOT EXISTS checkouts (
    user_id         TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (user_id, idempotency_key)
);
";

/// cart as the kit runs it: [`messaging::contract::CART`], port 7003 by default.
pub const SERVICE: Service =
    service_kit::service!(messaging::contract::CART, 7003).with_authz(AUTHZ);

/// Who may call cart: the gateway, on the cart routes.
pub const AUTHZ: service_kit::AuthzPolicy =
    service_kit::AuthzPolicy::new(&[service_kit::Rule::new(&["gateway"], &[], &["/api/cart"])]);

#[derive(Clone)]
pub struct AppState {
    pub db: messaging::Db,
    /// Checkout writes `order.placed` through it.
    pub outbox: messaging::Outbox,
    pub http: reqwest::Client,
    pub config: Arc<Config>,
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), KitError> {
    let kit = Kit::start(SERVICE, config.base.clone(), MIGRATIONS, shutdown).await?;
    let state = AppState {
        db: kit.db.clone(),
        outbox: kit.outbox(),
        http: kit.http_client(&["inventory"])?,
        config: Arc::new(config),
    };
    kit.serve(router(state)).await
}
