//! What the client receives on top of the upstream's response: `X-Request-Id`,
//! `Strict-Transport-Security` over TLS (when the policy sets it), and the `RateLimit-Policy` /
//! `RateLimit` fields of the rate limits consulted.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use pingora_http::ResponseHeader;

use crate::context::RequestCtx;
use crate::ratelimit::header_values;
use crate::request_id::X_REQUEST_ID;

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The most headers [`add`] writes, made room for at once.
const ADDED_HEADERS: usize = 4;

/// Adds the gateway's headers to `response`.
///
/// As for the upstream request ([`crate::upstream_request::prepare`]), the response is taken
/// apart once instead of going through Pingora's `insert_header`, which parses each name and
/// keeps a second map of the upstream's header-name case: the headers go into the one `http`
/// map under ready names, with room made first. Names reach the client in canonical case;
/// status, reason phrase, values and order are kept.
pub(crate) fn add(response: &mut ResponseHeader, ctx: &RequestCtx) {
    // Only a reason phrase of the upstream's own needs keeping (the canonical one is the
    // default); copying "OK" for every response would be an allocation per request.
    let reason = response
        .get_reason_phrase()
        .filter(|r| Some(*r) != response.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(response, placeholder));
    write(&mut parts.headers, ctx);
    *response = ResponseHeader::from(parts);
    if let Some(reason) = reason {
        let _ = response.set_reason_phrase(Some(&reason));
    }
}

fn write(headers: &mut HeaderMap, ctx: &RequestCtx) {
    headers.reserve(ADDED_HEADERS);
    if !ctx.request_id.is_empty() {
        headers.insert(X_REQUEST_ID, ctx.request_id.header_value());
    }
    if ctx.client.tls {
        if let Some(hsts) = ctx.runtime.as_ref().and_then(|r| r.hsts.as_ref()) {
            headers.insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }
    if let Some((policy, limit)) = header_values(&ctx.limits) {
        // From the owned strings: no second copy of the text.
        if let (Ok(policy), Ok(limit)) =
            (HeaderValue::try_from(policy), HeaderValue::try_from(limit))
        {
            headers.insert(RATELIMIT_POLICY, policy);
            headers.insert(RATELIMIT, limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_id::RequestId;

    #[test]
    fn adds_the_request_id_and_keeps_status_reason_and_headers() {
        let mut response = ResponseHeader::build(418, None).unwrap();
        response.set_reason_phrase(Some("Short And Stout")).unwrap();
        response.append_header("Set-Cookie", "a=1").unwrap();
        response.append_header("Set-Cookie", "b=2").unwrap();
        response
            .append_header("X-Request-Id", "from-upstream")
            .unwrap();
        let mut ctx = RequestCtx::new();
        ctx.request_id = RequestId::from_static("0123456789abcdef");
        add(&mut response, &ctx);
        assert_eq!(response.status.as_u16(), 418);
        assert_eq!(response.get_reason_phrase(), Some("Short And Stout"));
        let cookies: Vec<_> = response.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        let ids: Vec<_> = response.headers.get_all("x-request-id").iter().collect();
        assert_eq!(
            ids,
            ["0123456789abcdef"],
            "the gateway's id replaces the upstream's"
        );
        assert!(response.headers.get("ratelimit").is_none());
    }
}
