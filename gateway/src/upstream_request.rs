//! What the upstream receives on top of the client's request: the rewritten path, forwarding
//! headers that describe the connection the gateway accepted, and the trace context of the
//! attempt's CLIENT span.

use http::header;
use pingora_http::RequestHeader;

use crate::context::RequestCtx;
use crate::routing;

/// Trace-context headers replaced by the gateway's own when it propagates a trace.
const TRACE_HEADERS: [&str; 4] = ["traceparent", "tracestate", "baggage", "b3"];

/// Edits `upstream` (the request about to be sent) from the client's request `downstream`.
pub(crate) fn prepare(downstream: &RequestHeader, upstream: &mut RequestHeader, ctx: &RequestCtx) {
    if let Some(route) = &ctx.route {
        let uri = &downstream.uri;
        if let Some(new) = routing::rewrite(&route.config, uri.path(), uri.query()) {
            if let Ok(uri) = new.parse() {
                upstream.set_uri(uri);
            }
        }
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
    let _ = upstream.insert_header("x-forwarded-proto", proto);
    if let Some(host) = downstream.headers.get(header::HOST).cloned() {
        let _ = upstream.insert_header("x-forwarded-host", host);
    }
    // Continue the trace upstream as a child of this attempt's CLIENT span.
    if let Some(attempt) = &ctx.upstream.span {
        let mut carrier = http::HeaderMap::new();
        attempt.inject(&mut carrier);
        if !carrier.is_empty() {
            for name in TRACE_HEADERS {
                upstream.remove_header(name);
            }
            for (name, value) in carrier.iter() {
                let _ = upstream.insert_header(name.clone(), value.clone());
            }
        }
    }
}
