//! payment's handler behind the real consumer, on the real broker (`AMQP_URL`, default the
//! local RabbitMQ) with its queue bound as `messaging::contract::PAYMENT` says.
//!
//! Run with `cargo test -p payment --test saga`.

use std::sync::Arc;
use std::time::Duration;

use messaging::contract;
use messaging::events::{OrderCancelled, OrderPlaced, StockReserved};
use payment::provider::ProviderConfig;
use payment::PaymentHandler;
use test_support::ConsumerHarness;
use time::OffsetDateTime;

async fn harness() -> ConsumerHarness {
    ConsumerHarness::start(&contract::PAYMENT, payment::MIGRATIONS, |db| {
        Arc::new(PaymentHandler::new(
            db,
            ProviderConfig {
                decline_rate: 0.0,
                latency: Duration::ZERO,
                attempts: 1,
                retry_base: Duration::from_millis(1),
            },
        ))
    })
    .await
}

fn placed(order_id: &str, deadline: OffsetDateTime) -> OrderPlaced {
    OrderPlaced {
        order_id: order_id.into(),
        user_id: "u-1".into(),
        items: vec![],
        total_cents: 1200,
        currency: "EUR".into(),
        payment_token: "tok_visa".into(),
        payment_deadline: Some(deadline),
    }
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

/// Once per order, not once per message: `stock.reserved` and `order.cancelled` re-published
/// under new ids charge and refund nothing more.
#[tokio::test]
async fn an_order_is_charged_once_and_refunded_once() {
    let h = harness().await;
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
    let h = harness().await;
    let passed = OffsetDateTime::now_utc() - Duration::from_secs(1);
    h.publish("cart", &placed("o-late", passed)).await;
    h.wait_settled(1).await;
    h.publish("inventory", &reserved("o-late")).await;
    h.wait_settled(2).await;
    let p = payments(&h, "o-late").await;
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].status.as_str(), p[0].reason.as_deref(), p[0].attempts),
        ("FAILED", Some("deadline_passed"), 0)
    );
    assert_eq!(h.outbox_keys().await, ["payment.failed"]);
    let reason: String =
        h.db.call(|c| {
            c.query_row(
                "SELECT json_extract(CAST(payload AS TEXT), '$.data.reason') FROM outbox",
                [],
                |r| r.get(0),
            )
        })
        .await
        .unwrap();
    assert_eq!(reason, "deadline_passed");

    // The cancellation that follows refunds nothing: nothing was charged.
    h.publish("orders", &cancelled("o-late")).await;
    h.wait_settled(3).await;
    assert_eq!(h.outbox_keys().await, ["payment.failed"]);
    h.cleanup().await;
}
