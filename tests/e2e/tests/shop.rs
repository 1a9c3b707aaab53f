//! The shop, end to end through the real gateway, seven services and RabbitMQ.
//!
//! Run with `cargo test -p e2e-tests` (binaries are built on first use; the broker is a test
//! RabbitMQ node with AMQPS and one user per service, see `e2e_tests::Stack`).

use std::collections::HashSet;
use std::time::Duration;

use e2e_tests::{claims, Stack, ADMIN_EMAIL, ADMIN_PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Generous: on a loaded 2-core machine the broker has been seen to stall for ~20 s.
const SAGA_TIMEOUT: Duration = Duration::from_secs(60);

async fn products(stack: &Stack) -> Vec<Value> {
    let (s, body) = stack.api.get("/api/products", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body.as_array().unwrap().clone()
}

fn product_id(products: &[Value], sku: &str) -> String {
    products.iter().find(|p| p["sku"] == sku).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn stock(stack: &Stack, id: &str) -> (i64, i64, i64) {
    let s = stack
        .internal_admin_get("inventory", &format!("/api/products/{id}/stock"))
        .await;
    (
        s["available"].as_i64().unwrap(),
        s["reserved"].as_i64().unwrap(),
        s["sold"].as_i64().unwrap(),
    )
}

async fn final_order(stack: &Stack, token: &str, id: &str) -> Value {
    stack
        .poll(&format!("/api/orders/{id}"), token, SAGA_TIMEOUT, |o| {
            o["status"] == "SHIPPED" || o["status"] == "CANCELLED"
        })
        .await
}

fn history(order: &Value) -> Vec<String> {
    order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap().to_owned())
        .collect()
}

async fn audit_types(
    stack: &Stack,
    admin: &str,
    order_id: &str,
    expect: &[&str],
) -> HashSet<String> {
    let path = format!("/api/audit/events?order_id={order_id}");
    let body = stack
        .poll(&path, admin, SAGA_TIMEOUT, |events| {
            let got: HashSet<&str> = events
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["type"].as_str())
                .collect();
            expect
                .iter()
                .all(|t| got.contains(format!("shop.{t}.v1").as_str()))
        })
        .await;
    body.as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_saga_end_to_end_through_the_gateway() {
    let stack = Stack::start(&[]).await;
    let api = &stack.api;

    // --- accounts ---
    let (alice_id, alice) = stack.new_user("alice").await;
    let (_, bob) = stack.new_user("bob").await;
    assert_eq!(claims(&alice)["sub"], alice_id.as_str());
    assert_eq!(claims(&alice)["scope"], "shop");
    let admin = stack.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(claims(&admin)["scope"], "shop admin");
    let (s, me) = api.get("/api/users/me", Some(&alice)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["id"], alice_id.as_str());
    let email = me["email"].as_str().unwrap().to_owned();
    let (s, body) = api
        .post(
            "/api/users/register",
            None,
            json!({"email": email, "password": "another-pass", "name": "x"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (s, body) = api
        .post(
            "/api/users/register",
            None,
            json!({"email": "not-an-email", "password": "short", "name": ""}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, body) = api
        .post(
            "/api/users/login",
            None,
            json!({"email": email, "password": "wrong-password"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let (s, _) = api.get("/api/cart", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the gateway requires a token");

    // --- browse ---
    let catalogue = products(&stack).await;
    assert!(catalogue.len() >= 6);
    let (mug, tee, lamp) = (
        product_id(&catalogue, "MUG-001"),
        product_id(&catalogue, "TEE-001"),
        product_id(&catalogue, "LMP-001"),
    );
    let (s, one) = api.get(&format!("/api/products/{mug}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["price_cents"], 1200);
    let (s, _) = api.get("/api/products/no-such-product", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let start = [
        (mug.clone(), stock(&stack, &mug).await),
        (tee.clone(), stock(&stack, &tee).await),
        (lamp.clone(), stock(&stack, &lamp).await),
    ];

    // --- checkout with tok_visa: SHIPPED, retried checkout returns the same order ---
    let (s, body) = api
        .post(
            "/api/cart/checkout",
            Some(&alice),
            json!({"payment_token": "tok_visa"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "empty cart: {body}");
    stack.add_to_cart(&alice, &mug, 2).await;
    stack.add_to_cart(&alice, &tee, 1).await;
    stack.add_to_cart(&alice, &lamp, 1).await;
    let (s, _) = api
        .delete(&format!("/api/cart/items/{lamp}"), Some(&alice))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .delete(&format!("/api/cart/items/{lamp}"), Some(&alice))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, body) = api
        .post(
            "/api/cart/items",
            Some(&alice),
            json!({"product_id": mug, "quantity": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, cart) = api.get("/api/cart", Some(&alice)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(cart["total_cents"], 2 * 1200 + 2500);
    // The client starts a trace; every event of the saga must continue it.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let traceparent = format!(
        "00-{trace_id}-{}-01",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let (s, first, _) = api
        .post_with(
            "/api/cart/checkout",
            Some(&alice),
            json!({"payment_token": "tok_visa"}),
            &[("idempotency-key", "k-1"), ("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{first}");
    let (s, again, _) = api
        .post_with(
            "/api/cart/checkout",
            Some(&alice),
            json!({"payment_token": "tok_visa"}),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{again}");
    assert_eq!(
        first["order_id"], again["order_id"],
        "Idempotency-Key returns the same order"
    );
    let happy = first["order_id"].as_str().unwrap().to_owned();
    let (_, cart) = api.get("/api/cart", Some(&alice)).await;
    assert_eq!(cart["items"], json!([]), "checkout empties the cart");

    // --- tok_declined, tok_error and out-of-stock, all in flight at once ---
    stack.add_to_cart(&bob, &mug, 1).await;
    let declined = stack.checkout(&bob, "tok_declined").await;
    stack.add_to_cart(&bob, &tee, 1).await;
    let errored = stack.checkout(&bob, "tok_error").await;
    stack.add_to_cart(&bob, &lamp, 4).await; // only 3 in stock
    stack.add_to_cart(&bob, &mug, 1).await;
    let out_of_stock = stack.checkout(&bob, "tok_visa").await;

    let order = final_order(&stack, &alice, &happy).await;
    assert_eq!(order["status"], "SHIPPED", "{order}");
    assert_eq!(
        history(&order),
        ["PENDING", "STOCK_RESERVED", "PAID", "SHIPPED"]
    );
    assert_eq!(order["total_cents"], 4900);
    assert_eq!(order["items"].as_array().unwrap().len(), 2);

    let order = final_order(&stack, &bob, &declined).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(
        order["history"].as_array().unwrap().last().unwrap()["reason"],
        "payment_declined"
    );

    let order = final_order(&stack, &bob, &errored).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(
        order["history"].as_array().unwrap().last().unwrap()["reason"],
        "payment_error"
    );

    let order = final_order(&stack, &bob, &out_of_stock).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(history(&order), ["PENDING", "CANCELLED"]);
    assert_eq!(order["history"][1]["reason"], "out_of_stock");

    // Another user's order does not exist for you.
    let (s, body) = api.get(&format!("/api/orders/{happy}"), Some(&bob)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    let (s, mine) = api.get("/api/orders", Some(&bob)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(mine.as_array().unwrap().len(), 3);

    // --- payments and shipments ---
    let (_, p) = api
        .get(&format!("/api/payments?order_id={happy}"), Some(&alice))
        .await;
    assert_eq!(p.as_array().unwrap().len(), 1, "{p}");
    assert_eq!(p[0]["status"], "SUCCEEDED");
    assert_eq!(p[0]["amount_cents"], 4900);
    let (_, p) = api
        .get(&format!("/api/payments?order_id={declined}"), Some(&bob))
        .await;
    assert_eq!(p[0]["status"], "DECLINED", "{p}");
    let (_, p) = api
        .get(&format!("/api/payments?order_id={errored}"), Some(&bob))
        .await;
    assert_eq!(p[0]["status"], "FAILED", "{p}");
    assert_eq!(p[0]["attempts"], 3, "tok_error is retried");
    let (_, p) = api
        .get(
            &format!("/api/payments?order_id={out_of_stock}"),
            Some(&bob),
        )
        .await;
    assert_eq!(p, json!([]), "nothing is charged without stock");
    let (_, p) = api
        .get(&format!("/api/payments?order_id={happy}"), Some(&bob))
        .await;
    assert_eq!(p, json!([]), "payments of others are invisible");

    let (_, sh) = api
        .get(&format!("/api/shipments?order_id={happy}"), Some(&alice))
        .await;
    assert_eq!(sh.as_array().unwrap().len(), 1, "{sh}");
    assert!(sh[0]["tracking_number"].as_str().unwrap().starts_with("VT"));
    for id in [&declined, &errored, &out_of_stock] {
        let (_, sh) = api
            .get(&format!("/api/shipments?order_id={id}"), Some(&bob))
            .await;
        assert_eq!(sh, json!([]), "cancelled orders are not shipped");
    }

    // --- audit (admin only) ---
    let (s, _) = api.get("/api/audit/stats", Some(&alice)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let types = audit_types(
        &stack,
        &admin,
        &happy,
        &[
            "order.placed",
            "stock.reserved",
            "payment.succeeded",
            "order.paid",
            "stock.committed",
            "shipment.scheduled",
        ],
    )
    .await;
    assert!(!types.contains("shop.order.cancelled.v1"), "{types:?}");
    let (_, events) = api
        .get(&format!("/api/audit/events?order_id={happy}"), Some(&admin))
        .await;
    for e in events.as_array().unwrap() {
        assert_eq!(
            e["trace_id"],
            trace_id.as_str(),
            "every event continues the checkout's trace: {e}"
        );
    }
    audit_types(
        &stack,
        &admin,
        &declined,
        &[
            "order.placed",
            "stock.reserved",
            "payment.failed",
            "order.cancelled",
            "stock.released",
        ],
    )
    .await;
    audit_types(
        &stack,
        &admin,
        &out_of_stock,
        &["order.placed", "stock.rejected", "order.cancelled"],
    )
    .await;
    let (s, stats) = api.get("/api/audit/stats", Some(&admin)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(stats["counts"]["shop.order.placed.v1"], 4, "{stats}");
    assert!(stats["events_per_sec_last_minute"].as_f64().unwrap() > 0.0);

    // --- saga outcomes on orders' /metrics (refreshed from the read model every 2 s) ---
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = stack.metrics("orders").await;
        let parsed =
            test_support::parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let shipped = parsed
            .value("shop_orders_final", &[("status", "SHIPPED")])
            .unwrap_or(0.0);
        let out_of_stock = parsed
            .value(
                "shop_orders_final",
                &[("status", "CANCELLED"), ("reason", "out_of_stock")],
            )
            .unwrap_or(0.0);
        if shipped >= 1.0 && out_of_stock >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "saga outcomes not exported:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // --- no stock leaked ---
    for (id, (a0, r0, s0)) in &start {
        let (a, r, s) = stock(&stack, id).await;
        assert_eq!(a + r + s, a0 + r0 + s0, "stock of {id} leaked");
        assert_eq!(r, 0, "nothing left reserved for {id}");
        // The same counters through the gateway: admin only.
        let path = format!("/api/products/{id}/stock");
        let (s_admin, via_gateway) = api.get(&path, Some(&admin)).await;
        assert_eq!(s_admin, StatusCode::OK, "{via_gateway}");
        assert_eq!(via_gateway["available"].as_i64(), Some(a));
        assert_eq!(api.get(&path, Some(&alice)).await.0, StatusCode::FORBIDDEN);
        assert_eq!(api.get(&path, None).await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        stock(&stack, &mug).await.2 - start[0].1 .2,
        2,
        "the mugs of the shipped order are sold"
    );
    assert_eq!(stock(&stack, &tee).await.2 - start[1].1 .2, 1);
    assert_eq!(stock(&stack, &lamp).await.2 - start[2].1 .2, 0);

    // --- all of it on the secured broker: every service as its own user, over TLS ---
    // A relay per service and a consumer per service with a queue.
    let consumers = messaging::contract::consumers().count();
    let connections = stack
        .broker_connections(e2e_tests::SERVICES.len() + consumers)
        .await;
    for svc in e2e_tests::SERVICES {
        let user = format!("{}{svc}", stack.prefix);
        assert!(
            connections.iter().any(|(u, _)| *u == user),
            "{user} has no broker connection: {connections:?}"
        );
    }
    assert!(
        connections
            .iter()
            .all(|(u, tls)| *tls && u.starts_with(&stack.prefix)),
        "only the services' own users, only over TLS: {connections:?}"
    );

    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_order_times_out_and_the_late_payment_is_refunded() {
    let stack = Stack::start(&[
        ("cart", "CART_PAYMENT_TIMEOUT_SECS", "1"),
        ("payment", "PAYMENT_LATENCY_MS", "2500"),
    ])
    .await;
    let api = &stack.api;
    let (_, carol) = stack.new_user("carol").await;
    let admin = stack.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let catalogue = products(&stack).await;
    let mug = product_id(&catalogue, "MUG-001");
    let before = stock(&stack, &mug).await;

    stack.add_to_cart(&carol, &mug, 3).await;
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let (s, body, _) = api
        .post_with(
            "/api/cart/checkout",
            Some(&carol),
            json!({"payment_token": "tok_visa"}),
            &[("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let id = body["order_id"].as_str().unwrap().to_owned();
    let order = final_order(&stack, &carol, &id).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(
        order["history"].as_array().unwrap().last().unwrap()["reason"],
        "timeout"
    );

    // The provider answers after the deadline: the charge is refunded, nothing ships.
    let payments = stack
        .poll(
            &format!("/api/payments?order_id={id}"),
            &carol,
            SAGA_TIMEOUT,
            |p| p[0]["status"] == "REFUNDED",
        )
        .await;
    assert_eq!(payments.as_array().unwrap().len(), 1);
    let types = audit_types(
        &stack,
        &admin,
        &id,
        &[
            "order.placed",
            "stock.reserved",
            "order.cancelled",
            "stock.released",
            "payment.succeeded",
            "payment.refunded",
        ],
    )
    .await;
    assert!(!types.contains("shop.shipment.scheduled.v1"), "{types:?}");
    assert!(!types.contains("shop.stock.committed.v1"), "{types:?}");
    assert!(!types.contains("shop.order.paid.v1"), "{types:?}");
    // Even the cancellation decided by the timeout sweeper continues the checkout's trace.
    let (_, events) = api
        .get(&format!("/api/audit/events?order_id={id}"), Some(&admin))
        .await;
    for e in events.as_array().unwrap() {
        assert_eq!(e["trace_id"], trace_id.as_str(), "{e}");
    }
    let (_, sh) = api
        .get(&format!("/api/shipments?order_id={id}"), Some(&carol))
        .await;
    assert_eq!(sh, json!([]));
    let order = final_order(&stack, &carol, &id).await;
    assert_eq!(
        order["status"], "CANCELLED",
        "a late payment does not revive the order"
    );

    let after = stock(&stack, &mug).await;
    assert_eq!(after, before, "the reservation was released, nothing sold");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_inventory_dead_letters_the_order_and_the_timeout_cancels_it() {
    let stack = Stack::start(&[
        ("inventory", "INVENTORY_FAILURE_RATE", "1"),
        ("cart", "CART_PAYMENT_TIMEOUT_SECS", "2"),
    ])
    .await;
    let (_, dave) = stack.new_user("dave").await;
    let catalogue = products(&stack).await;
    let mug = product_id(&catalogue, "MUG-001");
    let before = stock(&stack, &mug).await;

    stack.add_to_cart(&dave, &mug, 1).await;
    let id = stack.checkout(&dave, "tok_visa").await;
    let order = final_order(&stack, &dave, &id).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(history(&order), ["PENDING", "CANCELLED"]);
    assert_eq!(order["history"][1]["reason"], "timeout");

    // inventory returned order.placed to its queue until the delivery limit, then the quorum
    // queue dead-lettered it; the other services were unaffected.
    let mut dead = Vec::new();
    for _ in 0..50 {
        dead.extend(stack.drain_dead_letters("inventory").await);
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["type"], "shop.order.placed.v1");
    assert_eq!(dead[0]["subject"], id.as_str());
    let metrics = stack.metrics("inventory").await;
    let retried: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("shop_messages_consumed_total") && l.contains("outcome=\"retried\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(retried >= 5, "retried {retried} times:\n{metrics}");
    // Durations per delivery carry the trace as an OpenMetrics exemplar; the backlog is exposed.
    let parsed =
        test_support::parse_openmetrics(&metrics).unwrap_or_else(|e| panic!("{e}\n{metrics}"));
    let traced = parsed
        .samples_named("messaging_process_duration_seconds_bucket")
        .filter(|s| s.labels.get("outcome").map(String::as_str) == Some("retried"))
        .filter_map(|s| s.exemplar.as_ref())
        .any(|e| e.labels.get("trace_id").is_some_and(|t| t.len() == 32));
    assert!(
        traced,
        "no traced exemplar on messaging_process_duration_seconds:\n{metrics}"
    );
    assert!(
        parsed.value("shop_outbox_backlog", &[]).is_some(),
        "no outbox backlog gauge"
    );
    let cart = stack.metrics("cart").await;
    let cart = test_support::parse_openmetrics(&cart).unwrap_or_else(|e| panic!("{e}\n{cart}"));
    let confirmed = cart
        .value(
            "messaging_client_operation_duration_seconds_count",
            &[("outcome", "confirmed")],
        )
        .unwrap_or(0.0);
    assert!(confirmed >= 1.0, "cart's publishes are not timed");

    let (_, p) = stack
        .api
        .get(&format!("/api/payments?order_id={id}"), Some(&dave))
        .await;
    assert_eq!(p, json!([]), "nothing charged without a reservation");
    assert_eq!(stock(&stack, &mug).await, before, "no stock moved");
    stack.stop().await;
}
