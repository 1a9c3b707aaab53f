use messaging::events::{OrderLine, OrderPlaced};
use messaging::{MessagingError, TraceContext, Writer};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CartItem {
    pub product_id: String,
    pub name: String,
    pub quantity: u32,
    pub price_cents: i64,
    pub currency: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Cart {
    pub items: Vec<CartItem>,
    pub total_cents: i64,
    pub currency: String,
}

/// Most of one product a cart may hold.
pub const MAX_QUANTITY: u32 = 100;

pub fn cart(conn: &Connection, user_id: &str) -> Result<Cart, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT product_id, name, quantity, price_cents, currency FROM cart_items WHERE user_id = ?1 ORDER BY added_at, product_id",
    )?;
    let items: Vec<CartItem> = stmt
        .query_map([user_id], |r| {
            Ok(CartItem {
                product_id: r.get(0)?,
                name: r.get(1)?,
                quantity: r.get(2)?,
                price_cents: r.get(3)?,
                currency: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let total_cents = items
        .iter()
        .map(|i| i.price_cents * i64::from(i.quantity))
        .sum();
    let currency = items
        .first()
        .map(|i| i.currency.clone())
        .unwrap_or_else(|| "EUR".into());
    Ok(Cart {
        items,
        total_cents,
        currency,
    })
}

/// Adds `item.quantity` (capped at [`MAX_QUANTITY`]) and refreshes the price.
pub fn add(conn: &Connection, user_id: &str, item: &CartItem) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO cart_items (user_id, product_id, name, quantity, price_cents, currency, added_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (user_id, product_id) DO UPDATE SET
            quantity = MIN(quantity + excluded.quantity, ?8),
            price_cents = excluded.price_cents, name = excluded.name",
        params![
            user_id,
            item.product_id,
            item.name,
            item.quantity,
            item.price_cents,
            item.currency,
            service_kit::now_rfc3339(),
            MAX_QUANTITY
        ],
    )?;
    Ok(())
}

pub fn remove(conn: &Connection, user_id: &str, product_id: &str) -> Result<bool, rusqlite::Error> {
    Ok(conn.execute(
        "DELETE FROM cart_items WHERE user_id = ?1 AND product_id = ?2",
        params![user_id, product_id],
    )? == 1)
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("the cart is empty")]
    Empty,
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Messaging(#[from] MessagingError),
}

/// Turns the cart into an order: writes `order.placed` to the outbox, empties the cart and
/// remembers the idempotency key, all in the caller's transaction (`tx`, from
/// [`Outbox::transaction`](messaging::Outbox::transaction)). A known key returns its order again.
/// The order must be paid within `payment_timeout` of now (`payment_deadline`).
pub fn checkout(
    tx: &Writer<'_>,
    user_id: &str,
    idempotency_key: Option<&str>,
    payment_token: &str,
    payment_timeout: std::time::Duration,
    trace: &TraceContext,
) -> Result<(String, bool), CheckoutError> {
    if let Some(key) = idempotency_key {
        let existing: Option<String> = tx
            .query_row(
                "SELECT order_id FROM checkouts WHERE user_id = ?1 AND idempotency_key = ?2",
                params![user_id, key],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(order_id) = existing {
            return Ok((order_id, false));
        }
    }
    let c = cart(tx, user_id)?;
    if c.items.is_empty() {
        return Err(CheckoutError::Empty);
    }
    let order_id = uuid::Uuid::now_v7().to_string();
    let placed = OrderPlaced {
        order_id: order_id.clone(),
        user_id: user_id.to_owned(),
        items: c
            .items
            .iter()
            .map(|i| OrderLine {
                product_id: i.product_id.clone(),
                quantity: i.quantity,
                price_cents: i.price_cents,
            })
            .collect(),
        total_cents: c.total_cents,
        currency: c.currency,
        payment_token: payment_token.to_owned(),
        payment_deadline: Some(time::OffsetDateTime::now_utc() + payment_timeout),
    };
    tx.enqueue(&placed, trace)?;
    tx.execute("DELETE FROM cart_items WHERE user_id = ?1", [user_id])?;
    if let Some(key) = idempotency_key {
        tx.execute(
            "INSERT INTO checkouts (user_id, idempotency_key, order_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![user_id, key, order_id, service_kit::now_rfc3339()],
        )?;
    }
    Ok((order_id, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`checkout`] in a transaction of its own, committed when it succeeds.
    fn checkout(
        c: &mut Connection,
        user_id: &str,
        key: Option<&str>,
        token: &str,
        trace: &TraceContext,
    ) -> Result<(String, bool), CheckoutError> {
        let tx = c.transaction()?;
        let done = super::checkout(
            &Writer::new(&tx, "cart"),
            user_id,
            key,
            token,
            std::time::Duration::from_secs(300),
            trace,
        )?;
        tx.commit()?;
        Ok(done)
    }

    #[test]
    fn checkout_empties_the_cart_once_per_idempotency_key() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::MIGRATIONS).unwrap();
        c.execute_batch("CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, routing_key TEXT NOT NULL, payload BLOB NOT NULL, traceparent TEXT, tracestate TEXT, baggage TEXT, created_at TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL DEFAULT 0, last_error TEXT, sent_at TEXT)").unwrap();
        let t = TraceContext::default();
        assert!(matches!(
            checkout(&mut c, "u", None, "tok_visa", &t),
            Err(CheckoutError::Empty)
        ));
        let item = CartItem {
            product_id: "p".into(),
            name: "P".into(),
            quantity: 2,
            price_cents: 150,
            currency: "EUR".into(),
        };
        add(&c, "u", &item).unwrap();
        add(&c, "u", &item).unwrap();
        assert_eq!(cart(&c, "u").unwrap().total_cents, 600);
        let (id, created) = checkout(&mut c, "u", Some("k1"), "tok_visa", &t).unwrap();
        assert!(created);
        assert!(cart(&c, "u").unwrap().items.is_empty());
        assert_eq!(
            checkout(&mut c, "u", Some("k1"), "tok_visa", &t).unwrap(),
            (id, false)
        );
        let rows: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE routing_key = 'order.placed'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 1);
    }
}
