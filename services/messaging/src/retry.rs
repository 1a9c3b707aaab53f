//! Redelivery with back-off: a delivery whose handler failed transiently is republished to the
//! consumer's retry exchange (`<prefix><consumer>.retry`, routing key the retry level) with a
//! per-message expiration; the level's quorum queue (`<prefix><consumer>.retry.<level>`)
//! dead-letters it back to the consumer's queue when it expires. Only then is the original
//! acked, so a crash in between redelivers it rather than losing it.
//!
//! The republished copy is the consumer's own publish (AMQP `user_id` = its broker user, the
//! only one allowed to write to its retry exchange), so it carries what the consumer must
//! still check: the original publisher and routing key, and the failures so far, in
//! `x-retry-*` headers. The consumer trusts those headers only on a delivery whose `user_id` is
//! its own user.
//!
//! Past [`ConsumerConfig::delivery_limit`](crate::ConsumerConfig) failures the delivery is
//! rejected and the queue dead-letters it to `<prefix><consumer>.dlq`, as before; a poison
//! message (unparseable, forged, permanent error) still goes there at once.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Channel;
use lapin::Confirmation;

use crate::topology::RETRY_LEVELS;
use crate::{MessagingError, Topology};

/// Failures so far (1 on the first retry).
const COUNT: &str = "x-retry-count";
/// The broker user that published the event originally.
const PUBLISHER: &str = "x-retry-publisher";
/// The routing key the event was published under originally.
const ROUTING_KEY: &str = "x-retry-routing-key";

/// How long a transiently failed delivery waits before its next attempt: `base` after the
/// first failure, doubled after each further one, never more than `max`. Defaults 1 s and
/// 60 s (`SHOP_RETRY_BASE_MS`, `SHOP_RETRY_MAX_MS` in the service kit). Use short delays in
/// tests, longer ones where a failing dependency needs time to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryBackoff {
    /// The wait after the `failures`-th failure (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

/// What a delivery that came back through the retry queues says about its first delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Retried {
    pub(crate) failures: u32,
    pub(crate) publisher: String,
    pub(crate) routing_key: String,
}

impl Retried {
    /// The retry headers of `delivery`, when it is the consumer's own republished copy
    /// (`user_id` = `own_user`); `None` for a first delivery.
    pub(crate) fn of(delivery: &Delivery, own_user: &str) -> Option<Retried> {
        let user = delivery.properties.user_id().as_ref()?;
        if user.as_str() != own_user {
            return None;
        }
        let headers = delivery.properties.headers().as_ref()?;
        let get = |key: &str| {
            headers
                .inner()
                .iter()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, v)| v)
        };
        let text = |key: &str| match get(key)? {
            AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        };
        let failures = match get(COUNT)? {
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok()?,
            AMQPValue::LongInt(n) => u32::try_from(*n).ok()?,
            _ => return None,
        };
        Some(Retried {
            failures,
            publisher: text(PUBLISHER)?,
            routing_key: text(ROUTING_KEY)?,
        })
    }
}

/// Republishes `delivery` to `consumer`'s retry level for its `failures`-th failure, to come
/// back after `delay`; `Ok(true)` once the broker has confirmed it.
pub(crate) async fn republish(
    ch: &Channel,
    topology: &Topology,
    consumer: &str,
    own_user: &str,
    delivery: &Delivery,
    original: &Retried,
    delay: Duration,
) -> Result<bool, MessagingError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    insert(
        &mut headers,
        COUNT,
        AMQPValue::LongLongInt(original.failures.into()),
    );
    for (key, value) in [
        (PUBLISHER, &original.publisher),
        (ROUTING_KEY, &original.routing_key),
    ] {
        insert(
            &mut headers,
            key,
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    let properties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_user_id(own_user.into())
        .with_expiration(delay.as_millis().max(1).to_string().as_str().into());
    let level = original.failures.clamp(1, RETRY_LEVELS);
    let confirm = ch
        .basic_publish(
            topology.retry_exchange(consumer).as_str().into(),
            level.to_string().as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &delivery.data,
            properties,
        )
        .await?
        .await?;
    Ok(matches!(
        confirm,
        Confirmation::Ack(None) | Confirmation::NotRequested
    ))
}

fn insert(headers: &mut FieldTable, key: &str, value: AMQPValue) {
    headers.insert(key.into(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let b = RetryBackoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        let delays: Vec<u128> = (1..=5).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(RetryBackoff::default().delay(1), Duration::from_secs(1));
        assert_eq!(RetryBackoff::default().delay(40), Duration::from_secs(60));
    }
}
