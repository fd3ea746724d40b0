//! Starting a card payment for an invoice: one attempt, one PaymentIntent or Checkout Session.
//!
//! The attempt row is written (status `creating`) and committed before Stripe is called, and the
//! idempotency key sent is `payrail:{invoice}:card:{attempt}`: a call retried after a lost answer
//! gets Stripe's first answer back instead of a second PaymentIntent. A unique index allows one
//! attempt per invoice under way or succeeded at a time, so a form sent twice cannot charge twice.
//! An attempt Stripe did not answer stays that one attempt (`creating`, marked [`NO_ANSWER`]) and
//! is sent again, under its own key, by the payer's next try or by [`resume`] — never replaced by a
//! second attempt with a new key, which could charge twice if the first had reached Stripe.
//! Nothing here credits anything: the money counts when the verified webhook says it succeeded.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::ids::new_id;
use crate::invoice::{self, InvoiceStatus};
use crate::money::{Amount, Fiat};

use super::client::{stripe_amount, stripe_currency, NewCheckoutSession, NewPaymentIntent, PaymentIntent};
use super::error::{Result, StripeError};
use super::{CardRail, METADATA_ATTEMPT_ID, METADATA_INVOICE_ID};

/// Stripe's test PaymentMethods offered on the checkout page in test mode, with what they do. No
/// card number is ever typed into payrail. (Stripe's 3-D Secure test card needs Stripe's own page.)
pub const TEST_CARDS: &[(&str, &str)] = &[
    ("pm_card_visa", "Visa ending 4242 (succeeds)"),
    ("pm_card_chargeCustomerFail", "Visa ending 0341 (declined)"),
];
/// An attempt still `creating` this long after its call to Stripe began, beyond the client's own
/// timeout, was cut off (its process stopped) and is asked again; one that got no answer is asked
/// again at once.
pub const RESUME_MARGIN_S: i64 = 5;
/// The failure code of an attempt whose call got no answer; it stays `creating` until asked again.
pub const NO_ANSWER: &str = "no_answer";
/// Most card attempts one invoice may have: beyond this, card testing rather than a payer is the
/// likely cause, and the invoice is paid on a chain rail or not at all.
pub const ATTEMPTS_PER_INVOICE_MAX: i64 = 10;
/// Attempts an invoice may make back to back; each one after them waits
/// [`ATTEMPT_COOLDOWN_S`] after the one before.
pub const ATTEMPTS_WITHOUT_COOLDOWN: i64 = 3;
/// The wait between attempts past [`ATTEMPTS_WITHOUT_COOLDOWN`].
pub const ATTEMPT_COOLDOWN_S: i64 = 30;
/// Longest PaymentMethod id accepted.
pub const PAYMENT_METHOD_LEN_MAX: usize = 100;

/// One try at paying an invoice by card, as the page and the API show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CardAttemptView {
    /// `ca_…`
    pub id: String,
    pub invoice_id: String,
    pub attempt: i32,
    /// `payment_intent` or `checkout_session`.
    pub kind: String,
    /// `creating`, `open` (a session waits on Stripe's page), or the PaymentIntent's status
    /// (`requires_action`, `processing`, `succeeded`, …), or `failed`.
    pub status: String,
    pub payment_intent: Option<String>,
    /// Where to send the payer (Checkout Session).
    pub checkout_url: Option<String>,
    pub currency: String,
    /// In the currency's minor units.
    pub amount_minor: String,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub created_at: DateTime<Utc>,
}

const ATTEMPT_COLUMNS: &str = "id, invoice_id, attempt, kind, status, payment_intent_id, checkout_url, currency, \
     amount_minor::text AS amount_minor, failure_code, failure_message, created_at";

fn view_of(row: &sqlx::postgres::PgRow) -> Result<CardAttemptView> {
    Ok(CardAttemptView {
        id: row.try_get("id")?,
        invoice_id: row.try_get("invoice_id")?,
        attempt: row.try_get("attempt")?,
        kind: row.try_get("kind")?,
        status: row.try_get("status")?,
        payment_intent: row.try_get("payment_intent_id")?,
        checkout_url: row.try_get("checkout_url")?,
        currency: row.try_get("currency")?,
        amount_minor: row.try_get("amount_minor")?,
        failure_code: row.try_get("failure_code")?,
        failure_message: row.try_get("failure_message")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The newest attempt of an invoice, for the checkout page.
pub async fn latest(pool: &PgPool, invoice_id: &str) -> Result<Option<CardAttemptView>> {
    let row = sqlx::query(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM card_attempts WHERE invoice_id = $1 ORDER BY attempt DESC LIMIT 1"
    ))
    .bind(invoice_id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(view_of).transpose()
}

/// Whether `id` can be a Stripe PaymentMethod id.
pub fn is_payment_method(id: &str) -> bool {
    id.len() <= PAYMENT_METHOD_LEN_MAX
        && id.strip_prefix("pm_").is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// The PaymentIntent status an attempt takes.
pub(crate) fn status_of(payment_intent: &PaymentIntent) -> &'static str {
    match payment_intent.status.as_str() {
        "succeeded" => "succeeded",
        "requires_action" => "requires_action",
        "requires_confirmation" => "requires_confirmation",
        "canceled" => "canceled",
        // Declined: Stripe puts the PaymentIntent back to wait for another method.
        "requires_payment_method" if payment_intent.last_payment_error.is_some() => "failed",
        "requires_payment_method" => "requires_payment_method",
        _ => "processing",
    }
}

/// Who pays a card attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method<'a> {
    /// The payer, on the checkout page: a test card (`pm_…`) or Stripe's page.
    Payer(Option<&'a str>),
    /// The card on file of the card subscription the invoice belongs to, while the payer is away.
    OffSession,
}

/// Starts paying `invoice_id` by card for what is still due. With test cards, `payment_method`
/// (a `pm_…` test PaymentMethod) is confirmed at once; with sessions the answer carries the
/// Checkout URL to send the payer to. See the module docs.
pub async fn start(
    rail: &CardRail,
    pool: &PgPool,
    invoice_id: &str,
    payment_method: Option<&str>,
    now: DateTime<Utc>,
) -> Result<CardAttemptView> {
    start_with(rail, pool, invoice_id, Method::Payer(payment_method), now).await
}

/// [`start`], by the payer or off-session. An invoice of a card subscription saves the card the
/// payer uses on the customer's Stripe Customer (see [`super::renewal`]).
pub async fn start_with(rail: &CardRail, pool: &PgPool, invoice_id: &str, method: Method<'_>, now: DateTime<Utc>) -> Result<CardAttemptView> {
    let unavailable = |reason: &str| StripeError::CardUnavailable { invoice_id: invoice_id.to_owned(), reason: reason.to_owned() };
    let off_session = method == Method::OffSession;
    let session = !off_session && !rail.uses_test_cards();
    let payment_method = match method {
        Method::Payer(_) if session => None,
        Method::Payer(Some(m)) if is_payment_method(m) => Some(m.to_owned()),
        Method::Payer(_) => return Err(unavailable("choose a test card (a pm_… test payment method)")),
        Method::OffSession => {
            let card = payrail_subscriptions::subscription::card_subscription(&mut *pool.acquire().await?, invoice_id)
                .await
                .map_err(invoice::InvoiceError::from)?;
            match card.and_then(|c| c.card_payment_method) {
                Some(m) => Some(m),
                None => return Err(unavailable("no card on file")),
            }
        }
    };
    // 1. The attempt, committed before Stripe hears of it.
    let mut tx = pool.begin().await?;
    let found = sqlx::query("SELECT id FROM invoices WHERE id = $1 FOR UPDATE").bind(invoice_id).fetch_optional(&mut *tx).await?;
    if found.is_none() {
        return Err(invoice::InvoiceError::NotFound { id: invoice_id.to_owned() }.into());
    }
    let view = invoice::load_view(&mut tx, None, invoice_id).await?;
    if view.status != InvoiceStatus::Open {
        return Err(unavailable(match view.status {
            InvoiceStatus::Processing => "a payment is already confirming",
            InvoiceStatus::Paid | InvoiceStatus::Overpaid => "it is paid",
            _ => "it no longer takes payments",
        }));
    }
    if now >= view.expires_at {
        return Err(unavailable("it expired"));
    }
    let fiat: Fiat = view.currency.parse().map_err(|_| unavailable("its currency is not known"))?;
    let remaining = Amount::parse_decimal(&view.amount_remaining, fiat.minor_units()).map_err(|_| unavailable("its amount cannot be read"))?;
    let amount = stripe_amount(fiat, remaining).ok_or_else(|| unavailable("Stripe cannot charge this amount in this currency"))?;

    let live = sqlx::query(&format!(
        "SELECT {ATTEMPT_COLUMNS}, updated_at FROM card_attempts WHERE invoice_id = $1 \
         AND status IN ('creating', 'open', 'processing', 'succeeded') FOR UPDATE"
    ))
    .bind(invoice_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = live {
        let existing = view_of(&row)?;
        let updated_at: DateTime<Utc> = row.try_get("updated_at")?;
        match existing.status.as_str() {
            // The payer came back from Stripe's page without paying: the same session still works.
            "open" if session && existing.amount_minor == amount.to_string() => {
                tx.commit().await?;
                return Ok(existing);
            }
            "open" => {
                sqlx::query("UPDATE card_attempts SET status = 'canceled', updated_at = $2 WHERE id = $1")
                    .bind(&existing.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            // Stripe did not answer it (or its process stopped mid-call): the same request again,
            // under the same idempotency key, so it charges at most once whatever happened to the first.
            "creating" if resumable(rail, existing.failure_code.as_deref(), updated_at, now) => {
                tx.commit().await?;
                return send(rail, pool, &existing.id, now).await;
            }
            _ => return Err(StripeError::AttemptInProgress { invoice_id: invoice_id.to_owned() }),
        }
    }
    let (made, last_at): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT count(*), max(created_at) FROM card_attempts WHERE invoice_id = $1")
            .bind(invoice_id)
            .fetch_one(&mut *tx)
            .await?;
    if made >= ATTEMPTS_PER_INVOICE_MAX {
        return Err(StripeError::AttemptsExhausted { invoice_id: invoice_id.to_owned(), attempts: made });
    }
    if let Some(last_at) = last_at.filter(|_| made >= ATTEMPTS_WITHOUT_COOLDOWN) {
        let wait_s = ATTEMPT_COOLDOWN_S - (now - last_at).num_seconds();
        if wait_s > 0 {
            return Err(StripeError::AttemptCooldown { invoice_id: invoice_id.to_owned(), wait_s: wait_s.unsigned_abs() });
        }
    }
    let number: i32 = sqlx::query_scalar("SELECT coalesce(max(attempt), 0) + 1 FROM card_attempts WHERE invoice_id = $1")
        .bind(invoice_id)
        .fetch_one(&mut *tx)
        .await?;
    let attempt_id = new_id("ca");
    let idempotency_key = format!("payrail:{invoice_id}:card:{number}");
    sqlx::query(
        "INSERT INTO card_attempts (id, invoice_id, attempt, idempotency_key, kind, payment_method, currency, amount_minor, \
                                    off_session, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $10, 'creating', $9, $9)",
    )
    .bind(&attempt_id)
    .bind(invoice_id)
    .bind(number)
    .bind(&idempotency_key)
    .bind(if session { "checkout_session" } else { "payment_intent" })
    .bind(&payment_method)
    .bind(fiat.code())
    .bind(amount.to_string())
    .bind(now)
    .bind(off_session)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    call(rail, pool, &attempt_id, now).await
}

/// Whether a `creating` attempt last touched at `updated_at` may be sent again now: its call got no
/// answer, or began longer ago than a call may take.
fn resumable(rail: &CardRail, failure_code: Option<&str>, updated_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    failure_code == Some(NO_ANSWER) || now - updated_at > call_max(rail)
}

/// The longest a call to Stripe may take, with a margin: a row under way longer than this was
/// cut off (its process stopped) and may be sent again.
pub(crate) fn call_max(rail: &CardRail) -> chrono::Duration {
    chrono::Duration::milliseconds(i64::try_from(rail.config.timeout_ms).unwrap_or(i64::MAX / 2)) + chrono::Duration::seconds(RESUME_MARGIN_S)
}

/// Sends attempt `attempt_id` again if it still waits for Stripe and may be sent (see
/// [`resumable`]); taking it is one conditional update, so of two callers at once only one sends.
/// An attempt someone else is sending answers [`StripeError::AttemptInProgress`].
pub async fn send(rail: &CardRail, pool: &PgPool, attempt_id: &str, now: DateTime<Utc>) -> Result<CardAttemptView> {
    let taken: Option<String> = sqlx::query_scalar(
        "UPDATE card_attempts SET failure_code = NULL, failure_message = NULL, updated_at = $2 \
         WHERE id = $1 AND status = 'creating' AND (failure_code = $3 OR updated_at < $4) \
         RETURNING invoice_id",
    )
    .bind(attempt_id)
    .bind(now)
    .bind(NO_ANSWER)
    .bind(now - call_max(rail))
    .fetch_optional(pool)
    .await?;
    match taken {
        Some(_) => call(rail, pool, attempt_id, now).await,
        None => {
            let invoice_id: String =
                sqlx::query_scalar("SELECT invoice_id FROM card_attempts WHERE id = $1").bind(attempt_id).fetch_one(pool).await?;
            Err(StripeError::AttemptInProgress { invoice_id })
        }
    }
}

/// Asks Stripe again for every attempt that got no answer (or whose process stopped mid-call) while
/// its invoice still takes payments; gives up the others. A renewal declined on the card on file
/// makes its subscription past due, as when it was first charged. Returns how many were asked.
pub async fn resume(rail: &CardRail, pool: &PgPool, now: DateTime<Utc>) -> Result<usize> {
    let waiting = sqlx::query(
        "SELECT a.id, a.invoice_id, a.failure_code, a.updated_at, a.off_session, i.status AS invoice_status, i.expires_at \
         FROM card_attempts a JOIN invoices i ON i.id = a.invoice_id \
         WHERE a.status = 'creating' ORDER BY a.updated_at LIMIT 100",
    )
    .fetch_all(pool)
    .await?;
    let mut asked = 0;
    for row in waiting {
        let id: String = row.try_get("id")?;
        let invoice_id: String = row.try_get("invoice_id")?;
        if !resumable(rail, row.try_get::<Option<String>, _>("failure_code")?.as_deref(), row.try_get("updated_at")?, now) {
            continue;
        }
        let open = row.try_get::<String, _>("invoice_status")? == "open" && now < row.try_get::<DateTime<Utc>, _>("expires_at")?;
        if !open {
            // If Stripe did make the PaymentIntent after all, its webhook still credits the
            // invoice; this attempt is only no longer waited for.
            sqlx::query(
                "UPDATE card_attempts SET status = 'failed', failure_code = $2, \
                 failure_message = 'Stripe did not answer while the invoice took payments', updated_at = $3 \
                 WHERE id = $1 AND status = 'creating'",
            )
            .bind(&id)
            .bind(NO_ANSWER)
            .bind(now)
            .execute(pool)
            .await?;
            continue;
        }
        let view = match send(rail, pool, &id, now).await {
            Ok(view) => view,
            Err(error) if error.is_retryable() || matches!(error, StripeError::AttemptInProgress { .. }) => {
                tracing::warn!(target: "stripe", invoice = %invoice_id, attempt = %id, %error, "card attempt still unanswered; asking again later");
                continue;
            }
            Err(error) => return Err(error),
        };
        asked += 1;
        if row.try_get::<bool, _>("off_session")? {
            super::renewal::after_charge(pool, &view, now).await?;
        }
    }
    Ok(asked)
}

/// Calls Stripe for attempt `attempt_id` (which the caller has just written or taken) with the
/// request its row describes, and stores the answer.
async fn call(rail: &CardRail, pool: &PgPool, attempt_id: &str, now: DateTime<Utc>) -> Result<CardAttemptView> {
    let row = sqlx::query(
        "SELECT invoice_id, idempotency_key, kind, payment_method, currency, amount_minor::text AS amount_minor, off_session, created_at \
         FROM card_attempts WHERE id = $1",
    )
    .bind(attempt_id)
    .fetch_one(pool)
    .await?;
    let invoice_id: String = row.try_get("invoice_id")?;
    let idempotency_key: String = row.try_get("idempotency_key")?;
    let session = row.try_get::<String, _>("kind")? == "checkout_session";
    let payment_method: Option<String> = row.try_get("payment_method")?;
    let off_session: bool = row.try_get("off_session")?;
    let created_at: DateTime<Utc> = row.try_get("created_at")?;
    let corrupt = |column: &'static str, value: String| StripeError::from(invoice::InvoiceError::Corrupt { column, value });
    let currency: String = row.try_get("currency")?;
    let fiat: Fiat = currency.parse().map_err(|_| corrupt("currency", currency.clone()))?;
    let amount_text: String = row.try_get("amount_minor")?;
    let amount: u64 = amount_text.parse().map_err(|_| corrupt("amount_minor", amount_text.clone()))?;
    // What the invoice asked of its checkout: written at its creation, so a resent request is the
    // same request.
    let (expires_at, receipt_email, locale): (DateTime<Utc>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT expires_at, buyer_email, locale FROM invoices WHERE id = $1").bind(&invoice_id).fetch_one(pool).await?;
    let customer = match super::renewal::saving_customer(rail, pool, &invoice_id, now).await {
        Ok(customer) => customer,
        Err(error) if error.is_retryable() => return Err(unanswered(pool, attempt_id, error, now).await?),
        // Stripe refused to make the customer the card is to be kept on: nothing was charged.
        Err(error) => {
            sqlx::query("UPDATE card_attempts SET status = 'failed', failure_code = 'customer_refused', failure_message = $2, updated_at = $3 WHERE id = $1 AND status = 'creating'")
                .bind(attempt_id)
                .bind(error.to_string().chars().take(1000).collect::<String>())
                .bind(now)
                .execute(pool)
                .await?;
            return Err(error);
        }
    };

    // Every field below follows from the row alone, so a request sent again is the same request.
    let metadata = BTreeMap::from([
        (METADATA_INVOICE_ID.to_owned(), invoice_id.clone()),
        (METADATA_ATTEMPT_ID.to_owned(), attempt_id.to_owned()),
    ]);
    let outcome = if session {
        let page = format!("{}/pay/{invoice_id}", rail.public_url);
        let seconds_left = (expires_at - created_at).num_seconds();
        let request = NewCheckoutSession {
            amount,
            currency: stripe_currency(fiat),
            product_name: format!("Invoice {invoice_id}"),
            invoice_id: invoice_id.clone(),
            metadata,
            success_url: page.clone(),
            cancel_url: page,
            // Stripe takes 30 minutes to 24 hours; within that, the session ends with the invoice.
            expires_at: (1_800..=86_400).contains(&seconds_left).then(|| expires_at.timestamp()),
            save_card_for: customer.clone(),
            receipt_email: receipt_email.clone(),
            locale: locale.as_deref().map(stripe_locale),
        };
        rail.client.create_checkout_session(&request, &idempotency_key).await.map(|s| Update {
            status: "open",
            payment_intent: s.payment_intent,
            session: Some(s.id),
            url: s.url,
            failure: None,
        })
    } else {
        // A card to keep is attached to the customer before it is charged: a card Stripe will not
        // attach is refused like a declined one.
        let attached = match (&customer, &payment_method) {
            (Some(customer), Some(method)) if !off_session => rail.client.attach_payment_method(method, customer).await.map(|_| ()),
            _ => Ok(()),
        };
        // Test cards are test mode, where Stripe sends no receipt (and localstripe takes no
        // `receipt_email`): the e-mail goes with real charges only.
        let receipt_email = receipt_email.filter(|_| !rail.uses_test_cards());
        let request = NewPaymentIntent { amount, currency: stripe_currency(fiat), metadata, payment_method, customer, off_session, receipt_email };
        let charged = match attached {
            Ok(()) => rail.client.create_payment_intent(&request, &idempotency_key).await,
            Err(error) => Err(error),
        };
        charged.map(|pi| Update {
            status: status_of(&pi),
            failure: pi.last_payment_error.as_ref().map(|e| (e.code.clone(), e.message.clone().unwrap_or_default())),
            payment_intent: Some(pi.id),
            session: None,
            url: None,
        })
    };
    let update = match outcome {
        Ok(update) => update,
        // Stripe refused (a declined card is a 402): the attempt failed, nothing was charged.
        Err(StripeError::Api { status, code, decline_code, message, payment_intent, .. }) if (400..500).contains(&status) && status != 429 => {
            tracing::info!(target: "stripe", invoice = %invoice_id, attempt = %attempt_id, status, ?code, ?decline_code, "card attempt refused");
            Update {
                status: "failed",
                payment_intent: payment_intent.map(|pi| pi.id),
                session: None,
                url: None,
                failure: Some((decline_code.or(code), message)),
            }
        }
        // No answer, a rate limit or Stripe's own failure: the attempt stays `creating`, marked to be
        // asked again (by the payer's next try, or the daemon's next pass).
        Err(error) => return Err(unanswered(pool, attempt_id, error, now).await?),
    };

    // 3. What Stripe said.
    let (failure_code, failure_message) = match update.failure {
        Some((code, message)) => (code, Some(message.chars().take(1000).collect::<String>())),
        None => (None, None),
    };
    let row = sqlx::query(&format!(
        "UPDATE card_attempts SET status = CASE WHEN status = 'creating' THEN $2 ELSE status END, \
                payment_intent_id = coalesce(payment_intent_id, $3), checkout_session_id = $4, checkout_url = $5, \
                failure_code = coalesce(failure_code, $6), failure_message = coalesce(failure_message, $7), updated_at = $8 \
         WHERE id = $1 RETURNING {ATTEMPT_COLUMNS}"
    ))
    .bind(attempt_id)
    .bind(update.status)
    .bind(&update.payment_intent)
    .bind(&update.session)
    .bind(&update.url)
    .bind(&failure_code)
    .bind(&failure_message)
    .bind(now)
    .fetch_one(pool)
    .await?;
    view_of(&row)
}

/// Marks attempt `attempt_id` as sent without an answer (it stays `creating`, to be asked again
/// at once) and hands `error` back for the caller to return.
async fn unanswered(pool: &PgPool, attempt_id: &str, error: StripeError, now: DateTime<Utc>) -> Result<StripeError> {
    tracing::warn!(target: "stripe", attempt = %attempt_id, %error, "card attempt got no answer");
    sqlx::query("UPDATE card_attempts SET failure_code = $2, failure_message = $3, updated_at = $4 WHERE id = $1 AND status = 'creating'")
        .bind(attempt_id)
        .bind(NO_ANSWER)
        .bind(error.to_string().chars().take(1000).collect::<String>())
        .bind(now)
        .execute(pool)
        .await?;
    Ok(error)
}

struct Update {
    status: &'static str,
    payment_intent: Option<String>,
    session: Option<String>,
    url: Option<String>,
    failure: Option<(Option<String>, String)>,
}

/// Stripe Checkout's name for a checkout page language: its own tags, with Chinese as `zh`
/// (Simplified).
fn stripe_locale(tag: &str) -> String {
    match tag {
        "zh-CN" => "zh".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_method_ids_are_checked() {
        assert!(is_payment_method("pm_card_visa"));
        assert!(is_payment_method("pm_1NfAkE"));
        for bad in ["", "pm_", "card_123", "pm_x y", "pm_<script>"] {
            assert!(!is_payment_method(bad), "{bad}");
        }
    }
}
