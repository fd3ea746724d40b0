//! The payment core: what an observed payment, or the loss of its block, does to its invoice and
//! the ledger — decided without I/O.
//!
//! A change is made in three steps, all on the caller's transaction: [`super::store`] loads the
//! facts ([`needs`] says which ones a payment calls for), [`plan_payment`] or [`plan_orphan`] turns
//! them into a [`PaymentChange`], and [`super::store::apply`] writes that change. Rules that build on
//! payments later (credit grants on a paid pack, renewals) are further plans over the same facts,
//! written in the same transaction — never a second path beside this one.
//!
//! Invariants the plans keep:
//! - a payment is never dropped: one that is late, to a closed invoice or in an asset the invoice did
//!   not quote is held as unapplied ([`UnappliedReason`]) and credited to the merchant's unapplied
//!   balance, unsplit;
//! - a payment is credited once per generation: the entry is keyed `payment:{tx_ref}`, and after
//!   its credit was reversed by a reorg, `payment:{tx_ref}#{n}` (at most [`RECREDITS_MAX`]);
//! - every credit entry sums to zero: creators and the platform get their shares rounded down, the
//!   dust goes to `revenue:rounding` and the merchant gets the rest (see [`split_postings`]);
//! - the invoice's status is decided by the state machine alone ([`evaluate`], and [`after_reversal`]
//!   when a credit is taken back), so paid stays paid while no credit is reversed.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use thiserror::Error;

use crate::ledger::{AccountCode, NewEntry};
use crate::money::{mul_div, Amount, ChainId, Fiat, Rounding};

use super::model::InvoiceRow;
use super::split::{split_postings, Splits};
use super::status::{after_reversal, evaluate, InvoiceStatus, Progress};

/// Most times one payment can be credited, reversed by a reorg and credited again.
pub const RECREDITS_MAX: u32 = 100;
/// The `chain` column of card payments and of the card option: cards settle at Stripe, not on a chain.
pub const CARD_RAIL: &str = "stripe";
/// Where the price of the card option comes from: the invoice's own currency, at par.
pub const CARD_RATE_SOURCE: &str = "par";
/// The largest count the `payments` table holds (an INTEGER column); larger counts are stored as this.
const STORED_COUNT_MAX: u32 = i32::MAX.unsigned_abs();
/// The ledger kind of a payment's credit.
const CREDIT_KIND: &str = "payment";
/// The memo of the entry that reverses a credit whose block left the chain.
const REORG_MEMO: &str = "credited block orphaned";

pub type Result<T, E = PlanError> = std::result::Result<T, E>;

/// Why a plan cannot be made. None of these is worth a retry with the same facts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("payment {tx_ref} was seen before with {stored}, now reported with {reported}")]
    Mismatch { tx_ref: String, stored: String, reported: String },
    #[error("stored value {value:?} in {column} is not valid")]
    Corrupt { column: &'static str, value: String },
    /// The loader did not provide a fact [`needs`] asked for: a programming error.
    #[error("{fact} was needed for payment {tx_ref} but not loaded")]
    NotLoaded { fact: &'static str, tx_ref: String },
    /// A merchant's request that the facts do not allow (applying a payment that is not held, to a
    /// closed invoice, …); `code` names the rule for the API.
    #[error("{reason}")]
    Refused { code: &'static str, reason: String },
}

/// Enums stored as text: the one place their database values are written down.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// The value stored in the database and shown by the API.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }
    };
}

text_enum! {
    /// Where a payment stands (`payments.status`).
    PaymentStatus {
        /// Observed, not yet at its confirmation policy: counts as pending.
        Seen => "seen",
        /// At its confirmation policy and credited: counts as paid.
        Confirmed => "confirmed",
        /// Its block left the chain before it was credited: no longer counts.
        Orphaned => "orphaned",
        /// Its block left the chain after it was credited: the credit was reversed.
        Reversed => "reversed",
    }
}

text_enum! {
    /// What a payment's value counts toward (`payments.applied_to`).
    AppliedTo {
        Invoice => "invoice",
        /// Held on the merchant's unapplied balance for review; see [`UnappliedReason`].
        Unapplied => "unapplied",
    }
}

text_enum! {
    /// Why a payment is held as unapplied (`payments.unapplied_reason`).
    UnappliedReason {
        AssetNotQuoted => "asset_not_quoted",
        InvoiceExpired => "invoice_expired",
        InvoiceVoid => "invoice_void",
        InvoiceRefunded => "invoice_refunded",
        /// The merchant marked the invoice it counted toward invalid.
        InvoiceInvalid => "invoice_invalid",
        /// Arrived after `expires_at` to an invoice that still accepted payments.
        Late => "late",
    }
}

/// Which rail moved the money: it names the `chain` column and the asset account the ledger debits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rail {
    Chain(ChainId),
    /// A card payment, settled at Stripe in this currency.
    Card(Fiat),
}

impl Rail {
    /// The rail of a stored payment, from its `chain` and `asset` columns.
    pub fn from_columns(chain: &str, asset: &str) -> Result<Self> {
        let corrupt = |column: &'static str, value: &str| PlanError::Corrupt { column, value: value.to_owned() };
        if chain == CARD_RAIL {
            let code = asset.strip_prefix("iso4217:").ok_or_else(|| corrupt("asset", asset))?;
            Ok(Self::Card(code.parse().map_err(|_| corrupt("asset", asset))?))
        } else {
            Ok(Self::Chain(chain.parse().map_err(|_| corrupt("chain", chain))?))
        }
    }

    /// The `chain` column: the CAIP-2 id, or [`CARD_RAIL`].
    pub fn chain_column(&self) -> String {
        match self {
            Self::Chain(chain) => chain.to_string(),
            Self::Card(_) => CARD_RAIL.to_owned(),
        }
    }

    /// Who holds the money the rail moves.
    pub fn custody(&self) -> Custody {
        match self {
            Self::Chain(chain) if chain.is_bip122() => Custody::Merchant,
            Self::Chain(_) => Custody::Platform,
            Self::Card(_) => Custody::Processor,
        }
    }

    /// The asset account that receives the money of a payment to `merchant_id`: where it is held.
    pub fn debit_account(&self, merchant_id: &str) -> AccountCode {
        match (self, self.custody()) {
            (_, Custody::Merchant) => AccountCode::held_by_merchant(merchant_id),
            (Self::Chain(chain), _) => AccountCode::chain_assets(chain),
            (Self::Card(currency), _) => AccountCode::stripe(*currency),
        }
    }
}

/// Who holds a rail's money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Custody {
    /// payrail: EVM deposits, swept to the treasury.
    Platform,
    /// The merchant's own wallet: Bitcoin, paid to addresses of its watch-only descriptor.
    Merchant,
    /// The card processor (Stripe), which pays out to the bank.
    Processor,
}

impl Custody {
    /// The custody of `asset` (a CAIP-19 id, or `iso4217:…` for card money).
    pub fn of_asset(asset: &str) -> Self {
        if asset.starts_with("iso4217:") {
            Self::Processor
        } else if asset.starts_with("bip122:") {
            Self::Merchant
        } else {
            Self::Platform
        }
    }
}

/// A block by height and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRef {
    pub height: u64,
    pub hash: String,
}

/// A payment as any rail reports it, identifiers as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub invoice_id: String,
    pub rail: Rail,
    /// The ledger asset: CAIP-19, or `iso4217:{code}` for a card payment.
    pub asset: String,
    /// Unique per credited output; the credit's key is made from it.
    pub tx_ref: String,
    pub address: Option<String>,
    pub amount: Amount,
    pub confirmations: u32,
    /// What the rail's policy demands for this payment's value.
    pub confirmations_required: u32,
    /// The block that holds it (`None` in the mempool, and for cards).
    pub block: Option<BlockRef>,
}

impl Observation {
    /// A payment of zero is refused before anything is loaded or written.
    pub fn validate(&self) -> Result<()> {
        if self.amount.is_zero() {
            return Err(PlanError::Invalid { field: "amount", reason: "a payment of zero is not a payment".to_owned() });
        }
        Ok(())
    }

    fn meets_policy(&self) -> bool {
        self.confirmations >= self.confirmations_required
    }
}

/// A payment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPayment {
    pub id: String,
    /// The invoice it was sent for.
    pub invoice_id: String,
    /// The merchant's other invoice it was applied to, if any: the one it counts toward.
    pub applied_invoice_id: Option<String>,
    pub rail: Rail,
    pub tx_ref: String,
    pub asset: String,
    pub amount: Amount,
    pub status: PaymentStatus,
    pub applied_to: AppliedTo,
    pub confirmations: u32,
    pub confirmations_required: u32,
    pub block_hash: Option<String>,
    /// The standing or last credit of the payment.
    pub ledger_entry_id: Option<i64>,
    /// How many credits of this payment were posted and then reversed by reorgs; loaded when
    /// [`Needs::credit_history`] says so.
    pub credits_reversed: Option<u32>,
}

/// What is known of an observed payment before the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
// One record per plan, passed by reference: its size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Record {
    /// Never seen: the id its row will take.
    Unseen { id: String },
    Stored(StoredPayment),
}

/// One asset an invoice quoted, and what has arrived in it so far (payments applied to the invoice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotedAsset {
    pub asset: String,
    /// The asset amount locked for the invoice's whole price.
    pub quoted: Amount,
    /// Sum of confirmed payments.
    pub confirmed: Amount,
    /// Sum of payments seen and not yet confirmed.
    pub pending: Amount,
}

/// What the invoice agreed when it was created — the asset amounts locked for its price, and the
/// revenue split of its credits — with what has arrived in each asset so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quote {
    pub assets: Vec<QuotedAsset>,
    /// Loaded when [`Needs::splits`] says so.
    pub splits: Option<Splits>,
}

impl Quote {
    fn quoted(&self, asset: &str) -> Option<Amount> {
        self.assets.iter().find(|a| a.asset == asset).map(|a| a.quoted)
    }

    /// Confirmed and pending value in the invoice's currency at the locked quote. Amounts are summed
    /// per asset before converting, so payments in one asset that add up to the quote are worth
    /// exactly the price (rounding each payment down would lose a minor unit per payment).
    pub fn valuation(&self, due: Amount) -> Result<(Amount, Amount)> {
        let corrupt = |value: Amount| PlanError::Corrupt { column: "amount_minor", value: value.to_string() };
        let mut confirmed = Amount::ZERO;
        let mut pending = Amount::ZERO;
        for asset in &self.assets {
            for (paid, total) in [(asset.confirmed, &mut confirmed), (asset.pending, &mut pending)] {
                if paid.is_zero() {
                    continue;
                }
                let value = mul_div(paid, due, asset.quoted, Rounding::Down).map_err(|_| corrupt(paid))?;
                *total = total.checked_add(value).ok_or_else(|| corrupt(value))?;
            }
        }
        Ok((confirmed, pending))
    }

    /// The quote after one payment applied to the invoice moved from status `from` to `to`
    /// (`None`: not stored, or not counting).
    pub(crate) fn moved(&self, asset: &str, amount: Amount, from: Option<PaymentStatus>, to: Option<PaymentStatus>) -> Result<Self> {
        let mut next = self.clone();
        let Some(entry) = next.assets.iter_mut().find(|a| a.asset == asset) else {
            // Not quoted: its payments are unapplied and count toward nothing.
            return Ok(next);
        };
        let corrupt = || PlanError::Corrupt { column: "amount_minor", value: amount.to_string() };
        match from {
            Some(PaymentStatus::Seen) => entry.pending = entry.pending.checked_sub(amount).ok_or_else(corrupt)?,
            Some(PaymentStatus::Confirmed) => entry.confirmed = entry.confirmed.checked_sub(amount).ok_or_else(corrupt)?,
            _ => {}
        }
        match to {
            Some(PaymentStatus::Seen) => entry.pending = entry.pending.checked_add(amount).ok_or_else(corrupt)?,
            Some(PaymentStatus::Confirmed) => entry.confirmed = entry.confirmed.checked_add(amount).ok_or_else(corrupt)?,
            _ => {}
        }
        Ok(next)
    }
}

/// Which facts beyond the invoice and the payment's row a plan needs, so the loader reads no more
/// than the decision uses (a watcher refreshing a waiting payment reads two rows and writes none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The invoice's quote and what arrived in each asset.
    pub quote: bool,
    /// The invoice's revenue split (the payment may be credited toward the invoice).
    pub splits: bool,
    /// How many credits of the stored payment were reversed (it may be credited again).
    pub credit_history: bool,
}

/// The facts [`plan_payment`] needs for `observation`.
pub fn needs(invoice: &InvoiceRow, stored: Option<&StoredPayment>, observation: &Observation, now: DateTime<Utc>) -> Needs {
    let may_credit = observation.meets_policy() && stored.is_none_or(|s| s.status != PaymentStatus::Confirmed);
    let may_apply = match stored {
        Some(s) => s.applied_to == AppliedTo::Invoice,
        None => invoice.status.accepts_payments() && now < invoice.expires_at,
    };
    Needs {
        quote: !stored.is_some_and(|s| is_idle_replay(invoice, s, observation)),
        splits: may_credit && may_apply,
        credit_history: may_credit && stored.is_some(),
    }
}

/// A waiting payment reported again unchanged, on an invoice already waiting for it: expiry waits for
/// pending payments, so nothing about the invoice can have changed and it is not re-evaluated.
fn is_idle_replay(invoice: &InvoiceRow, stored: &StoredPayment, observation: &Observation) -> bool {
    stored.status == PaymentStatus::Seen
        && !observation.meets_policy()
        && is_unchanged(stored, PaymentStatus::Seen, observation)
        && invoice.status == InvoiceStatus::Processing
}

fn is_unchanged(stored: &StoredPayment, status: PaymentStatus, observation: &Observation) -> bool {
    status == stored.status
        && stored.confirmations == stored_count(observation.confirmations)
        && stored.confirmations_required == stored_count(observation.confirmations_required)
        && stored.block_hash.as_deref() == observation.block.as_ref().map(|b| b.hash.as_str())
}

fn stored_count(count: u32) -> u32 {
    count.min(STORED_COUNT_MAX)
}

/// A payment's row as first written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayment {
    pub chain: String,
    pub asset: String,
    pub tx_ref: String,
    pub address: Option<String>,
    pub amount: Amount,
    /// Worth in the invoice's currency at the locked quote, rounded down; zero when unapplied.
    pub value: Amount,
    pub confirmations: u32,
    pub confirmations_required: u32,
    /// [`PaymentStatus::Confirmed`] when credited at first sight (a watcher catching up).
    pub status: PaymentStatus,
    pub unapplied_reason: Option<UnappliedReason>,
    pub block: Option<BlockRef>,
}

/// What happens to the payment's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowChange {
    /// Seen for the first time; when confirmed, the row records the credit posted by this change.
    Insert(NewPayment),
    /// A known payment's confirmations, policy, block and status; when it becomes confirmed, the row
    /// also records the credit posted by this change and the time.
    Update { status: PaymentStatus, confirmations: u32, confirmations_required: u32, block: Option<BlockRef> },
    /// Its block left the chain: no confirmations, no block, and [`PaymentStatus::Orphaned`] or
    /// [`PaymentStatus::Reversed`].
    Orphan { status: PaymentStatus },
    /// A held payment now counts toward the change's invoice, worth `value` there; the row records
    /// the credit posted by this change.
    Apply { value: Amount },
    /// A payment that counted toward an invoice is held on the unapplied balance again, for
    /// `reason`; the row records the credit posted by this change, if any.
    Hold { reason: UnappliedReason },
}

/// What the change posts to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerChange {
    /// The payment's credit: the rail's asset account against the split (or the unapplied balance).
    Credit(NewEntry),
    /// Reverses the credit `entry_id` under `key`: its block left the chain.
    Reverse { entry_id: i64, key: String, memo: &'static str },
    /// Reverses the standing credit `entry_id` under `key` and posts `credit`, the payment's next
    /// generation, in its place: a held payment applied to an invoice.
    Rebook { entry_id: i64, key: String, memo: &'static str, credit: NewEntry },
}

/// What is announced about the payment once its row is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentEvent {
    /// `invoice.payment_late`: an unapplied payment credited — sent only when this change's credit is
    /// new, not found standing from an earlier run.
    Late,
    /// `payment.orphaned`, with the payment as it now stands.
    Orphaned,
    /// `invoice.payment_applied`: a held payment now counts toward the invoice.
    Applied,
}

/// An invoice's status before and after the change; a move is stored and announced
/// (`invoice.{status}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusMove {
    pub from: InvoiceStatus,
    pub to: InvoiceStatus,
}

impl StatusMove {
    pub fn moves(&self) -> bool {
        self.from != self.to
    }
}

/// Everything one payment event changes, written by [`super::store::apply`] in this order on the
/// caller's transaction: the ledger, the payment's row, the payment's event, the invoice's status and
/// its event, and last the reversal notice. Each part is optional; an empty change writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentChange {
    pub payment_id: String,
    pub tx_ref: String,
    pub invoice_id: String,
    pub merchant_id: String,
    pub applied_to: AppliedTo,
    pub ledger: Option<LedgerChange>,
    pub row: Option<RowChange>,
    pub payment_event: Option<PaymentEvent>,
    pub invoice: StatusMove,
    /// `invoice.payment_reversed` after the invoice's status: the merchant learns a credit was taken
    /// back, in the same transaction.
    pub announce_reversal: bool,
}

/// How an invoice's status is judged after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judge {
    /// The state machine's rule ([`evaluate`]): paid is never left.
    Evaluate,
    /// A credit was taken back: a paid invoice says what still counts ([`after_reversal`]).
    AfterReversal,
}

/// The status `invoice` moves to given what arrived (`quote`) at `now`.
pub fn judge(invoice: &InvoiceRow, quote: &Quote, now: DateTime<Utc>, rule: Judge) -> Result<StatusMove> {
    let (confirmed, pending) = quote.valuation(invoice.amount_minor)?;
    let progress = Progress {
        due: invoice.amount_minor,
        tolerance_bps: invoice.tolerance_bps,
        confirmed,
        pending,
        expired: now >= invoice.expires_at,
    };
    let to = match (rule, invoice.status) {
        (Judge::AfterReversal, InvoiceStatus::Paid | InvoiceStatus::Overpaid) => after_reversal(&progress),
        _ => evaluate(invoice.status, &progress),
    };
    Ok(StatusMove { from: invoice.status, to })
}

/// Why a new payment does not count toward its invoice, if it does not.
fn unapplied_reason(invoice: &InvoiceRow, asset_quoted: bool, now: DateTime<Utc>) -> Option<UnappliedReason> {
    if !asset_quoted {
        Some(UnappliedReason::AssetNotQuoted)
    } else if !invoice.status.accepts_payments() {
        Some(match invoice.status {
            InvoiceStatus::Expired => UnappliedReason::InvoiceExpired,
            InvoiceStatus::Void => UnappliedReason::InvoiceVoid,
            InvoiceStatus::Invalid => UnappliedReason::InvoiceInvalid,
            _ => UnappliedReason::InvoiceRefunded,
        })
    } else if now >= invoice.expires_at {
        Some(UnappliedReason::Late)
    } else {
        None
    }
}

/// The ledger key of a payment's `generation`-th credit: `payment:{tx_ref}`, then `payment:{tx_ref}#{n}`.
/// Each generation is posted once and reversed at most once (reversals are keyed by the entry).
pub fn credit_key(tx_ref: &str, generation: u32) -> Result<String> {
    match generation {
        0 | 1 => Ok(format!("payment:{tx_ref}")),
        n if n <= RECREDITS_MAX => Ok(format!("payment:{tx_ref}#{n}")),
        _ => Err(PlanError::Invalid {
            field: "tx_ref",
            reason: format!("{tx_ref} was reversed more than {RECREDITS_MAX} times"),
        }),
    }
}

/// The key of the entry that reverses credit `entry_id` of `tx_ref`.
pub fn reversal_key(tx_ref: &str, entry_id: i64) -> String {
    format!("reorg:{tx_ref}:{entry_id}")
}

/// A payment's credit entry. A payment held for review is not split: it is not yet known to be
/// revenue of the invoice.
pub(crate) fn credit_entry(
    invoice: &InvoiceRow,
    payment_id: &str,
    money: Money<'_>,
    applied_to: AppliedTo,
    splits: Option<&Splits>,
    generation: u32,
) -> Result<NewEntry> {
    let Money { tx_ref, rail, asset, amount } = money;
    let credits = match applied_to {
        AppliedTo::Invoice => {
            let splits = splits.ok_or_else(|| PlanError::NotLoaded { fact: "splits", tx_ref: tx_ref.to_owned() })?;
            split_postings(AccountCode::merchant(&invoice.merchant_id), amount, splits)
                .map_err(|e| PlanError::Invalid { field: "splits", reason: e.to_string() })?
        }
        AppliedTo::Unapplied => vec![(AccountCode::unapplied(&invoice.merchant_id), amount)],
    };
    let mut entry = NewEntry::new(credit_key(tx_ref, generation)?, CREDIT_KIND)
        .memo(format!("{} {payment_id}", invoice.id))
        .debit(rail.debit_account(&invoice.merchant_id), asset.to_owned(), amount);
    for (account, amount) in credits {
        entry = entry.credit(account, asset.to_owned(), amount);
    }
    Ok(entry)
}

/// The money of a payment, as its credit books it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Money<'a> {
    pub tx_ref: &'a str,
    pub rail: &'a Rail,
    pub asset: &'a str,
    pub amount: Amount,
}

impl Observation {
    fn money(&self) -> Money<'_> {
        Money { tx_ref: &self.tx_ref, rail: &self.rail, asset: &self.asset, amount: self.amount }
    }
}

impl StoredPayment {
    pub(crate) fn money(&self) -> Money<'_> {
        Money { tx_ref: &self.tx_ref, rail: &self.rail, asset: &self.asset, amount: self.amount }
    }
}

/// Plans what `observation` does, given the invoice (locked by the caller), what is stored of the
/// payment, the invoice's `quote` (`None` when [`needs`] did not ask for it) and the time.
///
/// A known payment is reported again as the chain moves: its confirmations and block change, and
/// once it meets its policy it is credited. One whose block left the chain and that is mined again
/// is seen again; if it had been credited (and reversed), it is credited again under the next
/// generation's key. A payment reported with another amount, asset or invoice than stored is refused.
pub fn plan_payment(
    invoice: &InvoiceRow,
    record: &Record,
    observation: &Observation,
    quote: Option<&Quote>,
    now: DateTime<Utc>,
) -> Result<PaymentChange> {
    observation.validate()?;
    let not_loaded = |fact| PlanError::NotLoaded { fact, tx_ref: observation.tx_ref.clone() };
    let mut change = PaymentChange {
        payment_id: String::new(),
        tx_ref: observation.tx_ref.clone(),
        invoice_id: invoice.id.clone(),
        merchant_id: invoice.merchant_id.clone(),
        applied_to: AppliedTo::Invoice,
        ledger: None,
        row: None,
        payment_event: None,
        invoice: StatusMove { from: invoice.status, to: invoice.status },
        announce_reversal: false,
    };
    let (from, to) = match record {
        Record::Stored(stored) => {
            if stored.amount != observation.amount || stored.invoice_id != observation.invoice_id || stored.asset != observation.asset {
                return Err(PlanError::Mismatch {
                    tx_ref: observation.tx_ref.clone(),
                    stored: format!("{} {} to {}", stored.amount, stored.asset, stored.invoice_id),
                    reported: format!("{} {} to {}", observation.amount, observation.asset, observation.invoice_id),
                });
            }
            change.payment_id = stored.id.clone();
            change.applied_to = stored.applied_to;
            if is_idle_replay(invoice, stored, observation) {
                return Ok(change);
            }
            // Back in the canonical chain after a reorg: seen again.
            let status = match stored.status {
                PaymentStatus::Orphaned | PaymentStatus::Reversed => PaymentStatus::Seen,
                other => other,
            };
            let unchanged = is_unchanged(stored, status, observation);
            let mut next = status;
            if status == PaymentStatus::Seen && observation.meets_policy() {
                // A payment that waited may have been credited and reversed by a reorg before.
                let reversed = stored.credits_reversed.ok_or_else(|| not_loaded("credit history"))?;
                let generation = reversed.saturating_add(1);
                change.ledger = Some(LedgerChange::Credit(credit_entry(
                    invoice,
                    &stored.id,
                    observation.money(),
                    stored.applied_to,
                    quote.and_then(|q| q.splits.as_ref()),
                    generation,
                )?));
                next = PaymentStatus::Confirmed;
            }
            if !unchanged || change.ledger.is_some() {
                change.row = Some(RowChange::Update {
                    status: next,
                    confirmations: stored_count(observation.confirmations),
                    confirmations_required: stored_count(observation.confirmations_required),
                    block: observation.block.clone(),
                });
            }
            (Some(stored.status), next)
        }
        Record::Unseen { id } => {
            let quote = quote.ok_or_else(|| not_loaded("quote"))?;
            let quoted = quote.quoted(&observation.asset);
            let reason = unapplied_reason(invoice, quoted.is_some(), now);
            let value = match (quoted, reason) {
                // The share of the invoice this payment covers, at the locked quote.
                (Some(quoted), None) => mul_div(observation.amount, invoice.amount_minor, quoted, Rounding::Down)
                    .map_err(|e| PlanError::Invalid { field: "amount", reason: format!("cannot be valued: {e}") })?,
                _ => Amount::ZERO,
            };
            change.payment_id = id.clone();
            change.applied_to = if reason.is_some() { AppliedTo::Unapplied } else { AppliedTo::Invoice };
            let mut status = PaymentStatus::Seen;
            // Confirmed at first sight (a watcher catching up): credited at once, written confirmed.
            if observation.meets_policy() {
                change.ledger = Some(LedgerChange::Credit(credit_entry(
                    invoice,
                    id,
                    observation.money(),
                    change.applied_to,
                    quote.splits.as_ref(),
                    1,
                )?));
                status = PaymentStatus::Confirmed;
            }
            change.row = Some(RowChange::Insert(NewPayment {
                chain: observation.rail.chain_column(),
                asset: observation.asset.clone(),
                tx_ref: observation.tx_ref.clone(),
                address: observation.address.clone(),
                amount: observation.amount,
                value,
                confirmations: stored_count(observation.confirmations),
                confirmations_required: stored_count(observation.confirmations_required),
                status,
                unapplied_reason: reason,
                block: observation.block.clone(),
            }));
            (None, status)
        }
    };
    if change.applied_to == AppliedTo::Unapplied && change.ledger.is_some() {
        change.payment_event = Some(PaymentEvent::Late);
    }
    let quote = quote.ok_or_else(|| not_loaded("quote"))?;
    let after = match change.applied_to {
        AppliedTo::Invoice => quote.moved(&observation.asset, observation.amount, from, Some(to))?,
        AppliedTo::Unapplied => quote.clone(),
    };
    change.invoice = judge(invoice, &after, now, Judge::Evaluate)?;
    Ok(change)
}

/// Plans the loss of `stored`'s block (a reorg). A payment not yet credited goes back to unconfirmed
/// accounting (its value no longer counts); a credited one is reversed by a new entry, since the
/// confirmation policy should have made that impossible, and the invoice is told. A payment already
/// orphaned or reversed changes nothing but the invoice is judged again.
pub fn plan_orphan(invoice: &InvoiceRow, stored: &StoredPayment, quote: &Quote, now: DateTime<Utc>) -> Result<PaymentChange> {
    let (status, rule) = match stored.status {
        PaymentStatus::Seen => (Some(PaymentStatus::Orphaned), Judge::Evaluate),
        PaymentStatus::Confirmed => (Some(PaymentStatus::Reversed), Judge::AfterReversal),
        PaymentStatus::Orphaned | PaymentStatus::Reversed => (None, Judge::Evaluate),
    };
    let after = match (status, stored.applied_to) {
        (Some(_), AppliedTo::Invoice) => quote.moved(&stored.asset, stored.amount, Some(stored.status), None)?,
        _ => quote.clone(),
    };
    let ledger = match (status, stored.ledger_entry_id) {
        (Some(PaymentStatus::Reversed), Some(entry_id)) => {
            Some(LedgerChange::Reverse { entry_id, key: reversal_key(&stored.tx_ref, entry_id), memo: REORG_MEMO })
        }
        _ => None,
    };
    Ok(PaymentChange {
        payment_id: stored.id.clone(),
        tx_ref: stored.tx_ref.clone(),
        invoice_id: invoice.id.clone(),
        merchant_id: invoice.merchant_id.clone(),
        applied_to: stored.applied_to,
        ledger,
        row: status.map(|status| RowChange::Orphan { status }),
        payment_event: status.map(|_| PaymentEvent::Orphaned),
        invoice: judge(invoice, &after, now, rule)?,
        announce_reversal: rule == Judge::AfterReversal,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::payment::split::CreatorShare;
    use crate::ledger::Side;
    use InvoiceStatus::{Expired, Open, Overpaid, Paid, Processing, Refunded, Void};

    const ASSET: &str = "eip155:137/erc20:0x3c499c542cef5e3811e1192ce70d8cc03d5c3359";
    const OTHER: &str = "eip155:137/erc20:0xc2132d05d31c914a87c6611c10748aeb04b58e8f";
    const TX: &str = "eip155:137:0xabc:0";
    /// The invoice's price in cents, and the asset amount quoted for it.
    const DUE: u64 = 1_000;
    const QUOTED: u64 = 2_000_000;
    const REQUIRED: u32 = 3;

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::minutes(minute)
    }

    /// Expires at minute 60.
    fn invoice(status: InvoiceStatus) -> InvoiceRow {
        InvoiceRow {
            id: "inv_1".to_owned(),
            merchant_id: "mer_1".to_owned(),
            status,
            currency: Fiat::USD,
            amount_minor: Amount::from_u64(DUE),
            tolerance_bps: 0,
            expires_at: at(60),
        }
    }

    fn quote(confirmed: u64, pending: u64) -> Quote {
        Quote {
            assets: vec![QuotedAsset {
                asset: ASSET.to_owned(),
                quoted: Amount::from_u64(QUOTED),
                confirmed: Amount::from_u64(confirmed),
                pending: Amount::from_u64(pending),
            }],
            splits: Some(Splits::default()),
        }
    }

    fn observe(tx_ref: &str, asset: &str, amount: u64, confirmations: u32) -> Observation {
        Observation {
            invoice_id: "inv_1".to_owned(),
            rail: Rail::Chain("eip155:137".parse().expect("a CAIP-2 id")),
            asset: asset.to_owned(),
            tx_ref: tx_ref.to_owned(),
            address: None,
            amount: Amount::from_u64(amount),
            confirmations,
            confirmations_required: REQUIRED,
            block: (confirmations > 0).then(|| BlockRef { height: 10, hash: format!("0xb{tx_ref}") }),
        }
    }

    fn stored(observation: &Observation, status: PaymentStatus, credits_reversed: u32) -> StoredPayment {
        StoredPayment {
            id: "pay_1".to_owned(),
            invoice_id: observation.invoice_id.clone(),
            applied_invoice_id: None,
            rail: observation.rail.clone(),
            tx_ref: observation.tx_ref.clone(),
            asset: observation.asset.clone(),
            amount: observation.amount,
            status,
            applied_to: AppliedTo::Invoice,
            confirmations: observation.confirmations,
            confirmations_required: observation.confirmations_required,
            block_hash: observation.block.as_ref().map(|b| b.hash.clone()),
            ledger_entry_id: matches!(status, PaymentStatus::Confirmed | PaymentStatus::Reversed).then_some(7),
            credits_reversed: Some(credits_reversed),
        }
    }

    fn unseen() -> Record {
        Record::Unseen { id: "pay_new".to_owned() }
    }

    fn credit(change: &PaymentChange) -> &NewEntry {
        match &change.ledger {
            Some(LedgerChange::Credit(entry)) => entry,
            other => panic!("expected a credit, got {other:?}"),
        }
    }

    fn inserted(change: &PaymentChange) -> &NewPayment {
        match &change.row {
            Some(RowChange::Insert(new)) => new,
            other => panic!("expected an insert, got {other:?}"),
        }
    }

    /// The credit side of an entry, by account.
    fn credits(entry: &NewEntry) -> BTreeMap<String, Amount> {
        entry.postings.iter().filter(|p| p.side == Side::Credit).map(|p| (p.account.to_string(), p.amount)).collect()
    }

    #[test]
    fn first_sighting_is_seen_and_moves_the_invoice_to_processing() {
        let seen = observe(TX, ASSET, QUOTED, 0);
        let change = plan_payment(&invoice(Open), &unseen(), &seen, Some(&quote(0, 0)), at(0)).expect("plan");
        assert_eq!(change.ledger, None);
        let row = inserted(&change);
        assert_eq!((row.status, row.value, row.unapplied_reason), (PaymentStatus::Seen, Amount::from_u64(DUE), None));
        assert_eq!((change.applied_to, change.invoice), (AppliedTo::Invoice, StatusMove { from: Open, to: Processing }));
    }

    #[test]
    fn growing_confirmations_update_the_row_and_credit_at_the_policy() {
        let one = observe(TX, ASSET, QUOTED, 1);
        let two = observe(TX, ASSET, QUOTED, 2);
        let change = plan_payment(&invoice(Processing), &Record::Stored(stored(&one, PaymentStatus::Seen, 0)), &two, Some(&quote(0, QUOTED)), at(1))
            .expect("plan");
        assert_eq!(change.ledger, None);
        assert!(matches!(change.row, Some(RowChange::Update { status: PaymentStatus::Seen, confirmations: 2, .. })));
        assert!(!change.invoice.moves());

        let three = observe(TX, ASSET, QUOTED, REQUIRED);
        let change = plan_payment(&invoice(Processing), &Record::Stored(stored(&two, PaymentStatus::Seen, 0)), &three, Some(&quote(0, QUOTED)), at(2))
            .expect("plan");
        let entry = credit(&change);
        assert_eq!(entry.idempotency_key, format!("payment:{TX}"));
        entry.validate().expect("a balanced entry");
        assert_eq!(credits(entry), BTreeMap::from([("liabilities:merchant:mer_1".to_owned(), Amount::from_u64(QUOTED))]));
        assert!(matches!(change.row, Some(RowChange::Update { status: PaymentStatus::Confirmed, .. })));
        assert_eq!(change.invoice, StatusMove { from: Processing, to: Paid });
        assert_eq!(change.payment_event, None);
    }

    #[test]
    fn an_unchanged_waiting_payment_writes_nothing_and_needs_no_quote() {
        let one = observe(TX, ASSET, QUOTED, 1);
        let record = stored(&one, PaymentStatus::Seen, 0);
        let needs = needs(&invoice(Processing), Some(&record), &one, at(1));
        assert_eq!(needs, Needs { quote: false, splits: false, credit_history: false });
        let change = plan_payment(&invoice(Processing), &Record::Stored(record), &one, None, at(1)).expect("plan");
        assert_eq!((change.row, change.ledger, change.invoice.moves()), (None, None, false));
    }

    #[test]
    fn exact_partial_and_over_payments() {
        let plan = |amount: u64, status: InvoiceStatus, confirmed: u64| {
            plan_payment(&invoice(status), &unseen(), &observe(TX, ASSET, amount, REQUIRED), Some(&quote(confirmed, 0)), at(5))
                .expect("plan")
        };
        let exact = plan(QUOTED, Open, 0);
        assert_eq!((inserted(&exact).status, exact.invoice.to), (PaymentStatus::Confirmed, Paid));
        let partial = plan(QUOTED / 2, Open, 0);
        assert_eq!((inserted(&partial).value, partial.invoice.to), (Amount::from_u64(DUE / 2), Open));
        assert!(partial.ledger.is_some(), "a partial payment is credited all the same");
        let rest = plan(QUOTED / 2, Open, QUOTED / 2);
        assert_eq!(rest.invoice.to, Paid, "two halves pay it exactly");
        let over = plan(QUOTED + QUOTED / 10, Open, 0);
        assert_eq!(over.invoice.to, Overpaid);
        let more = plan(QUOTED / 10, Paid, QUOTED);
        assert_eq!((more.applied_to, more.invoice.to), (AppliedTo::Invoice, Overpaid));
    }

    #[test]
    fn a_late_payment_is_unapplied_credited_and_announced() {
        let change = plan_payment(&invoice(Open), &unseen(), &observe(TX, ASSET, QUOTED, REQUIRED), Some(&quote(0, 0)), at(61))
            .expect("plan");
        let row = inserted(&change);
        assert_eq!((change.applied_to, row.unapplied_reason, row.value), (AppliedTo::Unapplied, Some(UnappliedReason::Late), Amount::ZERO));
        assert_eq!(credits(credit(&change)), BTreeMap::from([("liabilities:unapplied:mer_1".to_owned(), Amount::from_u64(QUOTED))]));
        assert_eq!(change.payment_event, Some(PaymentEvent::Late));
        assert_eq!(change.invoice, StatusMove { from: Open, to: Expired });
    }

    #[test]
    fn payments_to_closed_invoices_are_unapplied_with_the_reason() {
        for (status, reason) in [
            (Expired, UnappliedReason::InvoiceExpired),
            (Void, UnappliedReason::InvoiceVoid),
            (Refunded, UnappliedReason::InvoiceRefunded),
        ] {
            let seen = observe(TX, ASSET, QUOTED, 0);
            let change = plan_payment(&invoice(status), &unseen(), &seen, Some(&quote(0, 0)), at(5)).expect("plan");
            assert_eq!((change.applied_to, inserted(&change).unapplied_reason), (AppliedTo::Unapplied, Some(reason)));
            assert_eq!(change.invoice.to, status, "a payment held for review does not move {status}");
            assert_eq!(change.payment_event, None, "announced when credited, not when seen");
        }
    }

    #[test]
    fn a_wrong_asset_is_unapplied_and_unsplit() {
        let mut terms = quote(0, 0);
        terms.splits = Some(Splits { splits: vec![CreatorShare { creator: "cr_1".to_owned(), bps: 5_000 }], platform_fee_bps: 0 });
        let change = plan_payment(&invoice(Open), &unseen(), &observe(TX, OTHER, QUOTED, REQUIRED), Some(&terms), at(5)).expect("plan");
        assert_eq!(inserted(&change).unapplied_reason, Some(UnappliedReason::AssetNotQuoted));
        assert_eq!(credits(credit(&change)), BTreeMap::from([("liabilities:unapplied:mer_1".to_owned(), Amount::from_u64(QUOTED))]));
        assert_eq!(change.invoice.to, Open);
    }

    #[test]
    fn a_reversed_credit_mined_again_is_credited_under_the_next_key() {
        let back = observe(TX, ASSET, QUOTED, REQUIRED);
        let mut reversed = stored(&observe(TX, ASSET, QUOTED, 0), PaymentStatus::Reversed, 1);
        let change = plan_payment(&invoice(Open), &Record::Stored(reversed.clone()), &back, Some(&quote(0, 0)), at(5)).expect("plan");
        assert_eq!(credit(&change).idempotency_key, format!("payment:{TX}#2"));
        assert!(matches!(change.row, Some(RowChange::Update { status: PaymentStatus::Confirmed, .. })));
        assert_eq!(change.invoice, StatusMove { from: Open, to: Paid });

        reversed.credits_reversed = Some(RECREDITS_MAX);
        let refused = plan_payment(&invoice(Open), &Record::Stored(reversed.clone()), &back, Some(&quote(0, 0)), at(5));
        assert!(matches!(refused, Err(PlanError::Invalid { field: "tx_ref", .. })), "{refused:?}");
        reversed.credits_reversed = None;
        let unloaded = plan_payment(&invoice(Open), &Record::Stored(reversed), &back, Some(&quote(0, 0)), at(5));
        assert!(matches!(unloaded, Err(PlanError::NotLoaded { fact: "credit history", .. })), "{unloaded:?}");
    }

    #[test]
    fn an_orphaned_payment_mined_again_is_seen_again() {
        let orphaned = stored(&observe(TX, ASSET, QUOTED, 0), PaymentStatus::Orphaned, 0);
        let change = plan_payment(&invoice(Open), &Record::Stored(orphaned), &observe(TX, ASSET, QUOTED, 1), Some(&quote(0, 0)), at(5))
            .expect("plan");
        assert!(matches!(change.row, Some(RowChange::Update { status: PaymentStatus::Seen, .. })));
        assert_eq!(change.invoice, StatusMove { from: Open, to: Processing });
    }

    #[test]
    fn orphaning_a_credited_payment_reverses_it_and_leaves_paid() {
        let credited = stored(&observe(TX, ASSET, QUOTED, REQUIRED), PaymentStatus::Confirmed, 0);
        let change = plan_orphan(&invoice(Paid), &credited, &quote(QUOTED, 0), at(5)).expect("plan");
        assert_eq!(change.ledger, Some(LedgerChange::Reverse { entry_id: 7, key: format!("reorg:{TX}:7"), memo: REORG_MEMO }));
        assert_eq!(change.row, Some(RowChange::Orphan { status: PaymentStatus::Reversed }));
        assert_eq!((change.payment_event, change.announce_reversal), (Some(PaymentEvent::Orphaned), true));
        assert_eq!(change.invoice, StatusMove { from: Paid, to: Open });
        let past_expiry = plan_orphan(&invoice(Paid), &credited, &quote(QUOTED, 0), at(61)).expect("plan");
        assert_eq!(past_expiry.invoice.to, Expired);
    }

    #[test]
    fn orphaning_a_waiting_payment_stops_it_counting() {
        let seen = stored(&observe(TX, ASSET, QUOTED, 1), PaymentStatus::Seen, 0);
        let change = plan_orphan(&invoice(Processing), &seen, &quote(0, QUOTED), at(5)).expect("plan");
        assert_eq!((change.ledger, change.announce_reversal), (None, false));
        assert_eq!(change.row, Some(RowChange::Orphan { status: PaymentStatus::Orphaned }));
        assert_eq!(change.invoice, StatusMove { from: Processing, to: Open });

        let again = stored(&observe(TX, ASSET, QUOTED, 0), PaymentStatus::Orphaned, 0);
        let change = plan_orphan(&invoice(Open), &again, &quote(0, 0), at(5)).expect("plan");
        assert_eq!((change.row, change.ledger, change.payment_event), (None, None, None));
    }

    #[test]
    fn a_payment_reported_differently_or_of_zero_is_refused() {
        let seen = stored(&observe(TX, ASSET, QUOTED, 1), PaymentStatus::Seen, 0);
        let other = plan_payment(&invoice(Processing), &Record::Stored(seen), &observe(TX, ASSET, QUOTED + 1, 2), Some(&quote(0, QUOTED)), at(5));
        assert!(matches!(other, Err(PlanError::Mismatch { .. })), "{other:?}");
        let zero = plan_payment(&invoice(Open), &unseen(), &observe(TX, ASSET, 0, 1), Some(&quote(0, 0)), at(5));
        assert!(matches!(zero, Err(PlanError::Invalid { field: "amount", .. })), "{zero:?}");
    }

    #[test]
    fn card_payments_debit_stripe_and_store_the_card_rail() {
        let mut card = observe("stripe:pi_1", "iso4217:USD", DUE, 1);
        card.rail = Rail::Card(Fiat::USD);
        card.confirmations_required = 1;
        card.block = None;
        let mut terms = quote(0, 0);
        terms.assets.push(QuotedAsset {
            asset: "iso4217:USD".to_owned(),
            quoted: Amount::from_u64(DUE),
            confirmed: Amount::ZERO,
            pending: Amount::ZERO,
        });
        let change = plan_payment(&invoice(Open), &unseen(), &card, Some(&terms), at(5)).expect("plan");
        assert_eq!((inserted(&change).chain.as_str(), change.invoice.to), (CARD_RAIL, Paid));
        let debit = credit(&change).postings.iter().find(|p| p.side == Side::Debit).map(|p| p.account.to_string());
        assert_eq!(debit.as_deref(), Some("assets:stripe:usd"));
    }

    #[test]
    fn stored_text_values_are_unchanged() {
        use PaymentStatus::*;
        for (status, text) in [(Seen, "seen"), (Confirmed, "confirmed"), (Orphaned, "orphaned"), (Reversed, "reversed")] {
            assert_eq!((status.as_str(), text.parse::<PaymentStatus>()), (text, Ok(status)));
        }
        for (to, text) in [(AppliedTo::Invoice, "invoice"), (AppliedTo::Unapplied, "unapplied")] {
            assert_eq!((to.as_str(), text.parse::<AppliedTo>()), (text, Ok(to)));
        }
        assert_eq!(UnappliedReason::AssetNotQuoted.as_str(), "asset_not_quoted");
        assert_eq!("late".parse::<UnappliedReason>(), Ok(UnappliedReason::Late));
        assert!("paid".parse::<PaymentStatus>().is_err());
    }

    /// An in-memory store: the rows and entries a sequence of changes leaves, with the quote
    /// recomputed from the rows as the database computes it.
    struct Sim {
        invoice: InvoiceRow,
        rows: BTreeMap<String, StoredPayment>,
        /// Credit key → (entry id, amount, reversed).
        entries: BTreeMap<String, (i64, Amount, bool)>,
    }

    impl Sim {
        fn quote(&self, splits: bool) -> Quote {
            let mut quote = quote(0, 0);
            for row in self.rows.values().filter(|r| r.applied_to == AppliedTo::Invoice && r.asset == ASSET) {
                let sum = match row.status {
                    PaymentStatus::Seen => &mut quote.assets[0].pending,
                    PaymentStatus::Confirmed => &mut quote.assets[0].confirmed,
                    _ => continue,
                };
                *sum = sum.checked_add(row.amount).expect("small sums");
            }
            if !splits {
                quote.splits = None;
            }
            quote
        }

        fn credits_reversed(&self, tx_ref: &str) -> u32 {
            let reversed = (1..=RECREDITS_MAX)
                .take_while(|g| credit_key(tx_ref, *g).ok().and_then(|k| self.entries.get(&k)).is_some_and(|e| e.2))
                .count();
            u32::try_from(reversed).expect("at most RECREDITS_MAX")
        }

        fn observe(&mut self, observation: &Observation, now: DateTime<Utc>) -> PaymentChange {
            let stored = self.rows.get(&observation.tx_ref).cloned();
            let needs = needs(&self.invoice, stored.as_ref(), observation, now);
            let quote = self.quote(needs.splits);
            let record = match stored {
                Some(mut s) => {
                    s.credits_reversed = needs.credit_history.then(|| self.credits_reversed(&observation.tx_ref));
                    Record::Stored(s)
                }
                None => Record::Unseen { id: format!("pay_{}", observation.tx_ref) },
            };
            let change = plan_payment(&self.invoice, &record, observation, needs.quote.then_some(&quote), now).expect("plan");
            self.write(&change, Some(observation));
            change
        }

        fn orphan(&mut self, tx_ref: &str, now: DateTime<Utc>) -> Option<PaymentChange> {
            let stored = self.rows.get(tx_ref)?.clone();
            let change = plan_orphan(&self.invoice, &stored, &self.quote(false), now).expect("plan");
            self.write(&change, None);
            Some(change)
        }

        fn write(&mut self, change: &PaymentChange, observation: Option<&Observation>) {
            let mut entry_id = None;
            match &change.ledger {
                Some(LedgerChange::Credit(entry)) => {
                    entry.validate().expect("every credit balances");
                    let next = i64::try_from(self.entries.len()).expect("few entries") + 1;
                    let amount = observation.map(|o| o.amount).expect("credits come from observations");
                    let standing = self.entries.entry(entry.idempotency_key.clone()).or_insert((next, amount, false));
                    assert!(!standing.2, "a reversed credit key is never posted again");
                    entry_id = Some(standing.0);
                }
                Some(LedgerChange::Reverse { entry_id, .. }) => {
                    let credit = self.entries.values_mut().find(|e| e.0 == *entry_id).expect("reverses a posted credit");
                    assert!(!credit.2, "a credit is reversed once");
                    credit.2 = true;
                }
                Some(LedgerChange::Rebook { .. }) => panic!("the watcher's plans never rebook"),
                None => {}
            }
            match (&change.row, observation) {
                (Some(RowChange::Insert(new)), _) => {
                    self.rows.insert(
                        new.tx_ref.clone(),
                        StoredPayment {
                            id: change.payment_id.clone(),
                            invoice_id: change.invoice_id.clone(),
                            applied_invoice_id: None,
                            rail: observation.map(|o| o.rail.clone()).expect("rows come from observations"),
                            tx_ref: new.tx_ref.clone(),
                            asset: new.asset.clone(),
                            amount: new.amount,
                            status: new.status,
                            applied_to: change.applied_to,
                            confirmations: new.confirmations,
                            confirmations_required: new.confirmations_required,
                            block_hash: new.block.as_ref().map(|b| b.hash.clone()),
                            ledger_entry_id: entry_id,
                            credits_reversed: None,
                        },
                    );
                }
                (Some(RowChange::Update { status, confirmations, confirmations_required, block }), Some(o)) => {
                    let row = self.rows.get_mut(&o.tx_ref).expect("updates a stored row");
                    row.status = *status;
                    row.confirmations = *confirmations;
                    row.confirmations_required = *confirmations_required;
                    row.block_hash = block.as_ref().map(|b| b.hash.clone());
                    row.ledger_entry_id = entry_id.or(row.ledger_entry_id);
                }
                (Some(RowChange::Orphan { status }), _) => {
                    let row = self.rows.values_mut().find(|r| r.id == change.payment_id).expect("orphans a stored row");
                    row.status = *status;
                    row.confirmations = 0;
                    row.block_hash = None;
                }
                (Some(RowChange::Update { .. }), None) | (None, _) => {}
                (Some(RowChange::Apply { .. } | RowChange::Hold { .. }), _) => {
                    panic!("the watcher's plans never apply or hold a payment")
                }
            }
            self.invoice.status = change.invoice.to;
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Payment `index` reported with these confirmations, `minutes` later.
        Observe { index: usize, confirmations: u32, minutes: i64 },
        /// Payment `index`'s block left the chain.
        Orphan { index: usize, minutes: i64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0usize..4, 0u32..6, 0i64..15).prop_map(|(index, confirmations, minutes)| Step::Observe { index, confirmations, minutes }),
            1 => (0usize..4, 0i64..15).prop_map(|(index, minutes)| Step::Orphan { index, minutes }),
        ]
    }

    proptest! {
        /// Split rounding: shares are rounded down and never exceed the amount; the dust goes to
        /// `revenue:rounding` and the merchant gets the rest, so every credit sums to zero.
        #[test]
        fn credits_split_exactly(amount in 1u64..=u64::MAX, bps in prop::collection::vec(1u32..=1_900, 0..5), fee in 0u32..=500) {
            let splits = Splits {
                splits: bps.iter().enumerate().map(|(i, bps)| CreatorShare { creator: format!("cr_{i}"), bps: *bps }).collect(),
                platform_fee_bps: fee,
            };
            let mut terms = quote(0, 0);
            terms.splits = Some(splits.clone());
            let change = plan_payment(&invoice(Open), &unseen(), &observe(TX, ASSET, amount, REQUIRED), Some(&terms), at(0)).expect("plan");
            let entry = credit(&change);
            prop_assert!(entry.validate().is_ok(), "{entry:?}");
            let credited = credits(entry);
            let total = Amount::checked_sum(credited.values().copied()).expect("fits");
            prop_assert_eq!(total, Amount::from_u64(amount));
            let share = |bps: u32| mul_div(Amount::from_u64(amount), Amount::from_u64(u64::from(bps)), Amount::from_u64(10_000), Rounding::Down).expect("fits");
            for (i, bps) in bps.iter().enumerate() {
                prop_assert_eq!(credited.get(&format!("liabilities:creator:cr_{i}")).copied().unwrap_or(Amount::ZERO), share(*bps));
            }
            prop_assert_eq!(credited.get("revenue:platform_fees").copied().unwrap_or(Amount::ZERO), share(fee));
            let dust = credited.get("revenue:rounding").copied().unwrap_or(Amount::ZERO);
            prop_assert!(dust < Amount::from_u64(u64::try_from(bps.len()).expect("few") + 1), "dust {dust} per share at most one unit");
            prop_assert!(credited.values().all(|v| *v <= Amount::from_u64(amount) && !v.is_zero()));
        }

        /// Any sequence of sightings, confirmations and reorgs: credits are posted once per
        /// generation and the standing ones are exactly the confirmed payments; an invoice once paid
        /// stays paid unless a credit is reversed; the plan's status is the state machine's verdict
        /// on the rows it leaves; no payment is dropped.
        #[test]
        fn plans_keep_the_books_and_the_status_consistent(
            amounts in prop::collection::vec(1u64..=QUOTED, 4),
            steps in prop::collection::vec(step(), 1..40),
        ) {
            let mut sim = Sim { invoice: invoice(Open), rows: BTreeMap::new(), entries: BTreeMap::new() };
            let mut now = at(0);
            let mut observed = std::collections::BTreeSet::new();
            for step in steps {
                let before = sim.invoice.clone();
                let change = match step {
                    Step::Observe { index, confirmations, minutes } => {
                        now += chrono::Duration::minutes(minutes);
                        // The last payment is in an asset the invoice did not quote.
                        let asset = if index == 3 { OTHER } else { ASSET };
                        let observation = observe(&format!("tx{index}"), asset, amounts[index], confirmations);
                        observed.insert(observation.tx_ref.clone());
                        Some(sim.observe(&observation, now))
                    }
                    Step::Orphan { index, minutes } => {
                        now += chrono::Duration::minutes(minutes);
                        sim.orphan(&format!("tx{index}"), now)
                    }
                };
                let Some(change) = change else { continue };
                if matches!(before.status, Paid | Overpaid) && !change.announce_reversal {
                    prop_assert!(matches!(sim.invoice.status, Paid | Overpaid), "{:?} after {:?}", sim.invoice.status, before.status);
                }
                let idle = change.row.is_none() && change.ledger.is_none() && !change.invoice.moves();
                if !idle {
                    let rule = if change.announce_reversal { Judge::AfterReversal } else { Judge::Evaluate };
                    let verdict = judge(&before, &sim.quote(false), now, rule).expect("judged");
                    prop_assert_eq!(verdict, change.invoice);
                }
                let standing: Vec<Amount> = sim.entries.values().filter(|e| !e.2).map(|e| e.1).collect();
                let confirmed: Vec<Amount> = sim.rows.values().filter(|r| r.status == PaymentStatus::Confirmed).map(|r| r.amount).collect();
                prop_assert_eq!(Amount::checked_sum(standing), Amount::checked_sum(confirmed));
                prop_assert_eq!(sim.rows.len(), observed.len());
            }
        }
    }
}
