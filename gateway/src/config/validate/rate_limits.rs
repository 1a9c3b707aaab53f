//! `rate_limits`: named GCRA policies — what keys a bucket, and the quota (or quotas by tier).

use std::time::Duration;

use super::super::defaults;
use super::super::raw::RawRateLimit;
use super::super::{KeyPart, Per, Quota, Quotas, RateLimitConfig};
use super::Errors;

/// The placeholder quota of a policy whose quota is in error (it is never used: the file is
/// rejected).
const PLACEHOLDER: Quota = Quota {
    rate: 1,
    per: Duration::from_secs(1),
    burst: 1,
};

pub(super) fn rate_limit(errs: &mut Errors, loc: &str, raw: RawRateLimit) -> RateLimitConfig {
    let RawRateLimit {
        key,
        rate,
        per,
        burst,
        tier_claim,
        tiers,
        idle_prune_secs,
        ipv6_prefix_len,
        mode,
    } = raw;
    if key.is_empty() {
        errs.push(
            format!("{loc}.key"),
            "list at least one key part, e.g. [client_ip]",
        );
    }
    let key = key
        .iter()
        .enumerate()
        .filter_map(|(i, k)| match k.parse::<KeyPart>() {
            Ok(part) => Some(part),
            Err(e) => {
                errs.push(format!("{loc}.key[{i}]"), e.to_string());
                None
            }
        })
        .collect();
    let quotas = match (tier_claim, tiers) {
        (Some(claim), Some(tiers)) => {
            if rate.is_some() || per.is_some() || burst.is_some() {
                errs.push(
                    loc,
                    "a tiered policy sets rate/per/burst inside each tier, not at the top",
                );
            }
            if !tiers.contains_key("default") {
                errs.push(
                    format!("{loc}.tiers"),
                    "must contain a `default` tier for tokens without the claim",
                );
            }
            let tiers = tiers
                .into_iter()
                .map(|(name, q)| {
                    let q = quota(
                        errs,
                        &format!("{loc}.tiers.{name}"),
                        q.rate,
                        &q.per,
                        q.burst,
                    );
                    (name, q)
                })
                .collect();
            Quotas::Tiered { claim, tiers }
        }
        (None, None) => match (rate, per) {
            (Some(rate), Some(per)) => Quotas::Single {
                quota: quota(errs, loc, rate, &per, burst),
            },
            _ => {
                errs.push(loc, "set rate and per (or tier_claim and tiers)");
                Quotas::Single { quota: PLACEHOLDER }
            }
        },
        _ => {
            errs.push(loc, "tier_claim and tiers go together");
            Quotas::Single { quota: PLACEHOLDER }
        }
    };
    RateLimitConfig {
        key,
        quotas,
        idle_prune: Duration::from_secs(errs.positive(
            &format!("{loc}.idle_prune_secs"),
            idle_prune_secs,
            defaults::IDLE_PRUNE_SECS,
        )),
        ipv6_prefix_len: match ipv6_prefix_len.unwrap_or(defaults::IPV6_PREFIX_LEN) {
            len @ 1..=128 => len,
            len => {
                errs.push(
                    format!("{loc}.ipv6_prefix_len"),
                    format!("{len} is not a prefix length from 1 to 128"),
                );
                defaults::IPV6_PREFIX_LEN
            }
        },
        mode: super::mode(errs, &format!("{loc}.mode"), mode.as_deref()),
    }
}

fn quota(errs: &mut Errors, loc: &str, rate: u32, per: &str, burst: Option<u32>) -> Quota {
    let per = match per.parse::<Per>() {
        Ok(per) => per.duration(),
        Err(e) => {
            errs.push(format!("{loc}.per"), e.to_string());
            Per::Second.duration()
        }
    };
    if rate == 0 {
        errs.push(format!("{loc}.rate"), "must be greater than 0");
    }
    let burst = burst.unwrap_or(rate);
    if burst == 0 {
        errs.push(format!("{loc}.burst"), "must be greater than 0");
    }
    Quota { rate, per, burst }
}
