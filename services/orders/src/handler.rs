use std::time::Duration;

use messaging::events::{
    OrderPlaced, PaymentFailed, PaymentSucceeded, ShipmentScheduled, StockRejected, StockReserved,
};
use messaging::{Handler, HandlerError, Incoming};
use rusqlite::Connection;

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
    fn apply(
        &self,
        tx: &Connection,
        msg: &Incoming,
        _prepared: Option<serde_json::Value>,
    ) -> Result<(), HandlerError> {
        let ev = &msg.event;
        let (order_id, fact) = if ev.is::<OrderPlaced>() {
            let p: OrderPlaced = ev.decode()?;
            let placed_ms = (ev.time.unix_timestamp_nanos() / 1_000_000) as i64;
            let deadline_ms = placed_ms + self.payment_timeout.as_millis() as i64;
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
        } else if ev.is::<StockReserved>() {
            (ev.decode::<StockReserved>()?.order_id, Fact::StockReserved)
        } else if ev.is::<StockRejected>() {
            let r: StockRejected = ev.decode()?;
            (r.order_id, Fact::StockRejected { reason: r.reason })
        } else if ev.is::<PaymentSucceeded>() {
            let p: PaymentSucceeded = ev.decode()?;
            (
                p.order_id,
                Fact::PaymentSucceeded {
                    payment_id: p.payment_id,
                },
            )
        } else if ev.is::<PaymentFailed>() {
            let p: PaymentFailed = ev.decode()?;
            (p.order_id, Fact::PaymentFailed { reason: p.reason })
        } else if ev.is::<ShipmentScheduled>() {
            let s: ShipmentScheduled = ev.decode()?;
            (
                s.order_id,
                Fact::ShipmentScheduled {
                    shipment_id: s.shipment_id,
                    tracking_number: s.tracking_number,
                },
            )
        } else {
            return Ok(());
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
