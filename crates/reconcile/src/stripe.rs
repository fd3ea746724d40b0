//! Reconciling the card rail: Stripe's charges of a time range, re-read from Stripe (never from the
//! webhook tables), against the ledger's entries on `assets:stripe:{currency}`.
//!
//! What is compared, per PaymentIntent (the id the ledger keys card payments by):
//! - **Charge**: a settled charge (succeeded and captured) created in `[from, to)` against the
//!   entry `payment:stripe:{pi}` (its `assets:stripe:*` posting), in the charge's currency as the
//!   ledger writes it (`iso4217:USD`), in minor units as Stripe counts them.
//! - **Refund**: the charge's cumulative `amount_refunded` against the sum of the entries
//!   `card_refund:{pi}:{total}` (each posts the change of the cumulative total). Refunds are read from
//!   the charges rather than from `GET /v1/refunds`: localstripe lists refunds but cannot filter them
//!   by date, and the ledger keys refunds by PaymentIntent and cumulative total, not by refund id.
//!   A refund therefore belongs to the range of its charge, and a re-run of an old range shows
//!   refunds made since.
//! - **Payout**: a card settlement's payout to the bank, paid at Stripe and created in `[from, to)`,
//!   against the entry `card_payout:{po}` whenever it was booked (a payout is paid days after it is
//!   made). A payout the bank returned after it was paid (`card_payout_returned:{po}`) nets to
//!   nothing on both sides. A paid payout with no entry (one payrail did not ask for) is missing in
//!   the ledger.
//! - **Manual**: any other entry on `assets:stripe:*` booked in `[from, to)` names nothing at the
//!   processor: missing at the processor.
//!
//! Entries booked up to [`CLOCK_SKEW_S`] around the range are read too, so a charge credited a
//! little after the range ends still matches. A credit or refund the range's charges do not explain
//! is looked up at Stripe by its PaymentIntent when it was booked inside the range: unknown or
//! never succeeded there → missing at the processor; a charge created outside the range → left to
//! that range's run. Entries booked only in the margins are left to the neighbouring ranges.
//!
//! Listing: `GET /v1/charges` with `created[gt]`/`created[lt]`, `limit` and `starting_after`.
//! localstripe answers 400 to a two-sided `created` filter, so on a 400 the listing falls back to
//! the lower bound alone and the upper bound is applied here; charges are checked against the range
//! after reading them in either case.
//!
//! A run is stored like a chain's: `source` is `stripe` and `from_block`/`to_block` hold the range's
//! unix seconds. It is not resumable (there is nothing to scan in chunks): an interrupted run stays
//! `running` and a new run is started instead.
//!
//! Not covered: disputes (`card_dispute:*`, `card_dispute_won:*` entries are left out of both sides,
//! as disputes are not read from Stripe), and Stripe's fees (payrail does not book them).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use sqlx::{PgPool, Row};

use crate::invoice::CARD_RAIL;
use crate::money::{Amount, Fiat};
use payrail_stripe::client::{Charge, ChargeQuery, Payout, LIST_PAGE_LIMIT_MAX};
use payrail_stripe::{StripeClient, StripeError, METADATA_INVOICE_ID};

use super::compare::{self, unexplained};
use super::error::{ReconcileError, Result};
use super::model::{Category, ChainObservation, Item, ItemKind, LedgerMovement, Report};
use super::store;

/// The run's `source`.
pub const SOURCE: &str = "stripe";
/// Longest range one run may cover.
pub const RANGE_S_MAX: i64 = 400 * 86_400;
/// Most charges one run lists (all pages together); a longer listing is refused, not cut short.
pub const CHARGES_LISTED_MAX: usize = 200_000;
/// Most ledger postings one run reads.
pub const POSTINGS_MAX: usize = 500_000;
/// Most PaymentIntents looked up one by one for entries the listing does not explain.
pub const LOOKUPS_MAX: usize = 1_000;
/// Entries booked this long around the range are read, for charges credited a little late.
pub const CLOCK_SKEW_S: i64 = 600;

/// What an entry on `assets:stripe:*` claims, by its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    /// `payment:stripe:{pi}`.
    Charge(String),
    /// `card_refund:{pi}:{cumulative total}`.
    Refund(String),
    /// `card_dispute:{id}`, `card_dispute_won:{id}`: not compared.
    Dispute,
    /// `card_payout:{po}`: a card settlement paid out to the bank.
    Payout(String),
    /// `card_payout_returned:{po}`: the bank sent it back.
    PayoutReturned(String),
    /// Anything else.
    Manual,
}

fn claim_of(key: &str) -> Claim {
    if let Some(pi) = key.strip_prefix("payment:").and_then(|rest| rest.strip_prefix(CARD_RAIL)).and_then(|rest| rest.strip_prefix(':')) {
        // A credit posted again after a reversal carries `#n` (chains only; kept for symmetry).
        return Claim::Charge(pi.split_once('#').map_or(pi, |(pi, _)| pi).to_owned());
    }
    if let Some((pi, _total)) = key.strip_prefix("card_refund:").and_then(|rest| rest.rsplit_once(':')) {
        return Claim::Refund(pi.to_owned());
    }
    if let Some(po) = key.strip_prefix("card_payout:") {
        return Claim::Payout(po.to_owned());
    }
    if let Some(po) = key.strip_prefix("card_payout_returned:") {
        return Claim::PayoutReturned(po.to_owned());
    }
    if key.starts_with("card_dispute:") || key.starts_with("card_dispute_won:") {
        return Claim::Dispute;
    }
    Claim::Manual
}

/// The ledger's asset for a Stripe currency (`usd` → `iso4217:USD`).
fn asset_of(currency: &str) -> String {
    let code = currency.to_ascii_uppercase();
    code.parse::<Fiat>().map_or_else(|_| format!("iso4217:{code}"), |fiat| fiat.ledger_asset())
}

/// The key a charge is matched by: its PaymentIntent, or the charge itself for a charge made
/// without one (payrail makes none; such a charge can only be missing in the ledger).
fn reference_of(charge: &Charge) -> String {
    charge.payment_intent.clone().unwrap_or_else(|| charge.id.clone())
}

/// Observations of settled charges: one charge each, and one refund for those refunded at all.
fn observations(charges: &[Charge]) -> Vec<ChainObservation> {
    let mut out = Vec::with_capacity(charges.len());
    for charge in charges {
        let reference = reference_of(charge);
        let asset = asset_of(&charge.currency);
        let created = u64::try_from(charge.created).unwrap_or(0);
        let invoice = charge.metadata.get(METADATA_INVOICE_ID).cloned().unwrap_or_default();
        out.push(ChainObservation {
            kind: ItemKind::Charge,
            reference: reference.clone(),
            tx_hash: charge.id.clone(),
            block_number: created,
            asset: asset.clone(),
            address: invoice.clone(),
            amount: Amount::from_u64(charge.captured_amount()),
        });
        if charge.amount_refunded > 0 {
            out.push(ChainObservation {
                kind: ItemKind::Refund,
                reference,
                tx_hash: charge.id.clone(),
                block_number: created,
                asset,
                address: invoice,
                amount: Amount::from_u64(charge.amount_refunded),
            });
        }
    }
    out
}

/// Observations of payouts paid to the bank.
fn payout_observations(payouts: &[Payout]) -> Vec<ChainObservation> {
    payouts
        .iter()
        .map(|payout| ChainObservation {
            kind: ItemKind::Payout,
            reference: payout.id.clone(),
            tx_hash: payout.id.clone(),
            block_number: u64::try_from(payout.created).unwrap_or(0),
            asset: asset_of(&payout.currency),
            address: payout.metadata.get(payrail_stripe::settlement::METADATA_SETTLEMENT_ID).cloned().unwrap_or_default(),
            amount: Amount::from_u64(payout.amount),
        })
        .collect()
}

/// One posting on `assets:stripe:*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StripePosting {
    posting_id: i64,
    entry_id: i64,
    key: String,
    created_at: DateTime<Utc>,
    asset: String,
    /// Magnitude.
    amount: Amount,
}

/// A movement and whether any of its entries was booked inside the range.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Booked {
    movement: LedgerMovement,
    in_range: bool,
}

/// Movements of `rows`: a charge per credit entry, refunds summed per PaymentIntent, manual entries
/// one each, disputes left out. Pure.
fn movements(rows: &[StripePosting], from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Booked> {
    let in_range = |at: DateTime<Utc>| at >= from && at < to;
    // (kind, reference, asset) → movement; entries in id order.
    let mut by_key: BTreeMap<(ItemKind, String, String), Booked> = BTreeMap::new();
    let mut sorted: Vec<&StripePosting> = rows.iter().collect();
    sorted.sort_by_key(|r| (r.entry_id, r.posting_id));
    // A payout the bank returned is no payout at all.
    let returned: HashSet<String> = rows
        .iter()
        .filter_map(|r| match claim_of(&r.key) {
            Claim::PayoutReturned(po) => Some(po),
            _ => None,
        })
        .collect();
    for row in sorted {
        let (kind, reference, per_entry) = match claim_of(&row.key) {
            Claim::Charge(pi) => (ItemKind::Charge, pi, true),
            Claim::Refund(pi) => (ItemKind::Refund, pi, false),
            Claim::Payout(po) if returned.contains(&po) => continue,
            Claim::Payout(po) => (ItemKind::Payout, po, true),
            Claim::Dispute | Claim::PayoutReturned(_) => continue,
            Claim::Manual => (ItemKind::Manual, row.key.clone(), true),
        };
        // A charge or manual entry is one movement of its own; a second entry for one PaymentIntent
        // stays a second movement (match_up leaves it over).
        let slot = if per_entry { format!("{reference}#{}", row.entry_id) } else { reference.clone() };
        let booked = by_key.entry((kind, slot, row.asset.clone())).or_insert_with(|| Booked {
            movement: LedgerMovement {
                kind,
                reference,
                entry_id: row.entry_id,
                idempotency_key: row.key.clone(),
                asset: row.asset.clone(),
                amount: Amount::ZERO,
            },
            in_range: false,
        });
        booked.movement.amount = booked.movement.amount.checked_add(row.amount).unwrap_or(Amount::MAX);
        // The newest entry names the movement.
        booked.movement.entry_id = row.entry_id;
        booked.movement.idempotency_key = row.key.clone();
        booked.in_range |= in_range(row.created_at);
    }
    by_key.into_values().collect()
}

const POSTINGS_SQL: &str = "SELECT p.id AS posting_id, e.id AS entry_id, e.idempotency_key, e.created_at, p.asset, \
            p.amount::text AS amount \
     FROM journal_entries e \
     JOIN postings p ON p.entry_id = e.id \
     JOIN accounts a ON a.id = p.account_id AND a.code LIKE 'assets:stripe:%' \
     WHERE e.reverses_entry_id IS NULL \
       AND NOT EXISTS (SELECT 1 FROM journal_entries r WHERE r.reverses_entry_id = e.id) \
       AND ";

/// Postings on `assets:stripe:*` booked in `[since, until)`, and every posting of the credit and
/// refund entries of `payment_intents`, whenever booked. Reversed pairs are left out (they net to
/// nothing at the processor).
async fn postings(
    pool: &PgPool,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    payment_intents: &HashSet<String>,
    payouts: &HashSet<String>,
) -> Result<Vec<StripePosting>> {
    let limit = i64::try_from(POSTINGS_MAX + 1).unwrap_or(i64::MAX);
    let window = sqlx::query(&format!("{POSTINGS_SQL} e.created_at >= $1 AND e.created_at < $2 ORDER BY p.id LIMIT $3"))
        .bind(since)
        .bind(until)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    let mut rows: BTreeMap<i64, StripePosting> = BTreeMap::new();
    for row in &window {
        let parsed = row_of(row)?;
        rows.insert(parsed.posting_id, parsed);
    }
    // The PaymentIntents named in the window too: their refunds of any time are summed.
    let mut wanted: Vec<String> = payment_intents.iter().cloned().collect();
    for row in rows.values() {
        if let Claim::Charge(pi) | Claim::Refund(pi) = claim_of(&row.key) {
            wanted.push(pi);
        }
    }
    wanted.sort_unstable();
    wanted.dedup();
    let mut credit_keys: Vec<String> = wanted.iter().map(|pi| format!("payment:{CARD_RAIL}:{pi}")).collect();
    credit_keys.extend(payouts.iter().flat_map(|po| [format!("card_payout:{po}"), format!("card_payout_returned:{po}")]));
    let named = sqlx::query(&format!(
        "{POSTINGS_SQL} (e.idempotency_key = ANY($1) \
              OR (e.idempotency_key LIKE 'card\\_refund:%' AND split_part(e.idempotency_key, ':', 2) = ANY($2))) \
         ORDER BY p.id LIMIT $3"
    ))
    .bind(&credit_keys)
    .bind(&wanted)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    for row in &named {
        let parsed = row_of(row)?;
        rows.insert(parsed.posting_id, parsed);
    }
    if window.len() > POSTINGS_MAX || named.len() > POSTINGS_MAX || rows.len() > POSTINGS_MAX {
        return Err(ReconcileError::Range { message: format!("more than {POSTINGS_MAX} ledger postings; reconcile a shorter range") });
    }
    Ok(rows.into_values().collect())
}

fn row_of(row: &sqlx::postgres::PgRow) -> Result<StripePosting> {
    let text: String = row.try_get("amount")?;
    let amount = Amount::parse_decimal(text.trim_start_matches('-'), 0).map_err(|_| ReconcileError::Corrupt { value: text.clone() })?;
    Ok(StripePosting {
        posting_id: row.try_get("posting_id")?,
        entry_id: row.try_get("entry_id")?,
        key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        asset: row.try_get("asset")?,
        amount,
    })
}

fn processor_error(error: StripeError) -> ReconcileError {
    ReconcileError::Processor { processor: SOURCE, message: error.to_string(), retryable: error.is_retryable() }
}

/// Every settled charge created in `[from_s, to_s)`, by id.
async fn settled_charges(client: &StripeClient, from_s: i64, to_s: i64) -> Result<Vec<Charge>> {
    let mut query = ChargeQuery { created_gt: from_s - 1, created_lt: Some(to_s), limit: LIST_PAGE_LIMIT_MAX, starting_after: None };
    let mut found: BTreeMap<String, Charge> = BTreeMap::new();
    let mut listed = 0usize;
    loop {
        let page = match client.list_charges(&query).await {
            Ok(page) => page,
            // A server that takes one bound only (localstripe): the upper one is applied here.
            Err(StripeError::Api { status: 400, .. }) if query.created_lt.is_some() && query.starting_after.is_none() => {
                query.created_lt = None;
                continue;
            }
            Err(error) => return Err(processor_error(error)),
        };
        listed += page.data.len();
        if listed > CHARGES_LISTED_MAX {
            return Err(ReconcileError::Range { message: format!("more than {CHARGES_LISTED_MAX} charges listed; reconcile a shorter range") });
        }
        let Some(last) = page.data.last().map(|c| c.id.clone()) else { break };
        for charge in page.data {
            if charge.created >= from_s && charge.created < to_s && charge.is_settled() {
                found.insert(charge.id.clone(), charge);
            }
        }
        if !page.has_more {
            break;
        }
        query.starting_after = Some(last);
    }
    Ok(found.into_values().collect())
}

/// Every payout paid to the bank and created in `[from_s, to_s)`. Payouts are listed newest first
/// without a date filter (localstripe takes none), until one older than the range.
async fn paid_payouts(client: &StripeClient, from_s: i64, to_s: i64) -> Result<Vec<Payout>> {
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    let mut listed = 0usize;
    loop {
        let page = client.list_payouts(LIST_PAGE_LIMIT_MAX, after.as_deref()).await.map_err(processor_error)?;
        listed += page.data.len();
        if listed > CHARGES_LISTED_MAX {
            return Err(ReconcileError::Range { message: format!("more than {CHARGES_LISTED_MAX} payouts listed; reconcile a shorter range") });
        }
        let Some(last) = page.data.last().map(|p| (p.id.clone(), p.created)) else { break };
        found.extend(page.data.into_iter().filter(|p| p.created >= from_s && p.created < to_s && p.status == "paid"));
        if !page.has_more || last.1 < from_s {
            break;
        }
        after = Some(last.0);
    }
    Ok(found)
}

/// What Stripe says of a payout the listing did not explain: `None` when it was created outside
/// `[from_s, to_s)`, else why it is missing.
async fn look_up_payout(client: &StripeClient, payout: &str, from_s: i64, to_s: i64) -> Result<Option<String>> {
    let payout = match client.payout(payout).await {
        Ok(payout) => payout,
        Err(StripeError::Api { status: 404, .. }) => return Ok(Some(format!("missing at the processor: it has no payout {payout}"))),
        Err(StripeError::Decode { endpoint, .. }) if endpoint == "request" => {
            return Ok(Some(format!("missing at the processor: {payout:?} is not a payout id")));
        }
        Err(error) => return Err(processor_error(error)),
    };
    if payout.status != "paid" {
        return Ok(Some(format!("missing at the processor: payout {} is {}", payout.id, payout.status)));
    }
    if payout.created < from_s || payout.created >= to_s {
        return Ok(None);
    }
    Ok(Some(format!("payout {} is in the range but the processor did not list it", payout.id)))
}

/// What Stripe says of a PaymentIntent the listing did not explain: `None` when its charge was
/// created outside `[from_s, to_s)` (that range's run compares it), else why it is missing.
async fn look_up(client: &StripeClient, payment_intent: &str, from_s: i64, to_s: i64) -> Result<Option<String>> {
    let intent = match client.payment_intent(payment_intent).await {
        Ok(intent) => intent,
        Err(StripeError::Api { status: 404, .. }) => {
            return Ok(Some(format!("missing at the processor: it has no PaymentIntent {payment_intent}")));
        }
        Err(StripeError::Decode { endpoint, .. }) if endpoint == "request" => {
            return Ok(Some(format!("missing at the processor: {payment_intent:?} is not a PaymentIntent id")));
        }
        Err(error) => return Err(processor_error(error)),
    };
    if intent.status != "succeeded" {
        return Ok(Some(format!("missing at the processor: PaymentIntent {payment_intent} is {}", intent.status)));
    }
    let Some(charge_id) = intent.charge_id() else {
        return Ok(Some(format!("missing at the processor: PaymentIntent {payment_intent} has no charge")));
    };
    let charge = client.charge(&charge_id).await.map_err(processor_error)?;
    if !charge.is_settled() {
        return Ok(Some(format!("missing at the processor: charge {charge_id} is not settled")));
    }
    if charge.created < from_s || charge.created >= to_s {
        return Ok(None);
    }
    Ok(Some(format!("charge {charge_id} is in the range but the processor did not list it")))
}

/// Reconciles the card rail over `[from, to)`: lists Stripe's charges, compares them with the
/// ledger, stores the run (`source` = `stripe`, blocks = unix seconds) and returns its report.
pub async fn reconcile_stripe(pool: &PgPool, client: &StripeClient, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Report> {
    let (from_s, to_s) = (from.timestamp(), to.timestamp());
    if from_s < 0 || to_s <= from_s {
        return Err(ReconcileError::Range { message: format!("from {from} must be before to {to}, both after 1970") });
    }
    if to_s - from_s > RANGE_S_MAX {
        return Err(ReconcileError::Range { message: format!("at most {RANGE_S_MAX} seconds per run") });
    }
    let from_unix = u64::try_from(from_s).unwrap_or(0);
    let to_unix = u64::try_from(to_s).unwrap_or(0);
    let run_id = store::start(pool, SOURCE, from_unix, to_unix).await?;

    let charges = settled_charges(client, from_s, to_s).await?;
    let payouts = paid_payouts(client, from_s, to_s).await?;
    let listed: HashSet<String> = charges.iter().map(reference_of).collect();
    let payouts_listed: HashSet<String> = payouts.iter().map(|p| p.id.clone()).collect();
    let rows = postings(pool, from - Duration::seconds(CLOCK_SKEW_S), to + Duration::seconds(CLOCK_SKEW_S), &listed, &payouts_listed).await?;
    let booked = movements(&rows, from, to);
    let in_range: HashMap<i64, bool> = booked.iter().map(|b| (b.movement.entry_id, b.in_range)).collect();
    let mut observed = observations(&charges);
    observed.extend(payout_observations(&payouts));
    let (mut items, leftovers) = compare::match_up(observed, booked.into_iter().map(|b| b.movement).collect());

    let mut lookups = 0usize;
    for movement in leftovers {
        let booked_in_range = in_range.get(&movement.entry_id).copied().unwrap_or(false);
        let item: Option<Item> = match movement.kind {
            ItemKind::Charge | ItemKind::Refund if listed.contains(&movement.reference) => {
                let detail = if movement.kind == ItemKind::Refund {
                    "missing at the processor: the charge shows no refund".to_owned()
                } else {
                    format!("a second ledger credit for PaymentIntent {}", movement.reference)
                };
                Some(unexplained(&movement, Category::MissingOnChain, detail))
            }
            ItemKind::Charge | ItemKind::Refund if booked_in_range => {
                lookups += 1;
                if lookups > LOOKUPS_MAX {
                    return Err(ReconcileError::Range {
                        message: format!("more than {LOOKUPS_MAX} entries name PaymentIntents outside the range; reconcile a shorter range"),
                    });
                }
                look_up(client, &movement.reference, from_s, to_s)
                    .await?
                    .map(|detail| unexplained(&movement, Category::MissingOnChain, detail))
            }
            ItemKind::Payout if payouts_listed.contains(&movement.reference) => {
                Some(unexplained(&movement, Category::MissingOnChain, format!("a second ledger entry for payout {}", movement.reference)))
            }
            ItemKind::Payout if booked_in_range => {
                lookups += 1;
                if lookups > LOOKUPS_MAX {
                    return Err(ReconcileError::Range {
                        message: format!("more than {LOOKUPS_MAX} entries name payouts outside the range; reconcile a shorter range"),
                    });
                }
                look_up_payout(client, &movement.reference, from_s, to_s)
                    .await?
                    .map(|detail| unexplained(&movement, Category::MissingOnChain, detail))
            }
            // Booked in the margins: a neighbouring range's.
            ItemKind::Charge | ItemKind::Refund | ItemKind::Payout => None,
            _ => booked_in_range.then(|| {
                unexplained(&movement, Category::MissingOnChain, "missing at the processor: an entry on its account that names no charge or refund")
            }),
        };
        items.extend(item);
    }
    let report = compare::report(&run_id, SOURCE, from_unix, to_unix, items);
    store::finish(pool, &report).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(s, 0).single().expect("valid time")
    }

    fn row(posting_id: i64, entry_id: i64, key: &str, created_s: i64, amount: u64) -> StripePosting {
        StripePosting { posting_id, entry_id, key: key.to_owned(), created_at: at(created_s), asset: "iso4217:USD".to_owned(), amount: Amount::from_u64(amount) }
    }

    #[test]
    fn keys_name_what_they_claim() {
        assert_eq!(claim_of("payment:stripe:pi_1"), Claim::Charge("pi_1".to_owned()));
        assert_eq!(claim_of("payment:stripe:pi_1#2"), Claim::Charge("pi_1".to_owned()));
        assert_eq!(claim_of("card_refund:pi_1:1000"), Claim::Refund("pi_1".to_owned()));
        assert_eq!(claim_of("card_dispute:dp_1"), Claim::Dispute);
        assert_eq!(claim_of("card_dispute_won:dp_1"), Claim::Dispute);
        assert_eq!(claim_of("card_payout:po_1"), Claim::Payout("po_1".to_owned()));
        assert_eq!(claim_of("card_payout_returned:po_1"), Claim::PayoutReturned("po_1".to_owned()));
        assert_eq!(claim_of("payment:eip155:1:0xab:0"), Claim::Manual);
        assert_eq!(claim_of("adjustment:1"), Claim::Manual);
        assert_eq!(asset_of("usd"), "iso4217:USD");
    }

    #[test]
    fn refunds_add_up_per_payment_intent_and_disputes_are_left_out() {
        let rows = vec![
            row(1, 1, "payment:stripe:pi_1", 100, 2500),
            row(2, 2, "card_refund:pi_1:1000", 150, 1000),
            row(3, 3, "card_refund:pi_1:1500", 250, 500),
            row(4, 4, "card_dispute:dp_1", 160, 300),
            row(5, 5, "adjustment:1", 90, 7),
        ];
        let booked = movements(&rows, at(100), at(200));
        let summary: Vec<(ItemKind, &str, String, i64, bool)> = booked
            .iter()
            .map(|b| (b.movement.kind, b.movement.reference.as_str(), b.movement.amount.to_string(), b.movement.entry_id, b.in_range))
            .collect();
        assert_eq!(
            summary,
            vec![
                (ItemKind::Manual, "adjustment:1", "7".to_owned(), 5, false),
                (ItemKind::Charge, "pi_1", "2500".to_owned(), 1, true),
                (ItemKind::Refund, "pi_1", "1500".to_owned(), 3, true),
            ]
        );
    }

    #[test]
    fn a_payout_returned_by_the_bank_nets_to_nothing_and_a_paid_one_is_one_movement() {
        let rows = vec![
            row(1, 1, "card_payout:po_kept", 100, 1500),
            row(2, 2, "card_payout:po_back", 110, 700),
            row(3, 3, "card_payout_returned:po_back", 120, 700),
        ];
        let booked = movements(&rows, at(100), at(200));
        let summary: Vec<(ItemKind, &str, String)> = booked.iter().map(|b| (b.movement.kind, b.movement.reference.as_str(), b.movement.amount.to_string())).collect();
        assert_eq!(summary, vec![(ItemKind::Payout, "po_kept", "1500".to_owned())]);
    }

    #[test]
    fn settled_charges_become_a_charge_and_a_refund() {
        let charge: Charge = serde_json::from_value(serde_json::json!({
            "id": "ch_1", "amount": 2500, "amount_refunded": 1000, "currency": "usd", "created": 1_700_000_000,
            "status": "succeeded", "captured": true, "payment_intent": "pi_1", "metadata": {"invoice_id": "inv_1"}
        }))
        .expect("charge");
        let plain = Charge { amount_refunded: 0, payment_intent: None, ..charge.clone() };
        let found = observations(&[charge, plain]);
        let summary: Vec<(ItemKind, &str, String, &str)> =
            found.iter().map(|o| (o.kind, o.reference.as_str(), o.amount.to_string(), o.asset.as_str())).collect();
        assert_eq!(
            summary,
            vec![
                (ItemKind::Charge, "pi_1", "2500".to_owned(), "iso4217:USD"),
                (ItemKind::Refund, "pi_1", "1000".to_owned(), "iso4217:USD"),
                (ItemKind::Charge, "ch_1", "2500".to_owned(), "iso4217:USD"),
            ]
        );
        assert_eq!(found[0].address, "inv_1");
    }
}
