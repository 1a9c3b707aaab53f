//! The Pingora `ProxyHttp` implementation: phase glue only. Each phase hands the request to the
//! module named for the concern — [`decision`] (the admission pipeline: head checks, framing,
//! routing, auth, rate limits, shadow mode),
//! [`attempt`] (upstream selection, failures, retries), [`upstream_request`] (what the upstream
//! receives), [`response_headers`] (what the client receives on top of the upstream's
//! response), [`access_log`] — and records what they decide in [`RequestCtx`].
//!
//! Errors the gateway answers itself travel as a [`GatewayError`] inside a Pingora error and are
//! rendered in exactly one place, [`ProxyHttp::fail_to_proxy`].

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use observability::http_trace::ServerRequest;

use crate::context::{Client, Failure, RequestCtx};
use crate::problem::classify::{classify, reject};
use crate::problem::{render, GatewayError};
use crate::request_id::RequestId;
use crate::state::{Runtime, Shared};
use crate::upstream::attempt;
use crate::{access_log, decision, framing, response_headers, upstream_request};

/// The gateway's proxy logic.
pub(crate) struct Gateway {
    pub(crate) shared: Arc<Shared>,
    pub(crate) access_log: access_log::AccessLog,
}

impl Gateway {
    /// Everything decided from the request head (see [`decision::admit`]).
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        runtime: &Runtime,
    ) -> std::result::Result<(), GatewayError> {
        let framing = framing::Present::of(&session.req_header().headers);
        let raw_head = session
            .as_downstream()
            .as_http1()
            .filter(|_| framing.transfer_encoding)
            .map(|h1| h1.get_headers_raw_bytes());
        decision::admit(
            session.req_header_mut(),
            framing,
            raw_head.as_deref(),
            ctx,
            runtime,
        )
        .await
    }
}

/// Pingora's per-request context: boxed, so the request's futures carry a pointer to it
/// rather than its ~1 KiB, which they are moved with.
pub(crate) type Ctx = Box<RequestCtx>;

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Box::new(RequestCtx::new())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let runtime = self.shared.current.load_full();
        ctx.counted_inflight = true;
        self.shared.metrics.inflight.inc();

        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let req = session.req_header();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client = Client::resolve(
            peer,
            &req.headers,
            &runtime.config.server.trusted_proxies,
            tls,
        );
        let mut server_req = ServerRequest::new(&req.method, &req.uri, req.version, &req.headers);
        server_req.client_address = ctx.client.forwarded.as_ref().map(|f| f.ip);
        server_req.scheme = ctx
            .client
            .forwarded
            .as_ref()
            .map_or(if tls { "https" } else { "http" }, |f| f.proto);
        ctx.span = self.shared.tracer.server(&server_req);

        ctx.request_id = RequestId::of(&req.headers);
        // Pingora keeps HTTP/1.1 connections open forever by default.
        session.set_keepalive(Some(
            runtime.config.server.connections.keepalive_timeout_secs,
        ));
        ctx.runtime = Some(Arc::clone(&runtime));

        match self.admit(session, ctx, &runtime).await {
            Ok(()) => Ok(false),
            Err(e) => Err(reject(e)),
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            let limit = ctx
                .route
                .as_ref()
                .map_or(u64::MAX, |r| r.config.max_body_bytes);
            if ctx.body_bytes > limit {
                return Err(reject(GatewayError::PayloadTooLarge { limit }));
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let req = session.req_header();
        let path = ctx.path.clone();
        let path = path.as_deref().unwrap_or(req.uri.path());
        attempt::begin(ctx, &self.shared.metrics, &req.method, path).map_err(reject)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        attempt::verify_peer(ctx, &self.shared.metrics, digest).map_err(reject)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_request::prepare(session.req_header(), upstream, ctx).map_err(reject)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        attempt::responded(ctx, response);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        response_headers::add(response, ctx);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if attempt::retry_after_connect_failure(ctx, &self.shared.metrics, &e) {
            e.set_retry(true);
        }
        tracing::debug!(peer = %peer, error = %e, attempt = ctx.upstream.count, "Upstream connect failed.");
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer {peer}"));
        if e.esource() != &ErrorSource::Upstream {
            e.set_retry(false);
            return e;
        }
        let idempotent = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let retry = attempt::retry_after_proxy_error(ctx, &self.shared.metrics, &e, idempotent);
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let Some(err) = classify(e) else {
            ctx.failure = Some(Failure::ClientClosed);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if ctx.request_id.is_empty() {
            ctx.request_id = RequestId::generate();
        }
        if session.response_written().is_none() {
            let (header, body) = render(&err, ctx.request_id.as_str());
            let _ = session.write_response_header(Box::new(header), false).await;
            let _ = session.write_response_body(Some(body), true).await;
        }
        // Keep the connection only for refusals made before any body was read.
        let can_reuse_downstream =
            err.is_early_refusal() && !framing::has_body(&session.req_header().headers);
        let error_code = err.status();
        let detail = err.is_server_side().then(|| e.to_string());
        ctx.failure = Some(Failure::Answered { error: err, detail });
        FailToProxy {
            error_code,
            can_reuse_downstream,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        // The access log records every failure with its cause; no second, unstructured line.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.counted_inflight {
            self.shared.metrics.inflight.dec();
        }
        ctx.upstream.inflight = None;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        attempt::finished(ctx, e);
        let req = session.req_header();
        // Formatted once, for the duration's exemplar and the access line.
        let trace = ctx.span_ids();
        self.shared
            .metrics
            .record_request(ctx, &req.method, status, trace.as_ref());
        let decision = decision::trail(ctx, status);
        access_log::record_on_span(ctx, status, &decision);
        ctx.upstream.span = None;
        ctx.span.end();
        self.access_log
            .write(ctx, req, status, &decision, trace.as_ref());
    }
}
