//! Refunds a merchant asks for: `POST /v1/invoices/{id}/refunds`, full or partial, of the invoice's
//! card payments, through Stripe's refunds API.
//!
//! 1. With the invoice and its card payments locked: check what may still be refunded (paid, less
//!    refunded, disputed and refunds still pending), split the amount over the payments (newest
//!    first), write one `pending` refund per payment, commit.
//! 2. Ask Stripe for each (idempotency key: the refund's own id), then read the charge back for its
//!    cumulative `amount_refunded`, and post the proportional reversal of that cumulative amount
//!    ([`super::returns`]) with the refund's new status in one transaction. Stripe's later
//!    `charge.refunded` webhook finds the amount already posted and changes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::ids::new_id;
use crate::invoice::{self, InvoiceStatus, InvoiceView};
use crate::ledger::{AccountCode, Ledger, Side};
use crate::money::{Amount, Fiat};

use super::client::{stripe_amount, NewRefund};
use super::error::{Result, StripeError};
use super::returns;
use crate::ledger::reversal_delta;
use super::{CardRail, METADATA_INVOICE_ID};

/// The reasons Stripe knows.
pub const REFUND_REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer"];

/// What the merchant asks: an amount in the invoice's minor units (`None`: all that is left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub amount: Option<Amount>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RefundView {
    /// `rf_…`
    pub id: String,
    #[schema(value_type = String, example = "refund")]
    pub object: &'static str,
    pub payment_id: String,
    pub payment_intent: String,
    /// Stripe's refund id (`re_…`), once Stripe answered.
    pub stripe_refund: Option<String>,
    pub currency: String,
    pub amount: String,
    pub amount_minor: String,
    pub reason: Option<String>,
    /// `pending` (not answered yet), `succeeded` or `failed`.
    pub status: String,
    pub failure_message: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The answer to a refund request: the refunds made and the invoice after them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RefundsView {
    #[schema(value_type = String, example = "invoice_refund")]
    pub object: &'static str,
    pub amount: String,
    pub amount_minor: String,
    pub refunds: Vec<RefundView>,
    pub invoice: InvoiceView,
}

struct Planned {
    id: String,
    payment_intent_id: String,
    payment_id: String,
    amount: Amount,
}

/// Refunds `request` of `merchant_id`'s invoice `invoice_id`. See the module docs.
pub async fn refund_invoice(
    rail: &CardRail,
    pool: &PgPool,
    ledger: &Ledger,
    merchant_id: &str,
    invoice_id: &str,
    request: &RefundRequest,
    now: DateTime<Utc>,
) -> Result<RefundsView> {
    let refused = |reason: String| StripeError::RefundRefused { invoice_id: invoice_id.to_owned(), reason };
    if let Some(reason) = &request.reason {
        if !REFUND_REASONS.contains(&reason.as_str()) {
            return Err(invoice::InvoiceError::Invalid {
                field: "reason",
                reason: format!("expected one of {}", REFUND_REASONS.join(", ")),
            }
            .into());
        }
    }

    // 1. Plan and reserve, with the invoice locked.
    let mut tx = pool.begin().await?;
    let row = sqlx::query("SELECT status, currency FROM invoices WHERE id = $1 AND merchant_id = $2 FOR UPDATE")
        .bind(invoice_id)
        .bind(merchant_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| invoice::InvoiceError::NotFound { id: invoice_id.to_owned() })?;
    let status: String = row.try_get("status")?;
    let currency: String = row.try_get("currency")?;
    let fiat: Fiat = currency
        .parse()
        .map_err(|_| invoice::InvoiceError::Corrupt { column: "currency", value: currency.clone() })?;
    let payments = returns::lock_all_of_invoice(&mut tx, invoice_id).await?;
    if payments.is_empty() {
        return Err(StripeError::NothingToRefund { invoice_id: invoice_id.to_owned() });
    }
    let pending = sqlx::query(
        "SELECT payment_intent_id, sum(amount_minor)::text AS amount FROM card_refunds \
         WHERE invoice_id = $1 AND status = 'pending' GROUP BY payment_intent_id",
    )
    .bind(invoice_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut pending_by_payment: BTreeMap<String, Amount> = BTreeMap::new();
    for p in &pending {
        let text: String = p.try_get("amount")?;
        let amount = text.parse().map_err(|_| invoice::InvoiceError::Corrupt { column: "amount_minor", value: text.clone() })?;
        pending_by_payment.insert(p.try_get("payment_intent_id")?, amount);
    }
    let refundable_of = |p: &returns::CardPaymentRow| {
        p.refundable().saturating_sub(pending_by_payment.get(&p.payment_intent_id).copied().unwrap_or(Amount::ZERO))
    };
    let refundable = payments.iter().fold(Amount::ZERO, |sum, p| sum.checked_add(refundable_of(p)).unwrap_or(Amount::MAX));
    if refundable.is_zero() {
        return Err(refused(format!("invoice is {status} and nothing of its card payments is left to refund")));
    }
    let wanted = request.amount.unwrap_or(refundable);
    if wanted.is_zero() {
        return Err(invoice::InvoiceError::Invalid { field: "amount", reason: "must be positive".to_owned() }.into());
    }
    if wanted > refundable {
        return Err(refused(format!(
            "{} {} asked, {} {} refundable",
            wanted.to_decimal_string(fiat.minor_units()),
            fiat.code(),
            refundable.to_decimal_string(fiat.minor_units()),
            fiat.code()
        )));
    }
    let mut left = wanted;
    let mut planned = Vec::new();
    for payment in &payments {
        if left.is_zero() {
            break;
        }
        let part = refundable_of(payment).min(left);
        if part.is_zero() {
            continue;
        }
        if stripe_amount(fiat, part).is_none() {
            return Err(refused(format!("Stripe cannot refund {part} minor units of {}", fiat.code())));
        }
        left = left.saturating_sub(part);
        let id = new_id("rf");
        sqlx::query(
            "INSERT INTO card_refunds (id, invoice_id, merchant_id, payment_intent_id, currency, amount_minor, reason, status, \
                                       created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6::numeric, $7, 'pending', $8, $8)",
        )
        .bind(&id)
        .bind(invoice_id)
        .bind(merchant_id)
        .bind(&payment.payment_intent_id)
        .bind(fiat.code())
        .bind(part.to_string())
        .bind(&request.reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        planned.push(Planned {
            id,
            payment_intent_id: payment.payment_intent_id.clone(),
            payment_id: payment.payment_id.clone(),
            amount: part,
        });
    }
    // Every guarded account the reversals take from must cover its part of them: the merchant's
    // share, each creator's (a split payment credited them too) or the unapplied balance. A refund
    // is never made that the ledger would then refuse.
    let asset = fiat.ledger_asset();
    let mut taken: BTreeMap<AccountCode, Amount> = BTreeMap::new();
    for plan in &planned {
        let Some(payment) = payments.iter().find(|p| p.payment_intent_id == plan.payment_intent_id) else { continue };
        let pending = pending_by_payment.get(&payment.payment_intent_id).copied().unwrap_or(Amount::ZERO);
        let before = payment.returned().checked_add(pending).unwrap_or(Amount::MAX);
        let after = before.checked_add(plan.amount).unwrap_or(Amount::MAX);
        let original = ledger.entry(&mut tx, payment.ledger_entry_id).await?;
        for posting in reversal_delta(&original.postings, before, after, payment.amount) {
            if posting.side == Side::Debit && posting.asset == asset && posting.account.is_non_negative() {
                let sum = taken.entry(posting.account).or_insert(Amount::ZERO);
                *sum = sum.checked_add(posting.amount).unwrap_or(Amount::MAX);
            }
        }
    }
    for (account, amount) in &taken {
        let owed = ledger.balance(&mut tx, account, &asset).await?;
        if owed.is_negative() || owed.magnitude() < *amount {
            let whose = if *account == AccountCode::merchant(merchant_id) { "the merchant's".to_owned() } else { account.to_string() };
            return Err(refused(format!(
                "{whose} {} balance ({}) does not cover its share of the refund ({})",
                fiat.code(),
                owed.magnitude().to_decimal_string(fiat.minor_units()),
                amount.to_decimal_string(fiat.minor_units())
            )));
        }
    }
    tx.commit().await?;

    // 2. Stripe, then the ledger.
    let mut first_error = None;
    for plan in &planned {
        if let Err(error) = refund_one(rail, pool, ledger, invoice_id, plan, request, now).await {
            tracing::error!(target: "stripe", invoice = invoice_id, refund = %plan.id, %error, "refund failed");
            first_error.get_or_insert(error);
        }
    }
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query(
        "SELECT r.id, c.payment_id, r.payment_intent_id, r.stripe_refund_id, r.currency, r.amount_minor::text AS amount_minor, \
                r.reason, r.status, r.failure_message, r.created_at \
         FROM card_refunds r JOIN card_payments c ON c.payment_intent_id = r.payment_intent_id \
         WHERE r.id = ANY($1) ORDER BY r.created_at, r.id",
    )
    .bind(planned.iter().map(|p| p.id.clone()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let mut refunds = Vec::with_capacity(rows.len());
    let mut succeeded = Amount::ZERO;
    for row in &rows {
        let text: String = row.try_get("amount_minor")?;
        let amount: Amount = text.parse().map_err(|_| invoice::InvoiceError::Corrupt { column: "amount_minor", value: text.clone() })?;
        let status: String = row.try_get("status")?;
        if status == "succeeded" {
            succeeded = succeeded.checked_add(amount).unwrap_or(Amount::MAX);
        }
        refunds.push(RefundView {
            id: row.try_get("id")?,
            object: "refund",
            payment_id: row.try_get("payment_id")?,
            payment_intent: row.try_get("payment_intent_id")?,
            stripe_refund: row.try_get("stripe_refund_id")?,
            currency: row.try_get("currency")?,
            amount: amount.to_decimal_string(fiat.minor_units()),
            amount_minor: amount.to_string(),
            reason: row.try_get("reason")?,
            status,
            failure_message: row.try_get("failure_message")?,
            created_at: row.try_get("created_at")?,
        });
    }
    // Refused outright: say so. Not answered: the refunds stay `pending` and are asked again by
    // [`resume`]; the answer shows them pending.
    if succeeded.is_zero() {
        if let Some(error) = first_error.filter(|e| !e.is_retryable() || refunds.iter().all(|r| r.status != "pending")) {
            return Err(error);
        }
    }
    let invoice = invoice::load_view(&mut conn, Some(merchant_id), invoice_id).await?;
    Ok(RefundsView {
        object: "invoice_refund",
        amount: succeeded.to_decimal_string(fiat.minor_units()),
        amount_minor: succeeded.to_string(),
        refunds,
        invoice,
    })
}

/// Marks a pending refund whose call got no answer (its `failure_message` starts with it).
const NO_ANSWER: &str = "no answer";

/// Asks Stripe again, with each refund's own idempotency key, for every refund still `pending` that
/// got no answer or whose call began longer ago than a call may take. Taking one is a conditional
/// update, so two replicas never ask for the same refund at once. Returns how many were answered.
pub async fn resume(rail: &CardRail, pool: &PgPool, ledger: &Ledger, now: DateTime<Utc>) -> Result<usize> {
    let due = sqlx::query(
        "UPDATE card_refunds r SET updated_at = $1, failure_message = NULL FROM card_payments c \
         WHERE r.id IN (SELECT id FROM card_refunds WHERE status = 'pending' \
                          AND (failure_message LIKE $3 || '%' OR updated_at < $2) ORDER BY updated_at LIMIT 50 FOR UPDATE SKIP LOCKED) \
           AND c.payment_intent_id = r.payment_intent_id \
         RETURNING r.id, r.invoice_id, r.payment_intent_id, c.payment_id, r.amount_minor::text AS amount_minor, r.reason",
    )
    .bind(now)
    .bind(now - super::attempt::call_max(rail))
    .bind(NO_ANSWER)
    .fetch_all(pool)
    .await?;
    let mut answered = 0;
    for row in due {
        let invoice_id: String = row.try_get("invoice_id")?;
        let text: String = row.try_get("amount_minor")?;
        let plan = Planned {
            id: row.try_get("id")?,
            payment_intent_id: row.try_get("payment_intent_id")?,
            payment_id: row.try_get("payment_id")?,
            amount: text.parse().map_err(|_| invoice::InvoiceError::Corrupt { column: "amount_minor", value: text.clone() })?,
        };
        let request = RefundRequest { amount: Some(plan.amount), reason: row.try_get("reason")? };
        match refund_one(rail, pool, ledger, &invoice_id, &plan, &request, now).await {
            Ok(_) => answered += 1,
            Err(error) if error.is_retryable() => {
                tracing::warn!(target: "stripe", invoice = %invoice_id, refund = %plan.id, %error, "refund still unanswered; asking again later");
            }
            // A refusal is stored with the refund (`failed`); the next one is asked all the same.
            Err(error) => {
                tracing::warn!(target: "stripe", invoice = %invoice_id, refund = %plan.id, %error, "refund refused");
                answered += 1;
            }
        }
    }
    Ok(answered)
}

async fn refund_one(
    rail: &CardRail,
    pool: &PgPool,
    ledger: &Ledger,
    invoice_id: &str,
    plan: &Planned,
    request: &RefundRequest,
    now: DateTime<Utc>,
) -> Result<InvoiceStatus> {
    let amount = plan.amount.to_string().parse::<u64>().map_err(|_| StripeError::RefundRefused {
        invoice_id: invoice_id.to_owned(),
        reason: format!("amount {} is out of range", plan.amount),
    })?;
    let new_refund = NewRefund {
        payment_intent: plan.payment_intent_id.clone(),
        amount,
        reason: request.reason.clone(),
        metadata: BTreeMap::from([
            (METADATA_INVOICE_ID.to_owned(), invoice_id.to_owned()),
            ("payrail_refund_id".to_owned(), plan.id.clone()),
            ("payrail_payment_id".to_owned(), plan.payment_id.clone()),
        ]),
    };
    let refund = match rail.client.create_refund(&new_refund, &format!("payrail:{}", plan.id)).await {
        Ok(refund) => refund,
        Err(error) => {
            // A refusal is final; no answer leaves the refund pending, marked to be asked again
            // with the same key by [`resume`] (charge.refunded posts it if Stripe did make it).
            let (status, message) = match &error {
                StripeError::Api { status, message, .. } if (400..500).contains(status) && *status != 429 => ("failed", message.clone()),
                other => ("pending", format!("{NO_ANSWER}: {other}")),
            };
            sqlx::query("UPDATE card_refunds SET status = $2, failure_message = $3, updated_at = $4 WHERE id = $1 AND status = 'pending'")
                .bind(&plan.id)
                .bind(status)
                .bind(message.chars().take(1000).collect::<String>())
                .bind(now)
                .execute(pool)
                .await?;
            return Err(error);
        }
    };
    let failed = matches!(refund.status.as_deref(), Some("failed") | Some("canceled"));
    // Stripe's cumulative figure, read before anything is locked, so this path and the webhook
    // post the same total once.
    let refunded_total = if failed {
        None
    } else {
        let stored: Option<String> = sqlx::query_scalar("SELECT charge_id FROM card_payments WHERE payment_intent_id = $1")
            .bind(&plan.payment_intent_id)
            .fetch_optional(pool)
            .await?
            .flatten();
        match refund.charge.clone().or(stored) {
            Some(charge) => Some(Amount::from_u64(rail.client.charge(&charge).await?.amount_refunded)),
            None => None,
        }
    };
    let mut tx = pool.begin().await?;
    let status = if failed {
        InvoiceStatus::Paid
    } else {
        let mut payment = returns::lock(&mut tx, Some(&plan.payment_intent_id), refund.charge.as_deref())
            .await?
            .ok_or_else(|| StripeError::NothingToRefund { invoice_id: invoice_id.to_owned() })?;
        let refunded_total = refunded_total
            .unwrap_or_else(|| payment.refunded.checked_add(Amount::from_u64(refund.amount)).unwrap_or(Amount::MAX));
        match returns::set_refunded_total(&mut tx, ledger, &mut payment, refunded_total, now).await? {
            returns::Returned::Posted(status) => status,
            returns::Returned::Unchanged => invoice::load_view(&mut tx, None, invoice_id).await?.status,
        }
    };
    sqlx::query(
        "UPDATE card_refunds SET stripe_refund_id = $2, status = $3, failure_message = $4, updated_at = $5 WHERE id = $1 AND status = 'pending'",
    )
    .bind(&plan.id)
    .bind(&refund.id)
    .bind(if failed { "failed" } else { "succeeded" })
    .bind(refund.failure_reason.as_deref())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(status)
}
