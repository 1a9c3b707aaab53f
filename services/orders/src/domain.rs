//! The order aggregate: its events, the fold that rebuilds it, and the decisions.

use messaging::events::OrderLine;
use serde::{Deserialize, Serialize};

/// What happened to an order; stored in `order_events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderEvent {
    Placed {
        user_id: String,
        items: Vec<OrderLine>,
        total_cents: i64,
        currency: String,
        /// Unix ms after which an unpaid order is cancelled.
        deadline_ms: i64,
        /// The checkout's W3C traceparent, so a timeout cancellation continues its trace.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    StockReserved,
    Paid {
        payment_id: String,
    },
    Shipped {
        shipment_id: String,
        tracking_number: String,
    },
    Cancelled {
        reason: String,
    },
}

impl OrderEvent {
    pub fn name(&self) -> &'static str {
        match self {
            OrderEvent::Placed { .. } => "placed",
            OrderEvent::StockReserved => "stock_reserved",
            OrderEvent::Paid { .. } => "paid",
            OrderEvent::Shipped { .. } => "shipped",
            OrderEvent::Cancelled { .. } => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    StockReserved,
    Paid,
    Shipped,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::StockReserved => "STOCK_RESERVED",
            Status::Paid => "PAID",
            Status::Shipped => "SHIPPED",
            Status::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub status: Status,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The order as rebuilt from its events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub status: Status,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub currency: String,
    pub history: Vec<HistoryEntry>,
    #[serde(skip)]
    pub deadline_ms: i64,
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// Number of events folded.
    #[serde(skip)]
    pub version: i64,
}

/// Folds events (with their timestamps) into the order; `None` before `Placed`.
pub fn fold<'a>(
    id: &str,
    events: impl IntoIterator<Item = (&'a OrderEvent, &'a str)>,
) -> Option<Order> {
    let mut order: Option<Order> = None;
    for (ev, at) in events {
        match (ev, order.as_mut()) {
            (
                OrderEvent::Placed {
                    user_id,
                    items,
                    total_cents,
                    currency,
                    deadline_ms,
                    traceparent,
                },
                None,
            ) => {
                order = Some(Order {
                    id: id.to_owned(),
                    user_id: user_id.clone(),
                    status: Status::Pending,
                    items: items.clone(),
                    total_cents: *total_cents,
                    currency: currency.clone(),
                    history: vec![HistoryEntry {
                        status: Status::Pending,
                        at: at.to_owned(),
                        reason: None,
                    }],
                    deadline_ms: *deadline_ms,
                    traceparent: traceparent.clone(),
                    version: 0,
                });
            }
            (_, None) | (OrderEvent::Placed { .. }, Some(_)) => continue,
            (ev, Some(o)) => {
                let (status, reason) = match ev {
                    OrderEvent::StockReserved => (Status::StockReserved, None),
                    OrderEvent::Paid { .. } => (Status::Paid, None),
                    OrderEvent::Shipped { .. } => (Status::Shipped, None),
                    OrderEvent::Cancelled { reason } => (Status::Cancelled, Some(reason.clone())),
                    OrderEvent::Placed { .. } => unreachable!("handled above"),
                };
                o.status = status;
                o.history.push(HistoryEntry {
                    status,
                    at: at.to_owned(),
                    reason,
                });
            }
        }
        if let Some(o) = order.as_mut() {
            o.version += 1;
        }
    }
    order
}

/// A saga fact, as orders sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    Placed {
        user_id: String,
        items: Vec<OrderLine>,
        total_cents: i64,
        currency: String,
        deadline_ms: i64,
        traceparent: Option<String>,
    },
    StockReserved,
    StockRejected {
        reason: String,
    },
    PaymentSucceeded {
        payment_id: String,
    },
    PaymentFailed {
        reason: String,
    },
    ShipmentScheduled {
        shipment_id: String,
        tracking_number: String,
    },
    DeadlinePassed,
}

/// Why a fact cannot be applied yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("order not known yet")]
pub struct UnknownOrder;

/// The events a fact produces for the current state. Late or repeated facts produce nothing:
/// a CANCELLED order stays cancelled (a late payment is refunded by payment).
pub fn decide(order: Option<&Order>, fact: Fact) -> Result<Vec<OrderEvent>, UnknownOrder> {
    use Status::*;
    let Some(o) = order else {
        return match fact {
            Fact::Placed {
                user_id,
                items,
                total_cents,
                currency,
                deadline_ms,
                traceparent,
            } => Ok(vec![OrderEvent::Placed {
                user_id,
                items,
                total_cents,
                currency,
                deadline_ms,
                traceparent,
            }]),
            _ => Err(UnknownOrder),
        };
    };
    let events = match (o.status, fact) {
        (Pending, Fact::StockReserved) => vec![OrderEvent::StockReserved],
        (Pending, Fact::StockRejected { reason }) => vec![OrderEvent::Cancelled { reason }],
        (Pending | StockReserved, Fact::PaymentSucceeded { payment_id }) => {
            vec![OrderEvent::Paid { payment_id }]
        }
        (Pending | StockReserved, Fact::PaymentFailed { reason }) => vec![OrderEvent::Cancelled {
            reason: match reason.as_str() {
                "declined" => "payment_declined".into(),
                // Payment refused to start a charge after the order's deadline.
                "deadline_passed" => "timeout".into(),
                _ => "payment_error".into(),
            },
        }],
        (
            Paid,
            Fact::ShipmentScheduled {
                shipment_id,
                tracking_number,
            },
        ) => {
            vec![OrderEvent::Shipped {
                shipment_id,
                tracking_number,
            }]
        }
        (Pending | StockReserved, Fact::DeadlinePassed) => vec![OrderEvent::Cancelled {
            reason: "timeout".into(),
        }],
        _ => vec![],
    };
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(facts: Vec<Fact>) -> Order {
        let mut log: Vec<(OrderEvent, String)> = Vec::new();
        for (i, f) in facts.into_iter().enumerate() {
            let current = fold("o", log.iter().map(|(e, a)| (e, a.as_str())));
            for e in decide(current.as_ref(), f).unwrap() {
                log.push((e, format!("t{i}")));
            }
        }
        fold("o", log.iter().map(|(e, a)| (e, a.as_str()))).unwrap()
    }

    fn placed() -> Fact {
        Fact::Placed {
            user_id: "u".into(),
            items: vec![],
            total_cents: 10,
            currency: "EUR".into(),
            deadline_ms: 0,
            traceparent: None,
        }
    }

    #[test]
    fn happy_path_reaches_shipped_with_history() {
        let o = run(vec![
            placed(),
            Fact::StockReserved,
            Fact::PaymentSucceeded {
                payment_id: "p".into(),
            },
            Fact::ShipmentScheduled {
                shipment_id: "s".into(),
                tracking_number: "T".into(),
            },
        ]);
        assert_eq!(o.status, Status::Shipped);
        let statuses: Vec<Status> = o.history.iter().map(|h| h.status).collect();
        assert_eq!(
            statuses,
            [
                Status::Pending,
                Status::StockReserved,
                Status::Paid,
                Status::Shipped
            ]
        );
        assert_eq!(o.version, 4);
    }

    #[test]
    fn cancellations_are_final_and_late_facts_change_nothing() {
        let o = run(vec![
            placed(),
            Fact::StockReserved,
            Fact::DeadlinePassed,
            Fact::PaymentSucceeded {
                payment_id: "p".into(),
            },
        ]);
        assert_eq!(o.status, Status::Cancelled);
        assert_eq!(o.history.last().unwrap().reason.as_deref(), Some("timeout"));
        let o = run(vec![
            placed(),
            Fact::StockReserved,
            Fact::PaymentFailed {
                reason: "declined".into(),
            },
            Fact::DeadlinePassed,
        ]);
        assert_eq!(
            o.history.last().unwrap().reason.as_deref(),
            Some("payment_declined")
        );
        assert_eq!(o.history.len(), 3);
        let o = run(vec![
            placed(),
            Fact::StockRejected {
                reason: "out_of_stock".into(),
            },
        ]);
        assert_eq!(
            o.history.last().unwrap().reason.as_deref(),
            Some("out_of_stock")
        );
        assert_eq!(decide(None, Fact::StockReserved), Err(UnknownOrder));
        let o = run(vec![
            placed(),
            Fact::StockReserved,
            Fact::PaymentSucceeded {
                payment_id: "p".into(),
            },
            Fact::DeadlinePassed,
        ]);
        assert_eq!(o.status, Status::Paid, "a paid order does not time out");
        let o = run(vec![
            placed(),
            Fact::StockReserved,
            Fact::PaymentFailed {
                reason: "deadline_passed".into(),
            },
        ]);
        assert_eq!(
            o.history.last().unwrap().reason.as_deref(),
            Some("timeout"),
            "payment refusing a late charge is the timeout"
        );
    }
}
