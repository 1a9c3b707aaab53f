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

use std::borrow::Cow;
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
    let method = span_method(method);
    match route {
        // Pushed, not `format!`ed: this runs for every request.
        Some(route) => {
            let mut name = String::with_capacity(method.len() + 1 + route.len());
            name.push_str(method);
            name.push(' ');
            name.push_str(route);
            name
        }
        None => method.to_owned(),
    }
}

/// The method part of a span name: known methods as-is, anything else `HTTP`. It is also the
/// whole name of a CLIENT span and of a SERVER span before routing.
pub(crate) fn span_method(method: &Method) -> &'static str {
    match method_label(method) {
        "_OTHER" => "HTTP",
        known => known,
    }
}

/// `ip` as `Display` writes it; IPv4 without the formatting machinery (nearly every address
/// recorded per request is one, and `fmt` costs more than the rest of the gateway's address
/// resolution). Used for span attributes here and for the gateway's client addresses.
pub fn ip_string(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    ipv4_text(v4, |byte| out.push(char::from(byte)));
    out
}

/// Passes the ASCII text of `v4` (dotted decimal) to `push`, byte by byte.
#[inline]
fn ipv4_text(v4: std::net::Ipv4Addr, mut push: impl FnMut(u8)) {
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            push(b'.');
        }
        if octet >= 100 {
            push(b'0' + octet / 100);
        }
        if octet >= 10 {
            push(b'0' + octet / 10 % 10);
        }
        push(b'0' + octet % 10);
    }
}

/// An IP address's text (what `Display` writes) on the stack, for span attributes that only
/// borrow it; IPv4 without the formatting machinery.
pub(crate) struct IpText {
    /// Long enough for any IPv6 address, IPv4-mapped ones included.
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    /// The text of `ip`.
    pub(crate) fn new(ip: IpAddr) -> Self {
        let mut buf = [0; 45];
        let mut len = 0;
        match ip {
            IpAddr::V4(v4) => ipv4_text(v4, |byte| {
                buf[len] = byte;
                len += 1;
            }),
            IpAddr::V6(_) => {
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                // 45 bytes hold every address `Display` writes.
                let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
                len = cursor.position() as usize;
            }
        }
        Self { buf, len }
    }

    /// The text (ASCII).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The text, validated (for callers that need a `&str`).
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// `server.address` and `server.port` of a `Host` value, as `http::uri::Authority` reads them
/// (`None` when it is not an authority). A plain `name[:port]` (letters, digits, `.`, `-`: every
/// host name and IPv4 address) is split in place; anything else (IPv6, user-info, percent
/// escapes) goes through `Authority`, whose parser copies the value first.
pub(crate) fn host_and_port(value: &str) -> Option<(Cow<'_, str>, Option<i64>)> {
    let (host, port) = match value.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (value, None),
    };
    let plain_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let plain_port = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    });
    if plain_host && plain_port {
        let port = port.and_then(|p| p.parse::<u16>().ok()).map(i64::from);
        return Some((Cow::Borrowed(host), port));
    }
    let authority: http::uri::Authority = value.parse().ok()?;
    let port = authority.port_u16().map(i64::from);
    Some((Cow::Owned(authority.host().to_owned()), port))
}

pub(crate) fn protocol_version(version: Version) -> Option<&'static str> {
    match version {
        Version::HTTP_09 => Some("0.9"),
        Version::HTTP_10 => Some("1.0"),
        Version::HTTP_11 => Some("1.1"),
        Version::HTTP_2 => Some("2"),
        Version::HTTP_3 => Some("3"),
        _ => None,
    }
}

/// The request attributes of a SERVER span, computed once for either kind of span (`tracing`
/// here, SDK-direct in [`crate::http_span`]).
pub(crate) struct ServerAttributes<'a> {
    pub(crate) method: &'static str,
    /// Only for `_OTHER` methods.
    pub(crate) method_original: Option<&'a str>,
    pub(crate) path: &'a str,
    /// Redacted.
    pub(crate) query: Option<String>,
    pub(crate) scheme: &'a str,
    pub(crate) route: Option<&'a str>,
    /// `server.address` and `server.port`, from `Host` (else the URI's authority).
    pub(crate) server: Option<(Cow<'a, str>, Option<i64>)>,
    pub(crate) client_address: Option<IpText>,
    pub(crate) user_agent: Option<&'a str>,
    pub(crate) protocol_version: Option<&'static str>,
}

impl<'a> ServerAttributes<'a> {
    pub(crate) fn new(req: &ServerRequest<'a>) -> Self {
        let method = method_label(req.method);
        Self {
            method,
            method_original: (method == "_OTHER").then(|| req.method.as_str()),
            path: req.uri.path(),
            query: req.uri.query().map(redact::redact_query),
            scheme: req.scheme,
            route: req.route,
            server: req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or(req.uri.host())
                .and_then(host_and_port),
            client_address: req.client_address.map(IpText::new),
            user_agent: req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|h| h.to_str().ok()),
            protocol_version: protocol_version(req.version),
        }
    }

    pub(crate) fn server_address(&self) -> Option<&str> {
        self.server.as_ref().map(|(host, _)| host.as_ref())
    }

    pub(crate) fn server_port(&self) -> Option<i64> {
        self.server.as_ref().and_then(|(_, port)| *port)
    }
}

/// The attributes of a CLIENT span for one attempt, computed once for either kind of span.
pub(crate) struct ClientAttributes<'a> {
    pub(crate) method: &'static str,
    pub(crate) server_address: Option<String>,
    pub(crate) server_port: Option<i64>,
    /// Credentials and secret query values redacted.
    pub(crate) url_full: String,
    /// Only for retries (1, 2, …).
    pub(crate) resend_count: Option<i64>,
    pub(crate) name_method: &'a Method,
}

impl<'a> ClientAttributes<'a> {
    pub(crate) fn new(method: &'a Method, url: &str, resend_count: u32) -> Self {
        let uri = url.parse::<Uri>().ok();
        let server_port = uri.as_ref().map(|uri| {
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
        Self {
            method: method_label(method),
            server_address: uri.as_ref().and_then(Uri::host).map(str::to_owned),
            server_port,
            url_full: redact::redact_url(&full),
            resend_count: (resend_count > 0).then_some(i64::from(resend_count)),
            name_method: method,
        }
    }
}

/// Whether `status` marks the span failed on this `side` (5xx for servers, 4xx/5xx for clients).
pub fn is_error(status: StatusCode, side: Side) -> bool {
    match side {
        Side::Server => status.is_server_error(),
        Side::Client => status.is_client_error() || status.is_server_error(),
    }
}

/// A SERVER span for `req`, continuing the trace in its propagation headers (a new root without).
///
/// The span is never a child of whatever `tracing` span happens to be current: a server span's
/// parent is the remote caller.
pub fn server_span(req: &ServerRequest<'_>) -> tracing::Span {
    let a = ServerAttributes::new(req);
    // Every attribute is a declared field, recorded in one pass when the span is created:
    // `set_attribute` per key costs a subscriber lookup and a lock each, per request.
    let span = tracing::info_span!(
        target: "observability::http",
        parent: None,
        "HTTP request",
        otel.name = %span_name(req.method, req.route),
        otel.kind = "server",
        otel.status_code = Empty,
        { semconv::HTTP_REQUEST_METHOD } = a.method,
        { semconv::HTTP_REQUEST_METHOD_ORIGINAL } = a.method_original,
        { semconv::URL_PATH } = a.path,
        { semconv::URL_QUERY } = a.query.as_deref(),
        { semconv::URL_SCHEME } = a.scheme,
        { semconv::HTTP_ROUTE } = a.route,
        { semconv::SERVER_ADDRESS } = a.server_address(),
        { semconv::SERVER_PORT } = a.server_port(),
        { semconv::CLIENT_ADDRESS } = a.client_address.as_ref().map(IpText::as_str),
        { semconv::USER_AGENT_ORIGINAL } = a.user_agent,
        { semconv::NETWORK_PROTOCOL_VERSION } = a.protocol_version,
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
    let a = ClientAttributes::new(method, url, resend_count);
    tracing::info_span!(
        target: "observability::http",
        parent: parent,
        "HTTP client request",
        otel.name = %span_name(a.name_method, None),
        otel.kind = "client",
        otel.status_code = Empty,
        { semconv::HTTP_REQUEST_METHOD } = a.method,
        { semconv::SERVER_ADDRESS } = a.server_address.as_deref(),
        { semconv::SERVER_PORT } = a.server_port,
        { semconv::URL_FULL } = a.url_full.as_str(),
        { semconv::HTTP_REQUEST_RESEND_COUNT } = a.resend_count,
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
    if is_error(status, side) {
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
    fn host_and_port_read_hosts_as_authority_does() {
        for value in [
            "shop.example",
            "shop.example:8080",
            "Shop.Example:443",
            "127.0.0.1:9000",
            "10.0.0.7",
            "a-b.c",
            "host:",
            "host:0",
            "host:65535",
            "host:65536",
            "host:123456",
            "host:8a",
            ":80",
            "",
            "[::1]:8080",
            "[2001:db8::1]",
            "user@host:80",
            "ho_st:80",
            "h%41st",
            "a b",
            "host:80:90",
        ] {
            let expected = value
                .parse::<http::uri::Authority>()
                .ok()
                .map(|a| (a.host().to_owned(), a.port_u16().map(i64::from)));
            let got = host_and_port(value).map(|(h, p)| (h.into_owned(), p));
            assert_eq!(got, expected, "{value:?}");
        }
    }

    #[test]
    fn ip_strings_are_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.100.255.9",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            // The longest text an IPv6 address has (45 bytes).
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "::ffff:192.0.2.128",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_string(ip), ip.to_string());
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
        // Every octet width (1, 2 and 3 digits, with zeros inside) in every position.
        for a in [0u8, 1, 9, 10, 42, 99, 100, 101, 199, 200, 250, 255] {
            for b in [0u8, 7, 10, 100, 255] {
                let ip = IpAddr::from([a, b, a, b]);
                assert_eq!(ip_string(ip), ip.to_string());
                assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes());
            }
        }
    }

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
