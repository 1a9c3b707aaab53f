//! One upstream attempt: choosing the endpoint and building the peer, recording how it ended
//! (metrics, passive ejection, the attempt's CLIENT span), and deciding whether to retry.

use std::time::Duration;

use http::Method;
use observability::http_span::HttpSpan as _;
use observability::http_trace::Side;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Error;
use pingora_http::ResponseHeader;

use super::Unavailable;
use crate::context::RequestCtx;
use crate::metrics::{Metrics, UpstreamErrorLabels};
use crate::problem::classify::UpstreamErrorKind;
use crate::problem::GatewayError;

/// How long an idle upstream connection is kept for reuse.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the next attempt for the request's route: picks an endpoint (avoiding the one that
/// just failed), opens its CLIENT span and returns the peer to connect to.
pub(crate) fn begin(
    ctx: &mut RequestCtx,
    metrics: &Metrics,
    method: &Method,
    path: &str,
) -> Result<Box<HttpPeer>, GatewayError> {
    let route = ctx.route.clone().ok_or(GatewayError::Internal)?;
    let upstream = &route.upstream;
    ctx.upstream.count += 1;
    let endpoint = upstream.select(ctx.upstream.last_failed).map_err(|u| {
        match (ctx.upstream.last_failure, u) {
            // A retry that finds no other endpoint answers with what the client's request
            // actually met (a timeout stays a 504), not with the pool's state.
            (Some(kind), _) => kind.answer(),
            (None, Unavailable::CircuitOpen) => GatewayError::CircuitOpen(upstream.name.clone()),
            (None, Unavailable::NoHealthyEndpoint) => {
                GatewayError::NoHealthyEndpoint(upstream.name.clone())
            }
        }
    })?;
    metrics.count_attempt(&upstream.name);
    ctx.upstream.inflight = Some(endpoint.track());
    let scheme = if upstream.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // Attributes (`url.full` is `{scheme}://{addr}{path}`) only when the span is exported.
    let to = observability::http_span::Upstream {
        scheme,
        addr: endpoint.addr,
        target: path,
    };
    let mut span = ctx.span.client_to(method, to, ctx.upstream.count - 1);
    if span.is_recording() {
        // Shared with the route's configuration, not copied per attempt.
        span.set_str("vantage.upstream", &route.span.upstream);
    }
    ctx.upstream.span = Some(span);

    let cfg = &upstream.config;
    let mut peer = HttpPeer::new(endpoint.addr, upstream.tls.is_some(), String::new());
    if let Some(tls) = &upstream.tls {
        tls.apply(&mut peer);
    }
    peer.options.connection_timeout = Some(cfg.connect_timeout);
    peer.options.total_connection_timeout = Some(cfg.connect_timeout);
    peer.options.read_timeout = Some(cfg.read_timeout);
    peer.options.write_timeout = Some(cfg.read_timeout);
    peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
    ctx.upstream.endpoint = Some(endpoint);
    Ok(Box::new(peer))
}

/// Checks, right after connecting and before a byte of the request is sent, that a TLS
/// upstream proved an allowed SPIFFE ID; records it on the attempt's span. A refusal is
/// counted, put on the span and answered with 502 `upstream-identity`.
pub(crate) fn verify_peer(
    ctx: &mut RequestCtx,
    metrics: &Metrics,
    digest: Option<&pingora_core::protocols::Digest>,
) -> Result<(), GatewayError> {
    let Some(route) = ctx.route.clone() else {
        return Ok(());
    };
    let Some(tls) = &route.upstream.tls else {
        return Ok(());
    };
    match tls.check(digest) {
        Ok(id) => {
            if let Some(span) = &mut ctx.upstream.span {
                span.set_str("vantage.upstream.spiffe_id", &id);
                if let Some(ssl) = digest.and_then(|d| d.ssl_digest.as_ref()) {
                    span.set_str("tls.protocol.version", &ssl.version);
                    span.set_str("tls.cipher", &ssl.cipher);
                }
            }
            Ok(())
        }
        Err(refusal) => {
            metrics
                .upstream_identity_refusals
                .get_or_create(&crate::metrics::IdentityRefusalLabels {
                    upstream: route.upstream.name.clone(),
                    reason: refusal.reason(),
                })
                .inc();
            if let Some(ep) = &ctx.upstream.endpoint {
                route.upstream.record_endpoint_failure(ep);
            }
            if let Some(mut span) = ctx.upstream.span.take() {
                if let crate::tls::IdentityRefusal::WrongIdentity(id) = &refusal {
                    span.set_str("vantage.upstream.spiffe_id", id);
                }
                span.record_error(refusal.reason());
            }
            tracing::warn!(upstream = %route.upstream.name, reason = refusal.reason(), presented = ?refusal, "Refused an upstream's TLS identity.");
            Err(GatewayError::UpstreamIdentity {
                upstream: route.upstream.name.clone(),
                reason: refusal.reason(),
            })
        }
    }
}

/// Records a failed attempt (metrics, passive ejection, the attempt's span) and returns the
/// upstream's retry budget; `None` when no route was chosen.
pub(crate) fn failed(ctx: &mut RequestCtx, metrics: &Metrics, e: &Error) -> Option<u32> {
    let route = ctx.route.clone()?;
    let upstream = &route.upstream;
    let kind = UpstreamErrorKind::of(e);
    metrics
        .upstream_errors
        .get_or_create(&UpstreamErrorLabels {
            upstream: upstream.name.clone(),
            kind: kind.as_str(),
        })
        .inc();
    if let Some(ep) = &ctx.upstream.endpoint {
        upstream.record_endpoint_failure(ep);
    }
    ctx.upstream.last_failed = ctx.upstream.endpoint.as_ref().map(|ep| ep.addr);
    ctx.upstream.last_failure = Some(kind);
    ctx.upstream.failed = true;
    if let Some(mut span) = ctx.upstream.span.take() {
        span.record_error(kind.as_str());
    }
    Some(upstream.config.retries)
}

/// Whether to retry after a connect failure: nothing reached the upstream, so any method may
/// be retried, within the budget — on another endpoint, never the one that just failed.
pub(crate) fn retry_after_connect_failure(
    ctx: &mut RequestCtx,
    metrics: &Metrics,
    e: &Error,
) -> bool {
    failed(ctx, metrics, e).is_some_and(|retries| ctx.upstream.count <= retries)
        && has_alternative(ctx)
}

/// Whether another endpoint than the one that just failed can take a retry.
fn has_alternative(ctx: &RequestCtx) -> bool {
    ctx.route
        .as_ref()
        .is_some_and(|r| r.upstream.has_alternative(ctx.upstream.last_failed))
}

/// Whether to retry after a failure mid-exchange: the request may have reached the upstream,
/// so only what is safe to repeat (`idempotent`, body still buffered), within the budget.
pub(crate) fn retry_after_proxy_error(
    ctx: &mut RequestCtx,
    metrics: &Metrics,
    e: &Error,
    idempotent: bool,
) -> bool {
    failed(ctx, metrics, e).is_some_and(|retries| idempotent && ctx.upstream.count <= retries)
        && has_alternative(ctx)
}

/// Records the upstream's response head: the attempt's status, and its endpoint's passive
/// health (502/503/504 count as failures).
pub(crate) fn responded(ctx: &mut RequestCtx, response: &ResponseHeader) {
    let status = response.status.as_u16();
    ctx.upstream.status = Some(status);
    if let Some(span) = &mut ctx.upstream.span {
        span.record_status(response.status, Side::Client);
    }
    if let (Some(route), Some(ep)) = (&ctx.route, &ctx.upstream.endpoint) {
        if matches!(status, 502..=504) {
            route.upstream.record_endpoint_failure(ep);
        } else {
            route.upstream.record_endpoint_success(ep);
        }
    }
}

/// Feeds the circuit breaker one outcome per request that wanted this upstream, after
/// retries: what the client experienced. A transport failure, a 502–504 from the upstream, an
/// identity refusal and "no healthy endpoint" are failures; a request refused because the
/// circuit is open, or one that never got as far as the upstream (auth, limits, a client that
/// left), is not an outcome.
pub(crate) fn finished(ctx: &RequestCtx, e: Option<&Error>) {
    let Some(route) = ctx.route.as_ref() else {
        return;
    };
    let refused = match &ctx.failure {
        Some(crate::context::Failure::Answered { error, .. }) => match error {
            GatewayError::CircuitOpen(_) => return,
            GatewayError::NoHealthyEndpoint(_) | GatewayError::UpstreamIdentity { .. } => true,
            _ => false,
        },
        _ => false,
    };
    if refused {
        route.upstream.record_request_outcome(false);
        return;
    }
    if ctx.upstream.count == 0 {
        return;
    }
    let failed_upstream = e.is_some_and(|e| e.esource() == &pingora_core::ErrorSource::Upstream)
        || ctx.upstream.failed && ctx.upstream.status.is_none()
        || ctx.upstream.status.is_some_and(|s| matches!(s, 502..=504));
    if e.is_none() || ctx.upstream.failed || ctx.upstream.status.is_some() {
        route.upstream.record_request_outcome(!failed_upstream);
    }
}
