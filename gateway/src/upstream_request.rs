//! What the upstream receives on top of the client's request: the normalised (and rewritten)
//! path, the caller's identity, `X-Request-Id`, forwarding headers that describe the connection
//! the gateway accepted, and the trace context of the attempt's CLIENT span.
//!
//! Pingora removes the headers a client's `Connection:` nominates *before* this runs, so every
//! header set here reaches the upstream whatever the client nominated: a client cannot make the
//! gateway's own headers disappear. (Pingora itself refuses a nomination of `Host` or
//! `X-Forwarded-*`.)

use http::header::{HeaderMap, HeaderName};
use http::{header, HeaderValue};
use observability::opentelemetry::propagation::Injector;
use observability::propagation::TRACE_HEADERS;
use pingora_http::RequestHeader;

use crate::context::RequestCtx;
use crate::forwarded::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::problem::GatewayError;
use crate::request_id::X_REQUEST_ID;
use crate::{auth, routing};

/// The most headers [`prepare`] adds: the request id, three forwarding headers, two identity
/// headers and two trace headers. Room for them is made once, so the map never grows.
const ADDED_HEADERS: usize = 8;

/// Edits `upstream` (the request about to be sent) from the client's request `downstream`.
///
/// Pingora hands the filter a copy of the client's request that keeps the header names' case
/// in a second map; every `insert_header` then parses the name and updates both maps, and
/// each map grows (rehashing) as the gateway's headers go in. The request is instead taken
/// apart once: the headers are added to the one `http` map, with room made for all of them
/// first, under ready names. Header names reach the upstream in canonical case (standard
/// names title-cased, others lower-case, as HTTP/2 and most proxies send them; names are
/// case-insensitive, RFC 9110 §5.1); values, order and the request target are unchanged.
///
/// Fails only when the path to send cannot be put on the wire; the request is then refused
/// rather than sent with another path than the one it was routed on.
pub(crate) fn prepare(
    downstream: &RequestHeader,
    upstream: &mut RequestHeader,
    ctx: &RequestCtx,
) -> Result<(), GatewayError> {
    // The target to send: rewritten or normalised, else the client's as received (kept
    // verbatim when the URI would not reproduce it, e.g. absolute-form).
    let target = match &ctx.route {
        Some(route) => {
            let uri = &downstream.uri;
            let path = ctx.path.as_deref().unwrap_or(uri.path());
            routing::rewrite(&route.config, path, uri.query()).or_else(|| {
                ctx.path.as_ref().map(|p| match uri.query() {
                    Some(q) => format!("{p}?{q}"),
                    None => p.clone(),
                })
            })
        }
        None => None,
    };
    let verbatim = match target {
        Some(_) => None,
        None => Some(upstream.raw_path())
            .filter(|raw| !raw.starts_with(b"/") && *raw != b"*".as_slice())
            .map(<[u8]>::to_vec),
    };
    let end_stream = upstream.send_end_stream();

    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(upstream, placeholder));
    add_headers(&mut parts.headers, downstream, ctx);
    *upstream = RequestHeader::from(parts);
    if let Some(end_stream) = end_stream {
        upstream.set_send_end_stream(end_stream);
    }
    if let Some(raw) = target
        .as_ref()
        .map(String::as_bytes)
        .or(verbatim.as_deref())
    {
        upstream
            .set_raw_path(raw)
            .map_err(|_| GatewayError::BadRequest)?;
    }
    Ok(())
}

/// The gateway's headers: request id, identity, forwarding headers, trace context.
fn add_headers(headers: &mut HeaderMap, downstream: &RequestHeader, ctx: &RequestCtx) {
    headers.reserve(ADDED_HEADERS);
    if !ctx.request_id.is_empty() {
        headers.insert(X_REQUEST_ID, ctx.request_id.header_value());
    }
    if let Some(identity) = ctx.auth.admitted() {
        auth::forward_identity(headers, identity);
    }
    // Forwarding headers describe the connection the gateway accepted, plus what trusted
    // proxies in front of it vouched for (`server.trusted_proxies`); never what a client claims.
    let (forwarded_for, proto) = ctx
        .client
        .forwarded
        .as_ref()
        .map_or((ctx.client.ip(), "http"), |f| {
            (f.forwarded_for.as_str(), f.proto)
        });
    if let Ok(value) = HeaderValue::from_str(forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    // Always "http" or "https": a static value, neither validated nor copied.
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = downstream.headers.get(header::HOST) {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    // Continue the trace upstream as a child of this attempt's CLIENT span.
    if let Some(attempt) = &ctx.upstream.span {
        // The client's request, which this one is a copy of, was scanned for trace headers
        // when its SERVER span was made: most carry none, and then there is nothing to remove.
        let clear = attempt.caller_sent_trace_headers();
        match attempt.w3c_headers() {
            // The common case (W3C propagation, no baggage): two header writes, no formatting.
            Some(w3c) => {
                if clear {
                    clear_trace_headers(headers);
                }
                headers.insert(TRACE_HEADERS[0].clone(), w3c.traceparent);
                if let Some(state) = w3c.tracestate {
                    headers.insert(TRACE_HEADERS[1].clone(), state);
                }
            }
            None => attempt.inject_into(&mut TraceHeaders {
                headers,
                cleared: !clear,
            }),
        }
    }
}

/// Writes an attempt's trace context straight into the upstream request's headers (no
/// intermediate map, no second copy of names and values). The first header written removes
/// every trace header the client sent, so none leaks upstream unchanged; when there is no
/// context to send nothing is removed and the client's headers pass through.
struct TraceHeaders<'a> {
    headers: &'a mut HeaderMap,
    cleared: bool,
}

/// Removes every trace header the client sent (one pass over the names; nothing to do for
/// most requests).
fn clear_trace_headers(headers: &mut HeaderMap) {
    if observability::propagation::has_any(headers, &TRACE_HEADERS) {
        for name in &TRACE_HEADERS {
            headers.remove(name);
        }
    }
}

impl Injector for TraceHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !self.cleared {
            clear_trace_headers(self.headers);
            self.cleared = true;
        }
        let name = match TRACE_HEADERS.iter().find(|n| n.as_str() == key) {
            Some(name) => name.clone(),
            None => match HeaderName::from_bytes(key.as_bytes()) {
                Ok(name) => name,
                Err(_) => return,
            },
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            self.headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_id::RequestId;

    fn client_request(target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target, None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn ctx() -> RequestCtx {
        let mut ctx = RequestCtx::new();
        ctx.request_id = RequestId::from_static("0123456789abcdef");
        ctx.client.forwarded = Some(crate::forwarded::ForwardedClient {
            ip: "192.0.2.7".parse().unwrap(),
            forwarded_for: "192.0.2.7".into(),
            proto: "http",
        });
        ctx
    }

    fn sent(upstream: &RequestHeader) -> Vec<(String, String)> {
        upstream
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn adds_the_gateways_headers_and_keeps_the_clients() {
        let client = client_request(
            b"/orders/42?x=1",
            &[
                ("Host", "shop.example"),
                ("X-Custom", "a"),
                ("x-custom", "b"),
                ("X-Forwarded-For", "203.0.113.9"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
        );
        let mut upstream = client.clone();
        prepare(&client, &mut upstream, &ctx()).unwrap();
        let headers = sent(&upstream);
        let get = |name: &str| -> Vec<&str> {
            headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("host"), ["shop.example"]);
        assert_eq!(
            get("x-custom"),
            ["a", "b"],
            "repeated values kept, in order"
        );
        assert_eq!(
            get("x-forwarded-for"),
            ["192.0.2.7"],
            "the client's claim replaced"
        );
        assert_eq!(get("x-forwarded-proto"), ["http"]);
        assert_eq!(get("x-forwarded-host"), ["shop.example"]);
        assert_eq!(get("x-request-id"), ["0123456789abcdef"]);
        // No CLIENT span in this context: the client's trace context passes through.
        assert_eq!(get("traceparent").len(), 1);
        assert_eq!(upstream.raw_path(), b"/orders/42?x=1");
        // What goes on the wire: every header once, in canonical case.
        let mut wire = Vec::new();
        upstream.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("Host: shop.example\r\n"), "{wire}");
        assert!(
            wire.contains("x-request-id: 0123456789abcdef\r\n"),
            "{wire}"
        );
        assert_eq!(wire.matches("\r\n").count(), headers.len(), "{wire}");
    }

    #[test]
    fn keeps_a_target_the_uri_does_not_reproduce() {
        let client = client_request(b"http://shop.example/a?b=c", &[("Host", "shop.example")]);
        let mut upstream = client.clone();
        prepare(&client, &mut upstream, &ctx()).unwrap();
        assert_eq!(upstream.raw_path(), b"http://shop.example/a?b=c");
        let client = client_request(b"*", &[("Host", "shop.example")]);
        let mut upstream = client.clone();
        prepare(&client, &mut upstream, &ctx()).unwrap();
        assert_eq!(upstream.raw_path(), b"*");
    }
}
