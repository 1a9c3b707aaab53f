use messaging::events::{OrderPlaced, PaymentFailed, PaymentRefunded, PaymentSucceeded};
use messaging::{MessagingError, TraceContext, Writer};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::provider::ChargeOutcome;

#[derive(Debug, Clone)]
pub struct Intent {
    pub user_id: String,
    pub token: String,
    pub amount_cents: i64,
    pub currency: String,
    /// The order's `payment_deadline` (Unix ms); `None` for an `order.placed` without one. No
    /// provider call starts after it, unless one was started before it and its answer was lost
    /// (then it is repeated to learn it: `Provider::charge`).
    pub deadline_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    pub status: String,
    pub amount_cents: i64,
    pub currency: String,
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub user_id: String,
}

pub fn record_intent(conn: &Connection, p: &OrderPlaced) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT OR IGNORE INTO payment_intents (order_id, user_id, token, amount_cents, currency, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![p.order_id, p.user_id, p.payment_token, p.total_cents, p.currency, service_kit::now_rfc3339()],
    )?;
    if let Some(deadline) = p.payment_deadline {
        conn.execute(
            "INSERT OR IGNORE INTO payment_deadlines (order_id, deadline_ms) VALUES (?1, ?2)",
            params![p.order_id, messaging::clock::unix_ms(deadline)],
        )?;
    }
    Ok(())
}

pub fn intent(conn: &Connection, order_id: &str) -> Result<Option<Intent>, rusqlite::Error> {
    conn.query_row(
        "SELECT i.user_id, i.token, i.amount_cents, i.currency, d.deadline_ms
         FROM payment_intents i LEFT JOIN payment_deadlines d ON d.order_id = i.order_id
         WHERE i.order_id = ?1",
        [order_id],
        |r| {
            Ok(Intent {
                user_id: r.get(0)?,
                token: r.get(1)?,
                amount_cents: r.get(2)?,
                currency: r.get(3)?,
                deadline_ms: r.get(4)?,
            })
        },
    )
    .optional()
}

/// Records, committed before payment's first provider call for `order_id`, that one was
/// started: from then on the call may have charged, so every later delivery repeats it (same
/// idempotency key) to learn its answer, whatever the deadline or a cancellation say.
///
/// Run it outside a transaction: it commits at once, synced to disk even across a power loss
/// (`synchronous = FULL` for this commit; the database's own setting, WAL with `NORMAL`, may
/// lose the last commits then, though never to a crash of the process).
pub fn mark_call_started(conn: &Connection, order_id: &str) -> Result<(), rusqlite::Error> {
    let before: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO provider_calls (order_id, started_at) VALUES (?1, ?2)",
        params![order_id, service_kit::now_rfc3339()],
    );
    conn.pragma_update(None, "synchronous", before)?;
    inserted.map(|_| ())
}

/// True when a provider call was started for `order_id` ([`mark_call_started`]).
pub fn call_started(conn: &Connection, order_id: &str) -> Result<bool, rusqlite::Error> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM provider_calls WHERE order_id = ?1",
            [order_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

pub fn is_cancelled(conn: &Connection, order_id: &str) -> Result<bool, rusqlite::Error> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM cancelled_orders WHERE order_id = ?1",
            [order_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn payment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Payment> {
    Ok(Payment {
        id: r.get(0)?,
        order_id: r.get(1)?,
        status: r.get(2)?,
        amount_cents: r.get(3)?,
        currency: r.get(4)?,
        attempts: r.get(5)?,
        reason: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
        user_id: r.get(9)?,
    })
}

const COLUMNS: &str = "id, order_id, status, amount_cents, currency, attempts, reason, created_at, updated_at, user_id";

pub fn payment_for(conn: &Connection, order_id: &str) -> Result<Option<Payment>, rusqlite::Error> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM payments WHERE order_id = ?1"),
        [order_id],
        payment_row,
    )
    .optional()
}

/// Payments visible to `user_id` (all when `None`), optionally for one order.
pub fn list(
    conn: &Connection,
    user_id: Option<&str>,
    order_id: Option<&str>,
) -> Result<Vec<Payment>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM payments WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR order_id = ?2)
         ORDER BY created_at DESC LIMIT 500"
    ))?;
    let rows = stmt.query_map(params![user_id, order_id], payment_row)?;
    rows.collect()
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Messaging(#[from] MessagingError),
}

/// Records the provider's answer (once per order) and emits the matching event. A success for
/// an order already cancelled is refunded at once. [`ChargeOutcome::DeadlinePassed`] is a
/// `FAILED` payment with reason `deadline_passed` and a `payment.failed` saying so.
pub fn record_charge(
    conn: &Writer<'_>,
    order_id: &str,
    intent: &Intent,
    outcome: &ChargeOutcome,
    trace: &TraceContext,
) -> Result<(), PaymentError> {
    if payment_for(conn, order_id)?.is_some() {
        return Ok(()); // never twice
    }
    let id = uuid::Uuid::now_v7().to_string();
    let now = service_kit::now_rfc3339();
    let (status, attempts, reason) = match outcome {
        ChargeOutcome::Succeeded { attempts } => ("SUCCEEDED", attempts, None),
        ChargeOutcome::Declined { attempts } => ("DECLINED", attempts, Some("declined")),
        ChargeOutcome::Failed { attempts } => ("FAILED", attempts, Some("provider_error")),
        ChargeOutcome::DeadlinePassed { attempts } => ("FAILED", attempts, Some("deadline_passed")),
    };
    conn.execute(
        "INSERT INTO payments (id, order_id, user_id, status, amount_cents, currency, attempts, reason, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        params![id, order_id, intent.user_id, status, intent.amount_cents, intent.currency, attempts, reason, now],
    )?;
    match reason {
        None => {
            conn.enqueue(
                &PaymentSucceeded {
                    order_id: order_id.to_owned(),
                    user_id: intent.user_id.clone(),
                    payment_id: id,
                    amount_cents: intent.amount_cents,
                },
                trace,
            )?;
            tracing::info!(order_id, "Charged an order.");
            if is_cancelled(conn, order_id)? {
                refund(conn, order_id, trace)?;
            }
        }
        Some(reason) => {
            conn.enqueue(
                &PaymentFailed {
                    order_id: order_id.to_owned(),
                    reason: reason.to_owned(),
                },
                trace,
            )?;
            tracing::info!(order_id, reason, "Charge failed.");
        }
    }
    Ok(())
}

/// Refunds a successful charge of a cancelled order (no-op otherwise).
pub fn refund(
    conn: &Writer<'_>,
    order_id: &str,
    trace: &TraceContext,
) -> Result<bool, PaymentError> {
    let Some(p) = payment_for(conn, order_id)?.filter(|p| p.status == "SUCCEEDED") else {
        return Ok(false);
    };
    conn.execute(
        "UPDATE payments SET status = 'REFUNDED', reason = 'order_cancelled', updated_at = ?1 WHERE id = ?2",
        params![service_kit::now_rfc3339(), p.id],
    )?;
    conn.enqueue(
        &PaymentRefunded {
            order_id: order_id.to_owned(),
            payment_id: p.id,
            amount_cents: p.amount_cents,
        },
        trace,
    )?;
    tracing::info!(order_id, "Refunded a cancelled order.");
    Ok(true)
}

pub fn mark_cancelled(
    conn: &Connection,
    order_id: &str,
    reason: &str,
) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT OR IGNORE INTO cancelled_orders (order_id, reason, at) VALUES (?1, ?2, ?3)",
        params![order_id, reason, service_kit::now_rfc3339()],
    )?;
    Ok(())
}
