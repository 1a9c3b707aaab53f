//! Stock rules, as functions over a connection (callers own the transaction).

use messaging::events::OrderLine;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// A product as the public API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Product {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    pub available: i64,
}

/// Stock counters of one product (admin view).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stock {
    pub product_id: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

/// The demo catalogue: (id, sku, name, price, stock).
const CATALOGUE: &[(&str, &str, &str, i64, i64)] = &[
    (
        "0b7c6f1e-5a3e-4b7e-9a51-3f1d2c000001",
        "MUG-001",
        "Vantage mug",
        1200,
        100,
    ),
    (
        "0b7c6f1e-5a3e-4b7e-9a51-3f1d2c000002",
        "TEE-001",
        "Trace-ID t-shirt",
        2500,
        100,
    ),
    (
        "0b7c6f1e-5a3e-4b7e-9a51-3f1d2c000003",
        "STK-001",
        "Sticker pack",
        500,
        1000,
    ),
    (
        "0b7c6f1e-5a3e-4b7e-9a51-3f1d2c000004",
        "HOD-001",
        "On-call hoodie",
        5900,
        50,
    ),
    (
        "0b7c6f1e-5a3e-4b7e-9a51-3f1d2c000005",
        "BOK-001",
        "Distributed tracing handbook",
        3900,
        20,
    ),
    (
        "0b7c6f1e-5a3e-4b7e-9a51-3f1d2c000006",
        "LMP-001",
        "Pager lamp (limited)",
        9900,
        3,
    ),
];

/// Seeds the catalogue when the table is empty.
pub fn seed(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    let count: i64 = tx.query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0))?;
    if count == 0 {
        for (id, sku, name, price, stock) in CATALOGUE {
            tx.execute(
                "INSERT INTO products (id, sku, name, price_cents, currency, available) VALUES (?1, ?2, ?3, ?4, 'EUR', ?5)",
                params![id, sku, name, price, stock],
            )?;
        }
        tracing::info!(products = CATALOGUE.len(), "Seeded the demo catalogue.");
    }
    tx.commit()
}

fn product_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        id: r.get(0)?,
        sku: r.get(1)?,
        name: r.get(2)?,
        price_cents: r.get(3)?,
        currency: r.get(4)?,
        available: r.get(5)?,
    })
}

pub fn list(conn: &Connection) -> Result<Vec<Product>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, sku, name, price_cents, currency, available FROM products ORDER BY sku",
    )?;
    let rows = stmt.query_map([], product_row)?;
    rows.collect()
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<Product>, rusqlite::Error> {
    conn.query_row(
        "SELECT id, sku, name, price_cents, currency, available FROM products WHERE id = ?1",
        [id],
        product_row,
    )
    .optional()
}

pub fn stock(conn: &Connection, id: &str) -> Result<Option<Stock>, rusqlite::Error> {
    conn.query_row(
        "SELECT id, available, reserved, sold FROM products WHERE id = ?1",
        [id],
        |r| {
            Ok(Stock {
                product_id: r.get(0)?,
                available: r.get(1)?,
                reserved: r.get(2)?,
                sold: r.get(3)?,
            })
        },
    )
    .optional()
}

pub fn set_available(conn: &Connection, id: &str, available: i64) -> Result<bool, rusqlite::Error> {
    Ok(conn.execute(
        "UPDATE products SET available = ?1 WHERE id = ?2",
        params![available, id],
    )? == 1)
}

/// Outcome of a reservation attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    Reserved,
    /// Nothing reserved; the product that could not be served.
    Rejected {
        product_id: String,
        reason: &'static str,
    },
    /// This order was already decided earlier (reserved, rejected or cancelled): nothing moved.
    AlreadyDecided,
}

/// What inventory decided for an order; one row per order in `stock_decisions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Reserved,
    Rejected,
    /// The order was cancelled before its `order.placed` was handled.
    Cancelled,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Reserved => "RESERVED",
            Decision::Rejected => "REJECTED",
            Decision::Cancelled => "CANCELLED",
        }
    }
}

/// Records `decision` for `order_id` unless one is recorded already; true when this one was.
pub fn decide(
    conn: &Connection,
    order_id: &str,
    decision: Decision,
) -> Result<bool, rusqlite::Error> {
    Ok(conn.execute(
        "INSERT OR IGNORE INTO stock_decisions (order_id, decision, at) VALUES (?1, ?2, ?3)",
        params![order_id, decision.as_str(), service_kit::now_rfc3339()],
    )? == 1)
}

/// Reserves every line or none, once per order: an order already decided (reserved, rejected
/// or cancelled) is [`Reservation::AlreadyDecided`] and moves nothing.
pub fn reserve(
    conn: &Connection,
    order_id: &str,
    items: &[OrderLine],
) -> Result<Reservation, rusqlite::Error> {
    // Reservations written before `stock_decisions` existed count as decisions too.
    let existing: i64 = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM reservations WHERE order_id = ?1)
              + (SELECT COUNT(*) FROM stock_decisions WHERE order_id = ?1)",
        [order_id],
        |r| r.get(0),
    )?;
    if existing > 0 {
        return Ok(Reservation::AlreadyDecided);
    }
    let decided = check(conn, items)?;
    let decision = match decided {
        Reservation::Reserved => Decision::Reserved,
        _ => Decision::Rejected,
    };
    decide(conn, order_id, decision)?;
    if decided != Reservation::Reserved {
        return Ok(decided);
    }
    let now = service_kit::now_rfc3339();
    for (product_id, quantity) in &wanted(items) {
        conn.execute(
            "UPDATE products SET available = available - ?1, reserved = reserved + ?1 WHERE id = ?2",
            params![quantity, product_id],
        )?;
        conn.execute(
            "INSERT INTO reservations (order_id, product_id, quantity, state, updated_at) VALUES (?1, ?2, ?3, 'RESERVED', ?4)",
            params![order_id, product_id, quantity, now],
        )?;
    }
    Ok(Reservation::Reserved)
}

/// Every line merged by product (duplicate lines of one product add up).
fn wanted(items: &[OrderLine]) -> std::collections::BTreeMap<&str, i64> {
    let mut wanted: std::collections::BTreeMap<&str, i64> = Default::default();
    for line in items {
        *wanted.entry(line.product_id.as_str()).or_default() += i64::from(line.quantity);
    }
    wanted
}

/// Whether every line can be reserved now: [`Reservation::Reserved`] or the first line that
/// cannot.
fn check(conn: &Connection, items: &[OrderLine]) -> Result<Reservation, rusqlite::Error> {
    for (product_id, quantity) in &wanted(items) {
        let available: Option<i64> = conn
            .query_row(
                "SELECT available FROM products WHERE id = ?1",
                [product_id],
                |r| r.get(0),
            )
            .optional()?;
        match available {
            None => {
                return Ok(Reservation::Rejected {
                    product_id: (*product_id).to_owned(),
                    reason: "unknown_product",
                })
            }
            Some(a) if a < *quantity => {
                return Ok(Reservation::Rejected {
                    product_id: (*product_id).to_owned(),
                    reason: "out_of_stock",
                })
            }
            Some(_) => {}
        }
    }
    Ok(Reservation::Reserved)
}

/// Moves RESERVED lines to `to` (COMMITTED: reserved → sold; RELEASED: reserved → available).
/// Returns how many lines moved; 0 when there was nothing reserved.
pub fn settle(conn: &Connection, order_id: &str, to: &str) -> Result<usize, rusqlite::Error> {
    let target = if to == "COMMITTED" {
        "sold"
    } else {
        "available"
    };
    let lines: Vec<(String, i64)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT product_id, quantity FROM reservations WHERE order_id = ?1 AND state = 'RESERVED'",
        )?;
        let rows = stmt.query_map([order_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let now = service_kit::now_rfc3339();
    for (product_id, quantity) in &lines {
        conn.execute(
            &format!("UPDATE products SET reserved = reserved - ?1, {target} = {target} + ?1 WHERE id = ?2"),
            params![quantity, product_id],
        )?;
        conn.execute(
            "UPDATE reservations SET state = ?1, updated_at = ?2 WHERE order_id = ?3 AND product_id = ?4",
            params![to, now, order_id, product_id],
        )?;
    }
    Ok(lines.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::MIGRATIONS).unwrap();
        seed(&mut c).unwrap();
        c
    }

    fn line(id: &str, q: u32) -> OrderLine {
        OrderLine {
            product_id: id.into(),
            quantity: q,
            price_cents: 1,
        }
    }

    fn total(c: &Connection, id: &str) -> i64 {
        let s = stock(c, id).unwrap().unwrap();
        s.available + s.reserved + s.sold
    }

    #[test]
    fn reserves_all_or_nothing_and_never_leaks() {
        let c = db();
        let lamp = CATALOGUE[5].0;
        let mug = CATALOGUE[0].0;
        assert_eq!(
            reserve(&c, "o1", &[line(mug, 2), line(lamp, 4)]).unwrap(),
            Reservation::Rejected {
                product_id: lamp.into(),
                reason: "out_of_stock"
            }
        );
        assert_eq!(
            stock(&c, mug).unwrap().unwrap().reserved,
            0,
            "nothing reserved on rejection"
        );
        assert_eq!(
            reserve(&c, "o2", &[line(mug, 2), line(lamp, 3)]).unwrap(),
            Reservation::Reserved
        );
        assert_eq!(
            reserve(&c, "o2", &[line(mug, 2)]).unwrap(),
            Reservation::AlreadyDecided
        );
        assert_eq!(stock(&c, lamp).unwrap().unwrap().available, 0);
        assert_eq!(settle(&c, "o2", "COMMITTED").unwrap(), 2);
        assert_eq!(
            settle(&c, "o2", "RELEASED").unwrap(),
            0,
            "a committed order cannot be released"
        );
        assert_eq!(stock(&c, lamp).unwrap().unwrap().sold, 3);
        assert_eq!(
            reserve(&c, "o3", &[line(mug, 5)]).unwrap(),
            Reservation::Reserved
        );
        assert_eq!(settle(&c, "o3", "RELEASED").unwrap(), 1);
        assert_eq!(
            stock(&c, mug).unwrap().unwrap(),
            Stock {
                product_id: mug.into(),
                available: 98,
                reserved: 0,
                sold: 2
            }
        );
        assert_eq!(total(&c, mug), 100);
        assert_eq!(total(&c, lamp), 3);
    }

    #[test]
    fn an_order_is_decided_once_whatever_comes_after() {
        let c = db();
        let mug = CATALOGUE[0].0;
        let rejected = reserve(&c, "o1", &[line(mug, 101)]).unwrap();
        assert!(matches!(rejected, Reservation::Rejected { .. }));
        // The same order again, now with lines that would fit: still rejected, nothing moves.
        assert_eq!(
            reserve(&c, "o1", &[line(mug, 1)]).unwrap(),
            Reservation::AlreadyDecided
        );
        // Cancelled before its order.placed was handled: never reserved afterwards.
        assert!(decide(&c, "o2", Decision::Cancelled).unwrap());
        assert!(!decide(&c, "o2", Decision::Cancelled).unwrap());
        assert_eq!(
            reserve(&c, "o2", &[line(mug, 1)]).unwrap(),
            Reservation::AlreadyDecided
        );
        assert_eq!(stock(&c, mug).unwrap().unwrap().reserved, 0);
        assert_eq!(total(&c, mug), 100);
    }
}
