//! `stores` and `revocations`: the Redis stores that share limits and revocations between
//! replicas, and which one revocations use.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::defaults;
use super::super::raw::{RawRevocations, RawStore};
use super::super::suggest;
use super::super::{OnError, RevocationSettings, StoreConfig};
use super::Errors;

/// The longest `timeout_ms` accepted: a store slower than this is down for a proxy.
const MAX_TIMEOUT_MS: u64 = 10_000;

pub(super) fn store(errs: &mut Errors, loc: &str, raw: RawStore) -> StoreConfig {
    let RawStore {
        redis,
        timeout_ms,
        on_error,
        key_prefix,
    } = raw;
    // The URL may hold a password: messages never repeat it.
    match url::Url::parse(&redis) {
        Ok(u) if u.scheme() != "redis" => errs.push(
            format!("{loc}.redis"),
            format!(
                "scheme {:?} is not supported; write redis://host:port/db",
                u.scheme()
            ),
        ),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => errs.push(
            format!("{loc}.redis"),
            "names no host; write redis://host:port/db",
        ),
        Ok(_) => {
            if let Err(e) = redis::Client::open(redis.as_str()) {
                errs.push(format!("{loc}.redis"), format!("not a Redis URL: {e}"));
            }
        }
        Err(e) => errs.push(
            format!("{loc}.redis"),
            format!("not a URL ({e}); write redis://host:port/db"),
        ),
    }
    let timeout_ms = errs.positive(
        &format!("{loc}.timeout_ms"),
        timeout_ms,
        defaults::STORE_TIMEOUT_MS,
    );
    if timeout_ms > MAX_TIMEOUT_MS {
        errs.push(
            format!("{loc}.timeout_ms"),
            format!("{timeout_ms} is more than {MAX_TIMEOUT_MS}"),
        );
    }
    let on_error = match on_error.as_deref().map(str::parse::<OnError>) {
        None => OnError::Allow,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            errs.push(format!("{loc}.on_error"), e.to_string());
            OnError::Allow
        }
    };
    let key_prefix = key_prefix.unwrap_or_else(|| defaults::STORE_KEY_PREFIX.to_string());
    if key_prefix.is_empty()
        || key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        errs.push(
            format!("{loc}.key_prefix"),
            "must be non-empty, without spaces or control characters",
        );
    }
    StoreConfig {
        redis,
        timeout: Duration::from_millis(timeout_ms),
        on_error,
        key_prefix,
    }
}

/// A reference to a store by name, with a "did you mean …?" when it is misspelt.
pub(super) fn reference(
    errs: &mut Errors,
    loc: &str,
    name: Option<String>,
    stores: &BTreeMap<String, StoreConfig>,
) -> Option<String> {
    let name = name?;
    if !stores.contains_key(&name) {
        let message = if stores.is_empty() {
            format!("unknown store {name:?}; define it under `stores`")
        } else {
            format!(
                "unknown store {name:?} (defined: {}){}",
                stores
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                suggest::hint(&name, stores.keys().map(String::as_str))
            )
        };
        errs.push(loc, message);
    }
    Some(name)
}

pub(super) fn revocations(
    errs: &mut Errors,
    raw: Option<serde_yaml::Value>,
    stores: &BTreeMap<String, StoreConfig>,
) -> RevocationSettings {
    let RawRevocations { store } = errs.optional("revocations", raw);
    RevocationSettings {
        store: reference(errs, "revocations.store", store, stores),
    }
}
