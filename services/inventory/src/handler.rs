use messaging::events::{
    OrderCancelled, OrderPaid, OrderPlaced, StockCommitted, StockRejected, StockReleased,
    StockReserved,
};
use messaging::{outbox, Handler, HandlerError, Incoming};
use rusqlite::Connection;

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
    fn apply(
        &self,
        tx: &Connection,
        msg: &Incoming,
        _prepared: Option<serde_json::Value>,
    ) -> Result<(), HandlerError> {
        let ev = &msg.event;
        let trace = &msg.trace;
        if ev.is::<OrderPlaced>() {
            if self.failure_rate > 0.0 && rand::random::<f64>() < self.failure_rate {
                return Err(HandlerError::Transient(
                    "injected failure (INVENTORY_FAILURE_RATE)".into(),
                ));
            }
            let placed: OrderPlaced = ev.decode()?;
            match domain::reserve(tx, &placed.order_id, &placed.items)? {
                Reservation::Reserved => {
                    outbox::enqueue(
                        tx,
                        "inventory",
                        &StockReserved {
                            order_id: placed.order_id.clone(),
                            items: placed.items,
                        },
                        trace,
                    )?;
                    tracing::info!(order_id = %placed.order_id, "Reserved stock.");
                }
                Reservation::Rejected { product_id, reason } => {
                    outbox::enqueue(
                        tx,
                        "inventory",
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
        } else if ev.is::<OrderPaid>() {
            // Not payment.succeeded: only orders knows whether the payment beat the timeout.
            let paid: OrderPaid = ev.decode()?;
            if domain::settle(tx, &paid.order_id, "COMMITTED")? > 0 {
                outbox::enqueue(
                    tx,
                    "inventory",
                    &StockCommitted {
                        order_id: paid.order_id,
                    },
                    trace,
                )?;
            }
        } else if ev.is::<OrderCancelled>() {
            // Every cancellation (out of stock, payment declined or failed, timeout) comes
            // through orders, after everything it decided before for this order.
            let cancelled: OrderCancelled = ev.decode()?;
            release(tx, &cancelled.order_id, &cancelled.reason, trace)?;
        }
        Ok(())
    }
}

fn release(
    tx: &Connection,
    order_id: &str,
    reason: &str,
    trace: &messaging::TraceContext,
) -> Result<(), HandlerError> {
    if domain::settle(tx, order_id, "RELEASED")? > 0 {
        outbox::enqueue(
            tx,
            "inventory",
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
