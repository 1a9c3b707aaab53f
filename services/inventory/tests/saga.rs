//! inventory's handler behind the real consumer, on the real broker (`AMQP_URL`, default the
//! local RabbitMQ) with its queue bound as `messaging::contract::INVENTORY` says.
//!
//! Run with `cargo test -p inventory --test saga`.

use std::sync::Arc;

use inventory::domain;
use inventory::InventoryHandler;
use messaging::contract;
use messaging::events::{OrderCancelled, OrderLine, OrderPlaced};
use test_support::ConsumerHarness;

/// The "Pager lamp (limited)" of the demo catalogue.
const LAMP: &str = "0b7c6f1e-5a3e-4b7e-9a51-3f1d2c000006";

async fn harness() -> ConsumerHarness {
    let h = ConsumerHarness::start(&contract::INVENTORY, inventory::MIGRATIONS, |_| {
        Arc::new(InventoryHandler::new(0.0))
    })
    .await;
    h.db.call(domain::seed).await.unwrap();
    h
}

fn placed(order_id: &str, quantity: u32) -> OrderPlaced {
    OrderPlaced {
        order_id: order_id.into(),
        user_id: "u-1".into(),
        items: vec![OrderLine {
            product_id: LAMP.into(),
            quantity,
            price_cents: 9900,
        }],
        total_cents: 9900 * i64::from(quantity),
        currency: "EUR".into(),
        payment_token: "tok_visa".into(),
        payment_deadline: None,
    }
}

async fn lamp(h: &ConsumerHarness) -> domain::Stock {
    h.db.call(|c| domain::stock(c, LAMP))
        .await
        .unwrap()
        .unwrap()
}

async fn set_available(h: &ConsumerHarness, available: i64) {
    h.db.call(move |c| domain::set_available(c, LAMP, available))
        .await
        .unwrap();
}

/// Issue 14: an order rejected for want of stock, whose `order.placed` comes again under a new
/// message id once stock is back, reserves nothing: the decision is per order, not per message.
#[tokio::test]
async fn an_order_placed_again_after_a_rejection_reserves_nothing() {
    let h = harness().await;
    set_available(&h, 0).await;
    h.publish("cart", &placed("o-rejected", 1)).await;
    h.wait_settled(1).await;
    assert_eq!(h.outbox_keys().await, ["stock.rejected"]);

    set_available(&h, 3).await;
    h.publish("cart", &placed("o-rejected", 1)).await;
    h.wait_settled(2).await;
    assert_eq!(
        h.settled("processed"),
        2,
        "a new message id, not a duplicate"
    );
    let stock = lamp(&h).await;
    assert_eq!((stock.available, stock.reserved), (3, 0), "{stock:?}");
    assert_eq!(h.outbox_keys().await, ["stock.rejected"], "decided once");

    // Another order still reserves: the guard is per order.
    h.publish("cart", &placed("o-other", 1)).await;
    h.wait_settled(3).await;
    assert_eq!(lamp(&h).await.reserved, 1);
    assert_eq!(h.outbox_keys().await, ["stock.rejected", "stock.reserved"]);
    h.cleanup().await;
}

/// An order cancelled before inventory handled its `order.placed` (that message was
/// dead-lettered, then replayed from the DLQ) reserves nothing when it finally comes.
#[tokio::test]
async fn an_order_cancelled_before_its_order_placed_reserves_nothing() {
    let h = harness().await;
    h.publish(
        "orders",
        &OrderCancelled {
            order_id: "o-late".into(),
            user_id: "u-1".into(),
            reason: "timeout".into(),
        },
    )
    .await;
    h.wait_settled(1).await;
    h.publish("cart", &placed("o-late", 2)).await;
    h.wait_settled(2).await;
    let stock = lamp(&h).await;
    assert_eq!((stock.available, stock.reserved), (3, 0), "{stock:?}");
    assert_eq!(h.outbox_keys().await, Vec::<String>::new());
    h.cleanup().await;
}

/// A reserved order whose `order.placed` comes again reserves nothing more.
#[tokio::test]
async fn an_order_placed_twice_reserves_once() {
    let h = harness().await;
    h.publish("cart", &placed("o-twice", 1)).await;
    h.publish("cart", &placed("o-twice", 1)).await;
    h.wait_settled(2).await;
    assert_eq!(lamp(&h).await.reserved, 1);
    assert_eq!(h.outbox_keys().await, ["stock.reserved"]);
    h.cleanup().await;
}
