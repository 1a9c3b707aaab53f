//! orders: follows every saga event and owns each order's state. Event-sourced: the order is
//! the fold of its stored events (`order_events`); `orders_view` is the CQRS read model,
//! projected in the same transaction. Owns the payment timeout.
//!
//! # How to use
//!
//! Run the `orders` binary (default `127.0.0.1:7004`). Orders not PAID by the
//! `payment_deadline` cart put in `order.placed` are cancelled with reason `timeout`
//! (`ORDERS_PAYMENT_TIMEOUT_SECS`, default 30, after the event's `time` for an event without one).

pub mod config;
pub mod domain;
mod handler;
mod http;
mod outcomes;
pub mod store;
mod timeout;

use std::sync::Arc;

use service_kit::{Kit, KitError, Service};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use handler::OrdersHandler;
pub use http::router;

pub const MIGRATIONS: &str = "
CREATE TABLE IF NOT EXISTS order_events (
    order_id TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    type     TEXT NOT NULL,
    data     TEXT NOT NULL,
    at       TEXT NOT NULL,
    PRIMARY KEY (order_id, seq)
);
CREATE TABLE IF NOT EXISTS orders_view (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    items       TEXT NOT NULL,
    total_cents INTEGER NOT NULL,
    currency    TEXT NOT NULL,
    history     TEXT NOT NULL,
    placed_at   TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL,
    version     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_view_user ON orders_view (user_id, placed_at);
CREATE INDEX IF NOT EXISTS orders_view_open ON orders_view (deadline_ms)
    WHERE status IN ('PENDING', 'STOCK_RESERVED');
";

/// orders as the kit runs it: [`messaging::contract::ORDERS`], port 7004 by default.
pub const SERVICE: Service =
    service_kit::service!(messaging::contract::ORDERS, 7004).with_authz(AUTHZ);

/// Who may call orders: the gateway, reading orders.
pub const AUTHZ: service_kit::AuthzPolicy =
    service_kit::AuthzPolicy::new(&[service_kit::Rule::new(
        &["gateway"],
        &[service_kit::Verb::Get, service_kit::Verb::Head],
        &["/api/orders"],
    )]);

#[derive(Clone)]
pub struct AppState {
    pub db: messaging::Db,
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), KitError> {
    let mut kit = Kit::start(SERVICE, config.base.clone(), MIGRATIONS, shutdown).await?;
    kit.consume(Arc::new(OrdersHandler::new(config.payment_timeout)))?;
    let outbox = kit.outbox();
    kit.spawn(move |shutdown| timeout::run(outbox, shutdown));
    let final_orders = outcomes::Outcomes::default();
    kit.registry.register(
        "shop_orders_final",
        "Orders that reached a final status, by status and cancellation reason",
        final_orders.clone(),
    );
    let db = kit.db.clone();
    kit.spawn(move |shutdown| outcomes::run(db, final_orders, shutdown));
    let state = AppState { db: kit.db.clone() };
    kit.serve(router(state)).await
}
