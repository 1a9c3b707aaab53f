//! The event catalogue: every payload that travels on `shop.events`, with its routing key, and
//! [`SagaEvent`], the one enum of them that handlers match on.
//!
//! These types are the contract between services (documented in docs/events.md and
//! docs/asyncapi.yaml; who produces and consumes which is [`crate::contract`]). None of them
//! carries a secret: the payment token is the provider's opaque, single-use reference, never
//! card data.
//!
//! # How to use
//!
//! ```
//! use messaging::events::{OrderCancelled, SagaEvent};
//! use messaging::CloudEvent;
//!
//! let cancelled = OrderCancelled {
//!     order_id: "o-1".into(),
//!     user_id: "u-1".into(),
//!     reason: "timeout".into(),
//! };
//! let envelope = CloudEvent::new("orders", &cancelled).unwrap();
//! match SagaEvent::decode(&envelope).unwrap() {
//!     Some(SagaEvent::OrderCancelled(c)) => assert_eq!(c.reason, "timeout"),
//!     other => panic!("{other:?}"),
//! }
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::CloudEvent;

/// A payload with a fixed routing key; the CloudEvents type is `shop.<KEY>.v1`.
pub trait Event: Serialize + DeserializeOwned {
    /// Routing key on the `shop.events` topic exchange.
    const KEY: &'static str;
    /// The CloudEvents `subject`: the order id.
    fn subject(&self) -> String;
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
    /// When the order must be paid by: checkout time + cart's `CART_PAYMENT_TIMEOUT_SECS`,
    /// fixed once, so every service sees the same deadline however late the event reaches it.
    /// Orders cancels an order not paid by then (`timeout`); payment starts no charge after it.
    /// `None` in events of carts older than the field: orders then counts
    /// `ORDERS_PAYMENT_TIMEOUT_SECS` from the event's `time`, and payment does not check.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub payment_deadline: Option<time::OffsetDateTime>,
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

/// Declares [`SagaEvent`] over the event types, so its variants, keys and decoding can never
/// disagree with the types' [`Event::KEY`] constants.
macro_rules! saga_events {
    ($($ty:ident),* $(,)?) => {
        /// One of the saga's events, decoded from its envelope: what handlers `match` on.
        ///
        /// Adding an event type here makes every exhaustive `match` in the handlers fail to compile
        /// until it is handled (or explicitly ignored).
        #[derive(Debug, Clone, PartialEq)]
        pub enum SagaEvent {
            $(
                #[doc = concat!("`", stringify!($ty), "`")]
                $ty($ty),
            )*
        }

        impl SagaEvent {
            /// Every routing key of the catalogue, in declaration order.
            pub const KEYS: &'static [&'static str] = &[$(<$ty as Event>::KEY),*];

            /// The event inside `envelope`, by its routing key. `Ok(None)` for a routing key that is
            /// not in the catalogue (an event of a newer producer, a test event); `Err` when the key is
            /// known but the payload does not fit its type (a poison message).
            pub fn decode(envelope: &CloudEvent) -> Result<Option<Self>, serde_json::Error> {
                let key = envelope.routing_key();
                $(
                    if key == <$ty as Event>::KEY {
                        return envelope.decode::<$ty>().map(|e| Some(SagaEvent::$ty(e)));
                    }
                )*
                Ok(None)
            }

            /// The routing key it travels under.
            pub fn key(&self) -> &'static str {
                match self {
                    $(SagaEvent::$ty(_) => <$ty as Event>::KEY,)*
                }
            }

            /// The order it is about (every saga event carries one; also the CloudEvents `subject`).
            pub fn order_id(&self) -> &str {
                match self {
                    $(SagaEvent::$ty(e) => &e.order_id,)*
                }
            }
        }

        $(
            impl From<$ty> for SagaEvent {
                fn from(e: $ty) -> Self {
                    SagaEvent::$ty(e)
                }
            }
        )*
    };
}

saga_events!(
    OrderPlaced,
    StockReserved,
    StockRejected,
    StockCommitted,
    StockReleased,
    PaymentSucceeded,
    PaymentFailed,
    PaymentRefunded,
    ShipmentScheduled,
    OrderPaid,
    OrderCancelled,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_decodes_to_its_variant_and_others_are_not_saga_events() {
        let placed = OrderPlaced {
            order_id: "o-1".into(),
            user_id: "u".into(),
            items: vec![],
            total_cents: 5,
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
            payment_deadline: None,
        };
        let envelope = CloudEvent::new("cart", &placed).unwrap();
        let decoded = SagaEvent::decode(&envelope).unwrap().unwrap();
        assert_eq!(decoded, SagaEvent::OrderPlaced(placed.clone()));
        assert_eq!(decoded.key(), "order.placed");
        assert_eq!(decoded.order_id(), "o-1");

        // Known key, wrong payload: an error (the handler dead-letters it), never a guess.
        let mut bad = envelope.clone();
        bad.ty = "shop.stock.reserved.v1".into();
        bad.data = serde_json::json!({"order_id": 7});
        assert!(SagaEvent::decode(&bad).is_err());
        // A key outside the catalogue is no saga event.
        bad.ty = "shop.test.event.v1".into();
        assert_eq!(SagaEvent::decode(&bad).unwrap(), None);

        let mut keys = SagaEvent::KEYS.to_vec();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 11, "{keys:?}");
    }
}
