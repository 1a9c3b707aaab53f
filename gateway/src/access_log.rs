//! The end of a request: its decisions on the SERVER span, and the one JSON access line.
//!
//! Both are written from the same [`RequestCtx`], so the span (attribute names in
//! docs/observability.md) and the log (fields in docs/operations.md) always agree.

use http::header;
use observability::http_span::HttpSpan as _;
use observability::http_trace::Side;
use observability::json_key;
use observability::lines::{LineLog, TraceIds};
use pingora_http::RequestHeader;

use crate::context::RequestCtx;
use crate::ratelimit;

/// Puts every decision on the SERVER span, then its status and error. `decision` is the
/// request's [`crate::decision::trail`], made once for the span and the access line. Values are
/// borrowed from the request's context: the span encodes them as they are set.
pub(crate) fn record_on_span(ctx: &mut RequestCtx, status: u16, decision: &str) {
    if !ctx.span.is_recording() {
        return;
    }
    // Out of the context while the rest of it is read; put back below.
    let mut span = std::mem::take(&mut ctx.span);
    span.set_str("vantage.request_id", ctx.request_id.as_str());
    match &ctx.route {
        Some(route) => {
            span.set_str("vantage.route", &route.span.route);
            span.set_str("vantage.upstream", &route.span.upstream);
            span.set_str(
                "vantage.upstream.circuit",
                route.upstream.breaker.state_name(),
            );
        }
        None => span.set_str("vantage.route", "unmatched"),
    }
    span.set_i64("vantage.upstream.attempts", i64::from(ctx.upstream.count));
    span.set_str("vantage.auth.result", ctx.auth.result().as_str());
    let reason = ctx.auth.reason();
    if !reason.is_empty() {
        span.set_str("vantage.auth.reason", reason);
    }
    if let Some(issuer) = ctx.auth.issuer() {
        span.set_str("vantage.auth.issuer", issuer);
    }
    if let Some(sub) = ctx.auth.subject() {
        span.set_str("enduser.id", sub);
    }
    // The refusing policy, else the last one consulted.
    if let Some(d) = ctx
        .limits
        .iter()
        .find(|d| !d.allowed)
        .or_else(|| ctx.limits.last())
    {
        span.set_str("vantage.ratelimit.policy", &d.policy);
        span.set_str("vantage.ratelimit.result", d.result());
        span.set_i64("vantage.ratelimit.remaining", i64::from(d.remaining));
        if let Some(tier) = &d.tier {
            span.set_str("vantage.ratelimit.tier", tier);
        }
        if let Some(store) = &d.store {
            span.set_str("vantage.ratelimit.store", &store.name);
        }
    }
    // A shared policy whose store failed: its on_error made the decision.
    if let Some(error) = ctx
        .limits
        .iter()
        .find_map(|d| d.store.as_ref().and_then(|s| s.error))
    {
        span.set_str("vantage.ratelimit.store_error", error.as_str());
    }
    crate::shadow::span_attributes(ctx, &mut span);
    span.set_str("vantage.decision", decision);
    if let Ok(code) = http::StatusCode::from_u16(status) {
        span.record_status(code, Side::Server);
    }
    if let Some(failure) = &ctx.failure {
        span.record_error(failure.error_type());
    }
    ctx.span = span;
}

/// The access log: one JSON line per request, target `access`, written straight from the
/// [`RequestCtx`] (no `tracing` event, no second serialisation; see
/// [`observability::lines`]). Skipped entirely when `RUST_LOG` turns target `access` off.
#[derive(Clone)]
pub(crate) struct AccessLog {
    /// `None` when the log filter drops `access` lines.
    lines: Option<LineLog>,
}

impl AccessLog {
    /// Writes to `lines` when the installed log filter lets `access` INFO lines through (decided
    /// once: the filter is fixed at start-up).
    pub(crate) fn new(lines: LineLog) -> Self {
        let enabled = tracing::enabled!(target: "access", tracing::Level::INFO);
        AccessLog {
            lines: enabled.then_some(lines),
        }
    }

    /// Writes the access line. `decision` is the request's decision trail, the same text the
    /// SERVER span carries. `trace` is the SERVER span's ids: the line is not written inside
    /// a `tracing` span, so it carries them itself (as the top-level `trace_id` / `span_id`).
    ///
    /// Fields are written in alphabetical order, as the `tracing` lines' are; add a field by
    /// adding its line at its place. `clean_str` only for values that cannot need escaping
    /// (addresses, the validated request id, the method token, the route name — letters,
    /// digits, `-` and `_` by the policy's validation — and the auth result and reason, fixed
    /// snake_case words).
    pub(crate) fn write(
        &self,
        ctx: &RequestCtx,
        req: &RequestHeader,
        status: u16,
        decision: &str,
        trace: Option<&TraceIds>,
    ) {
        let Some(lines) = &self.lines else {
            return;
        };
        let elapsed = ctx.start.elapsed();
        let user_agent = req
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (error_type, error_detail) = ctx
            .failure
            .as_ref()
            .map_or(("", ""), |f| (f.error_type(), f.detail().unwrap_or("")));
        lines.write(tracing::Level::INFO, "access", "request", trace, |f| {
            f.u64(json_key!("attempts"), u64::from(ctx.upstream.count))
                .str(json_key!("auth_issuer"), ctx.auth.issuer().unwrap_or(""))
                .clean_str(json_key!("auth_reason"), ctx.auth.reason())
                .clean_str(json_key!("auth_result"), ctx.auth.result().as_str())
                .bool(json_key!("auth_shadow"), crate::shadow::auth_shadowed(ctx))
                .clean_str(json_key!("client_ip"), ctx.client.ip())
                .str(json_key!("decision"), decision)
                .millis(json_key!("duration_ms"), elapsed)
                .clean_str(
                    json_key!("endpoint"),
                    ctx.upstream.endpoint.as_ref().map_or("", |e| &e.addr_text),
                )
                .str(json_key!("enduser_id"), ctx.auth.subject().unwrap_or(""))
                .str(json_key!("error_detail"), error_detail)
                .str(json_key!("error_type"), error_type)
                .str(json_key!("host"), ctx.client.host.as_deref().unwrap_or(""))
                .clean_str(json_key!("method"), req.method.as_str())
                .str(json_key!("path"), req.uri.path())
                .str(json_key!("ratelimit"), &ratelimit::summary(&ctx.limits))
                .str(
                    json_key!("ratelimit_shadow"),
                    &crate::shadow::limits_summary(ctx),
                )
                .u64(json_key!("request_body_bytes"), ctx.body_bytes)
                .clean_str(json_key!("request_id"), ctx.request_id.as_str())
                .clean_str(json_key!("route"), ctx.route_name())
                .u64(json_key!("status"), u64::from(status))
                .str(json_key!("upstream"), ctx.upstream_name().unwrap_or(""))
                .u64(
                    json_key!("upstream_status"),
                    u64::from(ctx.upstream.status.unwrap_or(0)),
                )
                .str(json_key!("user_agent"), user_agent);
        });
    }
}
