//! Applying an observed payment to its invoice: the entry points the rails call. Each loads what the
//! plan needs ([`super::store`]), plans the change ([`super::plan`]) and writes it ([`super::store::apply`]).
//!
//! Everything happens on the caller's transaction, so the watcher's cursor commits with it: the
//! payment row (keyed by `tx_ref`, unique), the ledger entry once the payment meets its confirmation
//! policy (keyed by `payment:{tx_ref}`), the invoice's new status and the outbox row announcing it.
//! Replaying the same observation changes nothing; a payment is never dropped: one that arrives after
//! the invoice expired, to a closed invoice, or in an asset the invoice did not quote is credited to
//! the merchant's unapplied balance for review.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use crate::ledger::Ledger;
use crate::money::{Amount, Fiat};

use super::error::{InvoiceError, Result};
use super::model::InvoiceRow;
use super::plan::{self, AppliedTo, Observation, Rail, Record, CARD_RAIL, CARD_RATE_SOURCE};
pub use super::plan::BlockRef;
pub use payrail_core::payment::ObservedPayment;
use super::split::Splits;
use super::status::InvoiceStatus;
use super::store;


/// What applying an observation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub payment_id: String,
    pub invoice_status: InvoiceStatus,
    /// Whether this call posted the payment's ledger entry.
    pub credited: bool,
    pub applied_to: AppliedTo,
}

/// A card payment as the card rail reports it: a Stripe PaymentIntent that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardPayment {
    pub invoice_id: String,
    /// The PaymentIntent (`pi_…`); the payment's `tx_ref` is `stripe:{payment_intent_id}`.
    pub payment_intent_id: String,
    /// The currency Stripe charged in; a currency other than the invoice's is held as unapplied.
    pub currency: Fiat,
    /// In the currency's minor units (cents).
    pub amount: Amount,
}

impl CardPayment {
    pub fn tx_ref(&self) -> String {
        format!("{CARD_RAIL}:{}", self.payment_intent_id)
    }
}

/// Records `payment` on the caller's transaction `tx`. See the module docs.
pub async fn apply_payment(
    tx: &mut PgConnection,
    ledger: &Ledger,
    payment: &ObservedPayment,
    now: DateTime<Utc>,
) -> Result<Applied> {
    let mut applied = apply_payments(tx, ledger, std::slice::from_ref(payment), now).await?;
    applied.pop().ok_or_else(|| InvoiceError::NotFound { id: payment.invoice_id.clone() })
}

/// Records `payments` (distinct `tx_ref`s, as a chain step observes them) on the caller's
/// transaction `tx`, as [`apply_payment`] records each one in turn, and returns what each did, in
/// their order. The work is set-based: the invoices are locked in one statement (in id order, like
/// every writer), the payments in one, and the payments are then planned and written in rounds —
/// round k holds the k-th payment of each invoice, in the order given — each round reading its
/// quotes and writing its changes in a few statements ([`store::apply_all`]). So a step's cost
/// grows with its rounds, not its payments, and each invoice sees its payments one after another
/// exactly as when they are applied one by one. A payment its merchant applied to another invoice
/// locks that invoice too, so a step holding one is applied one by one.
pub async fn apply_payments(
    tx: &mut PgConnection,
    ledger: &Ledger,
    payments: &[ObservedPayment],
    now: DateTime<Utc>,
) -> Result<Vec<Applied>> {
    if payments.is_empty() {
        // An idle step of every chain's follower comes here: nothing to lock.
        return Ok(Vec::new());
    }
    let observations = payments.iter().map(observation_of).collect::<Result<Vec<_>>>()?;
    let mut ids: Vec<&str> = observations.iter().map(|o| o.invoice_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    // Lock the invoices first: every writer of an invoice's payments takes this lock before any
    // ledger lock, so the order is the same for all.
    let mut invoices = store::lock_invoices(&mut *tx, &ids).await?;
    if let Some(missing) = ids.iter().find(|id| !invoices.contains_key(**id)) {
        return Err(InvoiceError::NotFound { id: (*missing).to_owned() });
    }
    let refs: Vec<&str> = observations.iter().map(|o| o.tx_ref.as_str()).collect();
    let mut stored = store::lock_payments(&mut *tx, &refs).await?;
    if stored.values().any(|s| s.applied_invoice_id.is_some()) {
        let mut applied = Vec::with_capacity(observations.len());
        for observation in &observations {
            let invoice = store::lock_invoice(&mut *tx, &observation.invoice_id).await?
                .ok_or_else(|| InvoiceError::NotFound { id: observation.invoice_id.clone() })?;
            applied.push(apply_observation(&mut *tx, ledger, &invoice, observation, now).await?);
        }
        return Ok(applied);
    }
    let mut rounds: Vec<Vec<(usize, &Observation)>> = Vec::new();
    let mut per_invoice: HashMap<&str, usize> = HashMap::with_capacity(ids.len());
    for (i, observation) in observations.iter().enumerate() {
        let k = per_invoice.entry(observation.invoice_id.as_str()).or_insert(0);
        match rounds.get_mut(*k) {
            Some(round) => round.push((i, observation)),
            None => rounds.push(vec![(i, observation)]),
        }
        *k += 1;
    }
    let locked = |invoices: &HashMap<String, InvoiceRow>, id: &str| {
        invoices.get(id).cloned().ok_or_else(|| InvoiceError::NotFound { id: id.to_owned() })
    };
    let mut splits: HashMap<String, Splits> = HashMap::new();
    let mut applied: Vec<Option<Applied>> = vec![None; observations.len()];
    for round in rounds {
        let mut facts = Vec::with_capacity(round.len());
        for (i, observation) in round {
            let invoice = locked(&invoices, &observation.invoice_id)?;
            let record = stored.remove(&observation.tx_ref);
            let needs = plan::needs(&invoice, record.as_ref(), observation, now);
            facts.push((i, observation, invoice, record, needs));
        }
        let quoted: Vec<&str> = facts.iter().filter(|f| f.4.quote).map(|f| f.1.invoice_id.as_str()).collect();
        let mut quotes = store::load_quotes(&mut *tx, &quoted).await?;
        let unsplit: Vec<&str> =
            facts.iter().filter(|f| f.4.splits && !splits.contains_key(&f.1.invoice_id)).map(|f| f.1.invoice_id.as_str()).collect();
        if !unsplit.is_empty() {
            splits.extend(super::split::load_for_invoices(&mut *tx, &unsplit).await?);
        }
        let mut slots = Vec::with_capacity(facts.len());
        let mut changes = Vec::with_capacity(facts.len());
        for (i, observation, invoice, record, needs) in facts {
            let mut quote = needs.quote.then(|| quotes.remove(&observation.invoice_id).unwrap_or_default());
            if needs.splits {
                let found = splits.get(&observation.invoice_id).cloned().ok_or(sqlx::Error::RowNotFound)?;
                quote.get_or_insert_with(Default::default).splits = Some(found);
            }
            let record = match record {
                Some(mut stored) => {
                    if needs.credit_history {
                        stored.credits_reversed = Some(store::credits_reversed(&mut *tx, &observation.tx_ref).await?);
                    }
                    Record::Stored(stored)
                }
                None => Record::Unseen { id: crate::ids::new_id("pay") },
            };
            slots.push(i);
            changes.push(plan::plan_payment(&invoice, &record, observation, quote.as_ref(), now)?);
        }
        let written = store::apply_all(&mut *tx, ledger, &changes, now).await?;
        for ((i, change), written) in slots.into_iter().zip(changes).zip(written) {
            if let Some(invoice) = invoices.get_mut(&change.invoice_id) {
                invoice.status = change.invoice.to;
            }
            if let Some(slot) = applied.get_mut(i) {
                *slot = Some(Applied {
                    payment_id: change.payment_id,
                    invoice_status: change.invoice.to,
                    credited: written.credited,
                    applied_to: change.applied_to,
                });
            }
        }
    }
    // Every observation is in exactly one round.
    Ok(applied.into_iter().flatten().collect())
}

/// The plan's view of a chain payment, checked.
fn observation_of(payment: &ObservedPayment) -> Result<Observation> {
    let observation = Observation {
        invoice_id: payment.invoice_id.clone(),
        rail: Rail::Chain(payment.chain.clone()),
        asset: payment.asset.to_string(),
        tx_ref: payment.tx_ref.clone(),
        address: payment.address.clone(),
        amount: payment.amount,
        confirmations: payment.confirmations,
        confirmations_required: payment.confirmations_required,
        block: payment.block.clone(),
    };
    observation.validate()?;
    Ok(observation)
}

/// Records a card payment on `tx`, exactly as [`apply_payment`] records a chain payment, with two
/// differences: the asset is the fiat currency itself (`iso4217:USD`) and the ledger debits
/// `assets:stripe:{currency}`; and a card payment is final when Stripe reports it, so it is
/// credited at once. The card option (the invoice's own amount, at par) is added to the invoice
/// the first time a card payment in its currency arrives, so the payment counts toward it.
pub async fn apply_card_payment(
    tx: &mut PgConnection,
    ledger: &Ledger,
    payment: &CardPayment,
    now: DateTime<Utc>,
) -> Result<Applied> {
    let asset = payment.currency.ledger_asset();
    // Lock the invoice before its options change: the same order as every other writer.
    let invoice = store::lock_invoice(&mut *tx, &payment.invoice_id)
        .await?
        .ok_or_else(|| InvoiceError::NotFound { id: payment.invoice_id.clone() })?;
    if invoice.currency == payment.currency {
        sqlx::query(
            "INSERT INTO payment_options (invoice_id, asset, chain, symbol, decimals, amount_minor, rate, rate_source, \
                                          rate_at, position, address) \
             SELECT $1, $2, $3, $4, $5, $6::numeric, '1', $7, $8, coalesce(max(position) + 1, 0), NULL \
             FROM payment_options WHERE invoice_id = $1 \
             ON CONFLICT (invoice_id, asset) DO NOTHING",
        )
        .bind(&invoice.id)
        .bind(&asset)
        .bind(CARD_RAIL)
        .bind(payment.currency.code())
        .bind(i16::from(payment.currency.minor_units()))
        .bind(invoice.amount_minor.to_string())
        .bind(CARD_RATE_SOURCE)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let observation = Observation {
        invoice_id: payment.invoice_id.clone(),
        rail: Rail::Card(payment.currency),
        asset,
        tx_ref: payment.tx_ref(),
        address: None,
        amount: payment.amount,
        confirmations: 1,
        confirmations_required: 1,
        block: None,
    };
    observation.validate()?;
    apply_observation(tx, ledger, &invoice, &observation, now).await
}

/// Loads what the plan needs for `observation` on the locked `invoice`, plans and writes.
async fn apply_observation(
    tx: &mut PgConnection,
    ledger: &Ledger,
    invoice: &InvoiceRow,
    observation: &Observation,
    now: DateTime<Utc>,
) -> Result<Applied> {
    let mut stored = store::load_payment(&mut *tx, &observation.tx_ref, true).await?;
    // A payment its merchant applied to another invoice counts there: that invoice is the one judged,
    // locked after the payment's own invoice and row (the order every writer follows).
    let counted = counting_invoice(&mut *tx, stored.as_ref()).await?;
    let invoice = counted.as_ref().unwrap_or(invoice);
    let needs = plan::needs(invoice, stored.as_ref(), observation, now);
    let mut quote = if needs.quote { Some(store::load_quote(&mut *tx, &invoice.id).await?) } else { None };
    if needs.splits {
        let splits = super::split::load_for_invoice(&mut *tx, &invoice.id).await?;
        quote.get_or_insert_with(Default::default).splits = Some(splits);
    }
    if let Some(stored) = stored.as_mut().filter(|_| needs.credit_history) {
        stored.credits_reversed = Some(store::credits_reversed(&mut *tx, &observation.tx_ref).await?);
    }
    let record = match stored {
        Some(stored) => Record::Stored(stored),
        None => Record::Unseen { id: crate::ids::new_id("pay") },
    };
    let change = plan::plan_payment(invoice, &record, observation, quote.as_ref(), now)?;
    let written = store::apply(tx, ledger, &change, now).await?;
    Ok(Applied {
        payment_id: change.payment_id,
        invoice_status: change.invoice.to,
        credited: written.credited,
        applied_to: change.applied_to,
    })
}

/// Marks a payment whose block left the canonical chain. A payment not yet credited goes back to
/// unconfirmed accounting (its value no longer counts); a credited one is reversed by a new ledger
/// entry and raised as an alert, since the confirmation policy should have made that impossible.
pub async fn orphan_payment(
    tx: &mut PgConnection,
    ledger: &Ledger,
    tx_ref: &str,
    now: DateTime<Utc>,
) -> Result<InvoiceStatus> {
    let stored = store::load_payment(&mut *tx, tx_ref, false)
        .await?
        .ok_or_else(|| InvoiceError::NotFound { id: tx_ref.to_owned() })?;
    let own = store::lock_invoice(&mut *tx, &stored.invoice_id).await?.ok_or(sqlx::Error::RowNotFound)?;
    let invoice = counting_invoice(&mut *tx, Some(&stored)).await?.unwrap_or(own);
    let quote = store::load_quote(&mut *tx, &invoice.id).await?;
    let change = plan::plan_orphan(&invoice, &stored, &quote, now)?;
    store::apply(tx, ledger, &change, now).await?;
    Ok(change.invoice.to)
}

/// Locks the other invoice `stored` was applied to, if its merchant applied it to one.
async fn counting_invoice(tx: &mut PgConnection, stored: Option<&plan::StoredPayment>) -> Result<Option<InvoiceRow>> {
    match stored.and_then(|s| s.applied_invoice_id.as_deref()) {
        Some(id) => Ok(Some(store::lock_invoice(tx, id).await?.ok_or_else(|| InvoiceError::NotFound { id: id.to_owned() })?)),
        None => Ok(None),
    }
}
