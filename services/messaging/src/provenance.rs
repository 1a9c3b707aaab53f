//! Who published a delivery, and whether they may have.
//!
//! The relay sets the AMQP `user_id` property to the broker user of its connection, and RabbitMQ
//! refuses a publish whose `user_id` is anyone else's (unless the user has the `impersonator` tag,
//! which no service has). So `user_id` is the publisher the broker authenticated. A consumer
//! checks it against the owner of the event's type in the [`contract`]: an event
//! of a type another service owns (a forged `order.paid` from payment's credentials, which topic
//! permissions already stop at the broker) is rejected to the dead-letter queue, counted
//! (`shop_messages_consumed_total{outcome="forged"}`) and logged with the claimed and the actual
//! producer, and never reaches the handler.

use crate::contract::{self, Contract};
use crate::{CloudEvent, Topology};

/// Which publishers a consumer accepts. Closed set; the default is [`Provenance::Contract`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Provenance {
    /// An event only from the broker user of the service that owns its type in `table` (the
    /// topology names the user: `<prefix><service>`), travelling under its own routing key. A
    /// type nobody owns and a delivery without `user_id` are forged.
    #[default]
    Contract,
    /// Like [`Contract`](Self::Contract), against another table (a test's own events).
    Table(&'static [Contract]),
    /// Every publisher: for tests on a broker where every client shares one user. Never for a
    /// service.
    Unchecked,
}

/// Why a delivery was not accepted from its publisher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forgery {
    /// The type belongs to another service than the one that published it.
    #[error("{event_type} is {owner}'s event, but {actual} published it")]
    NotTheOwner {
        event_type: String,
        /// The broker user that may publish this type.
        owner: String,
        /// The broker user that did (the delivery's `user_id`).
        actual: String,
    },
    /// No service of the contract publishes this type.
    #[error("nobody publishes {event_type} ({actual} did)")]
    UnknownType { event_type: String, actual: String },
    /// The publisher did not say who it is: the broker checks `user_id` only when it is set.
    #[error("{event_type} carries no user_id, so its publisher is unknown")]
    Anonymous { event_type: String },
    /// The routing key is not the one of the type (the bindings chose the consumers by the key).
    #[error("{event_type} travelled under routing key {routing_key}")]
    WrongKey {
        event_type: String,
        routing_key: String,
    },
}

impl Provenance {
    /// `Ok` when the publisher `user_id` (the AMQP property) may have published `event` under
    /// `routing_key`.
    pub fn check(
        &self,
        topology: &Topology,
        event: &CloudEvent,
        routing_key: &str,
        user_id: Option<&str>,
    ) -> Result<(), Forgery> {
        let table = match self {
            Provenance::Unchecked => return Ok(()),
            Provenance::Contract => contract::SERVICES,
            Provenance::Table(table) => table,
        };
        let event_type = event.ty.clone();
        let key = event.routing_key();
        let Some(actual) = user_id else {
            return Err(Forgery::Anonymous { event_type });
        };
        let Some(owner) = table.iter().find(|c| c.publishes(key)) else {
            return Err(Forgery::UnknownType {
                event_type,
                actual: actual.to_owned(),
            });
        };
        let owner = topology.user(owner.service);
        if owner != actual {
            return Err(Forgery::NotTheOwner {
                event_type,
                owner,
                actual: actual.to_owned(),
            });
        }
        if routing_key != key {
            return Err(Forgery::WrongKey {
                event_type,
                routing_key: routing_key.to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{OrderPaid, PaymentSucceeded};

    fn paid() -> CloudEvent {
        CloudEvent::new(
            "orders",
            &OrderPaid {
                order_id: "o-1".into(),
                user_id: "u-1".into(),
                payment_id: "p-1".into(),
                amount_cents: 5,
            },
        )
        .unwrap()
    }

    #[test]
    fn only_the_owner_of_a_type_may_have_published_it() {
        let t = Topology::new("t.");
        let check =
            |user: Option<&str>, key: &str| Provenance::Contract.check(&t, &paid(), key, user);
        assert_eq!(check(Some("t.orders"), "order.paid"), Ok(()));
        let forged = check(Some("t.payment"), "order.paid").unwrap_err();
        assert_eq!(
            forged.to_string(),
            "shop.order.paid.v1 is t.orders's event, but t.payment published it"
        );
        // Without the prefix it is another deployment's user.
        assert!(matches!(
            check(Some("orders"), "order.paid"),
            Err(Forgery::NotTheOwner { .. })
        ));
        assert!(matches!(
            check(None, "order.paid"),
            Err(Forgery::Anonymous { .. })
        ));
        assert!(matches!(
            check(Some("t.orders"), "order.cancelled"),
            Err(Forgery::WrongKey { .. })
        ));
        let mut unknown = paid();
        unknown.ty = "shop.order.refunded.v1".into();
        assert!(matches!(
            Provenance::Contract.check(&t, &unknown, "order.refunded", Some("t.orders")),
            Err(Forgery::UnknownType { .. })
        ));
        assert_eq!(Provenance::Unchecked.check(&t, &paid(), "x", None), Ok(()));
    }

    #[test]
    fn a_test_table_names_its_own_owners() {
        const TABLE: &[Contract] = &[Contract {
            service: "payment",
            produces: &[PaymentSucceeded::KEY, OrderPaid::KEY],
            consumes: &[],
        }];
        use crate::Event;
        let t = Topology::default();
        assert_eq!(
            Provenance::Table(TABLE).check(&t, &paid(), "order.paid", Some("payment")),
            Ok(())
        );
    }
}
