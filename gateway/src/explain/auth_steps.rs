//! The auth part of an explanation: the verifier's steps, in the order `auth::jwt` runs them,
//! up to the one that decided.
//!
//! The decision itself is [`crate::auth::check`]'s (run by the admission pipeline); this only
//! places it on the step list, and describes the steps passed with what the token says about
//! itself (its header and claims, read without trusting them). The token itself is never shown.

use base64::Engine as _;
use http::HeaderMap;
use serde_json::{Map, Value};

use super::report::{AuthView, Step};
use crate::auth::jwt::{bearer_token, Authenticator};
use crate::auth::{AuthDecision, Reject};
use crate::config::{AuthPolicy, Mode};

/// The verifier's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// A bearer token in `Authorization`.
    Token,
    /// Its header: algorithm, `kid`, `crit`.
    Header,
    /// The issuer named by `iss`, and whether the route accepts it.
    Issuer,
    /// The key chosen by `kid`, and its algorithm.
    Key,
    /// The signature.
    Signature,
    /// `exp`, `nbf`, `iat`, `aud`, `sub`, lifetime, scope syntax.
    Claims,
    /// The route's scopes.
    Scopes,
}

impl Stage {
    const ALL: [Stage; 7] = [
        Stage::Token,
        Stage::Header,
        Stage::Issuer,
        Stage::Key,
        Stage::Signature,
        Stage::Claims,
        Stage::Scopes,
    ];

    fn name(self) -> &'static str {
        match self {
            Stage::Token => "token",
            Stage::Header => "header",
            Stage::Issuer => "issuer",
            Stage::Key => "key",
            Stage::Signature => "signature",
            Stage::Claims => "claims",
            Stage::Scopes => "scopes",
        }
    }
}

/// What the token says about itself, unverified.
#[derive(Default)]
struct Peek {
    /// Bytes of the token.
    len: usize,
    header: Option<Map<String, Value>>,
    claims: Option<Map<String, Value>>,
}

fn decode_part(part: Option<&str>) -> Option<Map<String, Value>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part?.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn peek(headers: &HeaderMap) -> Result<Option<Peek>, Reject> {
    let values: Vec<&[u8]> = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let Some(token) = bearer_token(&values)? else {
        return Ok(None);
    };
    let mut parts = token.split('.');
    Ok(Some(Peek {
        len: token.len(),
        header: decode_part(parts.next()),
        claims: decode_part(parts.next()),
    }))
}

fn text(map: Option<&Map<String, Value>>, name: &str) -> Option<String> {
    match map?.get(name)? {
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The step a refusal stopped at.
fn stopped_at(reject: Reject, issuer_known: bool, peek: Option<&Peek>) -> Stage {
    match reject {
        Reject::Missing => Stage::Token,
        Reject::Malformed => match peek {
            Some(p) if p.header.is_some() && p.claims.is_some() => Stage::Signature,
            Some(p) if p.header.is_some() => Stage::Issuer,
            _ => Stage::Token,
        },
        Reject::AlgorithmNotAllowed if issuer_known => Stage::Key,
        Reject::AlgorithmNotAllowed | Reject::UnsupportedCritical => Stage::Header,
        Reject::WrongIssuer => Stage::Issuer,
        Reject::BadClaim if !issuer_known => Stage::Issuer,
        Reject::UnknownKey | Reject::KeysUnavailable | Reject::AlgorithmMismatch => Stage::Key,
        Reject::BadSignature => Stage::Signature,
        _ => Stage::Claims,
    }
}

/// What a passed step found.
fn passed(stage: Stage, p: Option<&Peek>, decision: &AuthDecision, auth: &Authenticator) -> String {
    let header = p.and_then(|p| p.header.as_ref());
    let claims = p.and_then(|p| p.claims.as_ref());
    let kid = text(header, "kid");
    match stage {
        Stage::Token => format!(
            "bearer token in Authorization ({} bytes)",
            p.map_or(0, |p| p.len)
        ),
        Stage::Header => format!(
            "alg {}, kid {}",
            text(header, "alg").unwrap_or_else(|| "?".into()),
            kid.as_deref().unwrap_or("(none)")
        ),
        Stage::Issuer => format!(
            "iss {:?} is issuer {}",
            text(claims, "iss").unwrap_or_default(),
            decision.issuer().unwrap_or("?")
        ),
        Stage::Key => {
            let alg = decision
                .issuer()
                .and_then(|name| auth.issuers().find(|i| i.name == name))
                .and_then(|i| i.get(kid.as_deref()))
                .map(|k| format!("{:?}", k.alg))
                .unwrap_or_else(|| "?".into());
            format!(
                "key chosen by kid {} ({alg})",
                kid.as_deref().unwrap_or("(none: the issuer's only key)")
            )
        }
        Stage::Signature => "signature verified".into(),
        Stage::Claims => {
            let sub = decision.subject().unwrap_or("?");
            let exp = claims
                .and_then(|c| c.get("exp"))
                .and_then(Value::as_u64)
                .map(|exp| {
                    let now = jsonwebtoken::get_current_timestamp();
                    format!(", expires in {} s", exp.saturating_sub(now))
                })
                .unwrap_or_default();
            let aud = text(claims, "aud")
                .map(|a| format!(", aud {a}"))
                .unwrap_or_default();
            format!("sub {sub}{aud}{exp}; lifetime and nbf/iat within bounds")
        }
        Stage::Scopes => format!(
            "token scopes [{}]",
            decision
                .identity()
                .map(|id| id.scopes.join(" "))
                .unwrap_or_default()
        ),
    }
}

/// Why the step that decided refused.
fn failed(
    stage: Stage,
    reject: Option<Reject>,
    decision: &AuthDecision,
    p: Option<&Peek>,
) -> String {
    let claims = p.and_then(|p| p.claims.as_ref());
    match (stage, reject) {
        (Stage::Scopes, _) => format!(
            "token scopes [{}] lack one the route requires",
            decision
                .identity()
                .map(|id| id.scopes.join(" "))
                .unwrap_or_default()
        ),
        (Stage::Issuer, Some(Reject::WrongIssuer)) if decision.issuer().is_some() => format!(
            "issuer {} is not one this route accepts",
            decision.issuer().unwrap_or("?")
        ),
        (Stage::Issuer, Some(Reject::WrongIssuer)) => format!(
            "iss {:?} is not a configured issuer",
            text(claims, "iss").unwrap_or_default()
        ),
        (_, Some(reject)) => format!("{}: {}", reject.code(), reject.description()),
        (_, None) => "refused".into(),
    }
}

/// The auth view of a request that reached route `policy`: every step up to the deciding one.
pub(super) fn view(
    policy: &AuthPolicy,
    decision: &AuthDecision,
    headers: &HeaderMap,
    auth: &Authenticator,
    shadow: bool,
) -> Option<AuthView> {
    let AuthPolicy::Required {
        scopes,
        issuers,
        mode,
    } = policy
    else {
        return Some(AuthView {
            required: false,
            scopes: Vec::new(),
            issuers: Vec::new(),
            mode: Mode::Enforce.name(),
            result: decision.result().as_str(),
            reason: String::new(),
            shadow: false,
            steps: Vec::new(),
        });
    };
    let mut view = AuthView {
        required: true,
        scopes: scopes.clone(),
        issuers: issuers.clone(),
        mode: mode.name(),
        result: decision.result().as_str(),
        reason: decision.reason().to_string(),
        shadow,
        steps: Vec::new(),
    };
    if matches!(decision, AuthDecision::Skipped) {
        // Refused before auth ran (e.g. a body over the route's limit).
        return Some(view);
    }
    let p = peek(headers).ok().flatten();
    let (stop, reject) = match decision {
        AuthDecision::Denied { reject, issuer } => (
            Some(stopped_at(*reject, issuer.is_some(), p.as_ref())),
            Some(*reject),
        ),
        AuthDecision::Forbidden(_) => (Some(Stage::Scopes), None),
        _ => (None, None),
    };
    for stage in Stage::ALL {
        match stop {
            Some(s) if s == stage => {
                view.steps.push(Step {
                    step: stage.name(),
                    ok: false,
                    detail: failed(stage, reject, decision, p.as_ref()),
                });
                break;
            }
            _ => view.steps.push(Step {
                step: stage.name(),
                ok: true,
                detail: passed(stage, p.as_ref(), decision, auth),
            }),
        }
    }
    Some(view)
}
