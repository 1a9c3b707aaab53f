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
    let id = (!ctx.request_id.is_empty()).then(|| ctx.request_id.header_value());
    let hsts = ctx
        .runtime
        .as_ref()
        .and_then(|r| r.hsts.as_ref())
        .filter(|_| ctx.client.tls);
    // From the owned strings: no second copy of the text.
    let limits = header_values(&ctx.limits).and_then(|(policy, limit)| {
        Some((
            HeaderValue::try_from(policy).ok()?,
            HeaderValue::try_from(limit).ok()?,
        ))
    });
    // Room for exactly what goes in: the map Pingora parsed the upstream's headers into is sized
    // for them with some slack, which one or two more headers usually fit in without a rehash.
    headers.reserve(
        usize::from(id.is_some()) + usize::from(hsts.is_some()) + 2 * usize::from(limits.is_some()),
    );
    if let Some(id) = id {
        headers.insert(X_REQUEST_ID, id);
    }
    if let Some(hsts) = hsts {
        headers.insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    if let Some((policy, limit)) = limits {
        headers.insert(RATELIMIT_POLICY, policy);
        headers.insert(RATELIMIT, limit);
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
