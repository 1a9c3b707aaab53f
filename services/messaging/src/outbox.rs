//! The transactional outbox: events are rows written in the caller's transaction; the
//! [`Relay`](crate::Relay) publishes them.
//!
//! Services write through an [`Outbox`] handle (`service-kit` binds one to the service's name):
//! `outbox.transaction(|w| { …; w.enqueue(&event, &trace) })` commits and wakes the relay. A
//! consumer's [`Handler`](crate::Handler) gets a [`Writer`] for the consumer's transaction.

use std::cell::Cell;

use rusqlite::{params, Connection, OptionalExtension};

use crate::clock::{now_ms, now_rfc3339};
use crate::{CloudEvent, Db, Event, MessagingError, OutboxNotifier, TraceContext};

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

/// Writes events into the outbox as one service, inside a transaction someone else commits: a
/// [`Handler`](crate::Handler)'s (the consumer commits it and wakes the relay) or an
/// [`Outbox::transaction`]'s (which commits it and wakes the relay). Derefs to the transaction's
/// [`Connection`], so the same value serves the service's own writes.
pub struct Writer<'c> {
    conn: &'c Connection,
    source: &'c str,
    wrote: Cell<bool>,
}

impl<'c> Writer<'c> {
    /// A writer for `source` (the service's name, CloudEvents source `/shop/<source>`) over an open
    /// transaction. Whoever commits `conn` must wake the relay afterwards, which is why services
    /// get their writers from [`Outbox::transaction`] or a consumer, never from here.
    pub fn new(conn: &'c Connection, source: &'c str) -> Self {
        Self {
            conn,
            source,
            wrote: Cell::new(false),
        }
    }

    /// Writes `data` as a CloudEvent row. Nothing is published unless the transaction commits.
    pub fn enqueue<E: Event>(
        &self,
        data: &E,
        trace: &TraceContext,
    ) -> Result<CloudEvent, MessagingError> {
        let event = CloudEvent::new(self.source, data)?;
        enqueue_event(self.conn, &event, trace)?;
        self.wrote.set(true);
        Ok(event)
    }

    /// The service the events are from.
    pub fn source(&self) -> &str {
        self.source
    }

    /// True once a row was written through this writer.
    pub fn wrote(&self) -> bool {
        self.wrote.get()
    }
}

impl std::ops::Deref for Writer<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// A service's outbox: its database, the name its events are from, and the relay to wake. Bound
/// once (by `service-kit`), so callers can neither misname the source nor forget to wake the
/// relay after their transaction commits. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: Db,
    source: &'static str,
    notifier: OutboxNotifier,
}

impl Outbox {
    /// The outbox of `source` in `db`; `notifier` wakes its relay.
    pub fn new(db: Db, source: &'static str, notifier: OutboxNotifier) -> Self {
        Self {
            db,
            source,
            notifier,
        }
    }

    /// Runs `f` in one transaction and commits it when `f` returns `Ok` (rolls back otherwise).
    /// If `f` wrote events through its [`Writer`], the relay is woken after the commit, so they
    /// go out at once instead of at the next poll.
    pub async fn transaction<F, R, E>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&Writer<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        let source = self.source;
        let (result, wrote) = self
            .db
            .call(move |c| {
                let tx = c.transaction()?;
                let writer = Writer::new(&tx, source);
                let result = f(&writer)?;
                let wrote = writer.wrote();
                tx.commit()?;
                Ok::<_, E>((result, wrote))
            })
            .await?;
        if wrote {
            self.notifier.wake();
        }
        Ok(result)
    }

    /// The database the rows live in.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The service the events are from.
    pub fn source(&self) -> &'static str {
        self.source
    }
}

/// Writes an already-built event (tests use this to publish hand-made envelopes; services write
/// through a [`Writer`]).
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
