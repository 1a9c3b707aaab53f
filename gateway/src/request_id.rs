//! `X-Request-Id`: a well-formed id from the client is kept (so callers can correlate their
//! own logs with ours); anything else is replaced by a random UUID.
//!
//! The id is held as the [`HeaderValue`] it is sent as, made once per request: the upstream
//! request and the response get it by reference count (no copy, no second validation), and the
//! access line and the SERVER span read it as text.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use observability::hex::encode_lower;

/// `X-Request-Id`, by a ready name (looked up in the client's request, written to the upstream's
/// and to the response): a `&str` name would be parsed on every use.
pub(crate) const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A request's id: letters, digits and `-_.:` only, at most 128 of them (safe in logs, headers
/// and spans). Empty (the default) until the request's headers have been read.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(HeaderValue);

impl RequestId {
    /// The id for a request arriving with `headers`: the client's when well-formed (sharing
    /// its bytes with the request Pingora parsed), else a new one.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        headers
            .get(&X_REQUEST_ID)
            .filter(|v| is_valid(v.as_bytes()))
            .map_or_else(Self::generate, |v| RequestId(v.clone()))
    }

    /// A random (v4) UUID from the thread-local generator: no `getrandom` syscall per request.
    pub(crate) fn generate() -> Self {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        // The text becomes the header value's storage: one allocation, shared by every clone.
        let value = HeaderValue::from_maybe_shared(Bytes::from_owner(hyphenated(id.as_u128())))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        RequestId(value)
    }

    /// A fixed id, for requests that are not a client's (`explain`) and for tests.
    pub(crate) const fn from_static(id: &'static str) -> Self {
        RequestId(HeaderValue::from_static(id))
    }

    /// The id as text.
    pub(crate) fn as_str(&self) -> &str {
        // Always ASCII (see `is_valid`), so this never falls back.
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }

    /// The id as a header value, sharing its bytes.
    pub(crate) fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }

    /// Whether no id has been given yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::from_static("")
    }
}

/// `id` as a UUID's hyphenated lower-case text (`8-4-4-4-12` hex digits), as `uuid`'s
/// `encode_lower` writes it, with the table encoder trace ids use: generating an id took 801
/// instructions with uuid's digit loop inlined here, 657 with this (callgrind, wave 12).
fn hyphenated(id: u128) -> [u8; 36] {
    let mut digits = [0u8; 32];
    encode_lower(&id.to_be_bytes(), &mut digits);
    let mut text = [b'-'; 36];
    text[..8].copy_from_slice(&digits[..8]);
    text[9..13].copy_from_slice(&digits[8..12]);
    text[14..18].copy_from_slice(&digits[12..16]);
    text[19..23].copy_from_slice(&digits[16..20]);
    text[24..].copy_from_slice(&digits[20..]);
    text
}

/// At most 128 characters of letters, digits and `-_.:`.
fn is_valid(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_id_is_kept_and_anything_else_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc-123:x.y_z".parse().unwrap());
        let kept = RequestId::of(&h);
        assert_eq!(kept.as_str(), "abc-123:x.y_z");
        assert_eq!(kept.header_value(), "abc-123:x.y_z");
        for bad in ["has space", "naïve", "", &"x".repeat(129)] {
            h.insert(
                "x-request-id",
                HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            );
            let replaced = RequestId::of(&h);
            assert_eq!(replaced.as_str().len(), 36, "{bad:?} -> {replaced:?}");
            assert!(uuid::Uuid::parse_str(replaced.as_str()).is_ok());
            assert_eq!(replaced.header_value(), replaced.as_str());
        }
        assert!(RequestId::of(&HeaderMap::new()).as_str().len() == 36);
        assert!(RequestId::default().is_empty());
    }

    #[test]
    fn ids_are_written_as_uuid_writes_them() {
        let edges = [0, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210];
        for id in edges
            .into_iter()
            .chain((0..1000).map(|_| rand::random::<u128>()))
        {
            let expected = uuid::Uuid::from_u128(id).hyphenated().to_string();
            assert_eq!(std::str::from_utf8(&hyphenated(id)).unwrap(), expected);
        }
        let generated = RequestId::generate();
        let parsed = uuid::Uuid::parse_str(generated.as_str()).unwrap();
        assert_eq!(parsed.get_version(), Some(uuid::Version::Random));
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn generated_ids_differ_and_clones_share_them() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a.as_str(), b.as_str());
        let copy = a.clone();
        assert_eq!(copy.as_str(), a.as_str());
        assert_eq!(a.header_value().as_bytes().as_ptr(), a.as_str().as_ptr());
    }
}
