//! The one `application/problem+json` (RFC 9457) scheme of Vantage, shared by the gateway and
//! every shop service, so a client sees one family of `type` URIs whoever answered.
//!
//! A problem's `type` is [`PROBLEM_BASE`] + a stable slug (`no-route`, `unauthorized`,
//! `not-found`, …): clients may branch on it. `title` is the status's reason phrase, `detail`
//! says what happened in words safe to show (never an address, a stack trace, a token or a
//! query), `request_id` is the gateway's `x-request-id` when the answer has one.
//!
//! # How to use
//!
//! ```
//! use observability::problem::{self, Problem};
//!
//! let body = Problem::new("not-found", 404, "order not found").to_json();
//! let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(json["type"], "https://vantage.dev/problems/not-found");
//! assert_eq!(json["title"], "Not Found");
//! assert_eq!(problem::type_uri("no-route"), "https://vantage.dev/problems/no-route");
//! ```
//!
//! The HTTP response around it (status line, `content-type: `[`CONTENT_TYPE`], any
//! `WWW-Authenticate`) is the caller's: the gateway renders it for Pingora, `service-kit`'s
//! `AppError` for axum.

use serde::{Deserialize, Serialize};

/// Base of every problem `type`: the slug is appended.
pub const PROBLEM_BASE: &str = "https://vantage.dev/problems/";

/// The media type of a problem body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// `slug` → `https://vantage.dev/problems/<slug>`.
pub fn type_uri(slug: &str) -> String {
    format!("{PROBLEM_BASE}{slug}")
}

/// A problem body. Serialises to `{"type", "title", "status", "detail"}`, plus `request_id` when
/// set and any [`extensions`](Self::extensions) as top-level members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// [`PROBLEM_BASE`] + slug.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short, human-readable summary of the kind of problem; by default the status's reason
    /// phrase (`Not Found`).
    pub title: String,
    /// The HTTP status code, repeated in the body.
    pub status: u16,
    /// What happened to this request, safe to show to the client.
    pub detail: String,
    /// The request's id (`x-request-id`), when the answer has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Extension members (RFC 9457 §3.2), e.g. `failing` on a 503 from `/readyz`.
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem of kind `slug` for `status`, titled with the status's reason phrase.
    pub fn new(slug: &str, status: u16, detail: impl Into<String>) -> Self {
        let title = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        Self {
            type_uri: type_uri(slug),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            request_id: None,
            extensions: serde_json::Map::new(),
        }
    }

    /// The same problem with another `title` (the gateway's `Content Too Large` for 413).
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// The same problem carrying the request's id.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// The same problem with one more extension member.
    pub fn with_extension(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    /// The slug: the last segment of `type` (`not-found`); empty for a foreign `type`.
    pub fn slug(&self) -> &str {
        self.type_uri.strip_prefix(PROBLEM_BASE).unwrap_or("")
    }

    /// The body as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and JSON values always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_the_rfc_9457_members_and_extensions() {
        let p = Problem::new("not-ready", 503, "not ready: database")
            .with_request_id("r-1")
            .with_extension("failing", serde_json::json!(["database"]));
        let json: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "https://vantage.dev/problems/not-ready",
                "title": "Service Unavailable",
                "status": 503,
                "detail": "not ready: database",
                "request_id": "r-1",
                "failing": ["database"],
            })
        );
        assert_eq!(p.slug(), "not-ready");
        let back: Problem = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn no_request_id_means_no_member_and_titles_can_be_set() {
        let p = Problem::new("payload-too-large", 413, "too big").with_title("Content Too Large");
        let json: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(json["title"], "Content Too Large");
        assert!(json.get("request_id").is_none(), "{json}");
    }
}
