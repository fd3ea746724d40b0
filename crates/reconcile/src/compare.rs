//! The comparison itself: chain observations against ledger movements. Pure: no I/O.
//!
//! Every observation and every movement ends up in exactly one item, except movements handed back
//! as leftovers: the caller resolves those against the chain (is the transaction in the range at
//! all? was its block orphaned?) before they become items. Totals are sums of the items' amounts,
//! so they always agree with the items listed.

use std::collections::{BTreeMap, HashMap};

use crate::money::Amount;

use super::model::{AssetTotals, Category, ChainObservation, Item, ItemKind, LedgerMovement, Report};

/// Items for every observation, and the ledger movements no observation explains.
pub fn match_up(observations: Vec<ChainObservation>, movements: Vec<LedgerMovement>) -> (Vec<Item>, Vec<LedgerMovement>) {
    let mut by_reference: HashMap<(ItemKind, String), LedgerMovement> = HashMap::with_capacity(movements.len());
    let mut leftovers = Vec::new();
    for movement in movements {
        let key = (movement.kind, movement.reference.clone());
        // Two entries for one chain reference cannot both be explained by it.
        if let Some(previous) = by_reference.insert(key, movement) {
            leftovers.push(previous);
        }
    }
    let mut items = Vec::with_capacity(observations.len());
    for observation in observations {
        let movement = by_reference.remove(&(observation.kind, observation.reference.clone()));
        let category = match &movement {
            Some(m) if m.amount == observation.amount && m.asset == observation.asset => Category::Matched,
            Some(_) => Category::AmountMismatch,
            None => Category::MissingInLedger,
        };
        items.push(Item {
            category,
            kind: observation.kind,
            reference: observation.reference,
            asset: observation.asset,
            address: Some(observation.address),
            tx_hash: Some(observation.tx_hash),
            block_number: Some(observation.block_number),
            chain_amount_minor: Some(observation.amount.to_string()),
            ledger_amount_minor: movement.as_ref().map(|m| m.amount.to_string()),
            entry_id: movement.as_ref().map(|m| m.entry_id),
            detail: None,
        });
    }
    leftovers.extend(by_reference.into_values());
    leftovers.sort_by_key(|m| m.entry_id);
    (items, leftovers)
}

/// An item for a ledger movement the chain does not show.
pub fn unexplained(movement: &LedgerMovement, category: Category, detail: impl Into<String>) -> Item {
    Item {
        category,
        kind: movement.kind,
        reference: movement.reference.clone(),
        asset: movement.asset.clone(),
        address: None,
        tx_hash: None,
        block_number: None,
        chain_amount_minor: None,
        ledger_amount_minor: Some(movement.amount.to_string()),
        entry_id: Some(movement.entry_id),
        detail: Some(detail.into()),
    }
}

fn parse(text: Option<&String>) -> Amount {
    text.and_then(|t| Amount::parse_decimal(t, 0).ok()).unwrap_or(Amount::ZERO)
}

fn signed_difference(a: Amount, b: Amount) -> String {
    if a >= b {
        a.saturating_sub(b).to_string()
    } else {
        format!("-{}", b.saturating_sub(a))
    }
}

/// Per-asset sums of money in (deposits, charges, manual entries) and out (payouts, refunds).
/// Unswept items restate a matched deposit and are not counted again.
pub fn totals(items: &[Item]) -> Vec<AssetTotals> {
    #[derive(Default)]
    struct Sums {
        chain_in: Amount,
        ledger_in: Amount,
        chain_out: Amount,
        ledger_out: Amount,
    }
    let mut by_asset: BTreeMap<&str, Sums> = BTreeMap::new();
    for item in items.iter().filter(|i| i.category != Category::Unswept && i.kind != ItemKind::Sweep) {
        let sums = by_asset.entry(item.asset.as_str()).or_default();
        let chain = parse(item.chain_amount_minor.as_ref());
        let ledger = parse(item.ledger_amount_minor.as_ref());
        // Sums of U256 amounts of one range; saturating keeps a corrupt value from panicking.
        if matches!(item.kind, ItemKind::Payout | ItemKind::Refund) {
            sums.chain_out = sums.chain_out.checked_add(chain).unwrap_or(Amount::MAX);
            sums.ledger_out = sums.ledger_out.checked_add(ledger).unwrap_or(Amount::MAX);
        } else {
            sums.chain_in = sums.chain_in.checked_add(chain).unwrap_or(Amount::MAX);
            sums.ledger_in = sums.ledger_in.checked_add(ledger).unwrap_or(Amount::MAX);
        }
    }
    by_asset
        .into_iter()
        .map(|(asset, s)| AssetTotals {
            asset: asset.to_owned(),
            chain_in_minor: s.chain_in.to_string(),
            ledger_in_minor: s.ledger_in.to_string(),
            in_difference_minor: signed_difference(s.chain_in, s.ledger_in),
            chain_out_minor: s.chain_out.to_string(),
            ledger_out_minor: s.ledger_out.to_string(),
            out_difference_minor: signed_difference(s.chain_out, s.ledger_out),
        })
        .collect()
}

/// The report of a run over `items`.
pub fn report(run_id: &str, chain: &str, from_block: u64, to_block: u64, mut items: Vec<Item>) -> Report {
    items.sort_by(|a, b| {
        (a.category, a.kind, a.block_number, &a.reference).cmp(&(b.category, b.kind, b.block_number, &b.reference))
    });
    let mut counts = BTreeMap::new();
    for item in &items {
        *counts.entry(item.category.as_str().to_owned()).or_insert(0) += 1;
    }
    let totals = totals(&items);
    let differences = items.iter().filter(|i| i.category.is_difference()).count();
    let balanced = totals.iter().all(|t| t.in_difference_minor == "0" && t.out_difference_minor == "0");
    Report {
        run_id: run_id.to_owned(),
        chain: chain.to_owned(),
        from_block,
        to_block,
        counts,
        totals,
        differences,
        ok: differences == 0 && balanced,
        items,
    }
}

/// One row per item, for a spreadsheet.
pub fn items_csv(report: &Report) -> String {
    let mut out = String::from(
        "run_id,chain,category,kind,reference,asset,address,tx_hash,block_number,chain_amount_minor,ledger_amount_minor,entry_id,detail\r\n",
    );
    for item in &report.items {
        let fields = [
            report.run_id.clone(),
            report.chain.clone(),
            item.category.as_str().to_owned(),
            item.kind.as_str().to_owned(),
            item.reference.clone(),
            item.asset.clone(),
            item.address.clone().unwrap_or_default(),
            item.tx_hash.clone().unwrap_or_default(),
            item.block_number.map(|b| b.to_string()).unwrap_or_default(),
            item.chain_amount_minor.clone().unwrap_or_default(),
            item.ledger_amount_minor.clone().unwrap_or_default(),
            item.entry_id.map(|e| e.to_string()).unwrap_or_default(),
            item.detail.clone().unwrap_or_default(),
        ];
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

/// RFC 4180 quoting.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(reference: &str, amount: u64) -> ChainObservation {
        ChainObservation {
            kind: ItemKind::Deposit,
            reference: reference.to_owned(),
            tx_hash: "0xt".to_owned(),
            block_number: 7,
            asset: "a".to_owned(),
            address: "0xd".to_owned(),
            amount: Amount::from_u64(amount),
        }
    }

    fn movement(reference: &str, amount: u64, entry_id: i64) -> LedgerMovement {
        LedgerMovement {
            kind: ItemKind::Deposit,
            reference: reference.to_owned(),
            entry_id,
            idempotency_key: format!("payment:{reference}"),
            asset: "a".to_owned(),
            amount: Amount::from_u64(amount),
        }
    }

    #[test]
    fn every_side_lands_in_one_category() {
        let (mut items, leftovers) = match_up(
            vec![observation("x", 10), observation("y", 5), observation("z", 3)],
            vec![movement("x", 10, 1), movement("y", 6, 2), movement("w", 4, 3)],
        );
        assert_eq!(leftovers, vec![movement("w", 4, 3)]);
        items.push(unexplained(&leftovers[0], Category::MissingOnChain, "no such transaction"));
        let report = report("rec_1", "c", 1, 9, items);
        let categories: Vec<(&str, Category)> = report.items.iter().map(|i| (i.reference.as_str(), i.category)).collect();
        assert_eq!(
            categories,
            vec![
                ("x", Category::Matched),
                ("z", Category::MissingInLedger),
                ("w", Category::MissingOnChain),
                ("y", Category::AmountMismatch)
            ]
        );
        assert_eq!(report.differences, 3);
        assert!(!report.ok);
        let totals = &report.totals[0];
        assert_eq!((totals.chain_in_minor.as_str(), totals.ledger_in_minor.as_str()), ("18", "20"));
        assert_eq!(totals.in_difference_minor, "-2");
    }

    #[test]
    fn a_clean_range_is_ok_and_unswept_is_not_a_difference() {
        let (mut items, leftovers) = match_up(vec![observation("x", 10)], vec![movement("x", 10, 1)]);
        assert!(leftovers.is_empty());
        let mut unswept = items[0].clone();
        unswept.category = Category::Unswept;
        items.push(unswept);
        let report = report("rec_1", "c", 1, 9, items);
        assert!(report.ok);
        assert_eq!(report.totals[0].in_difference_minor, "0");
        assert_eq!(report.counts.get("unswept"), Some(&1));
    }

    #[test]
    fn a_second_entry_for_one_reference_is_left_over() {
        let (items, leftovers) = match_up(vec![observation("x", 10)], vec![movement("x", 10, 1), movement("x", 10, 2)]);
        assert_eq!(items[0].category, Category::Matched);
        assert_eq!(leftovers.len(), 1);
    }

    #[test]
    fn csv_has_one_row_per_item_and_quotes() {
        let (mut items, _) = match_up(vec![observation("x", 10)], vec![]);
        items[0].detail = Some("a, \"quoted\" note".to_owned());
        let csv = items_csv(&report("rec_1", "c", 1, 9, items));
        let lines: Vec<&str> = csv.trim_end().split("\r\n").collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].ends_with("\"a, \"\"quoted\"\" note\""), "{}", lines[1]);
    }
}
