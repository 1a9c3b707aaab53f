//! Checks and clean-up of the request head before anything reads it: size and count limits
//! (431, 414), and removal of headers only the gateway may set.
//!
//! Identity headers (`x-user-id`, `x-user-scopes`, every `identity_headers` entry) are removed
//! in every spelling a common server maps to the same name: any case (HTTP names are
//! case-insensitive) and with `_` for `-` (CGI, WSGI, PHP and nginx's `underscores_in_headers`
//! turn `x_user_id` into the same variable as `x-user-id`). Client-supplied `X-Original-URL`,
//! `X-Rewrite-URL` (path overrides some frameworks honour), `Forwarded`, `X-Real-IP` and
//! `True-Client-IP` (client-address claims) are removed too: the upstream learns the client
//! from `X-Forwarded-For`, which the gateway writes itself.

use http::HeaderName;
use pingora_http::RequestHeader;

use crate::config::HeadLimits;
use crate::problem::GatewayError;

/// Headers a client may never send to an upstream, apart from the identity headers.
const UNTRUSTED: [&str; 5] = [
    "x-original-url",
    "x-rewrite-url",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
];

/// Enforces `limits` on `req` and removes every client copy of `identity` headers (in any
/// spelling) and of the [`UNTRUSTED`] ones. One pass over the headers; allocates only when
/// there is something to remove.
pub(crate) fn check(
    req: &mut RequestHeader,
    limits: &HeadLimits,
    identity: &[HeaderName],
) -> Result<(), GatewayError> {
    let target = req.raw_path().len();
    if target > limits.max_uri_bytes {
        return Err(GatewayError::UriTooLong {
            limit: limits.max_uri_bytes,
        });
    }
    if req.headers.len() > limits.max_headers {
        return Err(GatewayError::HeadersTooLarge("too many header fields"));
    }
    let mut total = target;
    let mut remove: Vec<HeaderName> = Vec::new();
    for (name, value) in &req.headers {
        let size = name.as_str().len() + value.len();
        if size > limits.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge("a header field is too large"));
        }
        // Name, ": ", value, CRLF: the field as HTTP/1.1 puts it on the wire.
        total += size + 4;
        if owned_by_gateway(name.as_str(), identity) && !remove.contains(name) {
            remove.push(name.clone());
        }
    }
    if total > limits.max_request_header_bytes {
        return Err(GatewayError::HeadersTooLarge(
            "the header section is too large",
        ));
    }
    for name in &remove {
        req.remove_header(name);
    }
    Ok(())
}

/// Whether a client-sent header `name` (lower-case) must not reach the upstream.
fn owned_by_gateway(name: &str, identity: &[HeaderName]) -> bool {
    if UNTRUSTED.contains(&name) {
        return true;
    }
    identity.iter().any(|h| same_name(h.as_str(), name))
}

/// Equal as header names once `_` is read as `-`.
fn same_name(canonical: &str, name: &str) -> bool {
    canonical.len() == name.len()
        && canonical
            .bytes()
            .zip(name.bytes())
            .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits {
            max_uri_bytes: 64,
            max_header_bytes: 64,
            max_request_header_bytes: 256,
            max_headers: 8,
        }
    }

    fn identity() -> Vec<HeaderName> {
        vec![
            HeaderName::from_static("x-user-id"),
            HeaderName::from_static("x-user-scopes"),
            HeaderName::from_static("x-tenant"),
        ]
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn identity_headers_go_in_every_spelling() {
        let mut req = request(&[
            ("X-User-Id", "admin"),
            ("x_user_id", "admin"),
            ("X_USER_SCOPES", "admin"),
            ("x-tenant", "t"),
            ("x_tenant", "t"),
            ("x-user-idx", "kept"),
            ("accept", "*/*"),
        ]);
        check(&mut req, &limits(), &identity()).unwrap();
        let mut left: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-user-idx"]);
    }

    #[test]
    fn client_claims_about_paths_and_addresses_go() {
        let mut req = request(&[
            ("x-original-url", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("true-client-ip", "1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        check(&mut req, &limits(), &identity()).unwrap();
        let left: Vec<&str> = req.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            left,
            ["x-forwarded-for"],
            "x-forwarded-for is rewritten later"
        );
    }

    #[test]
    fn limits_give_431_and_414() {
        let long = "v".repeat(70);
        let mut req = request(&[("a", &long)]);
        assert!(matches!(
            check(&mut req, &limits(), &[]),
            Err(GatewayError::HeadersTooLarge(_))
        ));
        let many: Vec<(String, &str)> = (0..9).map(|i| (format!("h{i}"), "v")).collect();
        let pairs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert!(matches!(
            check(&mut request(&pairs), &limits(), &[]),
            Err(GatewayError::HeadersTooLarge(_))
        ));
        let fields: Vec<(String, String)> =
            (0..6).map(|i| (format!("h{i}"), "v".repeat(40))).collect();
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert!(matches!(
            check(&mut request(&pairs), &limits(), &[]),
            Err(GatewayError::HeadersTooLarge(_))
        ));
        let mut req =
            RequestHeader::build("GET", format!("/{}", "a".repeat(64)).as_bytes(), None).unwrap();
        assert!(matches!(
            check(&mut req, &limits(), &[]),
            Err(GatewayError::UriTooLong { limit: 64 })
        ));
    }
}
