//! Active health checks: `GET <path>` to every endpoint of a pool every `interval`, over the
//! same transport requests use — plain HTTP, or mutual TLS with the upstream's SPIFFE ID checked
//! as for requests. Connections are kept alive between checks (one per endpoint), so a check
//! costs a request, not a handshake. An endpoint turns unhealthy after `unhealthy_threshold`
//! failed checks in a row and healthy again after `healthy_threshold` good ones.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::{Endpoint, Upstream};
use crate::config::HealthCheckConfig;

/// How long a checked connection may stay idle in the pool between checks.
const IDLE: Duration = Duration::from_secs(90);

/// Why one check failed.
#[derive(Debug)]
enum CheckFailure {
    Transport(String),
    Identity(&'static str),
    Status(u16),
    Timeout,
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckFailure::Transport(e) => write!(f, "{e}"),
            CheckFailure::Identity(why) => write!(f, "upstream identity refused: {why}"),
            CheckFailure::Status(s) => write!(f, "status {s}"),
            CheckFailure::Timeout => f.write_str("timed out"),
        }
    }
}

/// Runs `upstream`'s health checks on `background` until `stop` is cancelled.
pub(crate) fn start(upstream: &Arc<Upstream>, background: &Handle, stop: CancellationToken) {
    let Some(hc) = upstream.config.health_check.clone() else {
        return;
    };
    let this = Arc::clone(upstream);
    background.spawn(async move {
        let connector = Connector::new(None);
        let request = match request(&hc) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(upstream = %this.name, error = %e, "Invalid health check request; checks disabled.");
                return;
            }
        };
        let mut streak: Vec<(bool, u32)> = vec![(true, 0); this.endpoints.len()];
        loop {
            for (i, endpoint) in this.endpoints.iter().enumerate() {
                let outcome = tokio::time::timeout(
                    hc.timeout + Duration::from_millis(100),
                    check(&this, endpoint, &connector, &request, &hc),
                )
                .await
                .unwrap_or(Err(CheckFailure::Timeout));
                record(&this, endpoint, &mut streak[i], outcome, &hc);
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(hc.interval) => {}
            }
        }
    });
}

fn request(hc: &HealthCheckConfig) -> pingora_core::Result<RequestHeader> {
    let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None)?;
    req.insert_header("Host", "localhost")?;
    req.insert_header("User-Agent", "vantage-gateway-healthcheck")?;
    Ok(req)
}

/// One check of one endpoint.
async fn check(
    upstream: &Upstream,
    endpoint: &Endpoint,
    connector: &Connector,
    request: &RequestHeader,
    hc: &HealthCheckConfig,
) -> Result<(), CheckFailure> {
    let mut peer = HttpPeer::new(endpoint.addr, upstream.tls.is_some(), String::new());
    peer.options.connection_timeout = Some(hc.timeout);
    peer.options.total_connection_timeout = Some(hc.timeout);
    peer.options.read_timeout = Some(hc.timeout);
    peer.options.write_timeout = Some(hc.timeout);
    peer.options.idle_timeout = Some(IDLE);
    if let Some(tls) = &upstream.tls {
        tls.apply(&mut peer);
    }
    let (mut session, _reused) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| CheckFailure::Transport(e.to_string()))?;
    if let Some(tls) = &upstream.tls {
        tls.check(session.digest())
            .map_err(|refusal| CheckFailure::Identity(refusal.reason()))?;
    }
    exchange(&mut session, request)
        .await
        .map_err(|e| CheckFailure::Transport(e.to_string()))?;
    let status = session.response_header().map_or(0, |r| r.status.as_u16());
    connector
        .release_http_session(session, &peer, Some(IDLE))
        .await;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(CheckFailure::Status(status))
    }
}

async fn exchange(session: &mut HttpSession, request: &RequestHeader) -> pingora_core::Result<()> {
    session
        .write_request_header(Box::new(request.clone()))
        .await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    while session.read_response_body().await?.is_some() {}
    Ok(())
}

/// Applies one check's outcome to the endpoint's streak and health.
fn record(
    upstream: &Upstream,
    endpoint: &Endpoint,
    (last, count): &mut (bool, u32),
    outcome: Result<(), CheckFailure>,
    hc: &HealthCheckConfig,
) {
    let ok = outcome.is_ok();
    if ok == *last {
        *count += 1;
    } else {
        *last = ok;
        *count = 1;
    }
    let healthy = endpoint.active_healthy.load(Ordering::Relaxed);
    if healthy && !ok && *count >= hc.unhealthy_threshold {
        endpoint.active_healthy.store(false, Ordering::Relaxed);
        let reason = outcome.err().map(|e| e.to_string()).unwrap_or_default();
        tracing::warn!(upstream = %upstream.name, endpoint = %endpoint.addr, %reason, "Health check failed; endpoint marked unhealthy.");
    } else if !healthy && ok && *count >= hc.healthy_threshold {
        endpoint.active_healthy.store(true, Ordering::Relaxed);
        tracing::info!(upstream = %upstream.name, endpoint = %endpoint.addr, "Health check passed; endpoint healthy again.");
    }
}
