//! JWT verification: key by `kid`, the key's own algorithm only, then the registered claims.
//!
//! The order matters for safety: the algorithm comes from the *key* (its JWK `alg` or curve),
//! never from the token, so `alg: none` and RS/HS confusion (an HMAC signed with a public key)
//! cannot pass. Verified tokens are cached (bounded LRU); `exp` and revocation
//! ([`crate::revocation`]) are re-checked on every hit.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, AlgorithmFamily, Validation};
use lru::LruCache;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::keys::IssuerKeys;
use super::Reject;
use crate::revocation::Revocations;

/// A verified caller.
#[derive(Debug)]
pub(crate) struct Identity {
    /// Issuer name from the config.
    pub(crate) issuer: String,
    /// `sub`.
    pub(crate) subject: String,
    /// Union of the `scope` string and the `scp` array.
    pub(crate) scopes: Vec<String>,
    /// All claims, for rate-limit keys and tiers.
    pub(crate) claims: Map<String, Value>,
    /// `exp`, seconds since the epoch.
    pub(crate) expires_at: u64,
    leeway: u64,
    /// The values of `x-user-id` and `x-user-scopes` ([`super::forward_identity`]), made once
    /// when the token is verified: a cached token's requests share them (a `HeaderValue` clone
    /// is a reference count, not a copy). `None` for a value that is not a valid header value.
    pub(crate) upstream_headers: [Option<http::HeaderValue>; 2],
}

impl Identity {
    fn new(
        issuer: String,
        subject: String,
        scopes: Vec<String>,
        claims: Map<String, Value>,
        expires_at: u64,
        leeway: u64,
    ) -> Identity {
        let upstream_headers = [
            http::HeaderValue::from_str(&subject).ok(),
            http::HeaderValue::from_str(&scopes.join(" ")).ok(),
        ];
        Identity {
            issuer,
            subject,
            scopes,
            claims,
            expires_at,
            leeway,
            upstream_headers,
        }
    }

    /// Appends claim `name` to `out` as text: a string as it is, a number or boolean as JSON
    /// writes it. False (and nothing appended) when there is no such claim or it is of another
    /// type. Writes into the caller's buffer, so a string claim is not copied twice.
    pub(crate) fn push_claim(&self, name: &str, out: &mut String) -> bool {
        match self.claims.get(name) {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Number(n)) => out.push_str(&n.to_string()),
            Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
            _ => return false,
        }
        true
    }

    /// Claim `name` as text ([`Identity::push_claim`]), if it is a string, number or boolean.
    pub(crate) fn claim_str(&self, name: &str) -> Option<String> {
        let mut out = String::new();
        self.push_claim(name, &mut out).then_some(out)
    }
}

#[cfg(test)]
impl Identity {
    /// A verified caller with `claims`, for unit tests.
    pub(crate) fn for_test(sub: &str, claims: Map<String, Value>) -> Identity {
        Identity::new(
            "test".into(),
            sub.into(),
            Vec::new(),
            claims,
            u64::MAX / 2,
            0,
        )
    }
}

/// Verifies bearer tokens against the configured issuers.
pub(crate) struct Authenticator {
    issuers: BTreeMap<String, Arc<IssuerKeys>>,
    /// `iss` claim value → issuer name.
    by_iss: HashMap<String, String>,
    cache: Mutex<LruCache<String, Arc<Identity>>>,
    /// Revoked tokens, refused even when verified (or cached).
    revocations: Arc<Revocations>,
}

/// Largest number of verified tokens remembered. Each entry is the token plus its claims.
const CACHE_ENTRIES: usize = 10_000;

#[derive(Deserialize)]
struct IssPeek {
    iss: Option<Value>,
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl Authenticator {
    pub(crate) fn new(
        issuers: BTreeMap<String, Arc<IssuerKeys>>,
        revocations: Arc<Revocations>,
    ) -> Self {
        let by_iss = issuers
            .iter()
            .map(|(name, i)| (i.config.issuer.clone(), name.clone()))
            .collect();
        Authenticator {
            issuers,
            by_iss,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHE_ENTRIES).expect("non-zero"),
            )),
            revocations,
        }
    }

    /// Takes over `previous`'s cached tokens of the issuers `keep` names (those whose
    /// definition a reload did not change), most recently used last so the order survives.
    pub(crate) fn inherit_cache(&self, previous: &Authenticator, keep: impl Fn(&str) -> bool) {
        let old: Vec<(String, Arc<Identity>)> = previous
            .cache
            .lock()
            .iter()
            .filter(|(_, id)| keep(&id.issuer))
            .map(|(t, id)| (t.clone(), Arc::clone(id)))
            .collect();
        let mut cache = self.cache.lock();
        for (token, id) in old.into_iter().rev() {
            cache.put(token, id);
        }
    }

    pub(crate) fn issuers(&self) -> impl Iterator<Item = &Arc<IssuerKeys>> {
        self.issuers.values()
    }

    /// Verifies `token` and returns the caller, or why it was refused. `allowed` limits the
    /// issuers (by config name); empty allows all. On refusal, also returns the issuer name when
    /// the token named a known one (for logs).
    pub(crate) async fn verify(
        &self,
        token: &str,
        allowed: &[String],
    ) -> Result<Arc<Identity>, (Reject, Option<String>)> {
        // Bind first: a guard in the `if let` scrutinee would be held through the block.
        let cached = self.cache.lock().get(token).cloned();
        if let Some(hit) = cached {
            if !allowed.is_empty() && !allowed.contains(&hit.issuer) {
                return Err((Reject::WrongIssuer, Some(hit.issuer.clone())));
            }
            if hit.expires_at + hit.leeway < now() {
                self.cache.lock().pop(token);
                return Err((Reject::Expired, Some(hit.issuer.clone())));
            }
            if self.revocations.is_revoked(&hit, now()) {
                return Err((Reject::Revoked, Some(hit.issuer.clone())));
            }
            return Ok(hit);
        }

        let header = decode_header(token).map_err(|e| match e.kind() {
            // An unknown `alg` (including "none") fails to parse as an Algorithm.
            ErrorKind::Json(_) if token_header_mentions_alg(token) => {
                (Reject::AlgorithmNotAllowed, None)
            }
            _ => (Reject::Malformed, None),
        })?;
        if header.alg.family() == AlgorithmFamily::Hmac {
            return Err((Reject::AlgorithmNotAllowed, None));
        }
        // RFC 7515 §4.1.11: extensions named in `crit` must be understood; none are.
        if token_header_has(token, "crit") {
            return Err((Reject::UnsupportedCritical, None));
        }

        let issuer = self.pick_issuer(token)?;
        let name = issuer.name.clone();
        if !allowed.is_empty() && !allowed.contains(&name) {
            return Err((Reject::WrongIssuer, Some(name)));
        }
        if !issuer.config.algorithms.contains(&header.alg) {
            return Err((Reject::AlgorithmNotAllowed, Some(name)));
        }

        let kid = header.kid.as_deref();
        let key = match issuer.get(kid) {
            Some(key) => key,
            None => {
                // Unknown kid: maybe the issuer rotated keys. Refresh (single flight, rate
                // limited) and look again.
                issuer.refresh_for_unknown_kid().await;
                match issuer.get(kid) {
                    Some(key) => key,
                    None if !issuer.is_ready() => {
                        return Err((Reject::KeysUnavailable, Some(name)))
                    }
                    None => return Err((Reject::UnknownKey, Some(name))),
                }
            }
        };
        if key.alg != header.alg {
            return Err((Reject::AlgorithmMismatch, Some(name)));
        }

        let cfg = &issuer.config;
        let mut validation = Validation::new(key.alg);
        validation.leeway = cfg.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&cfg.issuer]);
        let mut required = vec!["exp", "iss", "sub"];
        if cfg.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&cfg.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);

        let data = decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| {
            let reject = match e.kind() {
                ErrorKind::InvalidSignature => Reject::BadSignature,
                ErrorKind::ExpiredSignature => Reject::Expired,
                ErrorKind::ImmatureSignature => Reject::NotYetValid,
                ErrorKind::InvalidIssuer => Reject::WrongIssuer,
                ErrorKind::InvalidAudience => Reject::WrongAudience,
                ErrorKind::InvalidAlgorithm => Reject::AlgorithmNotAllowed,
                ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidClaimFormat(_)
                | ErrorKind::InvalidSubject => Reject::BadClaim,
                _ => Reject::Malformed,
            };
            (reject, Some(name.clone()))
        })?;
        let claims = data.claims;

        // jsonwebtoken already rejected a non-numeric exp; read it as a number here.
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or((Reject::BadClaim, Some(name.clone())))?;
        let now = now();
        // The lifetime is bounded from both ends: what the issuer claims (`exp - iat`) and
        // what is left (`exp - now`), so a token with a forged old `iat` cannot live longer.
        let mut lifetime = expires_at.saturating_sub(now);
        if let Some(iat) = claims.get("iat") {
            let iat = iat.as_u64().ok_or((Reject::BadClaim, Some(name.clone())))?;
            if iat > now + cfg.leeway_secs {
                return Err((Reject::IssuedInFuture, Some(name)));
            }
            lifetime = lifetime.max(expires_at.saturating_sub(iat));
        }
        if lifetime > cfg.max_lifetime_secs {
            return Err((Reject::LifetimeTooLong, Some(name)));
        }
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err((Reject::BadClaim, Some(name))),
        };
        let scopes = scopes_of(&claims).map_err(|r| (r, Some(name.clone())))?;

        let identity = Arc::new(Identity::new(
            name,
            subject,
            scopes,
            claims,
            expires_at,
            cfg.leeway_secs,
        ));
        self.cache
            .lock()
            .put(token.to_string(), Arc::clone(&identity));
        if self.revocations.is_revoked(&identity, now) {
            return Err((Reject::Revoked, Some(identity.issuer.clone())));
        }
        Ok(identity)
    }

    /// The issuer whose keys should verify this token: the one named by its (not yet trusted)
    /// `iss`; the claim is verified after the signature.
    fn pick_issuer(&self, token: &str) -> Result<&Arc<IssuerKeys>, (Reject, Option<String>)> {
        let peek: IssPeek = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| (Reject::Malformed, None))?;
        match peek.iss {
            Some(Value::String(iss)) => self
                .by_iss
                .get(&iss)
                .and_then(|name| self.issuers.get(name))
                .ok_or((Reject::WrongIssuer, None)),
            Some(_) => Err((Reject::BadClaim, None)),
            None => Err((Reject::BadClaim, None)),
        }
    }
}

/// The scopes of verified claims: the `scope` string split on single spaces (RFC 6749 §3.3)
/// and the `scp` array, sorted and deduplicated. Every scope must be a `scope-token` — printable
/// ASCII without space, `"` or `\` — so no scope can smuggle a second one to a service that
/// splits on other whitespace.
fn scopes_of(claims: &Map<String, Value>) -> Result<Vec<String>, Reject> {
    fn token(s: &str) -> Result<String, Reject> {
        let valid = !s.is_empty()
            && s.bytes()
                .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e));
        if valid {
            Ok(s.to_string())
        } else {
            Err(Reject::InvalidScope)
        }
    }
    let mut scopes: Vec<String> = Vec::new();
    match claims.get("scope") {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => {
            for part in s.split(' ') {
                scopes.push(token(part)?);
            }
        }
        Some(_) => return Err(Reject::InvalidScope),
    }
    match claims.get("scp") {
        None => {}
        Some(Value::Array(a)) => {
            for v in a {
                scopes.push(token(v.as_str().ok_or(Reject::InvalidScope)?)?);
            }
        }
        Some(_) => return Err(Reject::InvalidScope),
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// Whether the token's header parses as JSON with an `alg` (so a parse failure was the algorithm).
fn token_header_mentions_alg(token: &str) -> bool {
    token_header_has(token, "alg")
}

/// Whether the token's (unverified) header is a JSON object with member `name`.
fn token_header_has(token: &str, name: &str) -> bool {
    use base64::Engine;
    let Some(head) = token.split('.').next() else {
        return false;
    };
    let Ok(bytes) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head.trim_end_matches('='))
    else {
        return false;
    };
    serde_json::from_slice::<Map<String, Value>>(&bytes)
        .map(|h| h.contains_key(name))
        .unwrap_or(false)
}

/// Whether `b` may appear in a bearer token: base64url, base64 and the JWS dots.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() | matches!(b, b'-' | b'_' | b'.' | b'=' | b'+' | b'/')
}

/// Extracts a bearer token from an `Authorization` header value. `Ok(None)` when the header is
/// absent or uses another scheme (RFC 6750: such a request simply lacks credentials). The token
/// is borrowed from the header.
pub(crate) fn bearer_token<'a>(values: &[&'a [u8]]) -> Result<Option<&'a str>, Reject> {
    match values {
        [] => Ok(None),
        [one] => {
            let Ok(s) = std::str::from_utf8(one) else {
                return Err(Reject::Malformed);
            };
            let s = s.trim();
            let Some((scheme, rest)) = s.split_once(' ') else {
                return if s.eq_ignore_ascii_case("bearer") {
                    Err(Reject::Malformed)
                } else {
                    Ok(None)
                };
            };
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Ok(None);
            }
            let token = rest.trim();
            // Every byte checked, without stopping at the first bad one: compares the compiler
            // runs many bytes at a time (a token is several hundred).
            let valid = !token.is_empty()
                && token.len() <= 16 * 1024
                && token.bytes().fold(true, |ok, b| ok & is_token_byte(b));
            if valid {
                Ok(Some(token))
            } else {
                Err(Reject::Malformed)
            }
        }
        _ => Err(Reject::Malformed),
    }
}

/// Whether `have` contains every scope in `need`.
pub(crate) fn has_scopes(have: &[String], need: &[String]) -> bool {
    need.iter().all(|n| have.iter().any(|h| h == n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&[]), Ok(None));
        assert_eq!(bearer_token(&[b"Basic abc"]), Ok(None));
        assert_eq!(bearer_token(&[b"Bearer a.b.c"]), Ok(Some("a.b.c")));
        assert_eq!(bearer_token(&[b"bearer   a.b.c "]), Ok(Some("a.b.c")));
        assert_eq!(bearer_token(&[b"Bearer"]), Err(Reject::Malformed));
        assert_eq!(bearer_token(&[b"Bearer a b"]), Err(Reject::Malformed));
        assert_eq!(
            bearer_token(&[b"Bearer x", b"Bearer y"]),
            Err(Reject::Malformed)
        );
    }

    fn claims(v: serde_json::Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn scopes_split_on_single_spaces_and_nothing_else() {
        let c = claims(serde_json::json!({"scope": "shop admin", "scp": ["billing", "shop"]}));
        assert_eq!(scopes_of(&c).unwrap(), ["admin", "billing", "shop"]);
        for bad in [
            serde_json::json!({"scope": "shop\tadmin"}),
            serde_json::json!({"scope": "shop\nadmin"}),
            serde_json::json!({"scope": "shop  admin"}),
            serde_json::json!({"scope": " shop"}),
            serde_json::json!({"scope": "sh\"op"}),
            serde_json::json!({"scp": ["shop admin"]}),
            serde_json::json!({"scp": ["shop\u{b}admin"]}),
            serde_json::json!({"scp": [1]}),
            serde_json::json!({"scope": ["shop"]}),
        ] {
            assert_eq!(
                scopes_of(&claims(bad.clone())),
                Err(Reject::InvalidScope),
                "{bad}"
            );
        }
        assert_eq!(
            scopes_of(&claims(serde_json::json!({}))).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn scopes_must_all_be_present() {
        let have = vec!["admin".to_string(), "shop".to_string()];
        assert!(has_scopes(&have, &["shop".to_string()]));
        assert!(!has_scopes(
            &have,
            &["shop".to_string(), "billing".to_string()]
        ));
        assert!(has_scopes(&[], &[]));
    }
}
