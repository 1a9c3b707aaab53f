//! What the upstream receives on top of the client's request: the normalised (and rewritten)
//! path, the caller's identity, `X-Request-Id`, forwarding headers that describe the connection
//! the gateway accepted, and the trace context of the attempt's CLIENT span.
//!
//! Pingora removes the headers a client's `Connection:` nominates *before* this runs, so every
//! header set here reaches the upstream whatever the client nominated: a client cannot make the
//! gateway's own headers disappear. (Pingora itself refuses a nomination of `Host` or
//! `X-Forwarded-*`.)

use http::{header, HeaderValue};
use observability::opentelemetry::propagation::Injector;
use pingora_http::RequestHeader;

use crate::context::RequestCtx;
use crate::problem::GatewayError;
use crate::{auth, routing};

/// Trace-context headers replaced by the gateway's own when it propagates a trace.
const TRACE_HEADERS: [&str; 4] = ["traceparent", "tracestate", "baggage", "b3"];

/// Edits `upstream` (the request about to be sent) from the client's request `downstream`.
///
/// Fails only when the path to send cannot be put on the wire; the request is then refused
/// rather than sent with another path than the one it was routed on.
pub(crate) fn prepare(
    downstream: &RequestHeader,
    upstream: &mut RequestHeader,
    ctx: &RequestCtx,
) -> Result<(), GatewayError> {
    if let Some(route) = &ctx.route {
        let uri = &downstream.uri;
        let path = ctx.path.as_deref().unwrap_or(uri.path());
        let target = routing::rewrite(&route.config, path, uri.query()).or_else(|| {
            ctx.path.as_ref().map(|p| match uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p.clone(),
            })
        });
        if let Some(target) = target {
            upstream
                .set_raw_path(target.as_bytes())
                .map_err(|_| GatewayError::BadRequest)?;
        }
    }
    let _ = upstream.insert_header("x-request-id", ctx.request_id.as_str());
    if let Some(identity) = ctx.auth.admitted() {
        auth::forward_identity(upstream, identity);
    }
    // Forwarding headers describe the connection the gateway accepted, plus what trusted
    // proxies in front of it vouched for (`server.trusted_proxies`); never what a client claims.
    let (forwarded_for, proto) = ctx
        .client
        .forwarded
        .as_ref()
        .map_or((ctx.client.ip.as_str(), "http"), |f| {
            (f.forwarded_for.as_str(), f.proto)
        });
    let _ = upstream.insert_header("x-forwarded-for", forwarded_for);
    // Always "http" or "https": a static value, neither validated nor copied.
    let _ = upstream.insert_header("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Some(host) = downstream.headers.get(header::HOST).cloned() {
        let _ = upstream.insert_header("x-forwarded-host", host);
    }
    // Continue the trace upstream as a child of this attempt's CLIENT span.
    if let Some(attempt) = &ctx.upstream.span {
        match attempt.w3c_headers() {
            // The common case (W3C propagation, no baggage): two header writes, no formatting.
            Some(w3c) => {
                clear_trace_headers(upstream);
                let _ = upstream.insert_header(TRACE_HEADERS[0], w3c.traceparent);
                if let Some(state) = w3c.tracestate {
                    let _ = upstream.insert_header(TRACE_HEADERS[1], state);
                }
            }
            None => attempt.inject_into(&mut TraceHeaders {
                upstream,
                cleared: false,
            }),
        }
    }
    Ok(())
}

/// Writes an attempt's trace context straight into the upstream request (no intermediate header
/// map, no second copy of names and values). The first header written removes every trace
/// header the client sent, so none leaks upstream unchanged; when there is no context to send
/// nothing is removed and the client's headers pass through.
struct TraceHeaders<'a> {
    upstream: &'a mut RequestHeader,
    cleared: bool,
}

/// Removes every trace header the client sent (one pass over the names; nothing to do for
/// most requests).
fn clear_trace_headers(upstream: &mut RequestHeader) {
    let sent = upstream
        .headers
        .keys()
        .any(|name| TRACE_HEADERS.contains(&name.as_str()));
    if sent {
        for name in TRACE_HEADERS {
            upstream.remove_header(name);
        }
    }
}

impl Injector for TraceHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !self.cleared {
            clear_trace_headers(self.upstream);
            self.cleared = true;
        }
        // A `&'static str` name is not copied (Pingora keeps its case as given).
        let _ = match TRACE_HEADERS.iter().find(|n| **n == key) {
            Some(name) => self.upstream.insert_header(*name, value),
            None => self.upstream.insert_header(key.to_owned(), value),
        };
    }
}
