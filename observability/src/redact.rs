//! Keeping secrets out of spans and logs.
//!
//! Never record a header map, a URL query or a connection string directly; pass it through these
//! helpers first. The gateway's auth decision attributes carry the *result* of checking a token,
//! never the token.

use std::collections::BTreeMap;

use http::header::HeaderMap;

/// What a secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Headers whose value is a credential or a session, whatever the request.
const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-amz-security-token",
    "x-csrf-token",
];

/// Name fragments that mark custom headers and query parameters as secret.
const SENSITIVE_FRAGMENTS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "api-key",
    "api_key",
    "apikey",
    "session",
    "credential",
    "signature",
];

/// True if a header or parameter called `name` may carry a secret. Case-insensitive.
pub fn is_sensitive(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SENSITIVE_HEADERS.contains(&name.as_str())
        || SENSITIVE_FRAGMENTS.iter().any(|f| name.contains(f))
}

/// The headers as lower-case name → value, with every sensitive value replaced by [`REDACTED`].
///
/// Repeated headers are joined with `, `; non-UTF-8 values become `[binary]`.
pub fn redact_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = if is_sensitive(name.as_str()) {
            REDACTED
        } else {
            value.to_str().unwrap_or("[binary]")
        };
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    out
}

/// `query` (without `?`) with the values of sensitive parameters replaced by [`REDACTED`].
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_sensitive(name) => format!("{name}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// What the user-info of a URL is replaced with: `amqp://***@host/vhost`.
pub const REDACTED_USER_INFO: &str = "***";

/// `url` with its whole user-info (user name and password) replaced by
/// [`REDACTED_USER_INFO`]: `amqp://app:s3cret@broker:5672/%2f` → `amqp://***@broker:5672/%2f`.
///
/// The one URL redactor: use it for every URL or connection string that reaches a log line, a
/// span attribute, a `Debug` impl or an error message (broker URLs, upstream URLs, `url.full`).
/// Only the authority is touched, so an `@` in the path or query stays; text that is not a URL
/// (no `://`) is returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => format!(
            "{}{REDACTED_USER_INFO}{}",
            &url[..scheme_end],
            &url[scheme_end + at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use http::header::HeaderValue;

    use super::*;

    #[test]
    fn credentials_and_sessions_are_redacted() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Authorization",
            HeaderValue::from_static("Bearer eyJhbGciOi.secret.sig"),
        );
        headers.insert("cookie", HeaderValue::from_static("session=abc"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.insert(
            "x-vantage-refresh-token",
            HeaderValue::from_static("rt-123"),
        );
        headers.insert("user-agent", HeaderValue::from_static("curl/8"));
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );

        let out = redact_headers(&headers);
        assert_eq!(out["authorization"], REDACTED);
        assert_eq!(out["cookie"], REDACTED);
        assert_eq!(out["set-cookie"], format!("{REDACTED}, {REDACTED}"));
        assert_eq!(out["x-vantage-refresh-token"], REDACTED);
        assert_eq!(out["user-agent"], "curl/8");
        assert!(out["traceparent"].starts_with("00-4bf9"));
        let joined = format!("{out:?}");
        for secret in ["eyJhbGciOi", "session=abc", "rt-123", "a=1"] {
            assert!(!joined.contains(secret), "{secret} leaked: {joined}");
        }
    }

    #[test]
    fn query_secrets_are_redacted() {
        assert_eq!(
            redact_query("page=2&access_token=abc&q=x"),
            format!("page=2&access_token={REDACTED}&q=x")
        );
        assert_eq!(
            redact_query("Password=hunter2"),
            format!("Password={REDACTED}")
        );
        assert_eq!(redact_query("flag"), "flag");
    }

    #[test]
    fn url_passwords_are_redacted() {
        // The user name goes too: it is half of the credential.
        assert_eq!(
            redact_url("amqp://guest:guest@localhost:5672/%2f"),
            "amqp://***@localhost:5672/%2f"
        );
        assert_eq!(
            redact_url("amqp://app:s3cret@broker:5672/%2f"),
            "amqp://***@broker:5672/%2f"
        );
        assert_eq!(redact_url("amqp://localhost"), "amqp://localhost");
        assert_eq!(redact_url("http://localhost:4317"), "http://localhost:4317");
        assert_eq!(
            redact_url("http://host/users/a@b?x=1"),
            "http://host/users/a@b?x=1"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
