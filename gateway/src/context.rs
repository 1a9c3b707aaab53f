//! Per-request state (Pingora's `CTX`): every decision the gateway makes about a request is
//! recorded here, grouped by concern, so the access log, metrics and spans all tell the same
//! story.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use ipnet::IpNet;
use observability::http_span::{ClientSpan, ServerSpan};
use observability::lines::TraceIds;

use crate::auth::AuthDecision;
use crate::forwarded::ForwardedClient;
use crate::problem::GatewayError;
use crate::ratelimit::Decision;
use crate::request_id::RequestId;
use crate::state::{Route, Runtime};
use crate::upstream::{Endpoint, InflightGuard};

/// Everything known about one request as it moves through the phases.
pub(crate) struct RequestCtx {
    pub(crate) start: Instant,
    /// `X-Request-Id`: the client's when well-formed, else generated.
    pub(crate) request_id: RequestId,
    /// The configuration generation this request runs under, fixed at its start.
    pub(crate) runtime: Option<Arc<Runtime>>,
    /// Who sent it.
    pub(crate) client: Client,
    /// The normalised path, when it differs from the request's (see [`crate::normalize`]):
    /// what the route was chosen on and what the upstream receives.
    pub(crate) path: Option<String>,
    /// The route decision: `None` until matched (and for requests no route matches).
    pub(crate) route: Option<Arc<Route>>,
    /// The auth decision.
    pub(crate) auth: AuthDecision,
    /// One decision per enforced rate-limit policy consulted, in order.
    pub(crate) limits: Vec<Decision>,
    /// One decision per rate-limit policy in shadow mode consulted (see [`crate::shadow`]).
    pub(crate) shadow_limits: Vec<Decision>,
    /// Upstream attempts and what became of them.
    pub(crate) upstream: Attempts,
    /// How the request failed, when it did.
    pub(crate) failure: Option<Failure>,
    /// Request body bytes seen so far.
    pub(crate) body_bytes: u64,
    /// Whether `gateway_inflight_requests` was incremented for this request.
    pub(crate) counted_inflight: bool,
    /// The SERVER span of this request (continues an incoming traceparent).
    pub(crate) span: ServerSpan,
}

/// The client as the gateway sees it.
#[derive(Default)]
pub(crate) struct Client {
    /// Whether the client connected to the TLS listener.
    pub(crate) tls: bool,
    /// The client's address (see [`crate::forwarded`]), canonical (IPv4-mapped IPv6 as IPv4).
    pub(crate) addr: Option<IpAddr>,
    /// The client and forwarding headers as resolved from the TCP peer and trusted proxies.
    pub(crate) forwarded: Option<ForwardedClient>,
    /// The request's host, lower-case without port.
    pub(crate) host: Option<String>,
}

impl Client {
    /// The client of a request from TCP peer `peer` with `headers`, believing forwarding headers
    /// only from `trusted` proxies.
    pub(crate) fn resolve(
        peer: Option<IpAddr>,
        headers: &HeaderMap,
        trusted: &[IpNet],
        tls: bool,
    ) -> Self {
        let own_proto = if tls { "https" } else { "http" };
        let forwarded = peer.map(|ip| crate::forwarded::resolve(ip, headers, trusted, own_proto));
        Client {
            tls,
            addr: forwarded.as_ref().map(|f| f.ip),
            forwarded,
            host: None,
        }
    }

    /// [`Client::addr`] as text (formatted once, in [`ForwardedClient`]), or `unknown`.
    pub(crate) fn ip(&self) -> &str {
        self.forwarded
            .as_ref()
            .map_or("unknown", ForwardedClient::client_text)
    }
}

/// The upstream side of a request: every attempt, retries included.
#[derive(Default)]
pub(crate) struct Attempts {
    /// Attempts so far (1 = no retry yet).
    pub(crate) count: u32,
    /// The endpoint of the current attempt.
    pub(crate) endpoint: Option<Arc<Endpoint>>,
    /// The endpoint of the last failed attempt, avoided by the next one.
    pub(crate) last_failed: Option<SocketAddr>,
    /// How the last failed attempt failed.
    pub(crate) last_failure: Option<crate::problem::classify::UpstreamErrorKind>,
    /// Counts the current attempt against its endpoint's in-flight requests.
    pub(crate) inflight: Option<InflightGuard>,
    /// The status the upstream answered with.
    pub(crate) status: Option<u16>,
    /// Whether an attempt failed at the transport level.
    pub(crate) failed: bool,
    /// The CLIENT span of the current attempt.
    pub(crate) span: Option<ClientSpan>,
}

/// How a request failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The client went away before it could be answered.
    ClientClosed,
    /// The gateway answered with this error; `detail` is the internal cause for the log (never
    /// sent to the client), kept for server-side errors only.
    Answered {
        error: GatewayError,
        detail: Option<String>,
    },
}

impl Failure {
    /// `error.type` for spans and logs.
    pub(crate) fn error_type(&self) -> &'static str {
        match self {
            Failure::ClientClosed => "client_closed",
            Failure::Answered { error, .. } => error.slug(),
        }
    }

    /// The internal cause, for server-side errors.
    pub(crate) fn detail(&self) -> Option<&str> {
        match self {
            Failure::Answered { detail, .. } => detail.as_deref(),
            Failure::ClientClosed => None,
        }
    }
}

impl RequestCtx {
    pub(crate) fn new() -> Self {
        RequestCtx {
            start: Instant::now(),
            request_id: RequestId::default(),
            runtime: None,
            client: Client::default(),
            path: None,
            route: None,
            auth: AuthDecision::Skipped,
            limits: Vec::new(),
            shadow_limits: Vec::new(),
            upstream: Attempts::default(),
            failure: None,
            body_bytes: 0,
            counted_inflight: false,
            span: ServerSpan::none(),
        }
    }

    /// The SERVER span's trace and span id (hex), when tracing is on.
    pub(crate) fn span_ids(&self) -> Option<TraceIds> {
        TraceIds::of(self.span.span_context())
    }

    /// The route name, or `unmatched`; bounded for metric labels.
    pub(crate) fn route_name(&self) -> &str {
        self.route
            .as_ref()
            .map(|r| r.config.name.as_str())
            .unwrap_or("unmatched")
    }

    /// The upstream name of the matched route.
    pub(crate) fn upstream_name(&self) -> Option<&str> {
        self.route.as_ref().map(|r| r.upstream.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        let peer = Some("10.0.0.5".parse().unwrap());

        // No trusted proxy (the default): the headers are not even read.
        let client = Client::resolve(peer, &headers, &[], false);
        assert_eq!(client.ip(), "10.0.0.5");
        let forwarded = client.forwarded.unwrap();
        assert_eq!(forwarded.forwarded_for, "10.0.0.5");
        assert_eq!(forwarded.proto, "http");

        // From a trusted proxy: the client it names, and the whole chain upstream.
        let trusted: [IpNet; 1] = ["10.0.0.0/8".parse().unwrap()];
        let client = Client::resolve(peer, &headers, &trusted, false);
        assert_eq!(client.ip(), "203.0.113.9");
        let forwarded = client.forwarded.unwrap();
        assert_eq!(forwarded.forwarded_for, "203.0.113.9, 10.0.0.5");
        assert_eq!(forwarded.proto, "https");

        let unknown = Client::resolve(None, &headers, &trusted, true);
        assert_eq!(unknown.ip(), "unknown");
    }

    /// Pingora keeps `CTX` inside the request's future, which is boxed and moved per request:
    /// every byte here is copied. `cargo test -p gateway --lib ctx_size -- --nocapture` prints
    /// the parts (docs/benchmarks.md quotes them).
    #[test]
    fn ctx_size() {
        use std::mem::size_of;
        let parts = [
            ("RequestCtx", size_of::<RequestCtx>()),
            ("Client", size_of::<Client>()),
            ("Attempts", size_of::<Attempts>()),
            ("AuthDecision", size_of::<AuthDecision>()),
            ("Option<Failure>", size_of::<Option<Failure>>()),
            ("ServerSpan", size_of::<ServerSpan>()),
            ("Option<ClientSpan>", size_of::<Option<ClientSpan>>()),
        ];
        for (name, size) in parts {
            eprintln!("{name}: {size} bytes");
        }
        // 1,120 bytes when measured (docs/benchmarks.md): growth past this needs a reason.
        assert!(size_of::<RequestCtx>() <= 1280, "RequestCtx grew");
    }
}
