//! Cancels orders that were not paid in time.

use std::time::Duration;

use messaging::{Db, OutboxNotifier, TraceContext};
use tokio_util::sync::CancellationToken;

use crate::domain::Fact;
use crate::store;

const TICK: Duration = Duration::from_millis(200);

pub(crate) async fn run(db: Db, notifier: OutboxNotifier, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        let result = db
            .call(|c| {
                let now_ms =
                    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
                let ids = store::overdue(c, now_ms)?;
                let mut cancelled = 0;
                for id in ids {
                    let tx = c.transaction()?;
                    // Continue the checkout's trace, so the cancellation shows up in it.
                    let trace = TraceContext::from_lookup(|k| {
                        (k == "traceparent")
                            .then(|| store::load(&tx, &id).ok().flatten()?.traceparent)
                            .flatten()
                    });
                    store::handle(&tx, &id, Fact::DeadlinePassed, &trace)?;
                    tx.commit()?;
                    cancelled += 1;
                }
                Ok::<_, store::StoreError>(cancelled)
            })
            .await;
        match result {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(orders = n, "Cancelled overdue orders.");
                notifier.wake();
            }
            Err(error) => tracing::warn!(%error, "Timeout sweep failed."),
        }
    }
}
