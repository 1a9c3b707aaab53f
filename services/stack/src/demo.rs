//! `stack --demo`: one scripted shopper, start to shipment, as a smoke test people can read.

use std::time::{Duration, Instant};

use loadgen::api::{Order, Product, ShopClient, Trace};
use uuid::Uuid;

use crate::error::StackError;

/// The payment token the demo pays with: the simulated provider always accepts it.
const DEMO_PAYMENT_TOKEN: &str = "tok_visa";
/// How often the order is polled.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// What the demo saw: the trace and the order at the end.
#[derive(Debug)]
pub struct DemoReport {
    pub trace_id: String,
    pub order: Order,
}

/// Registers, logs in, browses, adds to cart, checks out and polls the order until it is
/// final or `timeout` passes. Every request carries a traceparent of the same trace.
/// Succeeds only when the order is SHIPPED.
pub async fn run(
    gateway_url: &str,
    timeout: Duration,
    traces_exported: bool,
) -> Result<DemoReport, StackError> {
    let trace = Trace::random(&mut rand::rng());
    let trace_id = trace.trace_id();
    println!("demo: one shopper, one trace: {trace_id}");
    let fail = |step: &str, e: loadgen::api::ApiError| {
        StackError::Demo(format!("{step}: {e} (trace {trace_id})"))
    };

    let mut client = ShopClient::new(ShopClient::default_http(), gateway_url);
    let id = Uuid::new_v4().simple().to_string();
    let email = format!("demo-{}@example.com", &id[..8]);
    let password = format!("demo-{id}");

    client
        .register(&trace, &email, &password, "Demo Shopper")
        .await
        .map_err(|e| fail("register", e))?;
    step(&format!("registered {email}"));
    client
        .login(&trace, &email, &password)
        .await
        .map_err(|e| fail("login", e))?;
    step("logged in (bearer token from users, checked by the gateway)");

    let products = client
        .products(&trace)
        .await
        .map_err(|e| fail("browse", e))?;
    let product = pick(&products).ok_or_else(|| {
        StackError::Demo(format!(
            "browse: no product in stock among {}",
            products.len()
        ))
    })?;
    let product = client
        .product(&trace, &product.path_id())
        .await
        .map_err(|e| fail("product", e))?;
    step(&format!(
        "browsed {} products, picked {:?} ({} cents)",
        products.len(),
        product.name,
        product.price_cents
    ));

    client
        .add_item(&trace, &product, 1)
        .await
        .map_err(|e| fail("add to cart", e))?;
    step("added it to the cart");

    let placed = Instant::now();
    let order_id = client
        .checkout(&trace, DEMO_PAYMENT_TOKEN, &Uuid::new_v4().to_string())
        .await
        .map_err(|e| fail("checkout", e))?;
    step(&format!(
        "checked out with {DEMO_PAYMENT_TOKEN}: order {order_id} accepted (202)"
    ));

    let order = client
        .wait_final(&trace, &order_id, POLL_EVERY, placed + timeout)
        .await
        .map_err(|e| fail("order", e))?;
    let took = placed.elapsed();

    println!("demo: order {order_id} timeline");
    for h in &order.history {
        let at = h.at.as_ref().map_or_else(String::new, |v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        match &h.reason {
            Some(reason) => println!("  {at:<32} {:<15} ({reason})", h.status),
            None => println!("  {at:<32} {}", h.status),
        }
    }
    println!(
        "demo: final status {} after {:.2}s, {} cents",
        order.status,
        took.as_secs_f64(),
        order.total_cents
    );
    println!("demo: trace id {trace_id}");
    if traces_exported {
        println!("demo: in Jaeger: http://localhost:16686/trace/{trace_id}");
    }

    if order.status == "SHIPPED" {
        Ok(DemoReport { trace_id, order })
    } else {
        let why = order.reason().map_or(String::new(), |r| format!(" ({r})"));
        Err(StackError::Demo(format!(
            "order {order_id} ended {}{why} instead of SHIPPED within {}s (trace {trace_id})",
            order.status,
            timeout.as_secs()
        )))
    }
}

fn step(what: &str) {
    println!("  ✓ {what}");
}

/// The first product with stock (or with unknown stock).
fn pick(products: &[Product]) -> Option<&Product> {
    products
        .iter()
        .find(|p| p.available.is_some_and(|a| a > 0))
        .or_else(|| products.iter().find(|p| p.available.is_none()))
}
