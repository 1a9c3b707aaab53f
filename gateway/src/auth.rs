//! Authentication: bearer tokens verified against configured issuers.
//!
//! [`check`] decides one request against its route's [`AuthPolicy`] and returns an
//! [`AuthDecision`]; the proxy records it in the request context, so logs, spans and metrics say
//! why a request was let in or turned away. [`jwt::Authenticator`] is built from the issuers in
//! the config; [`keys`] holds and refreshes their verification keys.

pub(crate) mod jwt;
pub(crate) mod keys;

use std::sync::Arc;

use http::{header, HeaderMap};

use crate::config::AuthPolicy;
use crate::problem::GatewayError;
use jwt::{bearer_token, has_scopes, Authenticator, Identity};

/// Decides whether a request with `headers` may use a route with `policy`. Async only because
/// a token naming an unknown `kid` may trigger a (single-flight) refresh of its issuer's keys.
pub(crate) async fn check(
    policy: &AuthPolicy,
    headers: &HeaderMap,
    authenticator: &Authenticator,
) -> AuthDecision {
    let AuthPolicy::Required {
        scopes, issuers, ..
    } = policy
    else {
        return AuthDecision::Skipped;
    };
    // Two values are enough to know the header is repeated (which is refused).
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let token = match (values.next(), values.next()) {
        (None, _) => bearer_token(&[]),
        (Some(one), None) => bearer_token(&[one.as_bytes()]),
        (Some(a), Some(b)) => bearer_token(&[a.as_bytes(), b.as_bytes()]),
    };
    let token = match token {
        Ok(Some(t)) => t,
        Ok(None) => return AuthDecision::denied(Reject::Missing, None),
        Err(reject) => return AuthDecision::denied(reject, None),
    };
    match authenticator.verify(token, issuers).await {
        Err((reject, issuer)) => AuthDecision::denied(reject, issuer),
        Ok(identity) if !has_scopes(&identity.scopes, scopes) => AuthDecision::Forbidden(identity),
        Ok(identity) => AuthDecision::Allowed(identity),
    }
}

/// Tells the upstream who the caller is: `x-user-id` (the token's `sub`) and `x-user-scopes`
/// (its scopes, space-separated). Whatever the client sent under these names was stripped first.
pub(crate) fn forward_identity(headers: &mut http::HeaderMap, identity: &Identity) {
    const NAMES: [http::HeaderName; 2] = [
        http::HeaderName::from_static("x-user-id"),
        http::HeaderName::from_static("x-user-scopes"),
    ];
    for (name, value) in NAMES.into_iter().zip(&identity.upstream_headers) {
        if let Some(value) = value {
            headers.insert(name, value.clone());
        }
    }
}

/// What auth decided for one request.
#[derive(Debug, Clone, Default)]
pub(crate) enum AuthDecision {
    /// The route needs no token (or no route matched).
    #[default]
    Skipped,
    /// A valid token with every scope the route requires.
    Allowed(Arc<Identity>),
    /// No valid token (401).
    Denied {
        /// Why.
        reject: Reject,
        /// The issuer's config name, when the token named a known one.
        issuer: Option<String>,
    },
    /// A valid token that lacks a scope the route requires (403).
    Forbidden(Arc<Identity>),
}

/// The outcome class: the `result` label of `gateway_auth_decisions_total` and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AuthResult {
    /// `auth: none`.
    Skipped,
    /// Let in.
    Allowed,
    /// 401.
    Denied,
    /// 403.
    Forbidden,
}

impl AuthResult {
    /// Stable label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AuthResult::Skipped => "skipped",
            AuthResult::Allowed => "allowed",
            AuthResult::Denied => "denied",
            AuthResult::Forbidden => "forbidden",
        }
    }
}

impl AuthDecision {
    fn denied(reject: Reject, issuer: Option<String>) -> Self {
        AuthDecision::Denied { reject, issuer }
    }

    /// The outcome class.
    pub(crate) fn result(&self) -> AuthResult {
        match self {
            AuthDecision::Skipped => AuthResult::Skipped,
            AuthDecision::Allowed(_) => AuthResult::Allowed,
            AuthDecision::Denied { .. } => AuthResult::Denied,
            AuthDecision::Forbidden(_) => AuthResult::Forbidden,
        }
    }

    /// Reject code or `insufficient_scope`; empty when allowed or skipped.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            AuthDecision::Skipped | AuthDecision::Allowed(_) => "",
            AuthDecision::Denied { reject, .. } => reject.code(),
            AuthDecision::Forbidden(_) => "insufficient_scope",
        }
    }

    /// The verified caller, when the token was valid (allowed or forbidden).
    pub(crate) fn identity(&self) -> Option<&Arc<Identity>> {
        match self {
            AuthDecision::Allowed(id) | AuthDecision::Forbidden(id) => Some(id),
            _ => None,
        }
    }

    /// The identity the request proceeds with: only when allowed.
    pub(crate) fn admitted(&self) -> Option<&Identity> {
        match self {
            AuthDecision::Allowed(id) => Some(id),
            _ => None,
        }
    }

    /// The issuer's config name, when known.
    pub(crate) fn issuer(&self) -> Option<&str> {
        match self {
            AuthDecision::Denied { issuer, .. } => issuer.as_deref(),
            other => other.identity().map(|id| id.issuer.as_str()),
        }
    }

    /// The token's `sub`, when verified.
    pub(crate) fn subject(&self) -> Option<&str> {
        self.identity().map(|id| id.subject.as_str())
    }

    /// The error the client gets, when the decision refuses the request.
    pub(crate) fn refusal(&self, policy: &AuthPolicy, realm: &str) -> Option<GatewayError> {
        match self {
            AuthDecision::Skipped | AuthDecision::Allowed(_) => None,
            AuthDecision::Denied { reject, .. } => Some(GatewayError::Unauthorized {
                reject: *reject,
                realm: realm.to_string(),
            }),
            AuthDecision::Forbidden(_) => Some(GatewayError::InsufficientScope {
                scope: match policy {
                    AuthPolicy::Required { scopes, .. } => scopes.join(" "),
                    AuthPolicy::None => String::new(),
                },
                realm: realm.to_string(),
            }),
        }
    }
}

/// Why a token was refused. The code is a stable, low-cardinality label (metrics, spans, logs);
/// [`Reject::description`] is the `error_description` sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// No bearer token in the request.
    Missing,
    /// Not three base64url parts, bad JSON, or an unparseable header.
    Malformed,
    /// `alg` is `none`, symmetric, or not one the issuer allows.
    AlgorithmNotAllowed,
    /// No key with the token's `kid`, even after refreshing the key set.
    UnknownKey,
    /// The header's `alg` is not the algorithm of the key named by `kid`.
    AlgorithmMismatch,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is in the past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iss` is not a configured issuer (or not one allowed on this route).
    WrongIssuer,
    /// No `aud` value is an accepted audience.
    WrongAudience,
    /// A registered claim has the wrong type (e.g. `exp` as a string) or is missing.
    BadClaim,
    /// `exp` is further away than the issuer's `max_lifetime_secs`.
    LifetimeTooLong,
    /// The keys of the token's issuer could not be loaded yet.
    KeysUnavailable,
    /// `iat` is further in the future than the leeway allows.
    IssuedInFuture,
    /// The header lists `crit` extensions (RFC 7515 §4.1.11), none of which are supported.
    UnsupportedCritical,
    /// A `scope` or `scp` value that is not a list of RFC 6749 scope tokens.
    InvalidScope,
    /// Revoked by `POST /revocations` (its `jti`, or its `sub` before it was issued).
    Revoked,
}

impl Reject {
    /// Every reject, for tools that name them (`gateway test` expectations).
    pub const ALL: &'static [Reject] = &[
        Reject::Missing,
        Reject::Malformed,
        Reject::AlgorithmNotAllowed,
        Reject::UnknownKey,
        Reject::AlgorithmMismatch,
        Reject::BadSignature,
        Reject::Expired,
        Reject::NotYetValid,
        Reject::WrongIssuer,
        Reject::WrongAudience,
        Reject::BadClaim,
        Reject::LifetimeTooLong,
        Reject::KeysUnavailable,
        Reject::IssuedInFuture,
        Reject::UnsupportedCritical,
        Reject::InvalidScope,
        Reject::Revoked,
    ];

    /// Stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Reject::Missing => "missing_token",
            Reject::Malformed => "malformed",
            Reject::AlgorithmNotAllowed => "alg_not_allowed",
            Reject::UnknownKey => "unknown_kid",
            Reject::AlgorithmMismatch => "alg_mismatch",
            Reject::BadSignature => "bad_signature",
            Reject::Expired => "expired",
            Reject::NotYetValid => "not_yet_valid",
            Reject::WrongIssuer => "wrong_issuer",
            Reject::WrongAudience => "wrong_audience",
            Reject::BadClaim => "bad_claim",
            Reject::LifetimeTooLong => "lifetime_too_long",
            Reject::KeysUnavailable => "keys_unavailable",
            Reject::IssuedInFuture => "iat_in_future",
            Reject::UnsupportedCritical => "crit_unsupported",
            Reject::InvalidScope => "invalid_scope",
            Reject::Revoked => "revoked",
        }
    }

    /// Human-readable reason, safe to send to the client (no key material, no token content).
    pub fn description(self) -> &'static str {
        match self {
            Reject::Missing => "no bearer token",
            Reject::Malformed => "the token is not a well-formed JWT",
            Reject::AlgorithmNotAllowed => "the token's signing algorithm is not accepted",
            Reject::UnknownKey => "the token was signed with an unknown key",
            Reject::AlgorithmMismatch => "the token's algorithm does not match its key",
            Reject::BadSignature => "the token signature is invalid",
            Reject::Expired => "the token has expired",
            Reject::NotYetValid => "the token is not valid yet",
            Reject::WrongIssuer => "the token issuer is not accepted",
            Reject::WrongAudience => "the token audience is not accepted",
            Reject::BadClaim => "a registered claim is missing or has the wrong type",
            Reject::LifetimeTooLong => "the token lifetime exceeds the allowed maximum",
            Reject::KeysUnavailable => "the issuer's keys are not available",
            Reject::IssuedInFuture => "the token was issued in the future",
            Reject::UnsupportedCritical => "the token requires unsupported critical extensions",
            Reject::InvalidScope => "the token's scope claim is malformed",
            Reject::Revoked => "token revoked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Reject;

    #[test]
    fn all_lists_every_reject() {
        for r in Reject::ALL {
            // Exhaustive: a new variant fails to compile here until it is added to ALL.
            match r {
                Reject::Missing
                | Reject::Malformed
                | Reject::AlgorithmNotAllowed
                | Reject::UnknownKey
                | Reject::AlgorithmMismatch
                | Reject::BadSignature
                | Reject::Expired
                | Reject::NotYetValid
                | Reject::WrongIssuer
                | Reject::WrongAudience
                | Reject::BadClaim
                | Reject::LifetimeTooLong
                | Reject::KeysUnavailable
                | Reject::IssuedInFuture
                | Reject::UnsupportedCritical
                | Reject::InvalidScope
                | Reject::Revoked => {}
            }
        }
        assert_eq!(Reject::ALL.len(), 17, "add the new reject to Reject::ALL");
    }
}
