use messaging::events::{SagaEvent, StockReserved};
use messaging::{Db, Event, Handler, HandlerError, Incoming, Writer};

use crate::domain::{self, PaymentError};
use crate::provider::{ChargeOutcome, ChargeRequest, Provider};

/// payment's reaction to the saga: remembers intents and cancellations, charges on
/// `stock.reserved` through the [`Provider`], refunds a cancelled order's charge.
pub struct PaymentHandler {
    db: Db,
    provider: Provider,
}

impl PaymentHandler {
    /// The handler over payment's database `db` (with [`crate::MIGRATIONS`]), charging through
    /// `provider`.
    pub fn new(db: Db, provider: Provider) -> Self {
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
    /// The provider's answer for `stock.reserved`; `None` when no charge was made (another
    /// event, or the order is already paid or cancelled).
    type Prepared = Option<ChargeOutcome>;

    fn prepares(&self, msg: &Incoming) -> bool {
        msg.routing_key() == StockReserved::KEY
    }

    /// Calls the provider for `stock.reserved`, unless the order is already paid, or no call
    /// was started for it yet and it is cancelled or past its payment deadline. Once a call was
    /// started (recorded and committed before it is made), every later delivery repeats it
    /// with the same idempotency key to learn its answer, cancelled or late as the order may
    /// be: the provider may have charged, and only a recorded charge can be refunded.
    async fn prepare(&self, msg: &Incoming) -> Result<Option<ChargeOutcome>, HandlerError> {
        let Some(SagaEvent::StockReserved(reserved)) = msg.saga()? else {
            return Ok(None);
        };
        let order_id = reserved.order_id;
        let lookup = order_id.clone();
        let (intent, paid, cancelled, started) = self
            .db
            .call(move |c| {
                Ok::<_, rusqlite::Error>((
                    domain::intent(c, &lookup)?,
                    domain::payment_for(c, &lookup)?.is_some(),
                    domain::is_cancelled(c, &lookup)?,
                    domain::call_started(c, &lookup)?,
                ))
            })
            .await?;
        let Some(intent) = intent else {
            return Err(HandlerError::Transient(format!(
                "no order.placed seen yet for {order_id}"
            )));
        };
        if paid {
            return Ok(None);
        }
        if started {
            tracing::info!(%order_id, cancelled, "Repeating a provider call started before; learning its answer.");
        } else {
            if cancelled {
                return Ok(None);
            }
            // Whoever is about to act checks the deadline, before every provider call: after
            // a broker outage, stock.reserved may arrive after orders has cancelled the order
            // (or is about to) for its timeout, and a retried call may start after it. A
            // redelivery (the retry queues) runs all of this again.
            if intent
                .deadline_ms
                .is_some_and(|d| messaging::clock::now_ms() > d)
            {
                tracing::info!(%order_id, "Past its payment deadline; not charging.");
                return Ok(Some(ChargeOutcome::DeadlinePassed { attempts: 0 }));
            }
            let mark = order_id.clone();
            self.db
                .call(move |c| domain::mark_call_started(c, &mark))
                .await?;
        }
        let request = ChargeRequest {
            key: &order_id,
            token: &intent.token,
            amount_cents: intent.amount_cents,
            currency: &intent.currency,
        };
        let outcome = self
            .provider
            .charge(&request, intent.deadline_ms, started)
            .await;
        if let ChargeOutcome::DeadlinePassed { attempts } = outcome {
            tracing::info!(%order_id, attempts, "Past its payment deadline; no further provider call.");
        }
        Ok(Some(outcome))
    }

    fn apply(
        &self,
        tx: &Writer<'_>,
        msg: &Incoming,
        prepared: Option<ChargeOutcome>,
    ) -> Result<(), HandlerError> {
        match msg.saga()? {
            Some(SagaEvent::OrderPlaced(placed)) => domain::record_intent(tx, &placed)?,
            Some(SagaEvent::StockReserved(reserved)) => {
                let Some(outcome) = prepared else {
                    return Ok(());
                };
                let order_id = reserved.order_id;
                let intent = domain::intent(tx, &order_id)?
                    .ok_or_else(|| HandlerError::Transient(format!("no intent for {order_id}")))?;
                domain::record_charge(tx, &order_id, &intent, &outcome, &msg.trace).map_err(map)?;
            }
            Some(SagaEvent::OrderCancelled(c)) => {
                domain::mark_cancelled(tx, &c.order_id, &c.reason)?;
                domain::refund(tx, &c.order_id, &msg.trace).map_err(map)?;
            }
            // Not bound to payment's queue (messaging::contract::PAYMENT).
            Some(_) | None => {}
        }
        Ok(())
    }
}
