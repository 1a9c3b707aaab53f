//! Shadow mode: a policy whose decisions are computed, recorded and counted, but not enforced.
//!
//! A rate-limit policy with `mode: shadow` counts every request against its buckets; a route
//! with `auth_mode: shadow` verifies every token. Neither refuses anything: the request goes on
//! as if allowed. What they *would* have done is
//! - counted in `gateway_shadow_decisions_total{kind, policy, outcome, reason}` (and *not* in
//!   `gateway_auth_decisions_total` / `gateway_ratelimit_decisions_total`, which count only what
//!   was enforced, so enforcement dashboards never see decisions nobody enforced);
//! - put on the SERVER span (`vantage.auth.shadow`, `vantage.ratelimit.shadow.*`);
//! - written to the access log (`auth_shadow`, `ratelimit_shadow`, and the `decision` trail).
//!
//! Identity is forwarded only when it was actually verified: a request that shadow auth would
//! have refused (no token, a bad one, or one lacking a scope) goes upstream **without**
//! `x-user-id` / `x-user-scopes`, exactly as an `auth: none` request would — so an upstream never
//! trusts an identity the gateway did not check. A shadow limit never sends `RateLimit` fields
//! (a client would read a quota nobody enforces).

use observability::http_span::HttpSpan;

use crate::config::Mode;
use crate::context::RequestCtx;
use crate::metrics::{Metrics, ShadowLabels};
use crate::problem::GatewayError;
use crate::ratelimit;

/// `refusal` when `mode` enforces it; nothing in shadow mode.
pub(crate) fn enforced(refusal: Option<GatewayError>, mode: Mode) -> Option<GatewayError> {
    match mode {
        Mode::Enforce => refusal,
        Mode::Shadow => None,
    }
}

/// Whether this request's auth decision was made in shadow mode (and so not enforced).
pub(crate) fn auth_shadowed(ctx: &RequestCtx) -> bool {
    ctx.route
        .as_ref()
        .is_some_and(|r| r.config.auth.mode() == Mode::Shadow)
        && ctx.auth.result() != crate::auth::AuthResult::Skipped
}

/// Counts the request's shadow decisions: its route's auth, when in shadow, and each decision of
/// a rate-limit policy in shadow.
pub(crate) fn count(metrics: &Metrics, ctx: &RequestCtx) {
    if auth_shadowed(ctx) {
        metrics
            .shadow_decisions
            .get_or_create(&ShadowLabels {
                kind: "auth",
                policy: ctx.route_name().to_string(),
                outcome: ctx.auth.result().as_str(),
                reason: ctx.auth.reason(),
            })
            .inc();
    }
    for d in &ctx.shadow_limits {
        metrics
            .shadow_decisions
            .get_or_create(&ShadowLabels {
                kind: "ratelimit",
                policy: d.policy.clone(),
                outcome: d.result(),
                reason: "",
            })
            .inc();
    }
}

/// The span attributes of the request's shadow decisions: `vantage.auth.shadow` (true when the
/// `vantage.auth.*` attributes were not enforced) and `vantage.ratelimit.shadow.{policy,result,
/// remaining}` for the shadow policy that would have refused (else the last one consulted).
pub(crate) fn span_attributes(ctx: &RequestCtx, span: &mut impl HttpSpan) {
    if auth_shadowed(ctx) {
        span.set_bool("vantage.auth.shadow", true);
    }
    if let Some(d) = ctx
        .shadow_limits
        .iter()
        .find(|d| !d.allowed)
        .or_else(|| ctx.shadow_limits.last())
    {
        span.set_str("vantage.ratelimit.shadow.policy", &d.policy);
        span.set_str("vantage.ratelimit.shadow.result", d.result());
        span.set_i64("vantage.ratelimit.shadow.remaining", i64::from(d.remaining));
    }
}

/// The access log's `ratelimit_shadow` field: the shadow decisions, as `ratelimit` shows the
/// enforced ones.
pub(crate) fn limits_summary(ctx: &RequestCtx) -> String {
    ratelimit::summary(&ctx.shadow_limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_enforce_mode_refuses() {
        let refusal = || Some(GatewayError::NoRoute);
        assert!(enforced(refusal(), Mode::Enforce).is_some());
        assert!(enforced(refusal(), Mode::Shadow).is_none());
        assert!(enforced(None, Mode::Enforce).is_none());
    }
}
