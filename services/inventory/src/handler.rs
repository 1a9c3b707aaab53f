use messaging::events::{SagaEvent, StockCommitted, StockRejected, StockReleased, StockReserved};
use messaging::{Handler, HandlerError, Incoming, TraceContext, Writer};

use crate::domain::{self, Reservation};

/// Reacts to the saga's events.
pub struct InventoryHandler {
    failure_rate: f64,
}

impl InventoryHandler {
    pub fn new(failure_rate: f64) -> Self {
        Self { failure_rate }
    }
}

impl Handler for InventoryHandler {
    type Prepared = ();

    fn apply(&self, tx: &Writer<'_>, msg: &Incoming, _prepared: ()) -> Result<(), HandlerError> {
        let trace = &msg.trace;
        match msg.saga()? {
            Some(SagaEvent::OrderPlaced(placed)) => {
                if self.failure_rate > 0.0 && rand::random::<f64>() < self.failure_rate {
                    return Err(HandlerError::Transient(
                        "injected failure (INVENTORY_FAILURE_RATE)".into(),
                    ));
                }
                match domain::reserve(tx, &placed.order_id, &placed.items)? {
                    Reservation::Reserved => {
                        tx.enqueue(
                            &StockReserved {
                                order_id: placed.order_id.clone(),
                                items: placed.items,
                            },
                            trace,
                        )?;
                        tracing::info!(order_id = %placed.order_id, "Reserved stock.");
                    }
                    Reservation::Rejected { product_id, reason } => {
                        tx.enqueue(
                            &StockRejected {
                                order_id: placed.order_id.clone(),
                                reason: reason.to_owned(),
                                product_id: Some(product_id),
                            },
                            trace,
                        )?;
                        tracing::info!(order_id = %placed.order_id, reason, "Rejected a reservation.");
                    }
                    Reservation::AlreadyDecided => {}
                }
            }
            // Not payment.succeeded: only orders knows whether the payment beat the timeout.
            Some(SagaEvent::OrderPaid(paid)) => {
                if domain::settle(tx, &paid.order_id, "COMMITTED")? > 0 {
                    tx.enqueue(
                        &StockCommitted {
                            order_id: paid.order_id,
                        },
                        trace,
                    )?;
                }
            }
            // Every cancellation (out of stock, payment declined or failed, timeout) comes
            // through orders, after everything it decided before for this order.
            // A cancellation that overtook the order's order.placed (dead-lettered and replayed,
            // say) is remembered, so that order.placed reserves nothing when it comes.
            Some(SagaEvent::OrderCancelled(cancelled)) => {
                domain::decide(tx, &cancelled.order_id, domain::Decision::Cancelled)?;
                release(tx, &cancelled.order_id, &cancelled.reason, trace)?;
            }
            // Not bound to inventory's queue (messaging::contract::INVENTORY).
            Some(_) | None => {}
        }
        Ok(())
    }
}

fn release(
    tx: &Writer<'_>,
    order_id: &str,
    reason: &str,
    trace: &TraceContext,
) -> Result<(), HandlerError> {
    if domain::settle(tx, order_id, "RELEASED")? > 0 {
        tx.enqueue(
            &StockReleased {
                order_id: order_id.to_owned(),
                reason: reason.to_owned(),
            },
            trace,
        )?;
        tracing::info!(order_id, reason, "Released stock.");
    }
    Ok(())
}
