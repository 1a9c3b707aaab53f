//! Message framing checks that guard against request smuggling (pingora#945).
//!
//! A request whose length two parsers could read differently is refused with 400 before
//! anything else looks at it: several `Content-Length` values, or `Content-Length` together
//! with `Transfer-Encoding`. Pingora's HTTP/1 parser drops `Content-Length` when
//! `Transfer-Encoding` is present (RFC 9112 §6.3 allows that), so the raw header block is
//! consulted to see whether the client sent both.

use http::{header, HeaderMap};

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

/// Checks the framing of a request with `headers`; `raw_head` is the header block as the
/// client sent it (HTTP/1 only), which still shows a `Content-Length` the parser dropped.
pub(crate) fn check(headers: &HeaderMap, raw_head: Option<&[u8]>) -> Result<(), FramingError> {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = lengths.next();
    if lengths.next().is_some() || first.is_some_and(|v| v.as_bytes().contains(&b',')) {
        return Err(FramingError::SeveralContentLengths);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
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
    if first.is_some() && declared_length(headers).is_none() {
        return Err(FramingError::InvalidContentLength);
    }
    Ok(())
}

/// The body length the request declares in `Content-Length`, if it declares a valid one.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
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

    #[test]
    fn one_valid_length_or_chunked_alone_is_fine() {
        assert_eq!(check(&headers(&[("content-length", "12")]), None), Ok(()));
        assert_eq!(
            check(&headers(&[("transfer-encoding", "chunked")]), Some(b"")),
            Ok(())
        );
        assert_eq!(check(&HeaderMap::new(), None), Ok(()));
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
