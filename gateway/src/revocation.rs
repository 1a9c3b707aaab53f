//! Token revocation: `POST /revocations` on the admin listener revokes one token by its `jti`,
//! or every token of a subject (`sub`) issued up to now, until those tokens would have expired
//! anyway. A revoked token is refused with 401 `invalid_token`, "token revoked" — checked on
//! every request, after the verified-token cache, so a cached token is refused too.
//!
//! # How to use
//! One [`Revocations`] lives as long as the process (a reload keeps it). With
//! `revocations: {store: NAME}` every revocation is also written to that store, and every
//! replica polls the store ([`Revocations::run_sync`], every [`SYNC_INTERVAL`]), so all of
//! them refuse the token within a second. Without a store, a revocation applies only to the
//! gateway that received it.
//!
//! In the store: the hash `PREFIX:revocations` (field `jti:<jti>` → `<until>`, or `sub:<sub>`
//! → `<issued at or before>:<until>`, Unix seconds) and the counter `PREFIX:revocations:version`,
//! bumped with every write so a poll is one `GET` unless something changed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::RwLock;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::auth::jwt::Identity;
use crate::store::{Store, StoreError};

/// How often replicas look for revocations made elsewhere (and drop expired ones).
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// Largest request body `POST /revocations` accepts.
pub(crate) const MAX_BODY_BYTES: usize = 4096;

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Revocation {
    /// The token whose `jti` this is, until `until`.
    Jti { jti: String, until: u64 },
    /// Every token of `sub` issued at or before `before` (its `iat`; a token without `iat`
    /// counts as issued before), until `until`.
    Subject {
        sub: String,
        before: u64,
        until: u64,
    },
}

impl Revocation {
    /// When the entry can be forgotten: every token it covers has expired by then.
    pub(crate) fn until(&self) -> u64 {
        match self {
            Revocation::Jti { until, .. } | Revocation::Subject { until, .. } => *until,
        }
    }

    fn field(&self) -> String {
        match self {
            Revocation::Jti { jti, .. } => format!("jti:{jti}"),
            Revocation::Subject { sub, .. } => format!("sub:{sub}"),
        }
    }

    fn value(&self) -> String {
        match self {
            Revocation::Jti { until, .. } => until.to_string(),
            Revocation::Subject { before, until, .. } => format!("{before}:{until}"),
        }
    }

    fn from_store(field: &str, value: &str) -> Option<Revocation> {
        match field.split_once(':')? {
            ("jti", jti) => Some(Revocation::Jti {
                jti: jti.to_string(),
                until: value.parse().ok()?,
            }),
            ("sub", sub) => {
                let (before, until) = value.split_once(':')?;
                Some(Revocation::Subject {
                    sub: sub.to_string(),
                    before: before.parse().ok()?,
                    until: until.parse().ok()?,
                })
            }
            _ => None,
        }
    }

    /// The revocation a `POST /revocations` body asks for: `{"jti": "…"}` or `{"sub": "…"}`,
    /// with an optional `"exp"` (the token's expiry, Unix seconds). `longest` is the longest
    /// any accepted token lives (the issuers' largest `max_lifetime_secs` plus leeway): entries
    /// are kept that long unless `exp` says sooner.
    pub(crate) fn from_request(body: &[u8], now: u64, longest: u64) -> Result<Revocation, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            jti: Option<String>,
            sub: Option<String>,
            exp: Option<u64>,
        }
        let Body { jti, sub, exp } = serde_json::from_slice(body)
            .map_err(|e| format!("expected {{\"jti\": …}} or {{\"sub\": …}}: {e}"))?;
        let latest = now + longest;
        let until = match exp {
            Some(exp) if exp <= now => {
                return Err("exp is in the past: that token is already refused".into())
            }
            Some(exp) => exp.min(latest),
            None => latest,
        };
        let valid = |s: &str| !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control);
        match (jti, sub) {
            (Some(jti), None) if valid(&jti) => Ok(Revocation::Jti { jti, until }),
            (None, Some(sub)) if valid(&sub) => Ok(Revocation::Subject {
                sub,
                before: now,
                until,
            }),
            (Some(_), None) | (None, Some(_)) => {
                Err("the value must be 1 to 1024 characters without control characters".into())
            }
            _ => Err("give exactly one of jti and sub".into()),
        }
    }
}

#[derive(Default)]
struct Revoked {
    /// `jti` → until.
    jti: HashMap<String, u64>,
    /// `sub` → (issued at or before, until).
    sub: HashMap<String, (u64, u64)>,
}

impl Revoked {
    fn insert(&mut self, r: Revocation) {
        match r {
            Revocation::Jti { jti, until } => {
                let e = self.jti.entry(jti).or_insert(until);
                *e = (*e).max(until);
            }
            Revocation::Subject { sub, before, until } => {
                let e = self.sub.entry(sub).or_insert((before, until));
                *e = (e.0.max(before), e.1.max(until));
            }
        }
    }

    fn prune(&mut self, now: u64) {
        self.jti.retain(|_, until| *until > now);
        self.sub.retain(|_, (_, until)| *until > now);
    }

    fn len(&self) -> usize {
        self.jti.len() + self.sub.len()
    }
}

/// The revoked tokens this gateway knows of, and the store it shares them through.
#[derive(Default)]
pub(crate) struct Revocations {
    revoked: RwLock<Revoked>,
    /// Entries in `revoked`: while 0 (the usual case) a check takes no lock.
    count: AtomicUsize,
    store: ArcSwapOption<Store>,
    /// The store's version last applied (-1: none yet).
    version: AtomicI64,
}

impl Revocations {
    pub(crate) fn new() -> Arc<Self> {
        let r = Revocations::default();
        r.version.store(-1, Ordering::Relaxed);
        Arc::new(r)
    }

    /// Shares revocations through `store` from now on (or keeps them local with `None`).
    /// Called when a configuration generation is installed.
    pub(crate) fn use_store(&self, store: Option<Arc<Store>>) {
        let changed = match (self.store.load().as_deref(), store.as_deref()) {
            (Some(a), Some(b)) => !std::ptr::eq(a, b),
            (None, None) => false,
            _ => true,
        };
        if changed {
            self.version.store(-1, Ordering::Relaxed);
            self.store.store(store);
        }
    }

    /// Whether `identity`'s token is revoked at `now`.
    pub(crate) fn is_revoked(&self, identity: &Identity, now: u64) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let revoked = self.revoked.read();
        if let Some(jti) = identity.claims.get("jti").and_then(|v| v.as_str()) {
            if revoked.jti.get(jti).is_some_and(|until| *until > now) {
                return true;
            }
        }
        revoked
            .sub
            .get(identity.subject.as_str())
            .is_some_and(|(before, until)| {
                let iat = identity.claims.get("iat").and_then(|v| v.as_u64());
                *until > now && iat.is_none_or(|iat| iat <= *before)
            })
    }

    fn insert(&self, r: Revocation) {
        let mut revoked = self.revoked.write();
        revoked.insert(r);
        self.count.store(revoked.len(), Ordering::Release);
    }

    /// Applies `r` here at once, then writes it to the store. `Ok(true)`: shared with every
    /// replica; `Ok(false)`: no store is configured, so only this gateway refuses the token.
    pub(crate) async fn revoke(&self, r: Revocation) -> Result<bool, StoreError> {
        self.insert(r.clone());
        let Some(store) = self.store.load_full() else {
            return Ok(false);
        };
        let (hash, version) = keys(&store);
        let (field, value) = (r.field(), r.value());
        store
            .run(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .hset(&hash, &field, &value)
                    .ignore()
                    .incr(&version, 1)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
        Ok(true)
    }

    /// One poll: drops expired entries and, when the store's version moved, reads every
    /// revocation from it (removing the expired ones there too).
    pub(crate) async fn sync(&self, now: u64) {
        {
            let mut revoked = self.revoked.write();
            revoked.prune(now);
            self.count.store(revoked.len(), Ordering::Release);
        }
        let Some(store) = self.store.load_full() else {
            return;
        };
        let (hash, version_key) = keys(&store);
        let Ok(version) = store
            .run(|mut c| async move {
                redis::cmd("GET")
                    .arg(&version_key)
                    .query_async::<Option<i64>>(&mut c)
                    .await
            })
            .await
        else {
            return;
        };
        let version = version.unwrap_or(0);
        if version == self.version.load(Ordering::Relaxed) {
            return;
        }
        let hash2 = hash.clone();
        let Ok(entries) = store
            .run(|mut c| async move {
                redis::cmd("HGETALL")
                    .arg(&hash2)
                    .query_async::<HashMap<String, String>>(&mut c)
                    .await
            })
            .await
        else {
            return;
        };
        let mut expired = Vec::new();
        {
            let mut revoked = self.revoked.write();
            for (field, value) in entries {
                match Revocation::from_store(&field, &value) {
                    Some(r) if r.until() > now => revoked.insert(r),
                    _ => expired.push(field),
                }
            }
            self.count.store(revoked.len(), Ordering::Release);
        }
        self.version.store(version, Ordering::Relaxed);
        if !expired.is_empty() {
            let _ = store
                .run(|mut c| async move {
                    redis::cmd("HDEL")
                        .arg(&hash)
                        .arg(&expired)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await;
        }
    }

    /// Polls every [`SYNC_INTERVAL`] until `stop` is cancelled.
    pub(crate) async fn run_sync(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(SYNC_INTERVAL) => self.sync(unix_now()).await,
            }
        }
    }
}

/// The revocation hash and its version counter in `store`.
fn keys(store: &Store) -> (String, String) {
    (
        store.key(&["revocations"]),
        store.key(&["revocations", "version"]),
    )
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(sub: &str, jti: Option<&str>, iat: Option<u64>) -> Identity {
        let mut claims = serde_json::Map::new();
        if let Some(jti) = jti {
            claims.insert("jti".into(), jti.into());
        }
        if let Some(iat) = iat {
            claims.insert("iat".into(), iat.into());
        }
        Identity::for_test(sub, claims)
    }

    #[test]
    fn a_jti_is_refused_until_it_expires_and_a_subject_up_to_the_revocation() {
        let r = Revocations::new();
        let now = 1_000;
        assert!(!r.is_revoked(&identity("u", Some("t1"), Some(900)), now));
        r.insert(Revocation::from_request(br#"{"jti": "t1", "exp": 1100}"#, now, 3600).unwrap());
        assert!(r.is_revoked(&identity("u", Some("t1"), Some(900)), now));
        assert!(!r.is_revoked(&identity("u", Some("t2"), Some(900)), now));
        assert!(
            !r.is_revoked(&identity("u", Some("t1"), Some(900)), 1100),
            "expired"
        );

        r.insert(Revocation::from_request(br#"{"sub": "alice"}"#, now, 3600).unwrap());
        assert!(r.is_revoked(&identity("alice", None, Some(999)), now));
        assert!(
            r.is_revoked(&identity("alice", None, None), now),
            "no iat: issued before"
        );
        assert!(
            !r.is_revoked(&identity("alice", None, Some(1001)), now + 1),
            "issued after"
        );
        assert!(!r.is_revoked(&identity("bob", None, Some(999)), now));
    }

    #[test]
    fn a_bad_request_says_what_is_wrong() {
        for (body, needle) in [
            (&br#"{"jti": "a", "sub": "b"}"#[..], "exactly one"),
            (br#"{}"#, "exactly one"),
            (br#"{"jti": ""}"#, "1 to 1024"),
            (br#"{"jti": "a", "exp": 5}"#, "in the past"),
            (br#"{"token": "a"}"#, "unknown field"),
            (b"not json", "expected"),
        ] {
            let e = Revocation::from_request(body, 10, 3600).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        // exp beyond the longest lifetime is capped.
        assert_eq!(
            Revocation::from_request(br#"{"jti": "a", "exp": 999999}"#, 10, 100).unwrap(),
            Revocation::Jti {
                jti: "a".into(),
                until: 110
            }
        );
    }

    #[test]
    fn entries_round_trip_through_the_store_format() {
        for r in [
            Revocation::Jti {
                jti: "a:b".into(),
                until: 7,
            },
            Revocation::Subject {
                sub: "s".into(),
                before: 3,
                until: 9,
            },
        ] {
            assert_eq!(Revocation::from_store(&r.field(), &r.value()), Some(r));
        }
    }
}
