//! Stripe events as the webhook receives them, pure: the envelope, and the objects of the types
//! the card rail acts on. Everything else is kept as it came (the raw payload is stored).

use serde::Deserialize;
use serde_json::Value;

use super::client::{Charge, CheckoutSession, Dispute, PaymentIntent, Payout, Refund};

/// Longest event id accepted (Stripe's are about 30 characters).
pub const EVENT_ID_LEN_MAX: usize = 255;

#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Unix seconds.
    pub created: i64,
    #[serde(default)]
    pub livemode: bool,
    pub data: EventData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: Value,
}

/// What an event asks of the card rail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardEvent {
    /// `payment_intent.succeeded`: credit the invoice.
    PaymentSucceeded(PaymentIntent),
    /// `checkout.session.completed`: credit the invoice when the session is paid.
    SessionCompleted(CheckoutSession),
    /// `payment_intent.payment_failed`, `.canceled`, `.requires_action`, `.processing`: the
    /// attempt's new state, recorded.
    PaymentUpdated(PaymentIntent),
    /// `charge.refunded`: the charge's cumulative `amount_refunded` went up.
    ChargeRefunded(Charge),
    /// `refund.created`, `refund.updated`, `refund.failed`, `charge.refund.updated`.
    RefundUpdated(Refund),
    /// `charge.dispute.created`: the disputed amount is taken from the balance.
    DisputeCreated(Dispute),
    /// `charge.dispute.closed`: won disputes give the amount back.
    DisputeClosed(Dispute),
    /// `payout.*`: a payout to the bank moved on (a card settlement's, or one payrail did not ask for).
    PayoutUpdated(Payout),
    /// Any other type: stored, nothing to do.
    Other,
}

impl CardEvent {
    /// Reads the object of `envelope` for the types the card rail acts on.
    pub fn of(envelope: &Envelope) -> Result<Self, serde_json::Error> {
        let object = envelope.data.object.clone();
        Ok(match envelope.event_type.as_str() {
            "payment_intent.succeeded" => Self::PaymentSucceeded(serde_json::from_value(object)?),
            "payment_intent.payment_failed"
            | "payment_intent.canceled"
            | "payment_intent.requires_action"
            | "payment_intent.processing" => Self::PaymentUpdated(serde_json::from_value(object)?),
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
                Self::SessionCompleted(serde_json::from_value(object)?)
            }
            "charge.refunded" => Self::ChargeRefunded(serde_json::from_value(object)?),
            "refund.created" | "refund.updated" | "refund.failed" | "charge.refund.updated" => {
                Self::RefundUpdated(serde_json::from_value(object)?)
            }
            "charge.dispute.created" => Self::DisputeCreated(serde_json::from_value(object)?),
            "charge.dispute.closed" => Self::DisputeClosed(serde_json::from_value(object)?),
            "payout.created" | "payout.updated" | "payout.paid" | "payout.failed" | "payout.canceled" => {
                Self::PayoutUpdated(serde_json::from_value(object)?)
            }
            _ => Self::Other,
        })
    }

    /// The PaymentIntent the event is about, where it says.
    pub fn payment_intent_id(&self) -> Option<&str> {
        match self {
            Self::PaymentSucceeded(pi) | Self::PaymentUpdated(pi) => Some(&pi.id),
            Self::SessionCompleted(s) => s.payment_intent.as_deref(),
            Self::ChargeRefunded(c) => c.payment_intent.as_deref(),
            Self::RefundUpdated(r) => r.payment_intent.as_deref(),
            Self::DisputeCreated(d) | Self::DisputeClosed(d) => d.payment_intent.as_deref(),
            Self::PayoutUpdated(_) | Self::Other => None,
        }
    }

    /// The invoice the event names in its metadata, where it does.
    pub fn invoice_id(&self) -> Option<&str> {
        match self {
            Self::PaymentSucceeded(pi) | Self::PaymentUpdated(pi) => from(&pi.metadata),
            Self::SessionCompleted(s) => from(&s.metadata).or(s.client_reference_id.as_deref()),
            Self::ChargeRefunded(c) => from(&c.metadata),
            _ => None,
        }
    }
}

fn from(metadata: &std::collections::BTreeMap<String, String>) -> Option<&str> {
    metadata.get(super::METADATA_INVOICE_ID).map(String::as_str)
}

/// Whether `id` looks like a Stripe event id.
pub fn is_event_id(id: &str) -> bool {
    id.len() <= EVENT_ID_LEN_MAX
        && id.strip_prefix("evt_").is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_by_type() {
        let envelope: Envelope = serde_json::from_value(serde_json::json!({
            "id": "evt_1", "type": "charge.refunded", "created": 1_700_000_000, "livemode": false,
            "data": {"object": {"id": "ch_1", "amount": 2500, "amount_refunded": 1000, "currency": "usd",
                                "payment_intent": "pi_1", "metadata": {}}}
        }))
        .expect("envelope");
        let event = CardEvent::of(&envelope).expect("object");
        assert_eq!(event.payment_intent_id(), Some("pi_1"));
        assert!(matches!(event, CardEvent::ChargeRefunded(ref c) if c.amount_refunded == 1000));
        let other: Envelope = serde_json::from_value(serde_json::json!({
            "id": "evt_2", "type": "customer.created", "created": 1, "data": {"object": {"id": "cus_1"}}
        }))
        .expect("envelope");
        assert_eq!(CardEvent::of(&other).expect("other"), CardEvent::Other);
    }

    #[test]
    fn event_ids_are_checked() {
        assert!(is_event_id("evt_1NfakeAbc_2"));
        for bad in ["", "evt_", "ev_1", "evt_1'; --", "evt_é"] {
            assert!(!is_event_id(bad), "{bad}");
        }
    }
}
