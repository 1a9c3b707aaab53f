//! The Pingora `ProxyHttp` implementation: thin phase hooks that call into routing, auth,
//! rate limiting and upstream selection, and record every decision in [`RequestCtx`].
//!
//! Errors the gateway answers itself travel as a [`GatewayError`] inside a Pingora error and are
//! rendered in exactly one place, [`ProxyHttp::fail_to_proxy`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use observability::http_span::HttpSpan as _;
use observability::http_trace::{ServerRequest, Side};
use observability::opentelemetry::KeyValue;

use crate::auth::jwt::{bearer_token, has_scopes};
use crate::auth::{AuthOutcome, Reject};
use crate::config::AuthPolicy;
use crate::context::RequestCtx;
use crate::metrics::{AuthLabels, LimitLabels, RequestLabels, UpstreamErrorLabels, UpstreamLabels};
use crate::problem::{render, GatewayError};
use crate::ratelimit::{header_values, KeyInput};
use crate::state::Shared;
use crate::upstream::Unavailable;

/// The gateway's proxy logic.
pub(crate) struct Gateway {
    pub(crate) shared: Arc<Shared>,
}

/// A random (v4) UUID from the thread-local generator: no `getrandom` syscall per request.
fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Wraps a [`GatewayError`] so Pingora carries it to `fail_to_proxy`.
fn reject(err: GatewayError) -> Box<Error> {
    Error::because(
        ErrorType::HTTPStatus(err.status()),
        "gateway refused the request",
        err,
    )
}

/// A well-formed client request id is kept (so callers can correlate); anything else replaced.
fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Classifies a Pingora error into the error we answer with.
fn classify(e: &Error) -> Option<GatewayError> {
    if let Some(gw) = e.root_cause().downcast_ref::<GatewayError>() {
        return Some(gw.clone());
    }
    use ErrorType::*;
    let err = match (e.esource(), e.etype()) {
        (_, ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout)
            if e.esource() == &ErrorSource::Upstream =>
        {
            GatewayError::UpstreamTimeout
        }
        (ErrorSource::Upstream, _) => GatewayError::BadGateway,
        (
            ErrorSource::Downstream,
            ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout,
        ) => return None,
        (ErrorSource::Downstream, _) => GatewayError::BadRequest,
        (_, HTTPStatus(400)) => GatewayError::BadRequest,
        _ => GatewayError::Internal,
    };
    Some(err)
}

fn upstream_error_kind(e: &Error) -> &'static str {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout => "connect_timeout",
        ReadTimedout | WriteTimedout => "timeout",
        ConnectRefused => "connect_refused",
        ConnectError | ConnectNoRoute | BindError | SocketError => "connect_error",
        ConnectionClosed => "connection_closed",
        _ => "protocol",
    }
}

impl Gateway {
    /// Framing checks that guard against request smuggling (pingora#945): several
    /// Content-Length values, or Content-Length together with Transfer-Encoding. Pingora's
    /// HTTP/1 parser drops Content-Length when Transfer-Encoding is present (RFC 9112 allows
    /// that), so the raw header block is consulted to refuse such requests outright.
    fn check_framing(session: &Session) -> std::result::Result<(), GatewayError> {
        let req = session.req_header();
        let lengths: Vec<_> = req.headers.get_all(header::CONTENT_LENGTH).iter().collect();
        if lengths.len() > 1 || lengths.iter().any(|v| v.as_bytes().contains(&b',')) {
            return Err(GatewayError::BadFraming("several Content-Length values"));
        }
        if req.headers.contains_key(header::TRANSFER_ENCODING) {
            let raw_has_length = !lengths.is_empty()
                || session.as_downstream().as_http1().is_some_and(|h1| {
                    h1.get_headers_raw_bytes()
                        .split(|b| *b == b'\n')
                        .any(|line| {
                            line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:")
                        })
                });
            if raw_has_length {
                return Err(GatewayError::BadFraming(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
        }
        if let Some(v) = lengths.first() {
            if v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .is_none()
            {
                return Err(GatewayError::BadFraming("invalid Content-Length"));
            }
        }
        Ok(())
    }

    /// Records a failed upstream attempt (metrics, passive ejection, the attempt's span) and
    /// returns the upstream's retry budget; `None` when no route was chosen.
    fn record_attempt_failure(&self, ctx: &mut RequestCtx, e: &Error) -> Option<u32> {
        let route = ctx.route.clone()?;
        let upstream = &route.upstream;
        let kind = upstream_error_kind(e);
        self.shared
            .metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                upstream: upstream.name.clone(),
                kind,
            })
            .inc();
        if let Some(ep) = &ctx.endpoint {
            upstream.record_endpoint_failure(ep);
        }
        ctx.last_failed = ctx.endpoint.as_ref().map(|ep| ep.addr);
        ctx.upstream_failed = true;
        if let Some(mut attempt) = ctx.attempt_span.take() {
            attempt.record_error(kind);
        }
        Some(upstream.config.retries)
    }

    /// Puts every decision on the SERVER span (attribute names in docs/observability.md).
    fn record_decisions_on_span(&self, ctx: &mut RequestCtx, status: u16) {
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
        }
        attributes.push(KeyValue::new(
            "vantage.upstream.attempts",
            i64::from(ctx.attempts),
        ));
        attributes.push(KeyValue::new("vantage.auth.result", ctx.auth.result));
        if !ctx.auth.reason.is_empty() {
            attributes.push(KeyValue::new("vantage.auth.reason", ctx.auth.reason));
        }
        if let Some(issuer) = &ctx.auth.issuer {
            attributes.push(KeyValue::new("vantage.auth.issuer", issuer.clone()));
        }
        if let Some(sub) = &ctx.auth.subject {
            attributes.push(KeyValue::new("enduser.id", sub.clone()));
        }
        if let Some(d) = ctx
            .limits
            .iter()
            .find(|d| !d.allowed)
            .or_else(|| ctx.limits.last())
        {
            attributes.push(KeyValue::new("vantage.ratelimit.policy", d.policy.clone()));
            attributes.push(KeyValue::new(
                "vantage.ratelimit.result",
                if d.allowed { "allowed" } else { "limited" },
            ));
            attributes.push(KeyValue::new(
                "vantage.ratelimit.remaining",
                i64::from(d.remaining),
            ));
            if let Some(tier) = &d.tier {
                attributes.push(KeyValue::new("vantage.ratelimit.tier", tier.clone()));
            }
        }
        for attribute in attributes {
            ctx.span.set_attribute(attribute);
        }
        if let Ok(code) = http::StatusCode::from_u16(status) {
            ctx.span.record_status(code, Side::Server);
        }
        if let Some(error_type) = ctx.error_type {
            ctx.span.record_error(error_type);
        }
    }

    async fn authenticate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), GatewayError> {
        let runtime = ctx.runtime.clone().expect("runtime set");
        let route = ctx.route.clone().expect("route set");
        let realm = runtime.config.server.realm.clone();
        let AuthPolicy::Required { scopes, issuers } = &route.config.auth else {
            ctx.auth = AuthOutcome {
                result: "skipped",
                ..Default::default()
            };
            return Ok(());
        };
        let values: Vec<&[u8]> = session
            .req_header()
            .headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let token = match bearer_token(&values) {
            Ok(Some(t)) => t,
            Ok(None) => {
                ctx.auth = AuthOutcome {
                    result: "denied",
                    reason: Reject::Missing.code(),
                    ..Default::default()
                };
                return Err(GatewayError::Unauthorized {
                    reject: Reject::Missing,
                    realm,
                });
            }
            Err(r) => {
                ctx.auth = AuthOutcome {
                    result: "denied",
                    reason: r.code(),
                    ..Default::default()
                };
                return Err(GatewayError::Unauthorized { reject: r, realm });
            }
        };
        let identity = match runtime.auth.verify(&token, issuers).await {
            Ok(id) => id,
            Err((r, issuer)) => {
                ctx.auth = AuthOutcome {
                    result: "denied",
                    reason: r.code(),
                    issuer,
                    subject: None,
                };
                return Err(GatewayError::Unauthorized { reject: r, realm });
            }
        };
        ctx.auth = AuthOutcome {
            result: "allowed",
            reason: "",
            issuer: Some(identity.issuer.clone()),
            subject: Some(identity.subject.clone()),
        };
        if !has_scopes(&identity.scopes, scopes) {
            ctx.auth.result = "forbidden";
            ctx.auth.reason = "insufficient_scope";
            return Err(GatewayError::InsufficientScope {
                scope: scopes.join(" "),
                realm,
            });
        }
        let req = session.req_header_mut();
        let _ = req.insert_header("x-user-id", identity.subject.as_str());
        let _ = req.insert_header("x-user-scopes", identity.scopes.join(" "));
        ctx.identity = Some(identity);
        Ok(())
    }

    fn rate_limit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), GatewayError> {
        let route = ctx.route.clone().expect("route set");
        for policy in &route.limits {
            let decision = policy.check(&KeyInput {
                client_ip: &ctx.client_ip,
                route: &route.config.name,
                identity: ctx.identity.as_deref(),
                headers: &session.req_header().headers,
            });
            let allowed = decision.allowed;
            let retry = decision.retry_after_secs;
            ctx.limits.push(decision);
            if !allowed {
                return Err(GatewayError::RateLimited {
                    policy: policy.name.clone(),
                    retry_after_secs: retry.unwrap_or(1),
                    fields: header_values(&ctx.limits),
                });
            }
        }
        Ok(())
    }

    async fn filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), GatewayError> {
        let runtime = ctx.runtime.clone().expect("runtime set");
        Self::check_framing(session)?;

        // Identity headers come only from the gateway: strip whatever the client sent, on every
        // route, authenticated or not.
        for h in &runtime.config.identity_headers {
            session.req_header_mut().remove_header(h);
        }

        let req = session.req_header();
        let host = crate::routing::request_host(
            req.headers.get(header::HOST).and_then(|v| v.to_str().ok()),
            &req.uri,
        );
        ctx.host = host.clone();
        let route = runtime
            .route_for(host.as_deref(), req.uri.path(), &req.method)
            .cloned()
            .ok_or(GatewayError::NoRoute)?;
        ctx.span
            .set_route(&req.method, &crate::routing::template(&route.config));
        ctx.route = Some(Arc::clone(&route));

        let declared = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > route.config.max_body_bytes) {
            return Err(GatewayError::PayloadTooLarge {
                limit: route.config.max_body_bytes,
            });
        }

        self.authenticate(session, ctx).await?;
        self.rate_limit(session, ctx)?;
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let runtime = self.shared.current.load_full();
        ctx.counted_inflight = true;
        self.shared.metrics.inflight.inc();
        {
            let req = session.req_header();
            let forwarded = session.client_addr().and_then(|a| a.as_inet()).map(|a| {
                crate::forwarded::resolve(
                    a.ip(),
                    req.headers.get_all("x-forwarded-for").iter(),
                    req.headers.get("x-forwarded-proto"),
                    &runtime.config.server.trusted_proxies,
                )
            });
            ctx.client_ip = forwarded
                .as_ref()
                .map_or_else(|| "unknown".to_string(), |f| f.ip.to_string());
            let mut server_req =
                ServerRequest::new(&req.method, &req.uri, req.version, &req.headers);
            server_req.client_address = forwarded.as_ref().map(|f| f.ip);
            server_req.scheme = forwarded.as_ref().map_or("http", |f| f.proto);
            ctx.span = self.shared.tracer.server(&server_req);
            ctx.forwarded = forwarded;
        }
        ctx.runtime = Some(runtime);
        let incoming = session
            .req_header()
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| valid_request_id(v))
            .map(str::to_string);
        ctx.request_id = incoming.unwrap_or_else(new_request_id);
        let _ = session
            .req_header_mut()
            .insert_header("x-request-id", ctx.request_id.as_str());

        match self.filter(session, ctx).await {
            Ok(()) => Ok(false),
            Err(e) => Err(reject(e)),
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            let limit = ctx
                .route
                .as_ref()
                .map(|r| r.config.max_body_bytes)
                .unwrap_or(u64::MAX);
            if ctx.body_bytes > limit {
                return Err(reject(GatewayError::PayloadTooLarge { limit }));
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx.route.clone().expect("route set before proxying");
        let upstream = &route.upstream;
        ctx.attempts += 1;
        let endpoint = upstream.select(ctx.last_failed).map_err(|u| {
            reject(match u {
                Unavailable::CircuitOpen => GatewayError::CircuitOpen(upstream.name.clone()),
                Unavailable::NoHealthyEndpoint => {
                    GatewayError::NoHealthyEndpoint(upstream.name.clone())
                }
            })
        })?;
        self.shared
            .metrics
            .upstream_attempts
            .get_or_create(&UpstreamLabels {
                upstream: upstream.name.clone(),
            })
            .inc();
        ctx.inflight = Some(endpoint.track());
        ctx.endpoint = Some(Arc::clone(&endpoint));
        let req = session.req_header();
        let url = format!("http://{}{}", endpoint.addr, req.uri.path());
        let mut attempt = ctx.span.client(&req.method, &url, ctx.attempts - 1);
        attempt.set_attribute(KeyValue::new("vantage.upstream", upstream.name.clone()));
        ctx.attempt_span = Some(attempt);
        let cfg = &upstream.config;
        let mut peer = HttpPeer::new(endpoint.addr, false, String::new());
        peer.options.connection_timeout = Some(cfg.connect_timeout);
        peer.options.total_connection_timeout = Some(cfg.connect_timeout);
        peer.options.read_timeout = Some(cfg.read_timeout);
        peer.options.write_timeout = Some(cfg.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(route) = &ctx.route {
            let uri = &session.req_header().uri;
            if let Some(new) = crate::routing::rewrite(&route.config, uri.path(), uri.query()) {
                if let Ok(uri) = new.parse() {
                    upstream_request.set_uri(uri);
                }
            }
        }
        // Forwarding headers describe the connection the gateway accepted, plus what trusted
        // proxies in front of it vouched for (`server.trusted_proxies`); never what a client claims.
        let (forwarded_for, proto) = ctx
            .forwarded
            .as_ref()
            .map_or((ctx.client_ip.as_str(), "http"), |f| {
                (f.forwarded_for.as_str(), f.proto)
            });
        let _ = upstream_request.insert_header("x-forwarded-for", forwarded_for);
        let _ = upstream_request.insert_header("x-forwarded-proto", proto);
        if let Some(host) = session.req_header().headers.get(header::HOST).cloned() {
            let _ = upstream_request.insert_header("x-forwarded-host", host);
        }
        // Continue the trace upstream as a child of this attempt's CLIENT span.
        if let Some(attempt) = &ctx.attempt_span {
            let mut carrier = http::HeaderMap::new();
            attempt.inject(&mut carrier);
            if !carrier.is_empty() {
                for name in ["traceparent", "tracestate", "baggage", "b3"] {
                    upstream_request.remove_header(name);
                }
                for (name, value) in carrier.iter() {
                    let _ = upstream_request.insert_header(name.clone(), value.clone());
                }
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        if let Some(attempt) = &mut ctx.attempt_span {
            attempt.record_status(upstream_response.status, Side::Client);
        }
        if let (Some(route), Some(ep)) = (&ctx.route, &ctx.endpoint) {
            if matches!(status, 502..=504) {
                route.upstream.record_endpoint_failure(ep);
            } else {
                route.upstream.record_endpoint_success(ep);
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let _ = response.insert_header("x-request-id", ctx.request_id.as_str());
        if let Some((policy, limit)) = header_values(&ctx.limits) {
            let _ = response.insert_header("ratelimit-policy", policy);
            let _ = response.insert_header("ratelimit", limit);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(retries) = self.record_attempt_failure(ctx, &e) {
            // Nothing reached the upstream, so any method may be retried on another endpoint.
            if ctx.attempts <= retries {
                e.set_retry(true);
            }
        }
        tracing::debug!(peer = %peer, error = %e, attempt = ctx.attempts, "Upstream connect failed.");
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer {peer}"));
        if e.esource() != &ErrorSource::Upstream {
            e.set_retry(false);
            return e;
        }
        if let Some(retries) = self.record_attempt_failure(ctx, &e) {
            // The request may have reached the upstream: retry only what is safe to repeat.
            let safe = session.req_header().method.is_idempotent()
                && !session.as_ref().retry_buffer_truncated();
            e.set_retry(safe && ctx.attempts <= retries);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let Some(err) = classify(e) else {
            // The client went away; there is no one to answer.
            ctx.error_type = Some("client_closed");
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.error_type = Some(err.slug());
        if err.is_server_side() {
            ctx.error_detail = Some(e.to_string());
        }
        if ctx.request_id.is_empty() {
            ctx.request_id = new_request_id();
        }
        let status = err.status();
        if session.response_written().is_none() {
            let (header, body) = render(&err, &ctx.request_id);
            let _ = session.write_response_header(Box::new(header), false).await;
            let _ = session.write_response_body(Some(body), true).await;
        }
        // Keep the connection only for refusals made before any body was read.
        let has_body = session
            .req_header()
            .headers
            .contains_key(header::TRANSFER_ENCODING)
            || session
                .req_header()
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        let early = matches!(
            err,
            GatewayError::NoRoute
                | GatewayError::Unauthorized { .. }
                | GatewayError::InsufficientScope { .. }
                | GatewayError::RateLimited { .. }
        );
        FailToProxy {
            error_code: status,
            can_reuse_downstream: early && !has_body,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // The access log records every failure with its cause; no second, unstructured line.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.counted_inflight {
            self.shared.metrics.inflight.dec();
        }
        ctx.inflight = None;
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let elapsed = ctx.start.elapsed();
        let route_name = ctx.route_name().to_string();

        // Circuit breaker: one outcome per request that reached the upstream.
        if let (Some(route), true) = (&ctx.route, ctx.attempts > 0) {
            let failed_upstream = e.is_some_and(|e| e.esource() == &ErrorSource::Upstream)
                || ctx.upstream_status.is_some_and(|s| matches!(s, 502..=504));
            if e.is_none() || ctx.upstream_failed || ctx.upstream_status.is_some() {
                route.upstream.record_request_outcome(!failed_upstream);
            }
        }

        let m = &self.shared.metrics;
        let method = session.req_header().method.clone();
        m.request_duration
            .get_or_create(&RequestLabels {
                route: route_name.clone(),
                http_request_method: crate::metrics::Method::from_http(&method),
                http_response_status_code: status,
            })
            .observe(
                elapsed.as_secs_f64(),
                observability::metrics::trace_exemplar_of(ctx.span.span_context()),
                None,
            );
        if ctx.route.is_some() {
            m.auth_decisions
                .get_or_create(&AuthLabels {
                    route: route_name.clone(),
                    result: ctx.auth.result,
                    reason: ctx.auth.reason,
                })
                .inc();
        }
        for d in &ctx.limits {
            m.ratelimit_decisions
                .get_or_create(&LimitLabels {
                    route: route_name.clone(),
                    policy: d.policy.clone(),
                    result: if d.allowed { "allowed" } else { "limited" },
                })
                .inc();
        }

        self.record_decisions_on_span(ctx, status);
        ctx.attempt_span = None;
        // The access line carries the span's ids (it is not logged inside a `tracing` span).
        let trace = ctx.span_ids();
        ctx.span.end();
        let req = session.req_header();
        tracing::info!(
            target: "access",
            trace_id = trace.as_ref().map(|(t, _)| t.as_str()).unwrap_or(""),
            span_id = trace.as_ref().map(|(_, s)| s.as_str()).unwrap_or(""),
            request_id = %ctx.request_id,
            method = %req.method,
            path = %req.uri.path(),
            host = ctx.host.as_deref().unwrap_or(""),
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            client_ip = %ctx.client_ip,
            user_agent = req.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or(""),
            route = %route_name,
            upstream = ctx.route.as_ref().map(|r| r.upstream.name.as_str()).unwrap_or(""),
            endpoint = ctx.endpoint.as_ref().map(|e| e.addr.to_string()).unwrap_or_default(),
            attempts = ctx.attempts,
            upstream_status = ctx.upstream_status.unwrap_or(0),
            auth_result = ctx.auth.result,
            auth_reason = ctx.auth.reason,
            auth_issuer = ctx.auth.issuer.as_deref().unwrap_or(""),
            enduser_id = ctx.auth.subject.as_deref().unwrap_or(""),
            ratelimit = %ctx.limits_summary(),
            request_body_bytes = ctx.body_bytes,
            error_type = ctx.error_type.unwrap_or(""),
            error_detail = ctx.error_detail.as_deref().unwrap_or(""),
            "request"
        );
    }
}
