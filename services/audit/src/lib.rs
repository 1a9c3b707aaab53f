//! audit: an append-only log of every event on the bus (bound to `#`), for auditing and
//! real-time analytics. Admin only.
//!
//! # How to use
//!
//! Run the `audit` binary (default `127.0.0.1:7007`). `GET /api/audit/events?order_id=&type=&limit=`
//! and `GET /api/audit/stats` need the `admin` scope.

mod http;

use std::sync::Arc;

use messaging::clock::{self, now_ms};
use messaging::{Handler, HandlerError, Incoming, Writer};
use rusqlite::{params, Connection};
use serde::Serialize;
use service_kit::{BaseConfig, ConfigErrors, EnvParser, EnvSource, Kit, KitError, Service};
use tokio_util::sync::CancellationToken;

pub use http::router;

/// Append-only: no UPDATE or DELETE is ever issued; triggers refuse them.
pub const MIGRATIONS: &str = "
CREATE TABLE IF NOT EXISTS audit_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    source      TEXT NOT NULL,
    subject     TEXT,
    time        TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    trace_id    TEXT,
    data        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_subject ON audit_log (subject);
CREATE INDEX IF NOT EXISTS audit_received ON audit_log (received_ms);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
";

/// audit as the kit runs it: [`messaging::contract::AUDIT`], port 7007 by default.
pub const SERVICE: Service =
    service_kit::service!(messaging::contract::AUDIT, 7007).with_authz(AUTHZ);

/// Who may call audit: the gateway, reading the audit trail.
pub const AUTHZ: service_kit::AuthzPolicy =
    service_kit::AuthzPolicy::new(&[service_kit::Rule::new(
        &["gateway"],
        &[service_kit::Verb::Get, service_kit::Verb::Head],
        &["/api/audit"],
    )]);

#[derive(Debug, Clone)]
pub struct Config {
    pub base: BaseConfig,
}

impl Config {
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigErrors> {
        let mut p = EnvParser::new(env);
        let base = BaseConfig::parse(&mut p, &crate::SERVICE);
        p.finish().map(|()| Config { base })
    }
}

#[derive(Clone)]
pub struct AppState {
    pub db: messaging::Db,
}

pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), KitError> {
    let mut kit = Kit::start(SERVICE, config.base.clone(), MIGRATIONS, shutdown).await?;
    kit.consume(Arc::new(AuditHandler))?;
    let state = AppState { db: kit.db.clone() };
    kit.serve(router(state)).await
}

pub struct AuditHandler;

/// Records the envelope as received, whatever its type: audit never decodes the payload, so
/// an event outside the catalogue (or one whose payload its own consumers reject) is logged too.
impl Handler for AuditHandler {
    type Prepared = ();

    fn apply(&self, tx: &Writer<'_>, msg: &Incoming, _prepared: ()) -> Result<(), HandlerError> {
        let ev = &msg.event;
        let time = clock::rfc3339(ev.time);
        tx.execute(
            "INSERT OR IGNORE INTO audit_log (event_id, type, source, subject, time, received_ms, trace_id, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![ev.id, ev.ty, ev.source, ev.subject, time, now_ms(), msg.trace.trace_id(), ev.data.to_string()],
        )?;
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub id: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub source: String,
    pub subject: Option<String>,
    pub time: String,
    pub trace_id: Option<String>,
    pub data: serde_json::Value,
}

/// Entries in arrival order; `ty` matches the full type or the routing key.
pub fn query(
    conn: &Connection,
    order_id: Option<&str>,
    ty: Option<&str>,
    limit: i64,
) -> Result<Vec<AuditEntry>, rusqlite::Error> {
    let full_type = ty.map(|t| {
        if t.starts_with("shop.") {
            t.to_owned()
        } else {
            format!("shop.{t}.v1")
        }
    });
    let mut stmt = conn.prepare_cached(
        "SELECT seq, event_id, type, source, subject, time, trace_id, data FROM audit_log
         WHERE (?1 IS NULL OR subject = ?1) AND (?2 IS NULL OR type = ?2) ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![order_id, full_type, limit], |r| {
        let data: String = r.get(7)?;
        Ok(AuditEntry {
            seq: r.get(0)?,
            id: r.get(1)?,
            ty: r.get(2)?,
            source: r.get(3)?,
            subject: r.get(4)?,
            time: r.get(5)?,
            trace_id: r.get(6)?,
            data: serde_json::from_str(&data).unwrap_or_default(),
        })
    })?;
    rows.collect()
}

/// Counts per type and the arrival rate over the last minute.
pub fn stats(conn: &Connection) -> Result<serde_json::Value, rusqlite::Error> {
    let mut stmt =
        conn.prepare_cached("SELECT type, COUNT(*) FROM audit_log GROUP BY type ORDER BY type")?;
    let counts: serde_json::Map<String, serde_json::Value> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .map(|r| r.map(|(t, n)| (t, serde_json::Value::from(n))))
        .collect::<Result<_, _>>()?;
    let total: i64 = conn.query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0))?;
    let last_minute: i64 = conn.query_row(
        "SELECT COUNT(*) FROM audit_log WHERE received_ms >= ?1",
        [now_ms() - 60_000],
        |r| r.get(0),
    )?;
    Ok(serde_json::json!({
        "total": total,
        "counts": counts,
        "last_minute": last_minute,
        "events_per_sec_last_minute": last_minute as f64 / 60.0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_append_only() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(MIGRATIONS).unwrap();
        c.execute(
            "INSERT INTO audit_log (event_id, type, source, subject, time, received_ms, data) VALUES ('e', 'shop.order.placed.v1', 's', 'o', 't', ?1, '{}')",
            [now_ms()],
        )
        .unwrap();
        assert!(c.execute("UPDATE audit_log SET type = 'x'", []).is_err());
        assert!(c.execute("DELETE FROM audit_log", []).is_err());
        assert_eq!(
            query(&c, Some("o"), Some("order.placed"), 10)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            query(&c, Some("o"), Some("payment.failed"), 10)
                .unwrap()
                .len(),
            0
        );
        let s = stats(&c).unwrap();
        assert_eq!(s["counts"]["shop.order.placed.v1"], 1);
        assert_eq!(s["last_minute"], 1);
    }
}
