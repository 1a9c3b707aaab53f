//! payment's handler behind the real consumer, on the real broker (`AMQP_URL`, default the
//! local RabbitMQ) with its queue bound as `messaging::contract::PAYMENT` says.
//!
//! Run with `cargo test -p payment --test saga`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging::contract;
use messaging::events::{OrderCancelled, OrderPlaced, StockReserved};
use messaging::{Db, Handler, HandlerError, Incoming, Writer};
use payment::provider::{ChargeOutcome, ProviderConfig};
use payment::{PaymentHandler, Provider};
use test_support::ConsumerHarness;
use time::OffsetDateTime;

/// One provider call per charge (no retries).
fn one_call() -> ProviderConfig {
    ProviderConfig {
        decline_rate: 0.0,
        latency: Duration::ZERO,
        attempts: 1,
        retry_base: Duration::from_millis(1),
    }
}

/// The simulated provider on its own ledger file, which outlives the harness's database.
struct Ledger {
    path: std::path::PathBuf,
    provider: Provider,
    _dir: tempfile::TempDir,
}

impl Ledger {
    async fn open(config: ProviderConfig) -> Ledger {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("payment-provider.db");
        let provider = Provider::open(&path, config).await.unwrap();
        Ledger {
            path,
            provider,
            _dir: dir,
        }
    }

    /// The charges the provider made for `order_id` (its ledger, not payment's tables).
    async fn charges(&self, order_id: &str) -> u64 {
        self.provider.charges(order_id).await.unwrap()
    }
}

/// One provider call per charge, redeliveries after the default back-off.
async fn harness() -> (ConsumerHarness, Ledger) {
    harness_with(one_call(), messaging::RetryBackoff::default()).await
}

/// The handler with `provider`'s retries, behind a consumer redelivering with `redelivery`.
async fn harness_with(
    provider: ProviderConfig,
    redelivery: messaging::RetryBackoff,
) -> (ConsumerHarness, Ledger) {
    let ledger = Ledger::open(provider).await;
    let charging = ledger.provider.clone();
    let h = ConsumerHarness::start_with(
        &contract::PAYMENT,
        payment::MIGRATIONS,
        |db| Arc::new(PaymentHandler::new(db, charging)),
        |c| c.retry = redelivery,
    )
    .await;
    (h, ledger)
}

fn placed(order_id: &str, deadline: OffsetDateTime) -> OrderPlaced {
    placed_paying(order_id, deadline, "tok_visa")
}

/// `order.placed` paying with a test token of the simulated provider (`tok_visa` succeeds,
/// `tok_error` fails transiently every time).
fn placed_paying(order_id: &str, deadline: OffsetDateTime, token: &str) -> OrderPlaced {
    OrderPlaced {
        order_id: order_id.into(),
        user_id: "u-1".into(),
        items: vec![],
        total_cents: 1200,
        currency: "EUR".into(),
        payment_token: token.into(),
        payment_deadline: Some(deadline),
    }
}

/// The `reason` of the one event in the outbox.
async fn outbox_reason(h: &ConsumerHarness) -> String {
    h.db.call(|c| {
        c.query_row(
            "SELECT json_extract(CAST(payload AS TEXT), '$.data.reason') FROM outbox",
            [],
            |r| r.get(0),
        )
    })
    .await
    .unwrap()
}

fn reserved(order_id: &str) -> StockReserved {
    StockReserved {
        order_id: order_id.into(),
        items: vec![],
    }
}

fn cancelled(order_id: &str) -> OrderCancelled {
    OrderCancelled {
        order_id: order_id.into(),
        user_id: "u-1".into(),
        reason: "timeout".into(),
    }
}

async fn payments(h: &ConsumerHarness, order_id: &str) -> Vec<payment::domain::Payment> {
    let order_id = order_id.to_owned();
    h.db.call(move |c| payment::domain::list(c, None, Some(&order_id)))
        .await
        .unwrap()
}

/// Whether payment recorded a provider call as started for `order_id`.
/// `order_id` ended `FAILED` for `deadline_passed` without a provider call: one payment row
/// with 0 attempts, only a `payment.failed` saying so in the outbox, no charge in the ledger,
/// and no call recorded as started.
async fn assert_failed_past_deadline_uncharged(
    h: &ConsumerHarness,
    ledger: &Ledger,
    order_id: &str,
) {
    let p = payments(h, order_id).await;
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].status.as_str(), p[0].reason.as_deref(), p[0].attempts),
        ("FAILED", Some("deadline_passed"), 0)
    );
    assert_eq!(h.outbox_keys().await, ["payment.failed"]);
    assert_eq!(outbox_reason(h).await, "deadline_passed");
    assert_eq!(
        ledger.charges(order_id).await,
        0,
        "the provider was not called"
    );
    assert!(!call_started(h, order_id).await);
}

async fn call_started(h: &ConsumerHarness, order_id: &str) -> bool {
    let order_id = order_id.to_owned();
    h.db.call(move |c| payment::domain::call_started(c, &order_id))
        .await
        .unwrap()
}

/// When `p` was recorded.
fn recorded_at(p: &payment::domain::Payment) -> OffsetDateTime {
    OffsetDateTime::parse(
        &p.created_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

/// Waits until `n` deliveries were sent to the retry queues.
async fn wait_retried(h: &ConsumerHarness, n: u64) {
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    while h.settled("retried") < n {
        assert!(
            tokio::time::Instant::now() < until,
            "{} of {n} deliveries sent to the retry queue",
            h.settled("retried")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Once per order, not once per message: `stock.reserved` and `order.cancelled` re-published
/// under new ids charge and refund nothing more.
#[tokio::test]
async fn an_order_is_charged_once_and_refunded_once() {
    let (h, ledger) = harness().await;
    let later = OffsetDateTime::now_utc() + Duration::from_secs(300);
    h.publish("cart", &placed("o-1", later)).await;
    h.wait_settled(1).await;
    h.publish("inventory", &reserved("o-1")).await;
    h.wait_settled(2).await;
    h.publish("inventory", &reserved("o-1")).await;
    h.wait_settled(3).await;
    assert_eq!(h.settled("processed"), 3, "new message ids, no duplicates");
    let p = payments(&h, "o-1").await;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].status, "SUCCEEDED");
    assert_eq!(h.outbox_keys().await, ["payment.succeeded"]);
    assert_eq!(ledger.charges("o-1").await, 1, "the provider charged once");

    h.publish("orders", &cancelled("o-1")).await;
    h.publish("orders", &cancelled("o-1")).await;
    h.wait_settled(5).await;
    assert_eq!(payments(&h, "o-1").await[0].status, "REFUNDED");
    assert_eq!(
        h.outbox_keys().await,
        ["payment.succeeded", "payment.refunded"]
    );
    h.cleanup().await;
}

/// Issue 14: `stock.reserved` that arrives after the order's payment deadline (a broker outage
/// held it back) charges nothing; payment says why in `payment.failed`.
#[tokio::test]
async fn no_charge_starts_after_the_payment_deadline() {
    let (h, ledger) = harness().await;
    let passed = OffsetDateTime::now_utc() - Duration::from_secs(1);
    h.publish("cart", &placed("o-late", passed)).await;
    h.wait_settled(1).await;
    h.publish("inventory", &reserved("o-late")).await;
    h.wait_settled(2).await;
    assert_failed_past_deadline_uncharged(&h, &ledger, "o-late").await;

    // The cancellation that follows refunds nothing: nothing was charged.
    h.publish("orders", &cancelled("o-late")).await;
    h.wait_settled(3).await;
    assert_eq!(h.outbox_keys().await, ["payment.failed"]);
    h.cleanup().await;
}

/// Issue 14: the provider's retries (`PAYMENT_RETRY_ATTEMPTS`, back-off from
/// `PAYMENT_RETRY_BASE_MS`) check the deadline again: a call that failed transiently before
/// the deadline is not retried after it.
#[tokio::test]
async fn a_provider_retry_does_not_start_after_the_payment_deadline() {
    // The first call is made at once, well inside the 2 s; the retry would start after the
    // 3 s back-off, past the deadline.
    let (h, ledger) = harness_with(
        ProviderConfig {
            decline_rate: 0.0,
            latency: Duration::ZERO,
            attempts: 3,
            retry_base: Duration::from_secs(3),
        },
        messaging::RetryBackoff::default(),
    )
    .await;
    let soon = OffsetDateTime::now_utc() + Duration::from_secs(2);
    h.publish("cart", &placed_paying("o-flaky", soon, "tok_error"))
        .await;
    h.wait_settled(1).await;
    h.publish("inventory", &reserved("o-flaky")).await;
    h.wait_settled(2).await;
    let p = payments(&h, "o-flaky").await;
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].status.as_str(), p[0].reason.as_deref(), p[0].attempts),
        ("FAILED", Some("deadline_passed"), 1),
        "one call before the deadline, no retry after it"
    );
    assert_eq!(h.outbox_keys().await, ["payment.failed"]);
    assert_eq!(outbox_reason(&h).await, "deadline_passed");
    assert_eq!(ledger.charges("o-flaky").await, 0);
    h.cleanup().await;
}

/// Issue 14: a `stock.reserved` that comes back through the retry queues (here: it arrived
/// before the order's `order.placed`) is checked against the deadline again when it returns:
/// past it, `payment.failed` with `deadline_passed` and no charge, though the card would pay.
#[tokio::test]
async fn a_redelivery_after_the_payment_deadline_charges_nothing() {
    let (h, ledger) = harness_with(
        one_call(),
        messaging::RetryBackoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(4),
        },
    )
    .await;
    h.publish("inventory", &reserved("o-early")).await;
    // stock.reserved before order.placed goes to the retry queue.
    wait_retried(&h, 1).await;
    // The deadline passes while stock.reserved waits out its 2 s back-off.
    let soon = OffsetDateTime::now_utc() + Duration::from_millis(500);
    h.publish("cart", &placed("o-early", soon)).await;
    h.wait_settled(2).await;
    assert_failed_past_deadline_uncharged(&h, &ledger, "o-early").await;
    h.cleanup().await;
}

/// A `stock.reserved` of an order already cancelled, whose provider call was never started,
/// calls nothing (as before a call is started, cancellation and deadline stop it).
#[tokio::test]
async fn a_cancelled_order_whose_call_never_started_is_not_charged() {
    let (h, ledger) = harness().await;
    let later = OffsetDateTime::now_utc() + Duration::from_secs(300);
    h.publish("cart", &placed("o-gone", later)).await;
    h.publish("orders", &cancelled("o-gone")).await;
    h.wait_settled(2).await;
    h.publish("inventory", &reserved("o-gone")).await;
    h.wait_settled(3).await;
    assert_eq!(payments(&h, "o-gone").await, []);
    assert_eq!(h.outbox_keys().await, Vec::<String>::new());
    assert_eq!(ledger.charges("o-gone").await, 0);
    assert!(!call_started(&h, "o-gone").await);
    h.cleanup().await;
}

/// Redeliveries 2 s after a failure: long enough for a 1 s deadline to pass in between.
fn slow_redelivery() -> messaging::RetryBackoff {
    messaging::RetryBackoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(4),
    }
}

/// The bug this guards against: the provider charged, the transaction recording it failed,
/// and the redelivery came after orders had cancelled the order for its timeout. The
/// redelivery used to see a cancelled, late order and call nothing, so the charge was never
/// recorded nor refunded. Now the call, started before, is repeated: the provider answers
/// with the first charge (no second one), payment records it and refunds it.
#[tokio::test]
async fn a_charge_whose_recording_failed_is_recorded_and_refunded_after_the_cancellation() {
    let (h, ledger) = harness_with(one_call(), slow_redelivery()).await;
    let deadline = OffsetDateTime::now_utc() + Duration::from_secs(1);
    h.publish("cart", &placed("o-lost", deadline)).await;
    h.wait_settled(1).await;
    // Recording any payment fails until the trigger is dropped.
    h.db.call(|c| {
        c.execute_batch(
            "CREATE TRIGGER recording_fails BEFORE INSERT ON payments
             BEGIN SELECT RAISE(ABORT, 'the recording transaction fails (test)'); END;",
        )
    })
    .await
    .unwrap();
    h.publish("inventory", &reserved("o-lost")).await;
    wait_retried(&h, 1).await;
    assert_eq!(ledger.charges("o-lost").await, 1, "the provider charged");
    assert_eq!(payments(&h, "o-lost").await, [], "but nothing was recorded");
    assert!(call_started(&h, "o-lost").await);
    h.db.call(|c| c.execute_batch("DROP TRIGGER recording_fails"))
        .await
        .unwrap();

    // orders cancels the order for its timeout before stock.reserved comes back.
    h.publish("orders", &cancelled("o-lost")).await;
    h.wait_settled(2).await;
    assert_eq!(
        h.outbox_keys().await,
        Vec::<String>::new(),
        "nothing to refund yet"
    );

    h.wait_settled(3).await;
    let p = payments(&h, "o-lost").await;
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        recorded_at(&p[0]) > deadline,
        "recorded after the deadline: {p:?}"
    );
    assert_eq!(
        (p[0].status.as_str(), p[0].reason.as_deref()),
        ("REFUNDED", Some("order_cancelled"))
    );
    assert_eq!(
        h.outbox_keys().await,
        ["payment.succeeded", "payment.refunded"]
    );
    assert_eq!(ledger.charges("o-lost").await, 1, "charged once, not twice");
    h.cleanup().await;
}

/// [`PaymentHandler`] in a process that dies after its first provider call answered, before
/// the transaction recording the answer commits: the delivery fails (it is redelivered, as an
/// unacked one is after a crash) and the next one goes to a new handler, on a provider reopened
/// from its ledger file, as after a restart.
struct DiesOnceAfterTheCall {
    db: Db,
    ledger: std::path::PathBuf,
    config: ProviderConfig,
    current: Mutex<Arc<PaymentHandler>>,
    died: AtomicBool,
}

#[async_trait::async_trait]
impl Handler for DiesOnceAfterTheCall {
    type Prepared = Option<ChargeOutcome>;

    fn prepares(&self, msg: &Incoming) -> bool {
        self.current.lock().unwrap().prepares(msg)
    }

    async fn prepare(&self, msg: &Incoming) -> Result<Option<ChargeOutcome>, HandlerError> {
        let handler = self.current.lock().unwrap().clone();
        let prepared = handler.prepare(msg).await?;
        if prepared.is_some() && !self.died.swap(true, Ordering::SeqCst) {
            let provider = Provider::open(&self.ledger, self.config.clone())
                .await
                .unwrap();
            *self.current.lock().unwrap() =
                Arc::new(PaymentHandler::new(self.db.clone(), provider));
            return Err(HandlerError::Transient(format!(
                "the process died before recording {prepared:?}"
            )));
        }
        Ok(prepared)
    }

    fn apply(
        &self,
        tx: &Writer<'_>,
        msg: &Incoming,
        prepared: Option<ChargeOutcome>,
    ) -> Result<(), HandlerError> {
        self.current.lock().unwrap().apply(tx, msg, prepared)
    }
}

/// The bug's other half: the process dies between the provider's charge and its recording,
/// and the redelivery comes after the deadline (the order not cancelled yet). The call,
/// started before, is repeated: the charge is recorded (`payment.succeeded`, which orders
/// ignores for a timed-out order) and refunded on the cancellation that follows.
#[tokio::test]
async fn a_charge_lost_with_the_process_is_recorded_after_the_deadline_and_refunded() {
    let ledger = Ledger::open(one_call()).await;
    let path = ledger.path.clone();
    let first = ledger.provider.clone();
    let h = ConsumerHarness::start_with(
        &contract::PAYMENT,
        payment::MIGRATIONS,
        |db| {
            Arc::new(DiesOnceAfterTheCall {
                current: Mutex::new(Arc::new(PaymentHandler::new(db.clone(), first))),
                db,
                ledger: path,
                config: one_call(),
                died: AtomicBool::new(false),
            })
        },
        |c| c.retry = slow_redelivery(),
    )
    .await;
    let deadline = OffsetDateTime::now_utc() + Duration::from_secs(1);
    h.publish("cart", &placed("o-crash", deadline)).await;
    h.wait_settled(1).await;
    h.publish("inventory", &reserved("o-crash")).await;
    wait_retried(&h, 1).await;
    assert_eq!(ledger.charges("o-crash").await, 1, "the provider charged");
    assert_eq!(
        payments(&h, "o-crash").await,
        [],
        "but nothing was recorded"
    );

    h.wait_settled(2).await;
    let p = payments(&h, "o-crash").await;
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        recorded_at(&p[0]) > deadline,
        "recorded after the deadline: {p:?}"
    );
    assert_eq!(
        (p[0].status.as_str(), p[0].reason.as_deref(), p[0].attempts),
        ("SUCCEEDED", None, 1)
    );
    assert_eq!(h.outbox_keys().await, ["payment.succeeded"]);

    // orders cancels the order for its timeout: the recorded charge is refunded.
    h.publish("orders", &cancelled("o-crash")).await;
    h.wait_settled(3).await;
    assert_eq!(payments(&h, "o-crash").await[0].status, "REFUNDED");
    assert_eq!(
        h.outbox_keys().await,
        ["payment.succeeded", "payment.refunded"]
    );
    assert_eq!(
        ledger.charges("o-crash").await,
        1,
        "charged once, not twice"
    );
    h.cleanup().await;
}
