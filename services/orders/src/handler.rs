use std::time::Duration;

use messaging::events::SagaEvent;
use messaging::{clock, Handler, HandlerError, Incoming, Writer};

use crate::domain::Fact;
use crate::store::{self, StoreError};

/// Turns saga events into facts about orders.
pub struct OrdersHandler {
    payment_timeout: Duration,
}

impl OrdersHandler {
    pub fn new(payment_timeout: Duration) -> Self {
        Self { payment_timeout }
    }
}

impl Handler for OrdersHandler {
    type Prepared = ();

    fn apply(&self, tx: &Writer<'_>, msg: &Incoming, _prepared: ()) -> Result<(), HandlerError> {
        let (order_id, fact) = match msg.saga()? {
            Some(SagaEvent::OrderPlaced(p)) => {
                // The deadline cart fixed at checkout; for an event without one, counted from
                // when it was placed.
                let deadline_ms = match p.payment_deadline {
                    Some(at) => clock::unix_ms(at),
                    None => {
                        clock::unix_ms(msg.event.time) + self.payment_timeout.as_millis() as i64
                    }
                };
                (
                    p.order_id,
                    Fact::Placed {
                        user_id: p.user_id,
                        items: p.items,
                        total_cents: p.total_cents,
                        currency: p.currency,
                        deadline_ms,
                        traceparent: msg.trace.traceparent.clone(),
                    },
                )
            }
            Some(SagaEvent::StockReserved(r)) => (r.order_id, Fact::StockReserved),
            Some(SagaEvent::StockRejected(r)) => {
                (r.order_id, Fact::StockRejected { reason: r.reason })
            }
            Some(SagaEvent::PaymentSucceeded(p)) => (
                p.order_id,
                Fact::PaymentSucceeded {
                    payment_id: p.payment_id,
                },
            ),
            Some(SagaEvent::PaymentFailed(p)) => {
                (p.order_id, Fact::PaymentFailed { reason: p.reason })
            }
            Some(SagaEvent::ShipmentScheduled(s)) => (
                s.order_id,
                Fact::ShipmentScheduled {
                    shipment_id: s.shipment_id,
                    tracking_number: s.tracking_number,
                },
            ),
            // Orders' own events and the ones it is not bound to (messaging::contract::ORDERS).
            Some(
                SagaEvent::StockCommitted(_)
                | SagaEvent::StockReleased(_)
                | SagaEvent::PaymentRefunded(_)
                | SagaEvent::OrderPaid(_)
                | SagaEvent::OrderCancelled(_),
            )
            | None => return Ok(()),
        };
        match store::handle(tx, &order_id, fact, &msg.trace) {
            Ok(_) => Ok(()),
            // Events of one order can overtake `order.placed` only through a retry; try again.
            Err(StoreError::Unknown(e)) => Err(HandlerError::Transient(format!("{order_id}: {e}"))),
            Err(StoreError::Db(e)) => Err(e.into()),
            Err(StoreError::Messaging(e)) => Err(e.into()),
            Err(StoreError::Corrupt(e)) => Err(HandlerError::Permanent(e.to_string())),
        }
    }
}
