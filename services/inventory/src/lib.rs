//! inventory: the catalogue and its stock. Reserves stock for an order atomically (all lines or
//! none) on `order.placed`, commits it on `order.paid` and releases it on `order.cancelled` —
//! both decided by orders, so a reservation is never committed for a cancelled order. Decides
//! once per order, whatever message carries it: an `order.placed` seen again (a new message id
//! after a rejection, or after the order was cancelled) reserves nothing. Invariant: available +
//! reserved + sold only changes through the admin stock endpoint.
//!
//! # How to use
//!
//! Run the `inventory` binary (default `127.0.0.1:7002`). A demo catalogue is seeded on first
//! start. `INVENTORY_FAILURE_RATE` (0..1) makes the reservation handler fail transiently.

pub mod config;
pub mod domain;
mod handler;
mod http;

use std::sync::Arc;

use service_kit::{Kit, KitError, Service};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use handler::InventoryHandler;
pub use http::router;

pub const MIGRATIONS: &str = "
CREATE TABLE IF NOT EXISTS products (
    id          TEXT PRIMARY KEY,
    sku         TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    currency    TEXT NOT NULL,
    available   INTEGER NOT NULL CHECK (available >= 0),
    reserved    INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold        INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0)
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id   TEXT NOT NULL,
    product_id TEXT NOT NULL REFERENCES products (id),
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    state      TEXT NOT NULL CHECK (state IN ('RESERVED', 'COMMITTED', 'RELEASED')),
    updated_at TEXT NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
-- What inventory decided for an order, once: RESERVED, REJECTED, or CANCELLED (cancelled before
-- its order.placed was handled). A later order.placed of the order, under any message id,
-- reserves nothing.
CREATE TABLE IF NOT EXISTS stock_decisions (
    order_id TEXT PRIMARY KEY,
    decision TEXT NOT NULL CHECK (decision IN ('RESERVED', 'REJECTED', 'CANCELLED')),
    at       TEXT NOT NULL
);
";

/// inventory as the kit runs it: [`messaging::contract::INVENTORY`], port 7002 by default.
pub const SERVICE: Service =
    service_kit::service!(messaging::contract::INVENTORY, 7002).with_authz(AUTHZ);

/// Who may call inventory: the gateway, on the catalogue and stock routes; cart, reading a
/// product for its price when it is added to a cart.
pub const AUTHZ: service_kit::AuthzPolicy = service_kit::AuthzPolicy::new(&[
    service_kit::Rule::new(&["gateway"], &[], &["/api/products"]),
    service_kit::Rule::new(
        &["cart"],
        &[service_kit::Verb::Get, service_kit::Verb::Head],
        &["/api/products"],
    ),
]);

#[derive(Clone)]
pub struct AppState {
    pub db: messaging::Db,
}

/// Starts the service and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), KitError> {
    let mut kit = Kit::start(SERVICE, config.base.clone(), MIGRATIONS, shutdown).await?;
    kit.db.call(domain::seed).await?;
    kit.consume(Arc::new(InventoryHandler::new(config.failure_rate)))?;
    let state = AppState { db: kit.db.clone() };
    kit.serve(router(state)).await
}
