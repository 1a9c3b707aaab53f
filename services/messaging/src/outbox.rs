//! The transactional outbox: events are rows written in the caller's transaction; the
//! [`Relay`](crate::Relay) publishes them.

use rusqlite::{params, Connection, OptionalExtension};
use time::OffsetDateTime;

use crate::{CloudEvent, Event, MessagingError, TraceContext};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    routing_key     TEXT NOT NULL,
    payload         BLOB NOT NULL,
    traceparent     TEXT,
    tracestate      TEXT,
    baggage         TEXT,
    created_at      TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    sent_at         TEXT
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (next_attempt_ms) WHERE sent_at IS NULL;
";

/// Writes `data` as a CloudEvent row in the caller's transaction (pass the `Transaction`, which
/// derefs to `Connection`, or a handler's `conn`). Nothing is published unless it commits.
pub fn enqueue<E: Event>(
    conn: &Connection,
    source: &str,
    data: &E,
    trace: &TraceContext,
) -> Result<CloudEvent, MessagingError> {
    let event = CloudEvent::new(source, data)?;
    enqueue_event(conn, &event, trace)?;
    Ok(event)
}

/// Writes an already-built event (tests use this to publish hand-made envelopes).
pub fn enqueue_event(
    conn: &Connection,
    event: &CloudEvent,
    trace: &TraceContext,
) -> Result<(), MessagingError> {
    let payload = serde_json::to_vec(event)?;
    conn.execute(
        "INSERT INTO outbox (event_id, routing_key, payload, traceparent, tracestate, baggage, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            event.id,
            event.routing_key(),
            payload,
            trace.traceparent,
            trace.tracestate,
            trace.baggage,
            now_rfc3339(),
        ],
    )?;
    Ok(())
}

/// An unsent row, as the relay sees it.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub seq: i64,
    pub event_id: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub trace: TraceContext,
    pub attempts: i64,
}

/// Unsent rows that are due, oldest first.
pub fn due(conn: &Connection, limit: usize) -> Result<Vec<OutboxRow>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, event_id, routing_key, payload, traceparent, tracestate, baggage, attempts
         FROM outbox WHERE sent_at IS NULL AND next_attempt_ms <= ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now_ms(), limit as i64], |r| {
        Ok(OutboxRow {
            seq: r.get(0)?,
            event_id: r.get(1)?,
            routing_key: r.get(2)?,
            payload: r.get(3)?,
            trace: TraceContext {
                traceparent: r.get(4)?,
                tracestate: r.get(5)?,
                baggage: r.get(6)?,
            },
            attempts: r.get(7)?,
        })
    })?;
    rows.collect()
}

/// Marks rows as published.
pub fn mark_sent(conn: &mut Connection, seqs: &[i64]) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached("UPDATE outbox SET sent_at = ?1 WHERE seq = ?2")?;
        let now = now_rfc3339();
        for seq in seqs {
            stmt.execute(params![now, seq])?;
        }
    }
    tx.commit()
}

/// Schedules another attempt with exponential back-off (200 ms doubling, at most 30 s).
pub fn mark_failed(conn: &Connection, row: &OutboxRow, error: &str) -> Result<(), rusqlite::Error> {
    let delay_ms = (200i64 << row.attempts.min(8)).min(30_000);
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?1, last_error = ?2 WHERE seq = ?3",
        params![now_ms() + delay_ms, error, row.seq],
    )?;
    Ok(())
}

/// Number of rows not yet published.
pub fn pending(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row(
        "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL",
        [],
        |r| r.get(0),
    )
}

/// When the row with this event id was published, if it was.
pub fn sent_at(conn: &Connection, event_id: &str) -> Result<Option<String>, rusqlite::Error> {
    conn.query_row(
        "SELECT sent_at FROM outbox WHERE event_id = ?1",
        [event_id],
        |r| r.get(0),
    )
    .optional()
    .map(Option::flatten)
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
