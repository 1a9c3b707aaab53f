//! payment: charges an order once its stock is reserved, through a simulated card provider;
//! refunds a charge whose order was cancelled, and never charges an order twice. Starts no
//! charge after the order's `payment_deadline` (from `order.placed`): such an order gets
//! `payment.failed` with reason `deadline_passed` instead, so an order orders has cancelled for
//! its timeout (or is about to) is never charged and refunded.
//!
//! # A charge is never lost
//!
//! The provider is idempotent per order id (its idempotency key, as Stripe's
//! `Idempotency-Key`): a repeated call gets the first call's answer and charges nothing more.
//! It keeps those answers in a ledger of its own, an SQLite file apart from payment's database
//! ([`provider`]), which payment's transactions never touch.
//!
//! The provider is called on `stock.reserved`, before the transaction that records its answer
//! (`payments`, `payment.succeeded` / `payment.failed`) with the inbox row. If that transaction
//! fails, or the process dies before it commits, the message is redelivered while the provider
//! may already have charged. So before its first call for an order, payment commits a
//! `provider_calls` row saying one was started. On every later delivery for that order the
//! deadline and a cancellation no longer skip the provider: payment repeats the call with the
//! same key, records the answer, and a charge of an order cancelled (now, or later for its
//! timeout) is refunded as usual (`payment.refunded`). An order whose call was never started
//! keeps the deadline and cancellation checks: no call is made after them. A started call whose
//! answer was lost can so be repeated after the deadline; if its first attempt had failed
//! transiently (nothing charged), the repeat may charge late, and the order's cancellation
//! refunds it.
//!
//! # How to use
//!
//! Run the `payment` binary (default `127.0.0.1:7005`). Test tokens: `tok_visa` succeeds,
//! `tok_declined` is declined, `tok_error` fails transiently (retried with back-off, then
//! fails with `provider_error`). Fault flags: `PAYMENT_DECLINE_RATE` (0..1) declines that share
//! of otherwise good charges (a decline is kept per order like any answer), `PAYMENT_LATENCY_MS`
//! delays every provider call. The provider's ledger is `PAYMENT_PROVIDER_LEDGER` (default
//! `data/payment-provider.db`, beside `DATABASE_PATH`); keep it with the database, as a real
//! provider keeps its records whatever happens to payment.

pub mod config;
pub mod domain;
mod handler;
mod http;
pub mod provider;

use std::sync::Arc;

use service_kit::{Kit, KitError, Service};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use handler::PaymentHandler;
pub use http::router;
pub use provider::Provider;

pub const MIGRATIONS: &str = "
CREATE TABLE IF NOT EXISTS payment_intents (
    order_id     TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    token        TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    currency     TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS payments (
    id           TEXT PRIMARY KEY,
    order_id     TEXT NOT NULL UNIQUE,
    user_id      TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('SUCCEEDED', 'DECLINED', 'FAILED', 'REFUNDED')),
    amount_cents INTEGER NOT NULL,
    currency     TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    reason       TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
-- The order's payment_deadline from order.placed (absent for events without one).
CREATE TABLE IF NOT EXISTS payment_deadlines (
    order_id    TEXT PRIMARY KEY,
    deadline_ms INTEGER NOT NULL
);
-- Orders whose first provider call was started (committed before it is made): every later
-- delivery repeats the call to learn its answer (provider.rs, handler.rs).
CREATE TABLE IF NOT EXISTS provider_calls (
    order_id   TEXT PRIMARY KEY,
    started_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cancelled_orders (
    order_id TEXT PRIMARY KEY,
    reason   TEXT NOT NULL,
    at       TEXT NOT NULL
);
";

/// payment as the kit runs it: [`messaging::contract::PAYMENT`], port 7005 by default.
pub const SERVICE: Service =
    service_kit::service!(messaging::contract::PAYMENT, 7005).with_authz(AUTHZ);

/// Who may call payment: the gateway, reading payments.
pub const AUTHZ: service_kit::AuthzPolicy =
    service_kit::AuthzPolicy::new(&[service_kit::Rule::new(
        &["gateway"],
        &[service_kit::Verb::Get, service_kit::Verb::Head],
        &["/api/payments"],
    )]);

#[derive(Clone)]
pub struct AppState {
    pub db: messaging::Db,
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), KitError> {
    let mut kit = Kit::start(SERVICE, config.base.clone(), MIGRATIONS, shutdown).await?;
    service_kit::create_parent_dir(&config.provider_ledger)?;
    let provider = Provider::open(&config.provider_ledger, config.provider.clone()).await?;
    let handler = PaymentHandler::new(kit.db.clone(), provider);
    kit.consume(Arc::new(handler))?;
    let state = AppState { db: kit.db.clone() };
    kit.serve(router(state)).await
}
