//! Authentication: bearer tokens verified against configured issuers.
//!
//! [`jwt::Authenticator`] is built from the issuers in the config; [`keys`] holds and refreshes
//! their verification keys. The proxy records every outcome as an [`AuthOutcome`] in the request
//! context, so logs, spans and metrics say why a request was let in or turned away.

pub(crate) mod jwt;
pub(crate) mod keys;

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
}

impl Reject {
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
        }
    }
}

/// What auth decided for one request; recorded in the request context.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthOutcome {
    /// `skipped` (route has auth: none), `allowed`, `denied` (401) or `forbidden` (403).
    pub result: &'static str,
    /// Reject code or `insufficient_scope`; empty when allowed or skipped.
    pub reason: &'static str,
    /// Issuer name from the config, when the token named a known one.
    pub issuer: Option<String>,
    /// The token's `sub`, when verified.
    pub subject: Option<String>,
}
