//! Issue 14: a broker outage longer than the payment deadline. The node is this test binary's
//! own (`test_support::BrokerNode`), so stopping it disturbs no other test; this file holds
//! one test for that reason.
//!
//! Run with `cargo test -p e2e-tests --test outage` (needs `rabbitmq-server` installed).

use std::time::{Duration, Instant};

use e2e_tests::Stack;
use serde_json::Value;

/// `CART_PAYMENT_TIMEOUT_SECS` for this test: short, so the outage can outlast it.
const DEADLINE: Duration = Duration::from_secs(3);
/// How long a saga may take once the broker is back (reconnect back-off is at most 5 s).
const SETTLE: Duration = Duration::from_secs(45);

async fn order(stack: &Stack, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    stack
        .poll(&format!("/api/orders/{id}"), token, SETTLE, done)
        .await
}

async fn payments(stack: &Stack, token: &str, id: &str) -> Vec<Value> {
    let (_, p) = stack
        .api
        .get(&format!("/api/payments?order_id={id}"), Some(token))
        .await;
    p.as_array().cloned().unwrap_or_default()
}

fn is_final(o: &Value) -> bool {
    matches!(o["status"].as_str(), Some("SHIPPED" | "CANCELLED"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_deadline_charges_no_order_after_its_deadline() {
    let secs = DEADLINE.as_secs().to_string();
    let stack = Stack::start(&[("cart", "CART_PAYMENT_TIMEOUT_SECS", &secs)]).await;
    let node = stack.broker_node();
    let (_, olga) = stack.new_user("olga").await;
    let (_, products) = stack.api.get("/api/products", None).await;
    let mug = products
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["sku"] == "MUG-001")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Before the outage the saga runs as usual.
    stack.add_to_cart(&olga, &mug, 1).await;
    let before = stack.checkout(&olga, "tok_visa").await;
    let o = order(&stack, &olga, &before, |o| o["status"] == "SHIPPED").await;
    assert_eq!(o["status"], "SHIPPED");

    // The broker goes away; checkouts still succeed (cart's outbox keeps order.placed).
    node.rabbitmqctl(&["stop_app"])
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail()));
    let stopped = Instant::now();
    let mut during = Vec::new();
    for _ in 0..3 {
        stack.add_to_cart(&olga, &mug, 1).await;
        during.push(stack.checkout(&olga, "tok_visa").await);
    }
    // Longer than the deadline of every order checked out meanwhile.
    tokio::time::sleep(DEADLINE + Duration::from_secs(1)).await;
    node.rabbitmqctl(&["start_app"])
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail()));
    let outage = stopped.elapsed();
    assert!(outage > DEADLINE, "outage {outage:?}");

    // Every one of them is cancelled for its timeout, and none was charged: payment answered
    // the late stock.reserved with payment.failed (deadline_passed) or saw the cancellation
    // first. No charge-then-refund pair.
    for id in &during {
        let o = order(&stack, &olga, id, is_final).await;
        assert_eq!(o["status"], "CANCELLED", "{o}");
        let reason = &o["history"].as_array().unwrap().last().unwrap()["reason"];
        assert_eq!(reason, "timeout", "{o}");
        for p in payments(&stack, &olga, id).await {
            assert_eq!(
                p["status"], "FAILED",
                "{id}: charged after its deadline: {p}"
            );
            assert_eq!(p["reason"], "deadline_passed", "{p}");
        }
    }
    // The order from before the outage is untouched.
    let p = payments(&stack, &olga, &before).await;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["status"], "SUCCEEDED", "{p:?}");

    // After the outage the shop works again.
    stack.add_to_cart(&olga, &mug, 1).await;
    let after = stack.checkout(&olga, "tok_visa").await;
    let o = order(&stack, &olga, &after, is_final).await;
    assert_eq!(o["status"], "SHIPPED", "{o}");
    stack.stop().await;
}
