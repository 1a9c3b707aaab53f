//! The ops port (`OPS_LISTEN_ADDR`, default the API port + 100): `/healthz`, `/readyz` and
//! `/metrics` over plain HTTP for the orchestrator's probes and the scraper, and nothing else —
//! no API route is reachable here, so plain HTTP never reaches a handler.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Health;

/// Serves `health` on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, health.router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
