//! HTTP SERVER and CLIENT spans with the semantic-convention attributes, framework-free.
//!
//! The axum layer (`http_server`, feature `axum`) uses these; the gateway calls them directly from its
//! Pingora phases, keeping the returned span in its per-request `CTX`:
//!
//! ```
//! use observability::http_trace::{self, ServerRequest};
//!
//! let req = http::Request::get("/orders/42").header("host", "api.example:8080").body(()).unwrap();
//! let span = http_trace::server_span(&ServerRequest::new(req.method(), req.uri(), req.version(), req.headers()));
//! // … once routing has picked a route:
//! http_trace::set_route(&span, req.method(), "/orders/{id}");
//! // … for each upstream attempt (retries get resend_count 1, 2, …):
//! let upstream = http_trace::client_span(&span, req.method(), "http://orders:8080/orders/42", 0);
//! http_trace::record_status(&upstream, http::StatusCode::OK, http_trace::Side::Client);
//! http_trace::record_status(&span, http::StatusCode::OK, http_trace::Side::Server);
//! ```

use std::net::IpAddr;

use http::{HeaderMap, Method, StatusCode, Uri, Version};
use opentelemetry::trace::Status;
use opentelemetry_semantic_conventions::attribute as semconv;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::propagation;
use crate::redact;

/// What the SERVER span is created from.
#[derive(Clone, Copy, Debug)]
pub struct ServerRequest<'a> {
    /// Recorded as `http.request.method` (unknown methods as `_OTHER`).
    pub method: &'a Method,
    /// The request target: `url.path`, and `url.query` after redaction.
    pub uri: &'a Uri,
    /// `network.protocol.version`.
    pub version: Version,
    /// Read for propagation (`traceparent`, …), `Host` and `User-Agent` only; never recorded.
    pub headers: &'a HeaderMap,
    /// `http` or `https`. Default `http`.
    pub scheme: &'a str,
    /// The route template, when known before the span starts.
    pub route: Option<&'a str>,
    /// The peer's address (or the first `X-Forwarded-For` hop, if you trust it).
    pub client_address: Option<IpAddr>,
}

impl<'a> ServerRequest<'a> {
    /// A request with scheme `http`, no route and no client address; set those fields as known.
    pub fn new(method: &'a Method, uri: &'a Uri, version: Version, headers: &'a HeaderMap) -> Self {
        Self {
            method,
            uri,
            version,
            headers,
            scheme: "http",
            route: None,
            client_address: None,
        }
    }
}

/// Which side of the call a span is on; decides which status codes are errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// 5xx are errors (4xx are the client's fault, not ours).
    Server,
    /// 4xx and 5xx are errors.
    Client,
}

/// `http.request.method`: known methods as-is, anything else `_OTHER` (bounded cardinality).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

/// `{method} {route}`, or just `{method}` when no route is known (never the raw path).
pub fn span_name(method: &Method, route: Option<&str>) -> String {
    let method = match method_label(method) {
        "_OTHER" => "HTTP",
        known => known,
    };
    match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    }
}

fn protocol_version(version: Version) -> Option<&'static str> {
    match version {
        Version::HTTP_09 => Some("0.9"),
        Version::HTTP_10 => Some("1.0"),
        Version::HTTP_11 => Some("1.1"),
        Version::HTTP_2 => Some("2"),
        Version::HTTP_3 => Some("3"),
        _ => None,
    }
}

/// A SERVER span for `req`, continuing the trace in its propagation headers (a new root without).
///
/// The span is never a child of whatever `tracing` span happens to be current: a server span's
/// parent is the remote caller.
pub fn server_span(req: &ServerRequest<'_>) -> tracing::Span {
    let method = method_label(req.method);
    let query = req.uri.query().map(redact::redact_query);
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri.host())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let user_agent = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|h| h.to_str().ok());
    // Every attribute is a declared field, recorded in one pass when the span is created:
    // `set_attribute` per key costs a subscriber lookup and a lock each, per request.
    let span = tracing::info_span!(
        target: "observability::http",
        parent: None,
        "HTTP request",
        otel.name = %span_name(req.method, req.route),
        otel.kind = "server",
        otel.status_code = Empty,
        { semconv::HTTP_REQUEST_METHOD } = method,
        { semconv::HTTP_REQUEST_METHOD_ORIGINAL } = (method == "_OTHER").then(|| req.method.as_str()),
        { semconv::URL_PATH } = req.uri.path(),
        { semconv::URL_QUERY } = query.as_deref(),
        { semconv::URL_SCHEME } = req.scheme,
        { semconv::HTTP_ROUTE } = req.route,
        { semconv::SERVER_ADDRESS } = host.as_ref().map(|a| a.host()),
        { semconv::SERVER_PORT } = host.as_ref().and_then(|a| a.port_u16()).map(i64::from),
        { semconv::CLIENT_ADDRESS } = req.client_address.map(|ip| ip.to_string()),
        { semconv::USER_AGENT_ORIGINAL } = user_agent,
        { semconv::NETWORK_PROTOCOL_VERSION } = protocol_version(req.version),
        { semconv::HTTP_RESPONSE_STATUS_CODE } = Empty,
        { semconv::ERROR_TYPE } = Empty,
    );
    let _ = span.set_parent(propagation::extract_http(req.headers));
    span
}

/// Names `span` `{method} {route}` and sets `http.route`, once routing has matched.
pub fn set_route(span: &tracing::Span, method: &Method, route: &str) {
    span.record("otel.name", span_name(method, Some(route)).as_str());
    set_str(span, semconv::HTTP_ROUTE, route);
}

/// A CLIENT span for one attempt to call `url`, child of `parent`.
///
/// `resend_count` is 0 for the first attempt and counts retries after it, so retries show up as
/// sibling spans. Inject its context into the outgoing request with
/// `propagation::inject_http(&span.context(), headers)`.
pub fn client_span(
    parent: &tracing::Span,
    method: &Method,
    url: &str,
    resend_count: u32,
) -> tracing::Span {
    let uri = url.parse::<Uri>().ok();
    let port = uri.as_ref().map(|uri| {
        let default_port = if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        i64::from(uri.port_u16().unwrap_or(default_port))
    });
    let full = match uri.as_ref().and_then(Uri::query) {
        Some(query) => format!(
            "{}?{}",
            url.split('?').next().unwrap_or(url),
            redact::redact_query(query)
        ),
        None => url.to_owned(),
    };
    tracing::info_span!(
        target: "observability::http",
        parent: parent,
        "HTTP client request",
        otel.name = %span_name(method, None),
        otel.kind = "client",
        otel.status_code = Empty,
        { semconv::HTTP_REQUEST_METHOD } = method_label(method),
        { semconv::SERVER_ADDRESS } = uri.as_ref().and_then(Uri::host),
        { semconv::SERVER_PORT } = port,
        { semconv::URL_FULL } = redact::redact_url_credentials(&full),
        { semconv::HTTP_REQUEST_RESEND_COUNT } = (resend_count > 0).then_some(i64::from(resend_count)),
        { semconv::HTTP_RESPONSE_STATUS_CODE } = Empty,
        { semconv::ERROR_TYPE } = Empty,
    )
}

/// Records `key` through the span's declared field when it has one (cheap), else as an attribute
/// (works on spans created elsewhere).
fn set_str(span: &tracing::Span, key: &'static str, value: &str) {
    if span.has_field(key) {
        span.record(key, value);
    } else {
        span.set_attribute(key, value.to_owned());
    }
}

fn set_i64(span: &tracing::Span, key: &'static str, value: i64) {
    if span.has_field(key) {
        span.record(key, value);
    } else {
        span.set_attribute(key, value);
    }
}

/// Sets `http.response.status_code`; for errors (see [`Side`]) also `error.type` and an ERROR status.
pub fn record_status(span: &tracing::Span, status: StatusCode, side: Side) {
    set_i64(
        span,
        semconv::HTTP_RESPONSE_STATUS_CODE,
        i64::from(status.as_u16()),
    );
    let failed = match side {
        Side::Server => status.is_server_error(),
        Side::Client => status.is_client_error() || status.is_server_error(),
    };
    if failed {
        set_str(span, semconv::ERROR_TYPE, status.as_str());
        span.set_status(Status::error(""));
    }
}

/// Marks `span` failed with `error_type`, a low-cardinality class such as `timeout`,
/// `connection_refused` or an error type name — never a message containing user data.
pub fn record_error(span: &tracing::Span, error_type: &str) {
    set_str(span, semconv::ERROR_TYPE, error_type);
    span.set_status(Status::error(error_type.to_owned()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_use_the_route_template_never_the_path() {
        assert_eq!(
            span_name(&Method::GET, Some("/orders/{id}")),
            "GET /orders/{id}"
        );
        assert_eq!(span_name(&Method::POST, None), "POST");
        assert_eq!(
            span_name(&Method::from_bytes(b"PURGE").unwrap(), None),
            "HTTP"
        );
        assert_eq!(
            method_label(&Method::from_bytes(b"PURGE").unwrap()),
            "_OTHER"
        );
    }
}
