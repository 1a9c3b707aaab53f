//! The simulated provider.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// `PAYMENT_DECLINE_RATE`, default 0: share (0..1) of good charges declined anyway.
    pub decline_rate: f64,
    /// `PAYMENT_LATENCY_MS`, default 0: added to every provider call.
    pub latency: Duration,
    /// `PAYMENT_RETRY_ATTEMPTS`, default 3: calls made for a transient failure before giving up.
    pub attempts: u32,
    /// `PAYMENT_RETRY_BASE_MS`, default 50: first back-off, doubled per retry.
    pub retry_base: Duration,
}

/// What the provider said, after retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ChargeOutcome {
    Succeeded {
        attempts: u32,
    },
    Declined {
        attempts: u32,
    },
    /// Transient failures on every attempt.
    Failed {
        attempts: u32,
    },
    /// The order's `payment_deadline` had passed before an attempt would start: that attempt,
    /// and any after it, were not made. `attempts` counts the calls made before it (all of
    /// them transient failures, so nothing was charged); 0 when the deadline had passed before
    /// the first.
    DeadlinePassed {
        attempts: u32,
    },
}

enum Call {
    Ok,
    Declined,
    Transient,
}

fn call(config: &ProviderConfig, token: &str) -> Call {
    match token {
        "tok_visa" if config.decline_rate > 0.0 && rand::random::<f64>() < config.decline_rate => {
            Call::Declined
        }
        "tok_visa" => Call::Ok,
        "tok_error" => Call::Transient,
        _ => Call::Declined,
    }
}

/// Charges `token`, retrying transient failures with exponential back-off. The provider is
/// idempotent per order (its idempotency key would be the order id), so a repeated call after a
/// crash does not charge twice.
///
/// No attempt starts after `deadline_ms` (the order's `payment_deadline`, Unix ms; `None`: no
/// deadline): it is checked before the first call and again before every retry, because a
/// back-off can outlast it. Past it, the answer is [`ChargeOutcome::DeadlinePassed`] and
/// nothing more is called: orders cancels the order for its timeout, and a charge made now
/// would only be refunded.
pub async fn charge(
    config: &ProviderConfig,
    token: &str,
    deadline_ms: Option<i64>,
) -> ChargeOutcome {
    let mut attempt = 0;
    loop {
        if deadline_ms.is_some_and(|d| messaging::clock::now_ms() > d) {
            return ChargeOutcome::DeadlinePassed { attempts: attempt };
        }
        attempt += 1;
        if !config.latency.is_zero() {
            tokio::time::sleep(config.latency).await;
        }
        match call(config, token) {
            Call::Ok => return ChargeOutcome::Succeeded { attempts: attempt },
            Call::Declined => return ChargeOutcome::Declined { attempts: attempt },
            Call::Transient if attempt >= config.attempts => {
                return ChargeOutcome::Failed { attempts: attempt }
            }
            Call::Transient => {
                let delay = config.retry_base * 2u32.pow(attempt - 1);
                tracing::debug!(attempt, ?delay, "Provider failed transiently; retrying.");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn test_tokens_behave_as_documented() {
        let c = ProviderConfig {
            decline_rate: 0.0,
            latency: Duration::ZERO,
            attempts: 3,
            retry_base: Duration::from_millis(1),
        };
        assert_eq!(
            charge(&c, "tok_visa", None).await,
            ChargeOutcome::Succeeded { attempts: 1 }
        );
        assert_eq!(
            charge(&c, "tok_declined", None).await,
            ChargeOutcome::Declined { attempts: 1 }
        );
        assert_eq!(
            charge(&c, "tok_error", None).await,
            ChargeOutcome::Failed { attempts: 3 }
        );
        let always = ProviderConfig {
            decline_rate: 1.0,
            ..c
        };
        assert_eq!(
            charge(&always, "tok_visa", None).await,
            ChargeOutcome::Declined { attempts: 1 }
        );
    }

    #[tokio::test]
    async fn no_attempt_starts_after_the_deadline() {
        let c = ProviderConfig {
            decline_rate: 0.0,
            latency: Duration::ZERO,
            attempts: 3,
            retry_base: Duration::from_millis(300),
        };
        let now = messaging::clock::now_ms();
        // Passed already: not even the first call.
        assert_eq!(
            charge(&c, "tok_visa", Some(now - 1)).await,
            ChargeOutcome::DeadlinePassed { attempts: 0 }
        );
        // Passes during the first back-off (300 ms): the retry is not made.
        assert_eq!(
            charge(&c, "tok_error", Some(now + 100)).await,
            ChargeOutcome::DeadlinePassed { attempts: 1 }
        );
        assert_eq!(
            charge(&c, "tok_visa", Some(now + 60_000)).await,
            ChargeOutcome::Succeeded { attempts: 1 }
        );
    }
}
