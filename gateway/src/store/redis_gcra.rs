//! GCRA in Redis: one Lua script, run atomically by Redis with Redis's own clock (`TIME`), so
//! every gateway sharing the store counts against one bucket per key and clock skew between
//! gateways does not matter.
//!
//! The bucket is its theoretical arrival time (TAT, microseconds since the epoch) in one
//! string key that expires when the bucket is full again, so idle keys cost Redis nothing.
//! The script is sent once per connection by `EVALSHA` (the `redis` crate loads it on
//! `NOSCRIPT`, e.g. after a Redis restart or `SCRIPT FLUSH`).

use std::sync::LazyLock;
use std::time::Duration;

use super::{Store, StoreError};
use crate::config::Quota;

/// KEYS[1] the bucket; ARGV[1] the emission interval T (µs); ARGV[2] the burst.
/// Returns {admitted (0/1), remaining, µs}: µs is the time until the bucket is full again
/// when admitted, and the wait until the next request would be admitted when refused.
/// Numbers are written with `%.0f`: Lua's default formatting would round them.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local next_tat = tat + interval
if next_tat - now > tolerance then
  return {0, 0, next_tat - tolerance - now}
end
local full_in = next_tat - now
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', string.format('%.0f', math.ceil(full_in / 1000)))
return {1, math.floor((tolerance - full_in) / interval), full_in}
";

static GCRA: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SCRIPT));

/// What Redis decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) admitted: bool,
    /// Requests still admitted right now.
    pub(crate) remaining: u32,
    /// Admitted: until the bucket is full again. Refused: until the next request is admitted.
    pub(crate) wait: Duration,
}

/// The emission interval of `quota` in whole microseconds (at least 1).
fn interval_us(quota: &Quota) -> u64 {
    let per = quota.per.as_micros() as u64;
    (per / u64::from(quota.rate.max(1))).max(1)
}

impl Store {
    /// Counts one request against bucket `key` (already prefixed) with `quota`.
    pub(crate) async fn gcra(&self, key: &str, quota: &Quota) -> Result<Verdict, StoreError> {
        let (interval, burst) = (interval_us(quota), quota.burst.max(1));
        let (admitted, remaining, wait): (i64, i64, i64) = self
            .run(|mut connection| async move {
                GCRA.key(key)
                    .arg(interval)
                    .arg(burst)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        Ok(Verdict {
            admitted: admitted == 1,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            wait: Duration::from_micros(wait.max(0) as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_the_period_over_the_rate_in_microseconds() {
        let q = |rate, per| Quota {
            rate,
            per: Duration::from_secs(per),
            burst: 1,
        };
        assert_eq!(interval_us(&q(50, 1)), 20_000);
        assert_eq!(interval_us(&q(10, 60)), 6_000_000);
        assert_eq!(interval_us(&q(u32::MAX, 1)), 1, "never 0");
    }
}
