//! Who produces and who consumes which event: the one table of the shop's messaging contract,
//! per service, built from the event types' [`Event::KEY`] constants so a
//! misspelt routing key fails to compile.
//!
//! Everything that needs to know "who talks to whom" reads it: the relay declares every
//! consumer's queue and bindings from [`consumers`] before it publishes, `service-kit` binds a
//! service's queue to its [`Contract::consumes`] and names its events' source after
//! [`Contract::service`]. Broker permissions and network policies can be derived from it too
//! ([`Contract::produces`] is what a service may publish, [`Contract::consumes`] what it reads).
//!
//! # How to use
//!
//! ```
//! use messaging::contract::{self, Contract};
//! use messaging::events::OrderPaid;
//! use messaging::Event;
//!
//! assert_eq!(contract::producer_of(OrderPaid::KEY).map(|c| c.service), Some("orders"));
//! let readers: Vec<&str> = contract::consumers_of(OrderPaid::KEY).map(|c| c.service).collect();
//! assert_eq!(readers, ["inventory", "shipping", "audit"]);
//! let Contract { produces, .. } = contract::CART;
//! assert_eq!(produces, ["order.placed"]);
//! ```

use crate::events::{
    OrderCancelled, OrderPaid, OrderPlaced, PaymentFailed, PaymentRefunded, PaymentSucceeded,
    ShipmentScheduled, StockCommitted, StockRejected, StockReleased, StockReserved,
};
use crate::Event;

/// The binding key that matches every routing key (topic exchange `#`).
pub const EVERY_KEY: &str = "#";

/// One service's side of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contract {
    /// The service's name: CloudEvents `source` `/shop/<service>`, its queue `<prefix><service>`
    /// (dead letters in `<prefix><service>.dlq`), its broker connection names.
    pub service: &'static str,
    /// Routing keys it publishes (through its outbox).
    pub produces: &'static [&'static str],
    /// Routing keys its queue is bound to ([`EVERY_KEY`] for all). Empty: it has no queue.
    pub consumes: &'static [&'static str],
}

impl Contract {
    /// True when the service has a queue.
    pub fn has_queue(&self) -> bool {
        !self.consumes.is_empty()
    }

    /// True when the service's queue receives events with routing key `key`.
    pub fn receives(&self, key: &str) -> bool {
        self.consumes.iter().any(|k| *k == key || *k == EVERY_KEY)
    }

    /// True when the service publishes `key`.
    pub fn publishes(&self, key: &str) -> bool {
        self.produces.contains(&key)
    }
}

/// Accounts, login and token signing; no events.
pub const USERS: Contract = Contract {
    service: "users",
    produces: &[],
    consumes: &[],
};

/// Reserves stock on `order.placed`, commits it on `order.paid`, releases it on `order.cancelled`.
pub const INVENTORY: Contract = Contract {
    service: "inventory",
    produces: &[
        StockReserved::KEY,
        StockRejected::KEY,
        StockCommitted::KEY,
        StockReleased::KEY,
    ],
    consumes: &[OrderPlaced::KEY, OrderPaid::KEY, OrderCancelled::KEY],
};

/// Checkout starts the saga.
pub const CART: Contract = Contract {
    service: "cart",
    produces: &[OrderPlaced::KEY],
    consumes: &[],
};

/// Follows the saga and decides "paid" and "cancelled".
pub const ORDERS: Contract = Contract {
    service: "orders",
    produces: &[OrderPaid::KEY, OrderCancelled::KEY],
    consumes: &[
        OrderPlaced::KEY,
        StockReserved::KEY,
        StockRejected::KEY,
        PaymentSucceeded::KEY,
        PaymentFailed::KEY,
        ShipmentScheduled::KEY,
    ],
};

/// Charges once stock is reserved, refunds a charge of a cancelled order.
pub const PAYMENT: Contract = Contract {
    service: "payment",
    produces: &[
        PaymentSucceeded::KEY,
        PaymentFailed::KEY,
        PaymentRefunded::KEY,
    ],
    consumes: &[OrderPlaced::KEY, StockReserved::KEY, OrderCancelled::KEY],
};

/// Ships paid orders; remembers cancelled ones, so an `order.paid` that ever followed an
/// `order.cancelled` of the same order (orders never emits one, but a replayed or misrouted
/// event could) ships nothing.
pub const SHIPPING: Contract = Contract {
    service: "shipping",
    produces: &[ShipmentScheduled::KEY],
    consumes: &[OrderPaid::KEY, OrderCancelled::KEY],
};

/// Records every event.
pub const AUDIT: Contract = Contract {
    service: "audit",
    produces: &[],
    consumes: &[EVERY_KEY],
};

/// Every service of the shop.
pub const SERVICES: &[Contract] = &[USERS, INVENTORY, CART, ORDERS, PAYMENT, SHIPPING, AUDIT];

/// The contract of the service called `name`.
pub fn service(name: &str) -> Option<&'static Contract> {
    SERVICES.iter().find(|c| c.service == name)
}

/// The services that have a queue, with their bindings: what the relay declares.
pub fn consumers() -> impl Iterator<Item = &'static Contract> {
    SERVICES.iter().filter(|c| c.has_queue())
}

/// The service that publishes `key`. Each routing key has exactly one producer.
pub fn producer_of(key: &str) -> Option<&'static Contract> {
    SERVICES.iter().find(|c| c.publishes(key))
}

/// The services whose queue receives `key`.
pub fn consumers_of(key: &str) -> impl Iterator<Item = &'static Contract> + '_ {
    SERVICES.iter().filter(move |c| c.receives(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::SagaEvent;

    #[test]
    fn every_event_has_one_producer_and_someone_reads_it() {
        for key in SagaEvent::KEYS {
            let producers: Vec<_> = SERVICES.iter().filter(|c| c.publishes(key)).collect();
            assert_eq!(producers.len(), 1, "{key}: {producers:?}");
            assert!(consumers_of(key).any(|c| c.service == "audit"), "{key}");
        }
        for c in SERVICES {
            for key in c.produces {
                assert!(
                    SagaEvent::KEYS.contains(key),
                    "{} produces {key}",
                    c.service
                );
            }
            for key in c.consumes.iter().filter(|k| **k != EVERY_KEY) {
                assert!(producer_of(key).is_some(), "{} consumes {key}", c.service);
            }
        }
    }

    #[test]
    fn the_queues_are_the_ones_the_relay_has_always_declared() {
        let queues: Vec<(&str, &[&str])> = consumers().map(|c| (c.service, c.consumes)).collect();
        assert_eq!(
            queues,
            [
                (
                    "inventory",
                    &["order.placed", "order.paid", "order.cancelled"][..]
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
                    ][..]
                ),
                (
                    "payment",
                    &["order.placed", "stock.reserved", "order.cancelled"][..]
                ),
                ("shipping", &["order.paid", "order.cancelled"][..]),
                ("audit", &["#"][..]),
            ]
        );
        assert_eq!(service("cart"), Some(&CART));
        assert_eq!(service("nobody"), None);
    }
}
