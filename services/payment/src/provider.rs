//! The simulated card provider and its ledger.
//!
//! The provider is idempotent per idempotency key (payment uses the order id), as a real one is
//! (Stripe's `Idempotency-Key`): the first call for a key that charges or declines is kept, and
//! every later call with that key gets the same answer and charges nothing more. A transient
//! failure keeps nothing (nothing was charged), so the next call for that key is a fresh one.
//!
//! What the provider keeps lives in its *ledger*, an SQLite file of its own
//! (`PAYMENT_PROVIDER_LEDGER`, default the payment database's path with `-provider.db` in place
//! of `.db`, see [`crate::Config`]). It stands for the provider's side of the wire: payment's
//! transactions never touch it, so a charge stays made when payment's transaction recording it
//! rolls back or the process dies first, and it survives a payment restart. Two tables:
//! `provider_charges` (one row per money movement, append-only) and `provider_idempotency`
//! (the kept answer per key).

use std::path::Path;
use std::time::Duration;

use messaging::Db;
use rusqlite::{params, Connection, OptionalExtension};
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
    /// `attempts` counts the calls of this [`Provider::charge`]; a repeated call answered from
    /// the ledger counts as one.
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

/// One charge as sent to the provider. No `Debug`: the card token stays out of logs.
#[derive(Clone, Copy)]
pub struct ChargeRequest<'a> {
    /// The idempotency key: every call with it after the first that charged or declined gets
    /// that first answer. Payment uses the order id.
    pub key: &'a str,
    /// The card token (`tok_visa`, `tok_declined`, `tok_error`). Not kept in the ledger.
    pub token: &'a str,
    pub amount_cents: i64,
    pub currency: &'a str,
}

/// The ledger's tables; [`Provider::open`] creates them.
pub const LEDGER_SCHEMA: &str = "
-- Money the provider took: one row per charge, never updated.
CREATE TABLE IF NOT EXISTS provider_charges (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL,
    currency        TEXT NOT NULL,
    at              TEXT NOT NULL
);
-- The answer kept per idempotency key: the first call that charged or declined.
CREATE TABLE IF NOT EXISTS provider_idempotency (
    idempotency_key TEXT PRIMARY KEY,
    result          TEXT NOT NULL CHECK (result IN ('charged', 'declined')),
    charge_id       INTEGER REFERENCES provider_charges (id),
    at              TEXT NOT NULL
);
";

/// The simulated provider: its behaviour ([`ProviderConfig`]) and its ledger. Cheap to clone
/// (the ledger connection is shared).
#[derive(Debug, Clone)]
pub struct Provider {
    config: ProviderConfig,
    ledger: Db,
}

/// One provider call, before retries.
enum Call {
    Ok,
    Declined,
    Transient,
}

impl Provider {
    /// Opens (creating if needed) the ledger at `path`; its directory must exist. Every
    /// ledger commit is synced to disk (`synchronous = FULL`): a provider does not forget a
    /// charge it made, not even across a power loss.
    pub async fn open(path: &Path, config: ProviderConfig) -> Result<Self, rusqlite::Error> {
        let ledger = Db::open(path)?;
        ledger
            .call(|c| {
                c.pragma_update(None, "synchronous", "FULL")?;
                c.execute_batch(LEDGER_SCHEMA)
            })
            .await?;
        Ok(Self { config, ledger })
    }

    /// Charges `request`, retrying transient failures with exponential back-off. Idempotent
    /// per `request.key`: a repeated call (after a crash, a failed commit, a redelivery) gets
    /// the first answer and charges nothing more.
    ///
    /// No attempt starts after `deadline_ms` (the order's `payment_deadline`, Unix ms; `None`:
    /// no deadline): it is checked before the first call and again before every retry, because
    /// a back-off can outlast it. Past it, the answer is [`ChargeOutcome::DeadlinePassed`] and
    /// nothing more is called: orders cancels the order for its timeout, and a charge made now
    /// would only be refunded.
    ///
    /// `resumed`: a call for this key was already started (maybe charged) before, and its
    /// answer was lost. The first attempt is then made whatever the deadline, to learn that
    /// answer (repeating the call is the only way to); retries after a transient failure check
    /// the deadline as always.
    pub async fn charge(
        &self,
        request: &ChargeRequest<'_>,
        deadline_ms: Option<i64>,
        resumed: bool,
    ) -> ChargeOutcome {
        let mut attempt = 0;
        loop {
            let checked = attempt > 0 || !resumed;
            if checked && deadline_ms.is_some_and(|d| messaging::clock::now_ms() > d) {
                return ChargeOutcome::DeadlinePassed { attempts: attempt };
            }
            attempt += 1;
            if !self.config.latency.is_zero() {
                tokio::time::sleep(self.config.latency).await;
            }
            match self.call(request).await {
                Call::Ok => return ChargeOutcome::Succeeded { attempts: attempt },
                Call::Declined => return ChargeOutcome::Declined { attempts: attempt },
                Call::Transient if attempt >= self.config.attempts => {
                    return ChargeOutcome::Failed { attempts: attempt }
                }
                Call::Transient => {
                    let delay = self.config.retry_base * 2u32.pow(attempt - 1);
                    tracing::debug!(attempt, ?delay, "Provider failed transiently; retrying.");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// How many charges the ledger holds for `key`: 1 once charged, never more.
    pub async fn charges(&self, key: &str) -> Result<u64, rusqlite::Error> {
        let key = key.to_owned();
        self.ledger
            .call(move |c| {
                c.query_row(
                    "SELECT count(*) FROM provider_charges WHERE idempotency_key = ?1",
                    [key],
                    |r| r.get(0),
                )
            })
            .await
    }

    /// One call, on the provider's side: the kept answer for the key, or a fresh decision kept
    /// (with the charge) in one ledger transaction. A ledger that cannot be read or written is
    /// the provider failing transiently: nothing was charged.
    async fn call(&self, request: &ChargeRequest<'_>) -> Call {
        let decline_rate = self.config.decline_rate;
        let token = request.token.to_owned();
        let key = request.key.to_owned();
        let amount_cents = request.amount_cents;
        let currency = request.currency.to_owned();
        let answered = self
            .ledger
            .call(move |c| {
                answer(c, &key, amount_cents, &currency, || {
                    decide(decline_rate, &token)
                })
            })
            .await;
        answered.unwrap_or_else(|error| {
            tracing::warn!(%error, "The provider's ledger failed; a transient provider error.");
            Call::Transient
        })
    }
}

/// What the card itself says, for a key the provider has no answer for yet.
fn decide(decline_rate: f64, token: &str) -> Call {
    match token {
        "tok_visa" if decline_rate > 0.0 && rand::random::<f64>() < decline_rate => Call::Declined,
        "tok_visa" => Call::Ok,
        "tok_error" => Call::Transient,
        _ => Call::Declined,
    }
}

/// The kept answer for `key`, or `fresh()` kept: a charge or a decline, with the charge's
/// row, in one transaction; a transient failure keeps nothing.
fn answer(
    conn: &mut Connection,
    key: &str,
    amount_cents: i64,
    currency: &str,
    fresh: impl FnOnce() -> Call,
) -> Result<Call, rusqlite::Error> {
    let tx = conn.transaction()?;
    let kept: Option<String> = tx
        .query_row(
            "SELECT result FROM provider_idempotency WHERE idempotency_key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(result) = kept {
        return Ok(if result == "charged" {
            Call::Ok
        } else {
            Call::Declined
        });
    }
    let call = fresh();
    let now = messaging::clock::now_rfc3339();
    match call {
        Call::Ok => {
            tx.execute(
                "INSERT INTO provider_charges (idempotency_key, amount_cents, currency, at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![key, amount_cents, currency, now],
            )?;
            tx.execute(
                "INSERT INTO provider_idempotency (idempotency_key, result, charge_id, at)
                 VALUES (?1, 'charged', ?2, ?3)",
                params![key, tx.last_insert_rowid(), now],
            )?;
        }
        Call::Declined => {
            tx.execute(
                "INSERT INTO provider_idempotency (idempotency_key, result, charge_id, at)
                 VALUES (?1, 'declined', NULL, ?2)",
                params![key, now],
            )?;
        }
        Call::Transient => {}
    }
    tx.commit()?;
    Ok(call)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(retry_base: Duration) -> ProviderConfig {
        ProviderConfig {
            decline_rate: 0.0,
            latency: Duration::ZERO,
            attempts: 3,
            retry_base,
        }
    }

    /// A provider on a fresh ledger file in `dir`.
    async fn provider(dir: &tempfile::TempDir, config: ProviderConfig) -> Provider {
        Provider::open(&dir.path().join("provider.db"), config)
            .await
            .unwrap()
    }

    fn request<'a>(key: &'a str, token: &'a str) -> ChargeRequest<'a> {
        ChargeRequest {
            key,
            token,
            amount_cents: 1200,
            currency: "EUR",
        }
    }

    #[tokio::test]
    async fn test_tokens_behave_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(&dir, config(Duration::from_millis(1))).await;
        assert_eq!(
            p.charge(&request("o-visa", "tok_visa"), None, false).await,
            ChargeOutcome::Succeeded { attempts: 1 }
        );
        assert_eq!(
            p.charge(&request("o-declined", "tok_declined"), None, false)
                .await,
            ChargeOutcome::Declined { attempts: 1 }
        );
        assert_eq!(
            p.charge(&request("o-error", "tok_error"), None, false)
                .await,
            ChargeOutcome::Failed { attempts: 3 }
        );
        assert_eq!(p.charges("o-visa").await.unwrap(), 1);
        assert_eq!(p.charges("o-declined").await.unwrap(), 0);
        assert_eq!(p.charges("o-error").await.unwrap(), 0);
        let always = Provider {
            config: ProviderConfig {
                decline_rate: 1.0,
                ..p.config.clone()
            },
            ..p
        };
        assert_eq!(
            always
                .charge(&request("o-unlucky", "tok_visa"), None, false)
                .await,
            ChargeOutcome::Declined { attempts: 1 }
        );
    }

    /// The same key gets the first answer that charged or declined, from the ledger file (so
    /// also after a restart), and money moves once.
    #[tokio::test]
    async fn a_repeated_key_gets_the_first_answer_and_charges_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(&dir, config(Duration::from_millis(1))).await;
        let visa = request("o-1", "tok_visa");
        for _ in 0..3 {
            assert_eq!(
                p.charge(&visa, None, false).await,
                ChargeOutcome::Succeeded { attempts: 1 }
            );
        }
        assert_eq!(p.charges("o-1").await.unwrap(), 1, "charged once");

        // A decline is kept too: the same card under a lucky decline rate stays declined.
        let declining = Provider {
            config: ProviderConfig {
                decline_rate: 1.0,
                ..config(Duration::from_millis(1))
            },
            ledger: p.ledger.clone(),
        };
        assert_eq!(
            declining
                .charge(&request("o-2", "tok_visa"), None, false)
                .await,
            ChargeOutcome::Declined { attempts: 1 }
        );
        assert_eq!(
            p.charge(&request("o-2", "tok_visa"), None, false).await,
            ChargeOutcome::Declined { attempts: 1 }
        );
        assert_eq!(p.charges("o-2").await.unwrap(), 0);

        // The ledger outlives the process: a provider reopened on the same file answers alike.
        drop((p, declining));
        let reopened = provider(&dir, config(Duration::from_millis(1))).await;
        assert_eq!(
            reopened.charge(&visa, None, false).await,
            ChargeOutcome::Succeeded { attempts: 1 }
        );
        assert_eq!(
            reopened
                .charge(&request("o-2", "tok_visa"), None, false)
                .await,
            ChargeOutcome::Declined { attempts: 1 }
        );
        assert_eq!(reopened.charges("o-1").await.unwrap(), 1);
        assert_eq!(reopened.charges("o-2").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn no_attempt_starts_after_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(&dir, config(Duration::from_millis(300))).await;
        let now = messaging::clock::now_ms();
        // Passed already: not even the first call.
        assert_eq!(
            p.charge(&request("o-late", "tok_visa"), Some(now - 1), false)
                .await,
            ChargeOutcome::DeadlinePassed { attempts: 0 }
        );
        assert_eq!(p.charges("o-late").await.unwrap(), 0);
        // Passes during the first back-off (300 ms): the retry is not made.
        assert_eq!(
            p.charge(&request("o-flaky", "tok_error"), Some(now + 100), false)
                .await,
            ChargeOutcome::DeadlinePassed { attempts: 1 }
        );
        assert_eq!(
            p.charge(&request("o-soon", "tok_visa"), Some(now + 60_000), false)
                .await,
            ChargeOutcome::Succeeded { attempts: 1 }
        );
    }

    /// A resumed call repeats the first attempt past the deadline to learn the kept answer,
    /// and checks the deadline before its retries.
    #[tokio::test]
    async fn a_resumed_call_is_repeated_past_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider(&dir, config(Duration::from_millis(1))).await;
        let visa = request("o-1", "tok_visa");
        let later = messaging::clock::now_ms() + 60_000;
        assert_eq!(
            p.charge(&visa, Some(later), false).await,
            ChargeOutcome::Succeeded { attempts: 1 }
        );
        let passed = messaging::clock::now_ms() - 1;
        assert_eq!(
            p.charge(&visa, Some(passed), false).await,
            ChargeOutcome::DeadlinePassed { attempts: 0 },
            "not resumed: the deadline stops it"
        );
        assert_eq!(
            p.charge(&visa, Some(passed), true).await,
            ChargeOutcome::Succeeded { attempts: 1 },
            "resumed: the first answer"
        );
        assert_eq!(p.charges("o-1").await.unwrap(), 1);
        assert_eq!(
            p.charge(&request("o-error", "tok_error"), Some(passed), true)
                .await,
            ChargeOutcome::DeadlinePassed { attempts: 1 },
            "one repeated call, no retry after the deadline"
        );
    }
}
