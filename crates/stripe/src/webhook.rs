//! `POST /v1/stripe/webhook`: Stripe's events in.
//!
//! Order of work: verify `Stripe-Signature` (HMAC-SHA256 of `{t}.{raw body}` with the endpoint's
//! secret, any of several `v1` signatures, `t` within the tolerance, constant-time comparison) →
//! read the event → in one transaction: store it by id (a known id is a retry, acknowledged and not
//! processed again; the same id with the same signed `t` is a replayed copy, refused), then act on
//! it and record what came of it. A failure that a retry may cure rolls everything back (Stripe
//! sends the event again); one that it cannot is kept for review, so the event is never lost.

use chrono::{DateTime, TimeZone, Utc};
use sqlx::{Acquire, PgConnection, PgPool};

use crate::invoice::{self, CardPayment};
use crate::ledger::Ledger;
use crate::money::{Amount, Fiat};
use payrail_payments::webhook::{EndpointSecret, SignatureError};

use super::client::PaymentIntent;
use super::error::StripeError;
use super::event::{is_event_id, CardEvent, Envelope};
use super::returns::{self, Returned};
use super::{attempt, CardRail, METADATA_ATTEMPT_ID};

/// Largest webhook body accepted (Stripe's events are a few KiB).
pub const WEBHOOK_BODY_BYTES_MAX: usize = 256 * 1024;

/// Why a delivery was refused (answered 400, logged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no Stripe-Signature header")]
    Unsigned,
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("no v1 signature matches the body")]
    Forged,
    #[error("the signed timestamp {timestamp} is more than {tolerance_s} s from now")]
    Stale { timestamp: i64, tolerance_s: i64 },
    #[error("event {event_id} was already delivered with this signature")]
    Replayed { event_id: String },
    #[error("the body is not a stripe event: {reason}")]
    NotAnEvent { reason: String },
}

/// What became of an accepted delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Acted on.
    Processed { event_id: String, note: String },
    /// Seen before under another signature: Stripe retried; nothing done again.
    Duplicate { event_id: String },
    /// About a payment not credited yet: applied right after it.
    Deferred { event_id: String },
    /// Kept for review (names no known invoice, or could not be applied).
    Review { event_id: String, reason: String },
    /// A type the card rail does not act on; stored.
    Ignored { event_id: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Failed(#[from] StripeError),
}

impl From<sqlx::Error> for ReceiveError {
    fn from(error: sqlx::Error) -> Self {
        Self::Failed(StripeError::Database(error))
    }
}

/// Checks a `Stripe-Signature` header against `body`. Stripe's scheme is the one payrail signs
/// its own webhooks with, so the same verifier serves.
pub fn verify_signature(secret: &str, header: &str, body: &[u8], now_unix: i64, tolerance_s: i64) -> Result<i64, Refusal> {
    let secret = EndpointSecret::from_stored(secret.to_owned());
    match payrail_payments::webhook::verify(&secret, header, body, now_unix, tolerance_s) {
        Ok(()) => signed_at(header).ok_or(Refusal::Malformed),
        Err(SignatureError::Malformed) => Err(Refusal::Malformed),
        Err(SignatureError::Stale { timestamp, tolerance_s }) => Err(Refusal::Stale { timestamp, tolerance_s }),
        Err(SignatureError::Mismatch) => Err(Refusal::Forged),
    }
}

fn signed_at(header: &str) -> Option<i64> {
    header.split(',').find_map(|part| part.trim().strip_prefix("t=")).and_then(|t| t.parse().ok())
}

/// What acting on an event came to, stored with it.
struct Outcome {
    status: &'static str,
    note: String,
}

impl Outcome {
    fn processed(note: impl Into<String>) -> Self {
        Self { status: "processed", note: note.into() }
    }
    fn review(note: impl Into<String>) -> Self {
        Self { status: "review", note: note.into() }
    }
    fn deferred(note: impl Into<String>) -> Self {
        Self { status: "deferred", note: note.into() }
    }
    fn ignored(note: impl Into<String>) -> Self {
        Self { status: "ignored", note: note.into() }
    }
}

/// Receives one delivery. See the module docs.
pub async fn receive(
    rail: &CardRail,
    pool: &PgPool,
    ledger: &Ledger,
    signature: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Received, ReceiveError> {
    let result = receive_inner(rail, pool, ledger, signature, body, now).await;
    if let Err(ReceiveError::Refused(refusal)) = &result {
        tracing::warn!(target: "stripe::webhook", %refusal, bytes = body.len(), "webhook delivery refused");
    }
    result
}

async fn receive_inner(
    rail: &CardRail,
    pool: &PgPool,
    ledger: &Ledger,
    signature: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Received, ReceiveError> {
    let secret = rail.config.webhook_secret().ok_or(StripeError::NotConfigured)?;
    let header = signature.ok_or(Refusal::Unsigned)?;
    if body.len() > WEBHOOK_BODY_BYTES_MAX {
        return Err(Refusal::NotAnEvent { reason: format!("{} bytes, more than {WEBHOOK_BODY_BYTES_MAX}", body.len()) }.into());
    }
    let tolerance_s = i64::try_from(rail.config.webhook_tolerance_s).unwrap_or(i64::MAX);
    let signed_at = verify_signature(secret.expose(), header, body, now.timestamp(), tolerance_s)?;
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| Refusal::NotAnEvent { reason: e.to_string() })?;
    if !is_event_id(&envelope.id) {
        return Err(Refusal::NotAnEvent { reason: "the event id is not a stripe event id".to_owned() }.into());
    }
    let payload: serde_json::Value = serde_json::from_slice(body).map_err(|e| Refusal::NotAnEvent { reason: e.to_string() })?;
    let event_id = envelope.id.clone();
    let created = Utc.timestamp_opt(envelope.created, 0).single().unwrap_or(now);

    let mut tx = pool.begin().await?;
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO stripe_events (id, event_type, stripe_created_at, livemode, payload, status, received_at) \
         VALUES ($1, $2, $3, $4, $5, 'ignored', $6) ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(&event_id)
    .bind(&envelope.event_type)
    .bind(created)
    .bind(envelope.livemode)
    .bind(&payload)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let fresh_delivery: Option<String> = sqlx::query_scalar(
        "INSERT INTO stripe_event_deliveries (event_id, signed_at, received_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(&event_id)
    .bind(signed_at)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_none() {
        tx.commit().await?;
        return match fresh_delivery {
            Some(_) => {
                tracing::info!(target: "stripe::webhook", event = %event_id, "event delivered again; already handled");
                Ok(Received::Duplicate { event_id })
            }
            None => Err(Refusal::Replayed { event_id }.into()),
        };
    }

    let event = match CardEvent::of(&envelope) {
        Ok(event) => event,
        Err(e) => {
            let outcome = Outcome::review(format!("the {} object cannot be read: {e}", envelope.event_type));
            finish(&mut tx, &event_id, &outcome, None, None, now).await?;
            tx.commit().await?;
            return Ok(Received::Review { event_id, reason: outcome.note });
        }
    };
    // Act inside a savepoint: a refusal that no retry can cure is kept for review instead.
    let outcome = {
        let mut savepoint = (&mut *tx).begin().await?;
        match act(&mut savepoint, ledger, &event, now).await {
            Ok(outcome) => {
                savepoint.commit().await?;
                outcome
            }
            Err(error) if error.is_retryable() => return Err(error.into()),
            Err(error) => {
                savepoint.rollback().await?;
                tracing::error!(target: "stripe::webhook", event = %event_id, %error, "event could not be applied; kept for review");
                Outcome::review(format!("could not be applied: {error}"))
            }
        }
    };
    let invoice_id = event.invoice_id().map(str::to_owned);
    let payment_intent = event.payment_intent_id().map(str::to_owned);
    finish(&mut tx, &event_id, &outcome, invoice_id.as_deref(), payment_intent.as_deref(), now).await?;
    tx.commit().await?;
    tracing::info!(target: "stripe::webhook", event = %event_id, event_type = %envelope.event_type, status = outcome.status,
        note = %outcome.note, "event received");
    Ok(match outcome.status {
        "processed" => Received::Processed { event_id, note: outcome.note },
        "deferred" => Received::Deferred { event_id },
        "review" => Received::Review { event_id, reason: outcome.note },
        _ => Received::Ignored { event_id },
    })
}

async fn finish(
    tx: &mut PgConnection,
    event_id: &str,
    outcome: &Outcome,
    invoice_id: Option<&str>,
    payment_intent: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE stripe_events SET status = $2, note = $3, invoice_id = $4, payment_intent_id = $5, \
                processed_at = CASE WHEN $2 = 'deferred' THEN NULL ELSE $6 END WHERE id = $1",
    )
    .bind(event_id)
    .bind(outcome.status)
    .bind(outcome.note.chars().take(1000).collect::<String>())
    .bind(invoice_id)
    .bind(payment_intent)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn act(tx: &mut PgConnection, ledger: &Ledger, event: &CardEvent, now: DateTime<Utc>) -> Result<Outcome, StripeError> {
    match event {
        CardEvent::PaymentSucceeded(pi) => {
            let charged = Charged {
                invoice_id: event.invoice_id(),
                payment_intent_id: &pi.id,
                charge_id: pi.charge_id(),
                currency: &pi.currency,
                amount: pi.received(),
                attempt_id: pi.metadata.get(METADATA_ATTEMPT_ID).map(String::as_str),
            };
            let outcome = credit(tx, ledger, &charged, now).await?;
            // A card subscription keeps the card that paid it, for its renewals.
            if let (Some(invoice_id), Some(method), Some(_)) = (charged.invoice_id, &pi.payment_method, &pi.customer) {
                payrail_subscriptions::subscription::remember_card(tx, invoice_id, method, now).await.map_err(invoice::InvoiceError::from)?;
            }
            Ok(outcome)
        }
        CardEvent::SessionCompleted(session) => {
            if session.payment_status.as_deref() != Some("paid") {
                return Ok(Outcome::ignored("session completed, payment not yet paid"));
            }
            let (Some(pi), Some(currency), Some(amount)) = (&session.payment_intent, &session.currency, session.amount_total) else {
                return Ok(Outcome::review("paid session without a payment intent, currency or amount"));
            };
            // Only a session payrail started credits an invoice: its metadata must name one of
            // payrail's own Checkout attempts of that invoice (a `client_reference_id` alone is
            // something anyone with the Stripe account's dashboard could set).
            if !session_is_ours(tx, session).await? {
                return Ok(Outcome::review(
                    "checkout session not started by payrail (its metadata names no stored card attempt of the invoice); not credited",
                ));
            }
            let charged = Charged {
                invoice_id: event.invoice_id(),
                payment_intent_id: pi,
                charge_id: None,
                currency,
                amount,
                attempt_id: session.metadata.get(METADATA_ATTEMPT_ID).map(String::as_str),
            };
            credit(tx, ledger, &charged, now).await
        }
        CardEvent::PaymentUpdated(pi) => attempt_updated(tx, event.invoice_id(), pi, now).await,
        CardEvent::ChargeRefunded(_) | CardEvent::DisputeCreated(_) | CardEvent::DisputeClosed(_) => {
            money_back(tx, ledger, event, now).await
        }
        CardEvent::RefundUpdated(refund) => Ok(match refund.status.as_deref() {
            Some("failed") | Some("canceled") => Outcome::review(format!(
                "refund {} {} at Stripe ({}); its reversal stays posted until reviewed",
                refund.id,
                refund.status.as_deref().unwrap_or_default(),
                refund.failure_reason.as_deref().unwrap_or("no reason given")
            )),
            _ => Outcome::ignored("refund amounts are taken from charge.refunded"),
        }),
        CardEvent::PayoutUpdated(payout) => Ok(match super::settlement::apply(tx, ledger, payout, now).await? {
            super::settlement::PayoutOutcome::Applied(note) => Outcome::processed(note),
            super::settlement::PayoutOutcome::Review(note) => Outcome::review(note),
        }),
        CardEvent::Other => Ok(Outcome::ignored("not a type the card rail acts on")),
    }
}

/// Whether a Checkout Session's metadata names a stored Checkout attempt of the invoice it names
/// (and, once the session id is stored, that very session).
async fn session_is_ours(tx: &mut PgConnection, session: &super::client::CheckoutSession) -> Result<bool, StripeError> {
    let (Some(attempt_id), Some(invoice_id)) =
        (session.metadata.get(METADATA_ATTEMPT_ID), session.metadata.get(super::METADATA_INVOICE_ID))
    else {
        return Ok(false);
    };
    let ours: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM card_attempts WHERE id = $1 AND invoice_id = $2 AND kind = 'checkout_session' \
                          AND (checkout_session_id IS NULL OR checkout_session_id = $3))",
    )
    .bind(attempt_id)
    .bind(invoice_id)
    .bind(&session.id)
    .fetch_one(&mut *tx)
    .await?;
    Ok(ours)
}

/// Another attempt of the same invoice that is under way or succeeded: at most one may be (a unique
/// index), so a late success of an attempt given up on is recorded on its payment, not its status.
const OTHER_LIVE: &str = "SELECT 1 FROM card_attempts o WHERE o.invoice_id = a.invoice_id AND o.id <> a.id \
     AND o.status IN ('creating', 'open', 'processing', 'succeeded')";

struct Charged<'a> {
    invoice_id: Option<&'a str>,
    payment_intent_id: &'a str,
    charge_id: Option<String>,
    currency: &'a str,
    amount: u64,
    attempt_id: Option<&'a str>,
}

async fn credit(tx: &mut PgConnection, ledger: &Ledger, charged: &Charged<'_>, now: DateTime<Utc>) -> Result<Outcome, StripeError> {
    let Some(invoice_id) = charged.invoice_id else {
        return Ok(Outcome::review(format!("payment {} names no invoice", charged.payment_intent_id)));
    };
    let known: Option<String> = sqlx::query_scalar("SELECT id FROM invoices WHERE id = $1").bind(invoice_id).fetch_optional(&mut *tx).await?;
    if known.is_none() {
        return Ok(Outcome::review(format!("payment {} names unknown invoice {invoice_id}", charged.payment_intent_id)));
    }
    let Ok(currency) = charged.currency.to_ascii_uppercase().parse::<Fiat>() else {
        return Ok(Outcome::review(format!("payment {} in unsupported currency {}", charged.payment_intent_id, charged.currency)));
    };
    if charged.amount == 0 {
        return Ok(Outcome::review(format!("payment {} of zero", charged.payment_intent_id)));
    }
    let payment = CardPayment {
        invoice_id: invoice_id.to_owned(),
        payment_intent_id: charged.payment_intent_id.to_owned(),
        currency,
        amount: Amount::from_u64(charged.amount),
    };
    let applied = invoice::apply_card_payment(tx, ledger, &payment, now).await?;
    returns::record_payment(tx, charged.payment_intent_id, charged.charge_id.as_deref(), currency, now).await?;
    sqlx::query(&format!(
        "UPDATE card_attempts a SET status = CASE WHEN EXISTS ({OTHER_LIVE}) THEN a.status ELSE 'succeeded' END, \
                payment_intent_id = coalesce(a.payment_intent_id, $2), failure_code = NULL, failure_message = NULL, updated_at = $3 \
         WHERE a.payment_intent_id = $2 OR ($1::text IS NOT NULL AND a.id = $1)"
    ))
    .bind(charged.attempt_id)
    .bind(charged.payment_intent_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let mut note = format!(
        "{} {} credited to {} ({}), invoice {}",
        payment.amount.to_decimal_string(currency.minor_units()),
        currency.code(),
        applied.applied_to,
        applied.payment_id,
        applied.invoice_status
    );
    if !applied.credited {
        note = format!("payment already credited ({}), invoice {}", applied.payment_id, applied.invoice_status);
    }
    let replayed = run_deferred(tx, ledger, charged.payment_intent_id, now).await?;
    if replayed > 0 {
        note.push_str(&format!("; {replayed} deferred event(s) applied"));
    }
    Ok(Outcome::processed(note))
}

/// Refunds and disputes that arrived before their payment, applied now in Stripe's order.
async fn run_deferred(tx: &mut PgConnection, ledger: &Ledger, payment_intent_id: &str, now: DateTime<Utc>) -> Result<usize, StripeError> {
    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT id, payload FROM stripe_events WHERE payment_intent_id = $1 AND status = 'deferred' \
         ORDER BY stripe_created_at, received_at, id FOR UPDATE",
    )
    .bind(payment_intent_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut applied = 0;
    for (id, payload) in rows {
        let outcome = match serde_json::from_value::<Envelope>(payload).map(|e| CardEvent::of(&e)) {
            Ok(Ok(event)) => money_back(tx, ledger, &event, now).await?,
            Ok(Err(e)) | Err(e) => Outcome::review(format!("deferred event cannot be read: {e}")),
        };
        if outcome.status == "processed" {
            applied += 1;
        }
        sqlx::query("UPDATE stripe_events SET status = $2, note = $3, processed_at = $4 WHERE id = $1")
            .bind(&id)
            .bind(if outcome.status == "deferred" { "review" } else { outcome.status })
            .bind(format!("after its payment: {}", outcome.note).chars().take(1000).collect::<String>())
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    Ok(applied)
}

async fn attempt_updated(tx: &mut PgConnection, invoice_id: Option<&str>, pi: &PaymentIntent, now: DateTime<Utc>) -> Result<Outcome, StripeError> {
    let status = attempt::status_of(pi);
    let error = pi.last_payment_error.clone().unwrap_or_default();
    let updated = sqlx::query(&format!(
        "UPDATE card_attempts a SET status = CASE WHEN a.status = 'succeeded' THEN a.status \
                    WHEN $3 IN ('processing', 'succeeded') AND EXISTS ({OTHER_LIVE}) THEN a.status ELSE $3 END, \
                payment_intent_id = coalesce(a.payment_intent_id, $2), \
                failure_code = coalesce($4, a.failure_code), failure_message = coalesce($5, a.failure_message), updated_at = $6 \
         WHERE a.payment_intent_id = $2 OR ($1::text IS NOT NULL AND a.id = $1)"
    ))
    .bind(pi.metadata.get(METADATA_ATTEMPT_ID))
    .bind(&pi.id)
    .bind(status)
    .bind(error.decline_code.or(error.code))
    .bind(error.message.map(|m| m.chars().take(1000).collect::<String>()))
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let known = match invoice_id {
        Some(id) => sqlx::query_scalar::<_, String>("SELECT id FROM invoices WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?.is_some(),
        None => false,
    };
    if !known {
        return Ok(Outcome::review(format!("payment {} ({status}) names no known invoice", pi.id)));
    }
    // A card subscription's card on file declined (a renewal charged off-session): past due.
    if let (Some(invoice_id), "failed" | "requires_action", Some(method), Some(_)) = (invoice_id, status, &pi.payment_method, &pi.customer) {
        let card = payrail_subscriptions::subscription::card_subscription(&mut *tx, invoice_id).await.map_err(invoice::InvoiceError::from)?;
        if card.and_then(|c| c.card_payment_method).as_deref() == Some(method.as_str()) {
            let error = pi.last_payment_error.clone().unwrap_or_default();
            let code = error.decline_code.or(error.code).or_else(|| (status == "requires_action").then(|| "authentication_required".to_owned()));
            payrail_subscriptions::subscription::payment_failed_on(&mut *tx, invoice_id, code.as_deref(), error.message.as_deref(), now)
                .await
                .map_err(invoice::InvoiceError::from)?;
        }
    }
    Ok(Outcome::processed(format!("payment {} is {status}; {updated} attempt(s) updated", pi.id)))
}

/// Refunds and disputes: the payment's reversal, or deferred until the payment is credited.
async fn money_back(tx: &mut PgConnection, ledger: &Ledger, event: &CardEvent, now: DateTime<Utc>) -> Result<Outcome, StripeError> {
    let (payment_intent, charge) = match event {
        CardEvent::ChargeRefunded(c) => (c.payment_intent.as_deref(), Some(c.id.as_str())),
        CardEvent::DisputeCreated(d) | CardEvent::DisputeClosed(d) => (d.payment_intent.as_deref(), d.charge.as_deref()),
        _ => return Ok(Outcome::ignored("not a refund or a dispute")),
    };
    let Some(mut payment) = returns::lock(tx, payment_intent, charge).await? else {
        return Ok(match payment_intent {
            Some(pi) => Outcome::deferred(format!("no credited payment {pi} yet")),
            None => Outcome::review(format!("charge {} of no known payment", charge.unwrap_or("?"))),
        });
    };
    let result = match event {
        CardEvent::ChargeRefunded(c) => {
            returns::set_refunded_total(tx, ledger, &mut payment, Amount::from_u64(c.amount_refunded), now).await?
        }
        CardEvent::DisputeCreated(d) => returns::open_dispute(tx, ledger, &mut payment, &d.id, Amount::from_u64(d.amount), now).await?,
        CardEvent::DisputeClosed(d) if d.status.as_deref() == Some("won") => {
            returns::win_dispute(tx, ledger, &mut payment, &d.id, now).await?
        }
        CardEvent::DisputeClosed(d) => {
            return Ok(Outcome::processed(format!(
                "dispute {} closed ({}): its amount stays reversed",
                d.id,
                d.status.as_deref().unwrap_or("unknown")
            )))
        }
        _ => Returned::Unchanged,
    };
    Ok(Outcome::processed(match result {
        Returned::Unchanged => format!("payment {}: nothing new (already applied)", payment.payment_intent_id),
        Returned::Posted(status) => format!(
            "payment {}: {} refunded, {} disputed of {}; invoice {status}",
            payment.payment_intent_id, payment.refunded, payment.disputed, payment.amount
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_like_stripe_does() {
        let secret = "whsec_test_secret";
        let body = br#"{"id":"evt_1","type":"x","created":1,"data":{"object":{}}}"#;
        let good = payrail_payments::webhook::sign(&EndpointSecret::from_stored(secret.to_owned()), 1_700_000_000, body);
        assert_eq!(verify_signature(secret, &good, body, 1_700_000_010, 300), Ok(1_700_000_000));
        // Stripe may send several v1 signatures (secret rotation) and a v0 one: any v1 match counts.
        let several = format!("t=1700000000,v0=abc,v1={},{}", "11".repeat(32), good.replace("t=1700000000,", ""));
        assert_eq!(verify_signature(secret, &several, body, 1_700_000_000, 300), Ok(1_700_000_000));
        assert_eq!(verify_signature("whsec_other", &good, body, 1_700_000_000, 300), Err(Refusal::Forged));
        assert_eq!(
            verify_signature(secret, &good, body, 1_700_000_301, 300),
            Err(Refusal::Stale { timestamp: 1_700_000_000, tolerance_s: 300 })
        );
        assert_eq!(verify_signature(secret, "nonsense", body, 1_700_000_000, 300), Err(Refusal::Malformed));
    }
}
