//! Every error the gateway itself returns, and the one place that turns them into
//! `application/problem+json` responses (RFC 9457).
//!
//! The `type` URIs are stable: clients may branch on them. Bodies never include upstream
//! responses, addresses, stack traces or token contents. How a Pingora error maps onto one of
//! these is decided in [`classify`].

pub(crate) mod classify;

use bytes::Bytes;
use pingora_http::ResponseHeader;

use crate::auth::Reject;
use crate::framing::FramingError;
use crate::normalize::PathError;

/// An error answered by the gateway rather than an upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// No route matches the request.
    #[error("no route matches the request")]
    NoRoute,
    /// Ambiguous or invalid message framing (request smuggling guard).
    #[error("bad request framing: {0}")]
    BadFraming(FramingError),
    /// A path that cannot be normalised safely (400).
    #[error("bad path: {0}")]
    BadPath(PathError),
    /// A path whose `;params` would lead a server that drops them to another route (400).
    #[error("ambiguous path parameters")]
    AmbiguousPath,
    /// Several `Host` headers, or one that disagrees with the request target (400).
    #[error("bad host: {0}")]
    BadHost(&'static str),
    /// A header the policy keys on, sent more than once (400).
    #[error("header {0} sent more than once")]
    DuplicateHeader(String),
    /// The route's path matches but not its method (405).
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the route accepts, for `Allow`.
        allow: String,
    },
    /// The request head is over a size or count limit (431).
    #[error("request header fields too large: {0}")]
    HeadersTooLarge(&'static str),
    /// The request target is longer than `server.max_uri_bytes` (414).
    #[error("URI longer than {limit} bytes")]
    UriTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// Bearer token missing or invalid (401).
    #[error("unauthorized: {}", .reject.code())]
    Unauthorized {
        /// Why.
        reject: Reject,
        /// `WWW-Authenticate` realm.
        realm: String,
    },
    /// Token valid but lacks scopes (403).
    #[error("insufficient scope")]
    InsufficientScope {
        /// Space-separated scopes the route requires.
        scope: String,
        /// `WWW-Authenticate` realm.
        realm: String,
    },
    /// Over a rate limit (429).
    #[error("rate limited by policy {policy}")]
    RateLimited {
        /// The policy that refused.
        policy: String,
        /// Seconds to wait.
        retry_after_secs: u64,
        /// `RateLimit-Policy` and `RateLimit` values.
        fields: Option<(String, String)>,
    },
    /// Body larger than the route allows (413).
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The upstream's circuit breaker is open (503).
    #[error("circuit open for upstream {0}")]
    CircuitOpen(String),
    /// No endpoint of the upstream is healthy (503).
    #[error("no healthy endpoint for upstream {0}")]
    NoHealthyEndpoint(String),
    /// The upstream did not answer in time (504).
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream could not be reached or broke the exchange (502).
    #[error("upstream failed")]
    BadGateway,
    /// The upstream's TLS identity is not one the policy allows (502). Nothing was sent to it.
    #[error("upstream {upstream} presented an identity that is not allowed ({reason})")]
    UpstreamIdentity {
        /// The upstream's config name.
        upstream: String,
        /// `wrong_identity` or `no_identity`.
        reason: &'static str,
    },
    /// Plain HTTP where the policy wants TLS: 308 to the https URL.
    #[error("https required")]
    HttpsRequired {
        /// The https URL to repeat the request at.
        location: String,
    },
    /// The client sent something unparseable (400).
    #[error("bad request")]
    BadRequest,
    /// A gateway bug or resource problem (500).
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::NoRoute => 404,
            GatewayError::BadFraming(_)
            | GatewayError::BadRequest
            | GatewayError::BadPath(_)
            | GatewayError::AmbiguousPath
            | GatewayError::BadHost(_)
            | GatewayError::DuplicateHeader(_) => 400,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::HeadersTooLarge(_) => 431,
            GatewayError::UriTooLong { .. } => 414,
            GatewayError::Unauthorized { .. } => 401,
            GatewayError::InsufficientScope { .. } => 403,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::PayloadTooLarge { .. } => 413,
            GatewayError::CircuitOpen(_) | GatewayError::NoHealthyEndpoint(_) => 503,
            GatewayError::UpstreamTimeout => 504,
            GatewayError::BadGateway | GatewayError::UpstreamIdentity { .. } => 502,
            GatewayError::HttpsRequired { .. } => 308,
            GatewayError::Internal => 500,
        }
    }

    /// Stable short name: the last segment of the problem `type`, and `error.type` on spans.
    pub fn slug(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "no-route",
            GatewayError::BadFraming(_) => "bad-framing",
            GatewayError::BadPath(_) | GatewayError::AmbiguousPath => "bad-path",
            GatewayError::BadHost(_) => "bad-host",
            GatewayError::DuplicateHeader(_) => "duplicate-header",
            GatewayError::MethodNotAllowed { .. } => "method-not-allowed",
            GatewayError::HeadersTooLarge(_) => "request-header-fields-too-large",
            GatewayError::UriTooLong { .. } => "uri-too-long",
            GatewayError::BadRequest => "bad-request",
            GatewayError::Unauthorized { .. } => "unauthorized",
            GatewayError::InsufficientScope { .. } => "insufficient-scope",
            GatewayError::RateLimited { .. } => "rate-limited",
            GatewayError::PayloadTooLarge { .. } => "payload-too-large",
            GatewayError::CircuitOpen(_) => "circuit-open",
            GatewayError::NoHealthyEndpoint(_) => "no-healthy-upstream",
            GatewayError::UpstreamTimeout => "upstream-timeout",
            GatewayError::BadGateway => "bad-gateway",
            GatewayError::UpstreamIdentity { .. } => "upstream-identity",
            GatewayError::HttpsRequired { .. } => "https-required",
            GatewayError::Internal => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "Not Found",
            GatewayError::BadFraming(_)
            | GatewayError::BadRequest
            | GatewayError::BadPath(_)
            | GatewayError::AmbiguousPath
            | GatewayError::BadHost(_)
            | GatewayError::DuplicateHeader(_) => "Bad Request",
            GatewayError::MethodNotAllowed { .. } => "Method Not Allowed",
            GatewayError::HeadersTooLarge(_) => "Request Header Fields Too Large",
            GatewayError::UriTooLong { .. } => "URI Too Long",
            GatewayError::Unauthorized { .. } => "Unauthorized",
            GatewayError::InsufficientScope { .. } => "Forbidden",
            GatewayError::RateLimited { .. } => "Too Many Requests",
            GatewayError::PayloadTooLarge { .. } => "Content Too Large",
            GatewayError::CircuitOpen(_) | GatewayError::NoHealthyEndpoint(_) => {
                "Service Unavailable"
            }
            GatewayError::UpstreamTimeout => "Gateway Timeout",
            GatewayError::BadGateway | GatewayError::UpstreamIdentity { .. } => "Bad Gateway",
            GatewayError::HttpsRequired { .. } => "Permanent Redirect",
            GatewayError::Internal => "Internal Server Error",
        }
    }

    /// Client-facing detail. Upstream names are config names, never addresses.
    pub(crate) fn detail(&self) -> String {
        match self {
            GatewayError::NoRoute => "No route matches this method, host and path.".into(),
            GatewayError::BadFraming(why) => format!("The request framing is ambiguous: {why}."),
            GatewayError::BadPath(why) => format!("The request path is refused: {why}."),
            GatewayError::AmbiguousPath => {
                "The request path means different things with and without its ;parameters.".into()
            }
            GatewayError::BadHost(why) => format!("The request host is refused: {why}."),
            GatewayError::DuplicateHeader(name) => {
                format!("The {name} header must be sent at most once.")
            }
            GatewayError::MethodNotAllowed { allow } => {
                format!("This path accepts only: {allow}.")
            }
            GatewayError::HeadersTooLarge(why) => format!("The request head is too large: {why}."),
            GatewayError::UriTooLong { limit } => {
                format!("The request target is longer than {limit} bytes.")
            }
            GatewayError::BadRequest => "The request could not be parsed.".into(),
            GatewayError::Unauthorized { reject, .. } => {
                format!("{}.", capitalise(reject.description()))
            }
            GatewayError::InsufficientScope { scope, .. } => {
                format!("The token lacks the scope(s) this route requires: {scope}.")
            }
            GatewayError::RateLimited {
                policy,
                retry_after_secs,
                ..
            } => {
                format!("Rate limit {policy:?} exceeded; retry after {retry_after_secs} s.")
            }
            GatewayError::PayloadTooLarge { limit } => {
                format!("The request body exceeds the limit of {limit} bytes.")
            }
            GatewayError::CircuitOpen(u) => {
                format!("Upstream {u:?} is failing; requests are refused until it recovers.")
            }
            GatewayError::NoHealthyEndpoint(u) => {
                format!("Upstream {u:?} has no healthy endpoint.")
            }
            GatewayError::UpstreamTimeout => "The upstream did not answer in time.".into(),
            GatewayError::BadGateway => {
                "The upstream could not be reached or sent an invalid response.".into()
            }
            GatewayError::UpstreamIdentity { upstream, .. } => format!(
                "Upstream {upstream:?} did not prove an identity the policy allows; nothing was sent to it."
            ),
            GatewayError::HttpsRequired { .. } => "This gateway is served over HTTPS.".into(),
            GatewayError::Internal => "The gateway failed to handle the request.".into(),
        }
    }

    /// Whether the gateway itself misbehaved (worth an operator's attention in logs).
    pub fn is_server_side(&self) -> bool {
        self.status() >= 500
    }

    /// A refusal decided from the request head alone, before any body was read or any
    /// upstream contacted: the client connection may be kept when the request had no body.
    pub(crate) fn is_early_refusal(&self) -> bool {
        matches!(
            self,
            GatewayError::NoRoute
                | GatewayError::HttpsRequired { .. }
                | GatewayError::MethodNotAllowed { .. }
                | GatewayError::Unauthorized { .. }
                | GatewayError::InsufficientScope { .. }
                | GatewayError::RateLimited { .. }
        )
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Base of every problem `type` (the scheme shared with the services).
pub use observability::problem::PROBLEM_BASE;

/// An `application/problem+json` body of kind `slug`, in the scheme the services share
/// ([`observability::problem`]).
pub(crate) fn body(
    slug: &str,
    title: &str,
    status: u16,
    detail: &str,
    request_id: Option<&str>,
) -> Vec<u8> {
    let mut problem = observability::problem::Problem::new(slug, status, detail).with_title(title);
    if let Some(id) = request_id {
        problem = problem.with_request_id(id);
    }
    problem.to_json()
}

/// Renders `err` as a complete response: header and `application/problem+json` body.
pub(crate) fn render(err: &GatewayError, request_id: &str) -> (ResponseHeader, Bytes) {
    let body = Bytes::from(body(
        err.slug(),
        err.title(),
        err.status(),
        &err.detail(),
        Some(request_id),
    ));
    let mut resp = ResponseHeader::build(err.status(), Some(6)).expect("valid status");
    let _ = resp.insert_header("content-type", observability::problem::CONTENT_TYPE);
    let _ = resp.insert_header("content-length", body.len().to_string());
    let _ = resp.insert_header("cache-control", "no-store");
    let _ = resp.insert_header("x-request-id", request_id);
    match err {
        GatewayError::Unauthorized {
            reject: Reject::Missing,
            realm,
        } => {
            let _ = resp.insert_header("www-authenticate", format!("Bearer realm=\"{realm}\""));
        }
        GatewayError::Unauthorized { reject, realm } => {
            let _ = resp.insert_header(
                "www-authenticate",
                format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                    reject.description()
                ),
            );
        }
        GatewayError::InsufficientScope { scope, realm } => {
            let _ = resp.insert_header(
                "www-authenticate",
                format!(
                    "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{scope}\""
                ),
            );
        }
        GatewayError::HttpsRequired { location } => {
            let _ = resp.insert_header("location", location.as_str());
        }
        GatewayError::MethodNotAllowed { allow } => {
            let _ = resp.insert_header("allow", allow.as_str());
        }
        GatewayError::RateLimited {
            retry_after_secs,
            fields,
            ..
        } => {
            let _ = resp.insert_header("retry-after", retry_after_secs.to_string());
            if let Some((policy, limit)) = fields {
                let _ = resp.insert_header("ratelimit-policy", policy.as_str());
                let _ = resp.insert_header("ratelimit", limit.as_str());
            }
        }
        _ => {}
    }
    (resp, body)
}
