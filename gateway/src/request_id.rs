//! `X-Request-Id`: a well-formed id from the client is kept (so callers can correlate their
//! own logs with ours); anything else is replaced by a random UUID.

use http::HeaderMap;

/// `X-Request-Id`, by a ready name (looked up in the client's request, written to the upstream's
/// and to the response): a `&str` name would be parsed on every use.
pub(crate) const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The id for a request arriving with `headers`.
pub(crate) fn of(headers: &HeaderMap) -> String {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_valid(v))
        .map_or_else(generate, str::to_string)
}

/// A random (v4) UUID from the thread-local generator: no `getrandom` syscall per request.
pub(crate) fn generate() -> String {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    // Hex-encoded into a buffer: `to_string` would go through the formatting machinery.
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text).to_owned()
}

/// At most 128 characters of letters, digits and `-_.:`: safe in logs, headers and spans.
fn is_valid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_id_is_kept_and_anything_else_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc-123:x.y_z".parse().unwrap());
        assert_eq!(of(&h), "abc-123:x.y_z");
        h.insert("x-request-id", "has space".parse().unwrap());
        let replaced = of(&h);
        assert_eq!(replaced.len(), 36, "{replaced}");
        assert!(uuid::Uuid::parse_str(&replaced).is_ok());
        assert!(!is_valid(&"x".repeat(129)));
    }
}
