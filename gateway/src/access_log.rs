//! The end of a request: its decisions on the SERVER span, and the one JSON access line.
//!
//! Both are written from the same [`RequestCtx`], so the span (attribute names in
//! docs/observability.md) and the log (fields in docs/operations.md) always agree.

use http::header;
use observability::http_span::HttpSpan as _;
use observability::http_trace::Side;
use observability::opentelemetry::KeyValue;
use pingora_http::RequestHeader;

use crate::context::RequestCtx;
use crate::ratelimit;

/// Puts every decision on the SERVER span, then its status and error.
pub(crate) fn record_on_span(ctx: &mut RequestCtx, status: u16) {
    if !ctx.span.is_recording() {
        return;
    }
    let mut attributes = Vec::with_capacity(12);
    attributes.push(KeyValue::new("vantage.request_id", ctx.request_id.clone()));
    attributes.push(KeyValue::new("vantage.route", ctx.route_name().to_string()));
    if let Some(route) = &ctx.route {
        attributes.push(KeyValue::new(
            "vantage.upstream",
            route.upstream.name.clone(),
        ));
        attributes.push(KeyValue::new(
            "vantage.upstream.circuit",
            route.upstream.breaker.state_name(),
        ));
    }
    attributes.push(KeyValue::new(
        "vantage.upstream.attempts",
        i64::from(ctx.upstream.count),
    ));
    attributes.push(KeyValue::new(
        "vantage.auth.result",
        ctx.auth.result().as_str(),
    ));
    let reason = ctx.auth.reason();
    if !reason.is_empty() {
        attributes.push(KeyValue::new("vantage.auth.reason", reason));
    }
    if let Some(issuer) = ctx.auth.issuer() {
        attributes.push(KeyValue::new("vantage.auth.issuer", issuer.to_string()));
    }
    if let Some(sub) = ctx.auth.subject() {
        attributes.push(KeyValue::new("enduser.id", sub.to_string()));
    }
    // The refusing policy, else the last one consulted.
    if let Some(d) = ctx
        .limits
        .iter()
        .find(|d| !d.allowed)
        .or_else(|| ctx.limits.last())
    {
        attributes.push(KeyValue::new("vantage.ratelimit.policy", d.policy.clone()));
        attributes.push(KeyValue::new("vantage.ratelimit.result", d.result()));
        attributes.push(KeyValue::new(
            "vantage.ratelimit.remaining",
            i64::from(d.remaining),
        ));
        if let Some(tier) = &d.tier {
            attributes.push(KeyValue::new("vantage.ratelimit.tier", tier.clone()));
        }
    }
    crate::shadow::span_attributes(ctx, &mut attributes);
    attributes.push(KeyValue::new(
        "vantage.decision",
        crate::decision::trail(ctx, status),
    ));
    for attribute in attributes {
        ctx.span.set_attribute(attribute);
    }
    if let Ok(code) = http::StatusCode::from_u16(status) {
        ctx.span.record_status(code, Side::Server);
    }
    if let Some(failure) = &ctx.failure {
        ctx.span.record_error(failure.error_type());
    }
}

/// Writes the access line (target `access`). `trace` is the SERVER span's ids: the line is not
/// logged inside a `tracing` span, so it carries them itself.
pub(crate) fn write(
    ctx: &RequestCtx,
    req: &RequestHeader,
    status: u16,
    trace: Option<&(String, String)>,
) {
    let elapsed = ctx.start.elapsed();
    tracing::info!(
        target: "access",
        trace_id = trace.map(|(t, _)| t.as_str()).unwrap_or(""),
        span_id = trace.map(|(_, s)| s.as_str()).unwrap_or(""),
        request_id = %ctx.request_id,
        method = %req.method,
        path = %req.uri.path(),
        host = ctx.client.host.as_deref().unwrap_or(""),
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        client_ip = %ctx.client.ip,
        user_agent = req.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or(""),
        route = %ctx.route_name(),
        upstream = ctx.upstream_name().unwrap_or(""),
        endpoint = ctx.upstream.endpoint.as_ref().map(|e| e.addr.to_string()).unwrap_or_default(),
        attempts = ctx.upstream.count,
        upstream_status = ctx.upstream.status.unwrap_or(0),
        auth_result = ctx.auth.result().as_str(),
        auth_reason = ctx.auth.reason(),
        auth_issuer = ctx.auth.issuer().unwrap_or(""),
        enduser_id = ctx.auth.subject().unwrap_or(""),
        ratelimit = %ratelimit::summary(&ctx.limits),
        auth_shadow = crate::shadow::auth_shadowed(ctx),
        ratelimit_shadow = %crate::shadow::limits_summary(ctx),
        decision = %crate::decision::trail(ctx, status),
        request_body_bytes = ctx.body_bytes,
        error_type = ctx.failure.as_ref().map(|f| f.error_type()).unwrap_or(""),
        error_detail = ctx.failure.as_ref().and_then(|f| f.detail()).unwrap_or(""),
        "request"
    );
}
