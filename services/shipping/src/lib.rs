//! shipping: schedules a delivery with a tracking number once orders declares the order paid
//! (`order.paid`, which orders never emits for a cancelled order), at most once per order, and
//! never for an order it has seen cancelled (`order.cancelled`).
//!
//! # How to use
//!
//! Run the `shipping` binary (default `127.0.0.1:7006`). `SHIPPING_CONSUMER_DELAY_MS` (default
//! 0) makes the consumer slow, to watch queues back up.

mod http;

use std::sync::Arc;
use std::time::Duration;

use messaging::events::{OrderPaid, SagaEvent, ShipmentScheduled};
use messaging::{Event, Handler, HandlerError, Incoming, Writer};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use service_kit::{BaseConfig, ConfigErrors, EnvParser, EnvSource, Kit, KitError, Service};
use tokio_util::sync::CancellationToken;

pub use http::router;

pub const MIGRATIONS: &str = "
CREATE TABLE IF NOT EXISTS shipments (
    id              TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL UNIQUE,
    user_id         TEXT NOT NULL,
    tracking_number TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cancelled_orders (
    order_id TEXT PRIMARY KEY,
    at       TEXT NOT NULL
);
";

/// shipping as the kit runs it: [`messaging::contract::SHIPPING`], port 7006 by default.
pub const SERVICE: Service =
    service_kit::service!(messaging::contract::SHIPPING, 7006).with_authz(AUTHZ);

/// Who may call shipping: the gateway, reading shipments.
pub const AUTHZ: service_kit::AuthzPolicy =
    service_kit::AuthzPolicy::new(&[service_kit::Rule::new(
        &["gateway"],
        &[service_kit::Verb::Get, service_kit::Verb::Head],
        &["/api/shipments"],
    )]);

#[derive(Debug, Clone)]
pub struct Config {
    pub base: BaseConfig,
    /// `SHIPPING_CONSUMER_DELAY_MS`, default 0: added before handling each `order.paid`.
    pub consumer_delay: Duration,
}

impl Config {
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigErrors> {
        let mut p = EnvParser::new(env);
        let base = BaseConfig::parse(&mut p, &crate::SERVICE);
        let consumer_delay = Duration::from_millis(p.parse("SHIPPING_CONSUMER_DELAY_MS", 0));
        p.finish().map(|()| Config {
            base,
            consumer_delay,
        })
    }
}

#[derive(Clone)]
pub struct AppState {
    pub db: messaging::Db,
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), KitError> {
    let mut kit = Kit::start(SERVICE, config.base.clone(), MIGRATIONS, shutdown).await?;
    kit.consume(Arc::new(ShippingHandler {
        delay: config.consumer_delay,
    }))?;
    let state = AppState { db: kit.db.clone() };
    kit.serve(router(state)).await
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Shipment {
    pub id: String,
    pub order_id: String,
    pub tracking_number: String,
    pub status: String,
    pub created_at: String,
}

/// Schedules the shipment once per order; `None` when the order was cancelled or already has one.
pub fn schedule(
    conn: &Connection,
    order_id: &str,
    user_id: &str,
) -> Result<Option<Shipment>, rusqlite::Error> {
    let cancelled = conn
        .query_row(
            "SELECT 1 FROM cancelled_orders WHERE order_id = ?1",
            [order_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if cancelled {
        return Ok(None);
    }
    let id = uuid::Uuid::now_v7().to_string();
    let tracking_number = format!(
        "VT{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12].to_uppercase()
    );
    let now = service_kit::now_rfc3339();
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO shipments (id, order_id, user_id, tracking_number, status, created_at)
         VALUES (?1, ?2, ?3, ?4, 'SCHEDULED', ?5)",
        params![id, order_id, user_id, tracking_number, now],
    )?;
    Ok((inserted == 1).then(|| Shipment {
        id,
        order_id: order_id.to_owned(),
        tracking_number,
        status: "SCHEDULED".into(),
        created_at: now,
    }))
}

pub fn list(
    conn: &Connection,
    user_id: Option<&str>,
    order_id: Option<&str>,
) -> Result<Vec<Shipment>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, order_id, tracking_number, status, created_at FROM shipments
         WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR order_id = ?2) ORDER BY created_at DESC LIMIT 500",
    )?;
    let rows = stmt.query_map(params![user_id, order_id], |r| {
        Ok(Shipment {
            id: r.get(0)?,
            order_id: r.get(1)?,
            tracking_number: r.get(2)?,
            status: r.get(3)?,
            created_at: r.get(4)?,
        })
    })?;
    rows.collect()
}

pub struct ShippingHandler {
    pub delay: Duration,
}

#[async_trait::async_trait]
impl Handler for ShippingHandler {
    type Prepared = ();

    fn prepares(&self, msg: &Incoming) -> bool {
        msg.routing_key() == OrderPaid::KEY && !self.delay.is_zero()
    }

    async fn prepare(&self, msg: &Incoming) -> Result<(), HandlerError> {
        if self.prepares(msg) {
            tokio::time::sleep(self.delay).await;
        }
        Ok(())
    }

    fn apply(&self, tx: &Writer<'_>, msg: &Incoming, _prepared: ()) -> Result<(), HandlerError> {
        match msg.saga()? {
            // order.paid, not payment.succeeded: orders never emits it for a cancelled order.
            Some(SagaEvent::OrderPaid(paid)) => {
                if let Some(s) = schedule(tx, &paid.order_id, &paid.user_id)? {
                    tx.enqueue(
                        &ShipmentScheduled {
                            order_id: s.order_id.clone(),
                            shipment_id: s.id,
                            tracking_number: s.tracking_number,
                        },
                        &msg.trace,
                    )?;
                    tracing::info!(order_id = %s.order_id, "Scheduled a shipment.");
                }
            }
            // Remembered so a later order.paid ships nothing. Orders never emits order.paid
            // after it, so this is a second line of defence, against a replayed or re-published
            // order.paid (messaging::contract::SHIPPING binds shipping's queue to it).
            Some(SagaEvent::OrderCancelled(c)) => {
                tx.execute(
                    "INSERT OR IGNORE INTO cancelled_orders (order_id, at) VALUES (?1, ?2)",
                    params![c.order_id, service_kit::now_rfc3339()],
                )?;
            }
            Some(_) | None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_once_and_never_for_cancelled_orders() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(MIGRATIONS).unwrap();
        let s = schedule(&c, "o1", "u").unwrap().unwrap();
        assert!(s.tracking_number.starts_with("VT"));
        assert_eq!(schedule(&c, "o1", "u").unwrap(), None);
        c.execute(
            "INSERT INTO cancelled_orders (order_id, at) VALUES ('o2', 'now')",
            [],
        )
        .unwrap();
        assert_eq!(schedule(&c, "o2", "u").unwrap(), None);
        assert_eq!(list(&c, Some("u"), None).unwrap().len(), 1);
        assert_eq!(list(&c, Some("other"), None).unwrap().len(), 0);
    }
}
