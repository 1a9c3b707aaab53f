//! `shop_orders_final{status, reason}`: how many orders ended SHIPPED or CANCELLED (by reason),
//! read from the CQRS read model so the figure is exact across restarts and redeliveries. The
//! shop dashboard's "saga outcomes" panel plots it.

use std::time::Duration;

use messaging::Db;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

/// How often the gauge is refreshed.
const REFRESH: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    status: String,
    /// `""` for SHIPPED; `out_of_stock`, `payment_declined`, `timeout`… for CANCELLED.
    reason: String,
}

pub(crate) type Outcomes = Family<OutcomeLabels, Gauge>;

/// Counts final orders by status and the reason of their last transition.
fn count(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<(String, String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT status, COALESCE(json_extract(history, '$[#-1].reason'), ''), COUNT(*)
         FROM orders_view WHERE status IN ('SHIPPED', 'CANCELLED') GROUP BY 1, 2",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// Refreshes `outcomes` from the read model until shutdown.
pub(crate) async fn run(db: Db, outcomes: Outcomes, shutdown: CancellationToken) {
    loop {
        match db.call(|c| count(c)).await {
            Ok(rows) => {
                for (status, reason, n) in rows {
                    outcomes
                        .get_or_create(&OutcomeLabels { status, reason })
                        .set(n);
                }
            }
            Err(error) => tracing::warn!(%error, "Counting final orders failed."),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_final_orders_by_status_and_last_reason() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(crate::MIGRATIONS).unwrap();
        let insert = |id: &str, status: &str, history: &str| {
            c.execute(
                "INSERT INTO orders_view VALUES (?1, 'u', ?2, '[]', 1, 'EUR', ?3, 't', 0, 1)",
                rusqlite::params![id, status, history],
            )
            .unwrap();
        };
        insert(
            "a",
            "SHIPPED",
            r#"[{"status":"PENDING"},{"status":"SHIPPED"}]"#,
        );
        insert(
            "b",
            "CANCELLED",
            r#"[{"status":"PENDING"},{"status":"CANCELLED","reason":"timeout"}]"#,
        );
        insert(
            "c",
            "CANCELLED",
            r#"[{"status":"CANCELLED","reason":"timeout"}]"#,
        );
        insert("d", "PENDING", r#"[{"status":"PENDING"}]"#);
        let mut rows = count(&c).unwrap();
        rows.sort();
        assert_eq!(
            rows,
            vec![
                ("CANCELLED".into(), "timeout".into(), 2),
                ("SHIPPED".into(), "".into(), 1)
            ]
        );
    }
}
