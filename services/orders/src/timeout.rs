//! Cancels orders that were not paid in time.

use std::time::Duration;

use messaging::{clock, Outbox, TraceContext};
use tokio_util::sync::CancellationToken;

use crate::domain::Fact;
use crate::store::{self, StoreError};

const TICK: Duration = Duration::from_millis(200);

pub(crate) async fn run(outbox: Outbox, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        match sweep(&outbox).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(orders = n, "Cancelled overdue orders."),
            Err(error) => tracing::warn!(%error, "Timeout sweep failed."),
        }
    }
}

/// Cancels every overdue order, each in its own transaction (the outbox wakes the relay after
/// each). Returns how many were cancelled.
async fn sweep(outbox: &Outbox) -> Result<usize, StoreError> {
    let ids = outbox
        .db()
        .call(|c| store::overdue(c, clock::now_ms()))
        .await?;
    let mut cancelled = 0;
    for id in ids {
        outbox
            .transaction(move |tx| {
                // Continue the checkout's trace, so the cancellation shows up in it.
                let trace = TraceContext::from_lookup(|k| {
                    (k == "traceparent")
                        .then(|| store::load(tx, &id).ok().flatten()?.traceparent)
                        .flatten()
                });
                store::handle(tx, &id, Fact::DeadlinePassed, &trace)
            })
            .await?;
        cancelled += 1;
    }
    Ok(cancelled)
}
