//! Per-request state (Pingora's `CTX`): every decision the gateway makes about a request is
//! recorded here, so the access log, metrics and spans all tell the same story.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use observability::http_span::{ClientSpan, ServerSpan};

use crate::auth::jwt::Identity;
use crate::auth::AuthOutcome;
use crate::forwarded::ForwardedClient;
use crate::ratelimit::Decision;
use crate::state::{Route, Runtime};
use crate::upstream::{Endpoint, InflightGuard};

/// Everything known about one request as it moves through the phases.
pub(crate) struct RequestCtx {
    pub(crate) start: Instant,
    /// `X-Request-Id`: the client's when well-formed, else generated.
    pub(crate) request_id: String,
    /// The configuration generation this request runs under, fixed at its start.
    pub(crate) runtime: Option<Arc<Runtime>>,
    pub(crate) route: Option<Arc<Route>>,
    /// The client's address (see [`crate::forwarded`]), or `unknown`.
    pub(crate) client_ip: String,
    /// The client and forwarding headers as resolved from the TCP peer and trusted proxies.
    pub(crate) forwarded: Option<ForwardedClient>,
    pub(crate) host: Option<String>,
    pub(crate) auth: AuthOutcome,
    pub(crate) identity: Option<Arc<Identity>>,
    pub(crate) limits: Vec<Decision>,
    /// Upstream attempts so far (1 = no retry yet).
    pub(crate) attempts: u32,
    pub(crate) endpoint: Option<Arc<Endpoint>>,
    /// The endpoint of the last failed attempt, avoided by the next one.
    pub(crate) last_failed: Option<SocketAddr>,
    pub(crate) inflight: Option<InflightGuard>,
    pub(crate) body_bytes: u64,
    pub(crate) upstream_status: Option<u16>,
    /// Whether any attempt failed at the transport level on the last try.
    pub(crate) upstream_failed: bool,
    /// `error.type` for spans and logs, when the request failed.
    pub(crate) error_type: Option<&'static str>,
    /// Internal error detail for the log (never sent to the client).
    pub(crate) error_detail: Option<String>,
    pub(crate) counted_inflight: bool,
    /// The SERVER span of this request (continues an incoming traceparent).
    pub(crate) span: ServerSpan,
    /// The CLIENT span of the current upstream attempt.
    pub(crate) attempt_span: Option<ClientSpan>,
}

impl RequestCtx {
    pub(crate) fn new() -> Self {
        RequestCtx {
            start: Instant::now(),
            request_id: String::new(),
            runtime: None,
            route: None,
            client_ip: String::new(),
            forwarded: None,
            host: None,
            auth: AuthOutcome {
                result: "skipped",
                ..Default::default()
            },
            identity: None,
            limits: Vec::new(),
            attempts: 0,
            endpoint: None,
            last_failed: None,
            inflight: None,
            body_bytes: 0,
            upstream_status: None,
            upstream_failed: false,
            error_type: None,
            error_detail: None,
            counted_inflight: false,
            span: ServerSpan::none(),
            attempt_span: None,
        }
    }

    /// The SERVER span's trace and span id (hex), when tracing is on.
    pub(crate) fn span_ids(&self) -> Option<(String, String)> {
        let sc = self.span.span_context();
        sc.is_valid()
            .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    }

    /// The route name, or `unmatched`; bounded for metric labels.
    pub(crate) fn route_name(&self) -> &str {
        self.route
            .as_ref()
            .map(|r| r.config.name.as_str())
            .unwrap_or("unmatched")
    }

    /// `policy:result:remaining` for each rate-limit decision.
    pub(crate) fn limits_summary(&self) -> String {
        self.limits
            .iter()
            .map(|d| {
                let tier = d
                    .tier
                    .as_deref()
                    .map(|t| format!("[{t}]"))
                    .unwrap_or_default();
                format!(
                    "{}{tier}:{}:{}",
                    d.policy,
                    if d.allowed { "allowed" } else { "limited" },
                    d.remaining
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}
