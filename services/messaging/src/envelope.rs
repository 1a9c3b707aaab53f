use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::events::Event;

/// Content type of a structured-mode CloudEvent.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// A CloudEvents 1.0 event in structured JSON mode.
///
/// `type` is `shop.<routing key>.v1`, `subject` is the order id, `data` the event payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl CloudEvent {
    /// Wraps `data` into a new event with a fresh v7 id.
    pub fn new<E: Event>(source: &str, data: &E) -> Result<Self, serde_json::Error> {
        Ok(Self {
            specversion: "1.0".to_owned(),
            id: uuid::Uuid::now_v7().to_string(),
            source: format!("/shop/{source}"),
            ty: type_for_key(E::KEY),
            time: OffsetDateTime::now_utc(),
            subject: Some(data.subject()),
            datacontenttype: Some("application/json".to_owned()),
            data: serde_json::to_value(data)?,
        })
    }

    /// The routing key this event travels under (`order.placed` for `shop.order.placed.v1`).
    pub fn routing_key(&self) -> &str {
        self.ty
            .strip_prefix("shop.")
            .and_then(|t| t.rsplit_once('.').map(|(k, _)| k))
            .unwrap_or(&self.ty)
    }

    /// Decodes the payload as `E` (whatever the routing key; to decode by routing key, use
    /// [`SagaEvent::decode`](crate::events::SagaEvent::decode)).
    pub fn decode<E: Event>(&self) -> Result<E, serde_json::Error> {
        E::deserialize(&self.data)
    }
}

/// `order.placed` → `shop.order.placed.v1`.
pub(crate) fn type_for_key(key: &str) -> String {
    format!("shop.{key}.v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::OrderCancelled;

    #[test]
    fn round_trips_and_names_the_routing_key() {
        let data = OrderCancelled {
            order_id: "o-1".into(),
            user_id: "u-1".into(),
            reason: "timeout".into(),
        };
        let ev = CloudEvent::new("orders", &data).unwrap();
        assert_eq!(ev.ty, "shop.order.cancelled.v1");
        assert_eq!(ev.routing_key(), "order.cancelled");
        assert_eq!(ev.subject.as_deref(), Some("o-1"));
        let json = serde_json::to_string(&ev).unwrap();
        assert!(json.contains("\"specversion\":\"1.0\""));
        assert!(json.contains("\"type\":\"shop.order.cancelled.v1\""));
        let back: CloudEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ev);
        assert_eq!(back.decode::<OrderCancelled>().unwrap(), data);
    }
}
