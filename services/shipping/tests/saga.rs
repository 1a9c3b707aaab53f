//! shipping's handler behind the real consumer, on the real broker (`AMQP_URL`, default the
//! local RabbitMQ) with its queue bound as `messaging::contract::SHIPPING` says.
//!
//! Run with `cargo test -p shipping --test saga`.

use std::sync::Arc;
use std::time::Duration;

use messaging::contract;
use messaging::events::{OrderCancelled, OrderPaid};
use shipping::ShippingHandler;
use test_support::ConsumerHarness;

async fn harness() -> ConsumerHarness {
    ConsumerHarness::start(&contract::SHIPPING, shipping::MIGRATIONS, |_| {
        Arc::new(ShippingHandler {
            delay: Duration::ZERO,
        })
    })
    .await
}

fn paid(order_id: &str) -> OrderPaid {
    OrderPaid {
        order_id: order_id.into(),
        user_id: "u-1".into(),
        payment_id: "p-1".into(),
        amount_cents: 1200,
    }
}

async fn shipments(h: &ConsumerHarness, order_id: &str) -> usize {
    let order_id = order_id.to_owned();
    h.db.call(move |c| shipping::list(c, None, Some(&order_id)))
        .await
        .unwrap()
        .len()
}

/// The guard is live: shipping's queue receives `order.cancelled` (the contract binds it), and
/// an `order.paid` of that order afterwards ships nothing.
#[tokio::test]
async fn a_cancelled_order_never_ships() {
    let h = harness().await;
    h.publish(
        "orders",
        &OrderCancelled {
            order_id: "o-cancelled".into(),
            user_id: "u-1".into(),
            reason: "timeout".into(),
        },
    )
    .await;
    h.wait_settled(1).await;
    assert_eq!(
        h.settled("processed"),
        1,
        "order.cancelled reached shipping"
    );
    h.publish("orders", &paid("o-cancelled")).await;
    h.publish("orders", &paid("o-fine")).await;
    h.wait_settled(3).await;
    assert_eq!(shipments(&h, "o-cancelled").await, 0);
    assert_eq!(shipments(&h, "o-fine").await, 1, "a paid order still ships");
    assert_eq!(h.outbox_keys().await, ["shipment.scheduled"]);
    h.cleanup().await;
}

/// Once per order, not once per message: `order.paid` re-published under a new id ships nothing
/// more.
#[tokio::test]
async fn an_order_paid_twice_ships_once() {
    let h = harness().await;
    h.publish("orders", &paid("o-twice")).await;
    h.wait_settled(1).await;
    h.publish("orders", &paid("o-twice")).await;
    h.wait_settled(2).await;
    assert_eq!(
        h.settled("processed"),
        2,
        "two messages, neither a duplicate id"
    );
    assert_eq!(shipments(&h, "o-twice").await, 1);
    assert_eq!(h.outbox_keys().await, ["shipment.scheduled"]);
    h.cleanup().await;
}
