//! The event catalogue: every payload that travels on `shop.events`, with its routing key.
//!
//! These types are the contract between services (documented in docs/events.md and
//! docs/asyncapi.yaml). None of them carries a secret: the payment token is the provider's opaque,
//! single-use reference, never card data.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A payload with a fixed routing key; the CloudEvents type is `shop.<KEY>.v1`.
pub trait Event: Serialize + DeserializeOwned {
    /// Routing key on the `shop.events` topic exchange.
    const KEY: &'static str;
    /// The CloudEvents `subject`: the order id.
    fn subject(&self) -> String;
}

/// Who consumes what: the one subscription map, `(consumer, routing keys)`.
///
/// Every service's relay declares all of these queues before it publishes, so an event
/// published before one of its consumers ever started is still routed to that consumer's
/// queue (a queue that does not exist yet receives nothing, and `mandatory` only catches
/// events that reach no queue at all).
pub const SUBSCRIPTIONS: &[(&str, &[&str])] = &[
    (
        "inventory",
        &["order.placed", "order.paid", "order.cancelled"],
    ),
    (
        "orders",
        &[
            "order.placed",
            "stock.reserved",
            "stock.rejected",
            "payment.succeeded",
            "payment.failed",
            "shipment.scheduled",
        ],
    ),
    (
        "payment",
        &["order.placed", "stock.reserved", "order.cancelled"],
    ),
    ("shipping", &["order.paid"]),
    ("audit", &["#"]),
];

/// The routing keys `consumer` is bound to, if it is in [`SUBSCRIPTIONS`].
pub fn subscription(consumer: &str) -> Option<&'static [&'static str]> {
    SUBSCRIPTIONS
        .iter()
        .find(|(name, _)| *name == consumer)
        .map(|(_, keys)| *keys)
}

/// One order line, priced when it was added to the cart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: String,
    pub quantity: u32,
    pub price_cents: i64,
}

macro_rules! event {
    ($ty:ident, $key:literal) => {
        impl Event for $ty {
            const KEY: &'static str = $key;
            fn subject(&self) -> String {
                self.order_id.clone()
            }
        }
    };
}

/// Cart checked out: the saga starts. Producer: cart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order_id: String,
    pub user_id: String,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub currency: String,
    pub payment_token: String,
}
event!(OrderPlaced, "order.placed");

/// Every line reserved. Producer: inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockReserved {
    pub order_id: String,
    pub items: Vec<OrderLine>,
}
event!(StockReserved, "stock.reserved");

/// Not enough stock for at least one line; nothing was reserved. Producer: inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockRejected {
    pub order_id: String,
    pub reason: String,
    pub product_id: Option<String>,
}
event!(StockRejected, "stock.rejected");

/// A reservation became a sale after payment. Producer: inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockCommitted {
    pub order_id: String,
}
event!(StockCommitted, "stock.committed");

/// A reservation was returned to available stock. Producer: inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockReleased {
    pub order_id: String,
    pub reason: String,
}
event!(StockReleased, "stock.released");

/// The order was charged. Producer: payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    pub order_id: String,
    pub user_id: String,
    pub payment_id: String,
    pub amount_cents: i64,
}
event!(PaymentSucceeded, "payment.succeeded");

/// The charge failed: `declined` or `provider_error` (after retries). Producer: payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub order_id: String,
    pub reason: String,
}
event!(PaymentFailed, "payment.failed");

/// A charge for an order that had already been cancelled was refunded. Producer: payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub order_id: String,
    pub payment_id: String,
    pub amount_cents: i64,
}
event!(PaymentRefunded, "payment.refunded");

/// A delivery was scheduled. Producer: shipping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShipmentScheduled {
    pub order_id: String,
    pub shipment_id: String,
    pub tracking_number: String,
}
event!(ShipmentScheduled, "shipment.scheduled");

/// The order is paid for good: orders accepted `payment.succeeded` before any cancellation.
/// Inventory commits the reservation and shipping ships only on this event, never on
/// `payment.succeeded`: orders is the one place where "paid" and "cancelled" are decided, so the
/// two can never both happen, whatever order events from different producers arrive in.
/// Producer: orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPaid {
    pub order_id: String,
    pub user_id: String,
    pub payment_id: String,
    pub amount_cents: i64,
}
event!(OrderPaid, "order.paid");

/// The order was cancelled: `out_of_stock`, `payment_declined`, `payment_error` or `timeout`.
/// Producer: orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: String,
    pub user_id: String,
    pub reason: String,
}
event!(OrderCancelled, "order.cancelled");
