use messaging::events::{OrderCancelled, OrderPlaced, StockReserved};
use messaging::{Db, Handler, HandlerError, Incoming};
use rusqlite::Connection;

use crate::domain::{self, PaymentError};
use crate::provider::{self, ChargeOutcome, ProviderConfig};

pub struct PaymentHandler {
    db: Db,
    provider: ProviderConfig,
}

impl PaymentHandler {
    pub fn new(db: Db, provider: ProviderConfig) -> Self {
        Self { db, provider }
    }
}

fn map(e: PaymentError) -> HandlerError {
    match e {
        PaymentError::Db(e) => e.into(),
        PaymentError::Messaging(e) => e.into(),
    }
}

#[async_trait::async_trait]
impl Handler for PaymentHandler {
    fn prepares(&self, event: &messaging::CloudEvent) -> bool {
        event.is::<StockReserved>()
    }

    /// Calls the provider for `stock.reserved`, unless the order is already paid or cancelled.
    async fn prepare(&self, msg: &Incoming) -> Result<Option<serde_json::Value>, HandlerError> {
        if !msg.event.is::<StockReserved>() {
            return Ok(None);
        }
        let order_id = msg.event.decode::<StockReserved>()?.order_id;
        let lookup = order_id.clone();
        let (intent, paid, cancelled) = self
            .db
            .call(move |c| {
                Ok::<_, rusqlite::Error>((
                    domain::intent(c, &lookup)?,
                    domain::payment_for(c, &lookup)?.is_some(),
                    domain::is_cancelled(c, &lookup)?,
                ))
            })
            .await?;
        let Some(intent) = intent else {
            return Err(HandlerError::Transient(format!(
                "no order.placed seen yet for {order_id}"
            )));
        };
        if paid || cancelled {
            return Ok(None);
        }
        let outcome = provider::charge(&self.provider, &intent.token).await;
        Ok(Some(serde_json::to_value(outcome)?))
    }

    fn apply(
        &self,
        tx: &Connection,
        msg: &Incoming,
        prepared: Option<serde_json::Value>,
    ) -> Result<(), HandlerError> {
        let ev = &msg.event;
        if ev.is::<OrderPlaced>() {
            domain::record_intent(tx, &ev.decode()?)?;
        } else if ev.is::<StockReserved>() {
            let Some(outcome) = prepared else {
                return Ok(());
            };
            let outcome: ChargeOutcome = serde_json::from_value(outcome)?;
            let order_id = ev.decode::<StockReserved>()?.order_id;
            let intent = domain::intent(tx, &order_id)?
                .ok_or_else(|| HandlerError::Transient(format!("no intent for {order_id}")))?;
            domain::record_charge(tx, &order_id, &intent, &outcome, &msg.trace).map_err(map)?;
        } else if ev.is::<OrderCancelled>() {
            let c: OrderCancelled = ev.decode()?;
            domain::mark_cancelled(tx, &c.order_id, &c.reason)?;
            domain::refund(tx, &c.order_id, &msg.trace).map_err(map)?;
        }
        Ok(())
    }
}
