//! Message framing checks that guard against request smuggling (pingora#945).
//!
//! A request whose length two parsers could read differently is refused with 400 before
//! anything else looks at it: several `Content-Length` values, or `Content-Length` together
//! with `Transfer-Encoding`. Pingora's HTTP/1 parser drops `Content-Length` when
//! `Transfer-Encoding` is present (RFC 9112 §6.3 allows that), so the raw header block is
//! consulted to see whether the client sent both.

use http::{header, HeaderMap, HeaderValue};

/// Why a request's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// More than one `Content-Length`, or a list in one.
    SeveralContentLengths,
    /// `Content-Length` and `Transfer-Encoding` together.
    LengthAndTransferEncoding,
    /// A `Content-Length` that is not a decimal number.
    InvalidContentLength,
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FramingError::SeveralContentLengths => "several Content-Length values",
            FramingError::LengthAndTransferEncoding => "both Content-Length and Transfer-Encoding",
            FramingError::InvalidContentLength => "invalid Content-Length",
        })
    }
}

/// Which framing headers a request carries, found in one pass over its header names: most
/// requests carry neither, and a lookup of each hashes its name (the check and the proxy's
/// raw-head decision asked three times a request).
///
/// Taken before `request_head::check`, which removes only headers the gateway owns, never
/// these, so it stays true of the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Present {
    /// `Content-Length`, once or more.
    pub(crate) content_length: bool,
    /// `Transfer-Encoding`.
    pub(crate) transfer_encoding: bool,
}

impl Present {
    /// The framing headers among `headers`. A pass costs a few instructions a name (standard
    /// names compare as small integers); Pingora's HTTP/1 parser takes at most 256 fields.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut present = Present::default();
        for name in headers.keys() {
            if name == header::CONTENT_LENGTH {
                present.content_length = true;
            } else if name == header::TRANSFER_ENCODING {
                present.transfer_encoding = true;
            }
        }
        present
    }
}

/// Checks the framing of a request with `headers`, whose framing headers are `present`;
/// `raw_head` is the header block as the client sent it (HTTP/1 only), which still shows a
/// `Content-Length` the parser dropped. Returns the body length `Content-Length` declares.
pub(crate) fn check(
    headers: &HeaderMap,
    present: Present,
    raw_head: Option<&[u8]>,
) -> Result<Option<u64>, FramingError> {
    let first = if present.content_length {
        let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
        let first = lengths.next();
        if lengths.next().is_some() || first.is_some_and(|v| v.as_bytes().contains(&b',')) {
            return Err(FramingError::SeveralContentLengths);
        }
        first
    } else {
        None
    };
    if present.transfer_encoding {
        let raw_has_length = first.is_some()
            || raw_head.is_some_and(|raw| {
                raw.split(|b| *b == b'\n').any(|line| {
                    line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:")
                })
            });
        if raw_has_length {
            return Err(FramingError::LengthAndTransferEncoding);
        }
    }
    first
        .map(|v| parse_length(v).ok_or(FramingError::InvalidContentLength))
        .transpose()
}

/// A `Content-Length` value as a number, if it is a valid one.
fn parse_length(value: &HeaderValue) -> Option<u64> {
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Whether the request carries a body (chunked, or a non-zero `Content-Length`).
pub(crate) fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn check(h: &HeaderMap, raw: Option<&[u8]>) -> Result<Option<u64>, FramingError> {
        super::check(h, Present::of(h), raw)
    }

    #[test]
    fn one_valid_length_or_chunked_alone_is_fine() {
        assert_eq!(
            check(&headers(&[("content-length", " 12 ")]), None),
            Ok(Some(12))
        );
        assert_eq!(
            check(&headers(&[("transfer-encoding", "chunked")]), Some(b"")),
            Ok(None)
        );
        assert_eq!(check(&HeaderMap::new(), None), Ok(None));
    }

    #[test]
    fn framing_headers_are_found_among_many() {
        let mut h = headers(&[("host", "a"), ("Content-Length", "3")]);
        assert_eq!(
            Present::of(&h),
            Present {
                content_length: true,
                transfer_encoding: false
            }
        );
        for i in 0..40 {
            h.insert(
                http::HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(
            Present::of(&h),
            Present {
                content_length: true,
                transfer_encoding: true
            }
        );
        assert_eq!(Present::of(&headers(&[("host", "a")])), Present::default());
    }

    #[test]
    fn ambiguous_lengths_are_refused() {
        let two = headers(&[("content-length", "1"), ("content-length", "2")]);
        assert_eq!(check(&two, None), Err(FramingError::SeveralContentLengths));
        let list = headers(&[("content-length", "1, 1")]);
        assert_eq!(check(&list, None), Err(FramingError::SeveralContentLengths));
        let bad = headers(&[("content-length", "12a")]);
        assert_eq!(check(&bad, None), Err(FramingError::InvalidContentLength));
    }

    #[test]
    fn a_length_the_parser_dropped_is_found_in_the_raw_head() {
        let chunked = headers(&[("transfer-encoding", "chunked")]);
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            check(&chunked, Some(raw)),
            Err(FramingError::LengthAndTransferEncoding)
        );
    }
}
