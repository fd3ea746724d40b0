//! Subscriptions paid by card: the first card payment saves the card on the customer's Stripe
//! Customer; each renewal invoice is then charged to it off-session.
//!
//! Saving: a payer paying a card subscription's invoice with a test card has the PaymentMethod
//! attached to the Stripe Customer before it is charged; a Checkout Session asks Stripe to save it
//! (`setup_future_usage=off_session`). Either way the verified `payment_intent.succeeded` names the
//! PaymentMethod, kept as the subscription's card on file in the transaction that credits the payment.
//!
//! Renewals: [`charge_due`] makes one off-session attempt per renewal invoice (the attempt's
//! idempotency key is the invoice's, so a retried pass charges once; one Stripe did not answer is
//! asked again by [`attempt::resume`]). A decline leaves the invoice
//! open for any rail, and the subscription past due, announced as `subscription.payment_failed`; a
//! success is credited, like every card payment, by the verified webhook.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use payrail_subscriptions::subscription::{card_subscription, payment_failed};

use super::attempt::{self, Method};
use super::error::Result;
use super::CardRail;

/// Renewal invoices charged per pass.
pub const BATCH: i64 = 50;

/// The Stripe Customer of `customer_id`, made once (the idempotency key is the customer's, so two
/// replicas asking at once get the same one).
pub(crate) async fn stripe_customer(rail: &CardRail, pool: &PgPool, customer_id: &str, now: DateTime<Utc>) -> Result<String> {
    let known: Option<String> = sqlx::query_scalar("SELECT stripe_customer_id FROM card_customers WHERE customer_id = $1").bind(customer_id).fetch_optional(pool).await?;
    if let Some(id) = known {
        return Ok(id);
    }
    let made = rail.client.create_customer(customer_id, &format!("payrail:customer:{customer_id}")).await?;
    sqlx::query("INSERT INTO card_customers (customer_id, stripe_customer_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (customer_id) DO NOTHING")
        .bind(customer_id)
        .bind(&made.id)
        .bind(now)
        .execute(pool)
        .await?;
    let id: String = sqlx::query_scalar("SELECT stripe_customer_id FROM card_customers WHERE customer_id = $1").bind(customer_id).fetch_one(pool).await?;
    Ok(id)
}

/// The Stripe Customer to save the card to when `invoice_id` is a card subscription's.
pub(crate) async fn saving_customer(rail: &CardRail, pool: &PgPool, invoice_id: &str, now: DateTime<Utc>) -> Result<Option<String>> {
    let card = card_subscription(&mut *pool.acquire().await?, invoice_id).await.map_err(crate::invoice::InvoiceError::from)?;
    match card {
        Some(card) => Ok(Some(stripe_customer(rail, pool, &card.customer_id, now).await?)),
        None => Ok(None),
    }
}

/// Charges the card on file for every open renewal invoice of a card subscription that has no card
/// attempt yet. Returns how many were charged (declines included).
pub async fn charge_due(rail: &CardRail, pool: &PgPool, now: DateTime<Utc>) -> Result<usize> {
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT si.invoice_id FROM subscription_invoices si JOIN subscriptions s ON s.id = si.subscription_id \
         JOIN invoices i ON i.id = si.invoice_id \
         WHERE s.payment = 'card' AND s.card_payment_method IS NOT NULL AND s.status IN ('trialing', 'active', 'past_due') \
           AND i.status = 'open' AND i.expires_at > $1 \
           AND NOT EXISTS (SELECT 1 FROM card_attempts a WHERE a.invoice_id = si.invoice_id) \
         ORDER BY si.created_at LIMIT $2",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let mut charged = 0;
    for invoice_id in due {
        let attempt = match attempt::start_with(rail, pool, &invoice_id, Method::OffSession, now).await {
            Ok(attempt) => attempt,
            Err(error) => {
                tracing::warn!(target: "stripe", invoice = %invoice_id, %error, "renewal not charged; retrying next pass");
                continue;
            }
        };
        charged += 1;
        after_charge(pool, &attempt, now).await?;
    }
    Ok(charged)
}

/// What follows Stripe's answer to an off-session charge: a decline (or a card that asks for the
/// payer, who is away) makes the subscription past due and is announced.
pub(crate) async fn after_charge(pool: &PgPool, attempt: &attempt::CardAttemptView, now: DateTime<Utc>) -> Result<()> {
    if attempt.status == "failed" || attempt.status == "requires_action" {
        let code = attempt.failure_code.as_deref().or((attempt.status == "requires_action").then_some("authentication_required"));
        payment_failed(pool, &attempt.invoice_id, code, attempt.failure_message.as_deref(), now)
            .await
            .map_err(crate::invoice::InvoiceError::from)?;
    }
    Ok(())
}
