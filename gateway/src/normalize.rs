//! Request-path normalisation: one canonical spelling of every path, computed once before
//! routing. The route is chosen on it and the upstream receives exactly it, so no spelling of a
//! path can be matched as one thing and understood by the upstream as another.
//!
//! The rules (docs/security.md lists them with their RFCs):
//! - percent-encoded unreserved characters (`A–Z a–z 0–9 - . _ ~`, RFC 3986 §2.3) are decoded;
//!   every other percent-encoding is kept, with upper-case hex (§6.2.2.1);
//! - dot segments are resolved (§5.2.4; `..` never climbs above the root), also when spelled
//!   `%2e`; repeated slashes are merged; a trailing slash is kept;
//! - refused, because no single reading is safe: an encoded slash `%2F` (unless the route sets
//!   `allow_encoded_slashes`), an encoded backslash `%5C` or semicolon `%3B`, a raw backslash, NUL
//!   and other control characters (raw or encoded), an encoding that survives one decoding as a
//!   dot, slash, backslash, semicolon or percent (`%252e`), a malformed `%` escape, and bytes that do not decode to UTF-8
//!   (`%C0%AE`, an overlong `.`).
//!
//! Matrix parameters (`;x=1`) stay part of their segment: `/a;x/b` is forwarded as is. Because
//! servers such as Tomcat drop them before routing, [`without_params`] gives the path such a
//! server would see; the router refuses a path whose two readings choose different routes.
//!
//! An already-canonical path (the common case) is returned borrowed, without allocating.

use std::borrow::Cow;

/// Why a path cannot be normalised safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// `%2F`: an encoded `/`, which upstreams disagree about.
    EncodedSlash,
    /// `%5C`: an encoded `\`.
    EncodedBackslash,
    /// `%3B`: an encoded `;`, which a server that decodes before dropping `;params` reads as a
    /// parameter delimiter.
    EncodedSemicolon,
    /// A raw `\`, which some servers read as `/`.
    Backslash,
    /// NUL or another control character, raw or encoded.
    ControlCharacter,
    /// An encoding that decodes to another encoding of a dot, slash, backslash or percent.
    DoubleEncoded,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    InvalidUtf8,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path must start with /",
            PathError::EncodedSlash => "the path contains an encoded slash (%2F)",
            PathError::EncodedBackslash => "the path contains an encoded backslash (%5C)",
            PathError::EncodedSemicolon => "the path contains an encoded semicolon (%3B)",
            PathError::Backslash => "the path contains a backslash",
            PathError::ControlCharacter => "the path contains a control character",
            PathError::DoubleEncoded => "the path contains a double-encoded character",
            PathError::BadEscape => "the path contains a malformed percent-escape",
            PathError::InvalidUtf8 => "the path does not decode to UTF-8",
        })
    }
}

/// A normalised path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NormalPath<'a> {
    /// The canonical path: what routes match and what the upstream receives.
    pub(crate) path: Cow<'a, str>,
    /// Whether it kept an encoded slash (only routes with `allow_encoded_slashes` accept it).
    pub(crate) encoded_slash: bool,
}

/// Normalises `raw`, the path of a request target (without its query).
pub(crate) fn normalize(raw: &str) -> Result<NormalPath<'_>, PathError> {
    if raw == "*" {
        // The asterisk-form of `OPTIONS *`: no path, nothing to normalise.
        return Ok(NormalPath {
            path: Cow::Borrowed(raw),
            encoded_slash: false,
        });
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(raw.as_bytes()) {
        return Ok(NormalPath {
            path: Cow::Borrowed(raw),
            encoded_slash: false,
        });
    }
    let mut decoded_bytes = Vec::with_capacity(raw.len());
    let mut out = String::with_capacity(raw.len());
    let mut encoded_slash = false;
    let mut segment = String::new();
    let mut segments = raw[1..].split('/').peekable();
    while let Some(raw_segment) = segments.next() {
        segment.clear();
        decode_segment(
            raw_segment.as_bytes(),
            &mut segment,
            &mut decoded_bytes,
            &mut encoded_slash,
        )?;
        let last = segments.peek().is_none();
        push_segment(&mut out, &segment, last);
    }
    if out.is_empty() {
        out.push('/');
    }
    if std::str::from_utf8(&decoded_bytes).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    Ok(NormalPath {
        path: Cow::Owned(out),
        encoded_slash,
    })
}

/// The path a server that drops matrix parameters would see: `;…` removed from every segment,
/// then dot segments resolved again (`/a/..;/b` is `/b` to such a server). `None` when `path`
/// has no `;`.
pub(crate) fn without_params(path: &str) -> Option<String> {
    if !path.contains(';') || !path.starts_with('/') {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let name = segment.split(';').next().unwrap_or("");
        let last = segments.peek().is_none();
        push_segment(&mut out, name, last);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Appends one decoded segment to `out` (which holds `/seg` pieces), resolving dot segments
/// and dropping empty ones; the last segment decides whether a trailing slash is kept.
fn push_segment(out: &mut String, segment: &str, last: bool) {
    match segment {
        "." | ".." => {
            if segment == ".." {
                let cut = out.rfind('/').unwrap_or(0);
                out.truncate(cut);
            }
            if last {
                out.push('/');
            }
        }
        "" => {
            if last && !out.ends_with('/') {
                out.push('/');
            }
        }
        s => {
            out.push('/');
            out.push_str(s);
        }
    }
}

/// Whether `raw` (starting with `/`) is already canonical: nothing to decode, resolve or merge,
/// and nothing to refuse.
fn is_canonical(raw: &[u8]) -> bool {
    let mut prev = b'/';
    for (i, &b) in raw.iter().enumerate().skip(1) {
        match b {
            b'%' | b'\\' | 0..=0x1f | 0x7f => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => {
                // `/.` or `/..` followed by `/` or the end is a dot segment.
                let rest = &raw[i..];
                let dots = if rest.starts_with(b"..") { 2 } else { 1 };
                if rest.len() == dots || rest[dots] == b'/' {
                    return false;
                }
            }
            _ => {}
        }
        prev = b;
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes one raw segment into `out` (unreserved characters decoded, other escapes kept with
/// upper-case hex) and appends its fully decoded bytes to `decoded` for the UTF-8 check.
fn decode_segment(
    raw: &[u8],
    out: &mut String,
    decoded: &mut Vec<u8>,
    encoded_slash: &mut bool,
) -> Result<(), PathError> {
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    raw.get(i + 1).copied().and_then(hex),
                    raw.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let value = hi << 4 | lo;
                match value {
                    b'/' => *encoded_slash = true,
                    b'\\' => return Err(PathError::EncodedBackslash),
                    b';' => return Err(PathError::EncodedSemicolon),
                    0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                    b'%' => {
                        // `%25` followed by an escape of `.`, `/`, `\` or `%` decodes to a
                        // second escape that another decoding would turn into a separator.
                        let next = (
                            raw.get(i + 3).copied().and_then(hex),
                            raw.get(i + 4).copied().and_then(hex),
                        );
                        if let (Some(h), Some(l)) = next {
                            if matches!(h << 4 | l, b'.' | b'/' | b'\\' | b'%' | b';') {
                                return Err(PathError::DoubleEncoded);
                            }
                        }
                    }
                    _ => {}
                }
                decoded.push(value);
                if is_unreserved(value) {
                    out.push(value as char);
                } else {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    out.push('%');
                    out.push(HEX[usize::from(value >> 4)] as char);
                    out.push(HEX[usize::from(value & 0xf)] as char);
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            _ => {
                // Raw bytes come from a `&str`, so multi-byte characters arrive whole.
                let len = utf8_len(b);
                let chunk = &raw[i..(i + len).min(raw.len())];
                decoded.extend_from_slice(chunk);
                out.push_str(std::str::from_utf8(chunk).map_err(|_| PathError::InvalidUtf8)?);
                i += len;
            }
        }
    }
    Ok(())
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, PathError> {
        normalize(raw).map(|n| n.path.into_owned())
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in [
            "/",
            "/api/audit",
            "/api/products/1/stock",
            "/a/b/",
            "/a.b/.c/..d",
            "/x;y=1",
        ] {
            let n = normalize(p).unwrap();
            assert!(matches!(n.path, Cow::Borrowed(_)), "{p}");
            assert_eq!(n.path, p);
        }
    }

    #[test]
    fn dot_segments_and_slashes_resolve() {
        assert_eq!(norm("/api/products/../audit").unwrap(), "/api/audit");
        assert_eq!(norm("/api/./audit").unwrap(), "/api/audit");
        assert_eq!(norm("//api///audit").unwrap(), "/api/audit");
        assert_eq!(norm("/api/audit/").unwrap(), "/api/audit/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/../../etc").unwrap(), "/etc");
        assert_eq!(norm("/..").unwrap(), "/");
        assert_eq!(norm("/api//").unwrap(), "/api/");
    }

    #[test]
    fn unreserved_escapes_decode_and_others_are_kept_upper_case() {
        assert_eq!(norm("/api/%61udit").unwrap(), "/api/audit");
        assert_eq!(norm("/api/products/%2e%2e/audit").unwrap(), "/api/audit");
        assert_eq!(norm("/api/%2E%2e/x").unwrap(), "/x");
        assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
        assert_eq!(norm("/a%3fb%2Cc").unwrap(), "/a%3Fb%2Cc");
        assert_eq!(norm("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/café").unwrap(), "/café");
    }

    #[test]
    fn unsafe_spellings_are_refused() {
        assert_eq!(norm("/api%5caudit"), Err(PathError::EncodedBackslash));
        assert_eq!(norm("/api/%3b/audit"), Err(PathError::EncodedSemicolon));
        assert_eq!(norm("/api/%253b/audit"), Err(PathError::DoubleEncoded));
        assert_eq!(norm("/api\\audit"), Err(PathError::Backslash));
        assert_eq!(norm("/api/%00"), Err(PathError::ControlCharacter));
        assert_eq!(norm("/api/a\tb"), Err(PathError::ControlCharacter));
        assert_eq!(norm("/api/%252e%252e/audit"), Err(PathError::DoubleEncoded));
        assert_eq!(norm("/api/%252Faudit"), Err(PathError::DoubleEncoded));
        assert_eq!(norm("/api/%2"), Err(PathError::BadEscape));
        assert_eq!(norm("/api/%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/api/%C0%AE%C0%AE/x"), Err(PathError::InvalidUtf8));
        assert_eq!(norm("/api/%FF"), Err(PathError::InvalidUtf8));
        assert_eq!(norm("api"), Err(PathError::NotAbsolute));
        // A literal `%25` that does not hide a separator is fine.
        assert_eq!(norm("/100%25").unwrap(), "/100%25");
    }

    #[test]
    fn encoded_slashes_are_kept_and_flagged() {
        let n = normalize("/files/a%2fb").unwrap();
        assert_eq!(n.path, "/files/a%2Fb");
        assert!(n.encoded_slash);
        assert!(!normalize("/files/a/b").unwrap().encoded_slash);
    }

    #[test]
    fn matrix_parameters_stay_in_their_segment() {
        assert_eq!(norm("/api/audit;x=1/y").unwrap(), "/api/audit;x=1/y");
        assert_eq!(
            without_params("/api/public/..;/audit").as_deref(),
            Some("/api/audit")
        );
        assert_eq!(
            without_params("/api/audit;jsessionid=1").as_deref(),
            Some("/api/audit")
        );
        assert_eq!(without_params("/api/audit"), None);
    }
}
