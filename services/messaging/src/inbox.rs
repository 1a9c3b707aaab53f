//! The inbox: one row per (consumer, message id) handled, written in the handler's transaction.

use rusqlite::{params, Connection, OptionalExtension};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inbox (
    consumer    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    handled_at  TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
";

/// Records the message as handled. Returns `false` when it already was: the caller must then
/// skip the effect (the transaction still commits, and the delivery is acked).
pub fn claim(
    conn: &Connection,
    consumer: &str,
    message_id: &str,
    event_type: &str,
) -> Result<bool, rusqlite::Error> {
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO inbox (consumer, message_id, event_type, handled_at) VALUES (?1, ?2, ?3, ?4)",
        params![consumer, message_id, event_type, crate::clock::now_rfc3339()],
    )?;
    Ok(inserted == 1)
}

/// True when the message was already handled by this consumer.
pub fn seen(conn: &Connection, consumer: &str, message_id: &str) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        "SELECT 1 FROM inbox WHERE consumer = ?1 AND message_id = ?2",
        params![consumer, message_id],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}
