//! The event store and the read model.

use messaging::events::{OrderCancelled, OrderLine, OrderPaid};
use messaging::{MessagingError, TraceContext, Writer};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::domain::{decide, fold, Fact, HistoryEntry, Order, OrderEvent, Status, UnknownOrder};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Unknown(#[from] UnknownOrder),
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    #[error("corrupt event: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// Rebuilds the order from its events.
pub fn load(conn: &Connection, order_id: &str) -> Result<Option<Order>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT data, at FROM order_events WHERE order_id = ?1 ORDER BY seq")?;
    let rows: Vec<(String, String)> = stmt
        .query_map([order_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let events: Vec<(OrderEvent, String)> = rows
        .into_iter()
        .map(|(data, at)| Ok((serde_json::from_str(&data)?, at)))
        .collect::<Result<_, serde_json::Error>>()?;
    Ok(fold(order_id, events.iter().map(|(e, a)| (e, a.as_str()))))
}

/// Decides on `fact`, appends the resulting events, projects the read model and writes
/// `order.paid` / `order.cancelled` to the outbox, all in the caller's transaction `conn`.
pub fn handle(
    conn: &Writer<'_>,
    order_id: &str,
    fact: Fact,
    trace: &TraceContext,
) -> Result<Option<Order>, StoreError> {
    let current = load(conn, order_id)?;
    let new = decide(current.as_ref(), fact)?;
    if new.is_empty() {
        return Ok(current);
    }
    let mut version = current.as_ref().map_or(0, |o| o.version);
    let at = service_kit::now_rfc3339();
    for ev in &new {
        version += 1;
        conn.execute(
            "INSERT INTO order_events (order_id, seq, type, data, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![order_id, version, ev.name(), serde_json::to_string(ev)?, at],
        )?;
    }
    let order = load(conn, order_id)?.ok_or(UnknownOrder)?;
    project(conn, &order)?;
    for ev in &new {
        if let OrderEvent::Paid { payment_id } = ev {
            conn.enqueue(
                &OrderPaid {
                    order_id: order_id.to_owned(),
                    user_id: order.user_id.clone(),
                    payment_id: payment_id.clone(),
                    amount_cents: order.total_cents,
                },
                trace,
            )?;
        }
        if let OrderEvent::Cancelled { reason } = ev {
            conn.enqueue(
                &OrderCancelled {
                    order_id: order_id.to_owned(),
                    user_id: order.user_id.clone(),
                    reason: reason.clone(),
                },
                trace,
            )?;
            tracing::info!(order_id, %reason, "Cancelled an order.");
        }
    }
    Ok(Some(order))
}

/// Writes the order into `orders_view`.
pub fn project(conn: &Connection, o: &Order) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO orders_view (id, user_id, status, items, total_cents, currency, history, placed_at, deadline_ms, version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, history = excluded.history, version = excluded.version",
        params![
            o.id,
            o.user_id,
            o.status.as_str(),
            serde_json::to_string(&o.items)?,
            o.total_cents,
            o.currency,
            serde_json::to_string(&o.history)?,
            o.history.first().map(|h| h.at.clone()).unwrap_or_default(),
            o.deadline_ms,
            o.version,
        ],
    )?;
    Ok(())
}

/// Drops and rebuilds the whole read model from the event store.
pub fn rebuild_view(conn: &mut Connection) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM orders_view", [])?;
    let ids: Vec<String> = {
        let mut stmt = tx.prepare("SELECT DISTINCT order_id FROM order_events")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        ids
    };
    for id in &ids {
        if let Some(o) = load(&tx, id)? {
            project(&tx, &o)?;
        }
    }
    tx.commit()?;
    Ok(ids.len())
}

/// One order as the read model shows it (`GET /api/orders`, `GET /api/orders/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderView {
    pub id: String,
    pub status: Status,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub currency: String,
    /// Every status the order went through, oldest first, with the cancellation's reason.
    pub history: Vec<HistoryEntry>,
    /// When it was placed (RFC 3339).
    pub placed_at: String,
}

/// A JSON column of `orders_view`, decoded.
fn json_column<T: serde::de::DeserializeOwned>(
    r: &rusqlite::Row<'_>,
    index: usize,
) -> rusqlite::Result<T> {
    let text: String = r.get(index)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn view_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OrderView> {
    let status: String = r.get(1)?;
    Ok(OrderView {
        id: r.get(0)?,
        status: serde_json::from_value(serde_json::Value::String(status)).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
        })?,
        items: json_column(r, 2)?,
        total_cents: r.get(3)?,
        currency: r.get(4)?,
        history: json_column(r, 5)?,
        placed_at: r.get(6)?,
    })
}

const VIEW_COLUMNS: &str = "id, status, items, total_cents, currency, history, placed_at, user_id";

/// One order from the read model, if it belongs to `user_id` (or `user_id` is `None`: admin).
pub fn view(
    conn: &Connection,
    order_id: &str,
    user_id: Option<&str>,
) -> Result<Option<OrderView>, rusqlite::Error> {
    conn.query_row(
        &format!(
            "SELECT {VIEW_COLUMNS} FROM orders_view WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2)"
        ),
        params![order_id, user_id],
        view_row,
    )
    .optional()
}

/// The user's orders, newest first.
pub fn list(
    conn: &Connection,
    user_id: &str,
    limit: i64,
) -> Result<Vec<OrderView>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VIEW_COLUMNS} FROM orders_view WHERE user_id = ?1 ORDER BY placed_at DESC, id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![user_id, limit], view_row)?;
    rows.collect()
}

/// Orders whose payment deadline has passed while still unpaid.
pub fn overdue(conn: &Connection, now_ms: i64) -> Result<Vec<String>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM orders_view WHERE status IN ('PENDING', 'STOCK_RESERVED') AND deadline_ms <= ?1 LIMIT 500",
    )?;
    let rows = stmt.query_map([now_ms], |r| r.get(0))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`handle`] with orders' writer over `c`.
    fn handle(
        c: &Connection,
        order_id: &str,
        fact: Fact,
        trace: &TraceContext,
    ) -> Result<Option<Order>, StoreError> {
        super::handle(&Writer::new(c, "orders"), order_id, fact, trace)
    }

    #[test]
    fn the_read_model_can_be_rebuilt_from_the_events() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::MIGRATIONS).unwrap();
        c.execute_batch("CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, routing_key TEXT NOT NULL, payload BLOB NOT NULL, traceparent TEXT, tracestate TEXT, baggage TEXT, created_at TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL DEFAULT 0, last_error TEXT, sent_at TEXT)").unwrap();
        let t = TraceContext::default();
        let placed = Fact::Placed {
            user_id: "u".into(),
            items: vec![],
            total_cents: 5,
            currency: "EUR".into(),
            deadline_ms: 10,
            traceparent: None,
        };
        handle(&c, "o1", placed.clone(), &t).unwrap();
        handle(&c, "o1", Fact::StockReserved, &t).unwrap();
        handle(&c, "o2", placed, &t).unwrap();
        assert_eq!(overdue(&c, 11).unwrap().len(), 2);
        handle(&c, "o2", Fact::DeadlinePassed, &t).unwrap();
        assert_eq!(overdue(&c, 11).unwrap(), vec!["o1".to_owned()]);
        let before = (
            view(&c, "o1", Some("u")).unwrap(),
            view(&c, "o2", None).unwrap(),
        );
        assert_eq!(before.1.as_ref().unwrap().status.as_str(), "CANCELLED");
        assert!(view(&c, "o1", Some("someone-else")).unwrap().is_none());
        assert_eq!(rebuild_view(&mut c).unwrap(), 2);
        assert_eq!(
            (
                view(&c, "o1", Some("u")).unwrap(),
                view(&c, "o2", None).unwrap()
            ),
            before
        );
        let cancelled: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE routing_key = 'order.cancelled'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(cancelled, 1);

        // A payment that lands after the timeout does not make the order paid: no order.paid,
        // so inventory never commits and shipping never ships it.
        handle(
            &c,
            "o2",
            Fact::PaymentSucceeded {
                payment_id: "late".into(),
            },
            &t,
        )
        .unwrap();
        handle(
            &c,
            "o1",
            Fact::PaymentSucceeded {
                payment_id: "p1".into(),
            },
            &t,
        )
        .unwrap();
        handle(
            &c,
            "o1",
            Fact::PaymentSucceeded {
                payment_id: "p1".into(),
            },
            &t,
        )
        .unwrap();
        let paid: Vec<String> = c
            .prepare("SELECT payload FROM outbox WHERE routing_key = 'order.paid'")
            .unwrap()
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|p| String::from_utf8(p.unwrap()).unwrap())
            .collect();
        assert_eq!(paid.len(), 1, "{paid:?}");
        assert!(paid[0].contains("\"o1\""));
    }
}
