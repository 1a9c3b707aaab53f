//! Everything the gateway decides from a request head, in order, and the compact trail of what
//! it decided.
//!
//! [`admit`] is the one admission pipeline: the proxy runs it for every request
//! (`request_filter`), and `gateway explain` / `gateway test` run it offline on a request
//! described on the command line or in a cases file, so what they report is what the proxy does.
//! It records every decision in the [`RequestCtx`]; [`trail`] renders them as one line for the
//! SERVER span (`vantage.decision`) and the access log (`decision`), so "why was request X
//! refused?" is answered from its request id.

use std::borrow::Cow;
use std::sync::Arc;

use observability::lines::push_decimal;
use pingora_http::RequestHeader;

use crate::auth::AuthResult;
use crate::context::RequestCtx;
use crate::normalize::{normalize, PathError};
use crate::problem::GatewayError;
use crate::ratelimit::{Decision, KeyInput};
use crate::state::Runtime;
use crate::{auth, framing, ratelimit, request_head, routing, shadow};

/// Admits or refuses a request from its head: limits and gateway-owned headers, framing, host,
/// the normalised path, route, body limit, auth, rate limits. `raw_head` is the request head as
/// received, when the framing guard needs it (HTTP/1 with `Transfer-Encoding`).
pub(crate) async fn admit(
    req: &mut RequestHeader,
    framing: framing::Present,
    raw_head: Option<&[u8]>,
    ctx: &mut RequestCtx,
    runtime: &Runtime,
) -> Result<(), GatewayError> {
    let config = &runtime.config;
    request_head::check(req, &config.server.limits, &config.identity_headers)?;
    let declared_length =
        framing::check(&req.headers, framing, raw_head).map_err(GatewayError::BadFraming)?;

    let req = &*req;
    let absolute = Some(req.raw_path()).filter(|t| !t.starts_with(b"/"));
    ctx.client.host = routing::request_host(
        &req.headers,
        &req.uri,
        absolute.and_then(routing::target_authority),
    )?;
    if let Some(location) = https_redirect(config, ctx, req) {
        return Err(GatewayError::HttpsRequired { location });
    }
    if !req.raw_path_is_utf8() {
        return Err(GatewayError::BadPath(PathError::InvalidUtf8));
    }
    let normal = normalize(req.uri.path()).map_err(GatewayError::BadPath)?;
    let encoded_slash = normal.encoded_slash;
    ctx.path = match normal.path {
        Cow::Owned(path) => Some(path),
        Cow::Borrowed(_) => None,
    };
    let path = ctx.path.as_deref().unwrap_or(req.uri.path());
    let route = Arc::clone(runtime.route_for(ctx.client.host.as_deref(), path, &req.method)?);
    ctx.span.set_route(&req.method, &route.template);
    ctx.route = Some(Arc::clone(&route));
    if encoded_slash && !route.config.allow_encoded_slashes {
        return Err(GatewayError::BadPath(PathError::EncodedSlash));
    }

    let limit = route.config.max_body_bytes;
    if declared_length.is_some_and(|n| n > limit) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }

    ctx.auth = auth::check(&route.config.auth, &req.headers, &runtime.auth).await;
    let refusal = ctx.auth.refusal(&route.config.auth, &config.server.realm);
    if let Some(refusal) = shadow::enforced(refusal, route.config.auth.mode()) {
        return Err(refusal);
    }

    let input = KeyInput {
        client: ctx.client.addr,
        route: &route.config.name,
        identity: ctx.auth.admitted(),
        headers: &req.headers,
    };
    ratelimit::check(
        &route.limits,
        &input,
        &mut ctx.limits,
        &mut ctx.shadow_limits,
    )
    .await
}

/// Where a plain-HTTP request goes when the policy redirects to the TLS listener.
fn https_redirect(config: &crate::Config, ctx: &RequestCtx, req: &RequestHeader) -> Option<String> {
    config.edge_tls.as_ref().filter(|e| e.redirect_http)?;
    if ctx.client.tls {
        return None;
    }
    let port = config.listeners.public_tls?.port();
    let host = ctx.client.host.as_deref()?;
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    Some(if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    })
}

/// The request's decisions as one line, steps separated by ` > `:
/// `route:<name>` (or `route:none`), `auth:<result>[:<reason>][@<issuer>][(shadow)]`, one
/// `limit:<policy>[<tier>]:<result>:<remaining>/<limit>[(shadow)]` per policy consulted,
/// `upstream:<name>`, and last `=> <status> [<error type>]`. Steps not reached are left out,
/// so the last step before `=>` is the one that decided a refusal. It carries names and codes
/// only: never a token, a key value or a header.
pub(crate) fn trail(ctx: &RequestCtx, status: u16) -> String {
    let mut out = String::with_capacity(96);
    match &ctx.route {
        Some(route) => {
            out.push_str("route:");
            out.push_str(&route.config.name);
        }
        None => out.push_str("route:none"),
    }
    if ctx.route.is_some() && ctx.auth.result() != AuthResult::Skipped {
        out.push_str(" > auth:");
        out.push_str(ctx.auth.result().as_str());
        let reason = ctx.auth.reason();
        if !reason.is_empty() {
            out.push(':');
            out.push_str(reason);
        }
        if let Some(issuer) = ctx.auth.issuer() {
            out.push('@');
            out.push_str(issuer);
        }
        if shadow::auth_shadowed(ctx) {
            out.push_str("(shadow)");
        }
    } else if ctx
        .route
        .as_ref()
        .is_some_and(|r| r.config.auth == crate::config::AuthPolicy::None)
    {
        // The route needs no token (whether or not the request got that far).
        out.push_str(" > auth:none");
    }
    let limits = ctx.route.as_ref().map_or(&[][..], |r| &r.limits[..]);
    // In the route's order, enforced and shadow decisions interleaved as they were made.
    let (mut enforced, mut shadowed) = (ctx.limits.iter(), ctx.shadow_limits.iter());
    for policy in limits {
        let (d, shadow) = match policy.mode() {
            crate::config::Mode::Enforce => (enforced.next(), false),
            crate::config::Mode::Shadow => (shadowed.next(), true),
        };
        let Some(d) = d else { break };
        push_limit(&mut out, d, shadow);
    }
    if let Some(upstream) = ctx.upstream_name().filter(|_| ctx.upstream.count > 0) {
        out.push_str(" > upstream:");
        out.push_str(upstream);
    }
    // Plain pushes, not `write!`: this runs for every request (the access line, the span).
    out.push_str(" => ");
    push_decimal(&mut out, u64::from(status));
    if let Some(failure) = &ctx.failure {
        out.push(' ');
        out.push_str(failure.error_type());
    }
    out
}

fn push_limit(out: &mut String, d: &Decision, shadow: bool) {
    out.push_str(" > limit:");
    d.write_brief(out);
    out.push('/');
    push_decimal(out, u64::from(d.limit));
    if shadow {
        out.push_str("(shadow)");
    }
}
