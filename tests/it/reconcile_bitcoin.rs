//! Reconciliation of the Bitcoin rail against payrail's regtest node over real sockets: the chain is
//! re-read through Electrum (never the watcher's tables) and compared with the ledger — a clean
//! range, a payment the watcher never saw, a credit whose block was orphaned, and a manual entry on
//! the chain's asset account.


use bitcoin::Amount as Sats;
use crate::common::bitcoin::{deposit, rig, Rig, REGTEST};
use crate::common::BTC;
use payrail::ledger::{AccountCode, NewEntry};
use payrail::money::Amount;
use payrail::reconcile::{BitcoinReader, Category, ItemKind, Reconciler, Report};
use sqlx::PgPool;

impl Rig {
    /// A whole reconciliation from block 1 (its time is the node's start, before any entry of the
    /// test) to the tip.
    async fn reconcile(&self) -> Report {
        let reconciler = Reconciler::new(self.state.pool.clone(), vec![self.spec.clone()]);
        reconciler.run("bitcoin", 1, None, &|_| {}).await.expect("reconciliation")
    }
}

fn categories(report: &Report) -> Vec<(Category, ItemKind)> {
    report.items.iter().map(|i| (i.category, i.kind)).collect()
}

fn totals_of(report: &Report) -> (String, String, String) {
    let t = report.totals.iter().find(|t| t.asset == BTC).expect("BTC totals");
    (t.chain_in_minor.clone(), t.ledger_in_minor.clone(), t.in_difference_minor.clone())
}

#[sqlx::test]
async fn a_clean_range_matches_every_output(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.synced_watcher().await;
    let one = rig.invoice("25.00").await;
    let split = rig.invoice("25.00").await;
    let over = rig.invoice("25.00").await;
    let first = rig.node.send(&deposit(&one), Sats::from_sat(38_462), true).await.expect("one");
    rig.node.send(&deposit(&split), Sats::from_sat(20_000), true).await.expect("split 1");
    rig.node.send(&deposit(&split), Sats::from_sat(18_462), false).await.expect("split 2");
    rig.node.mine(1).await.expect("mine");
    rig.node.send(&deposit(&over), Sats::from_sat(50_000), true).await.expect("over");
    // A payment in the mempool is not on the chain yet and not credited: in neither side.
    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
    rig.node.send(&deposit(&one), Sats::from_sat(1_000), true).await.expect("mempool");
    rig.sync(&watcher).await;

    let report = rig.reconcile().await;
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.chain, REGTEST);
    assert_eq!(report.differences, 0);
    assert_eq!(categories(&report), vec![(Category::Matched, ItemKind::Deposit); 4], "{report:#?}");
    assert_eq!(totals_of(&report), ("126924".to_owned(), "126924".to_owned(), "0".to_owned()));
    let matched = report.items.iter().find(|i| i.tx_hash.as_deref() == Some(first.to_string().as_str())).expect("the first payment");
    assert!(matched.reference.starts_with(&format!("{REGTEST}:{first}:")), "{}", matched.reference);
    assert_eq!(matched.address.as_deref(), Some(deposit(&one).to_string().as_str()));
    assert_eq!(matched.chain_amount_minor.as_deref(), Some("38462"));
    assert!(!report.counts.contains_key("unswept"), "payrail never sweeps Bitcoin deposits");

    // The stored run is the report.
    let stored = payrail::reconcile::store::report(&rig.state.pool, &report.run_id).await.expect("stored");
    assert_eq!(stored, report);

    // The reader on its own: the tip, block times, hashes, where a payment was mined, balances.
    let reader = BitcoinReader::connect(&rig.spec).await.expect("reader");
    let (tip, tip_hash) = rig.node.tip().await;
    assert_eq!(reader.tip().await.expect("tip"), tip);
    assert_eq!(reader.canonical_hash(tip).await.expect("hash"), Some(tip_hash.to_string()));
    assert_eq!(reader.canonical_hash(tip + 1).await.expect("past the tip"), None);
    assert!(reader.block_time(tip).await.expect("time").is_some());
    assert_eq!(reader.block_time(tip + 1).await.expect("past the tip"), None);
    assert_eq!(reader.locate(&first.to_string()).await.expect("locate"), Some(tip - 1));
    assert_eq!(reader.locate(&"11".repeat(32)).await.expect("unknown"), None);
    assert_eq!(reader.balance(&deposit(&one).to_string()).await.expect("balance"), Amount::from_u64(39_462), "confirmed and mempool");
    assert_eq!(reader.holding(&deposit(&one).to_string(), BTC).await.expect("holding"), Amount::ZERO);
}

#[sqlx::test]
async fn a_payment_the_watcher_never_saw_is_missing_in_the_ledger(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.synced_watcher().await;
    let seen = rig.invoice("25.00").await;
    rig.pay_and_mine(&watcher, &seen, 38_462).await;
    // Paid and mined while the watcher was not looking.
    let unseen = rig.invoice("25.00").await;
    let txid = rig.node.send(&deposit(&unseen), Sats::from_sat(41_000), true).await.expect("unseen");
    rig.node.mine(1).await.expect("mine");

    let report = rig.reconcile().await;
    assert!(!report.ok);
    assert_eq!(report.differences, 1);
    let missing: Vec<_> = report.items.iter().filter(|i| i.category == Category::MissingInLedger).collect();
    assert_eq!(missing.len(), 1, "{report:#?}");
    assert_eq!(missing[0].tx_hash.as_deref(), Some(txid.to_string().as_str()));
    assert_eq!(missing[0].chain_amount_minor.as_deref(), Some("41000"));
    assert_eq!(missing[0].ledger_amount_minor, None);
    assert_eq!(missing[0].block_number, Some(rig.node.tip().await.0));
    assert_eq!(report.counts.get("matched"), Some(&1));
    assert_eq!(totals_of(&report), ("79462".to_owned(), "38462".to_owned(), "41000".to_owned()));
}

#[sqlx::test]
async fn a_credit_whose_block_was_orphaned_is_reported(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.synced_watcher().await;
    let invoice = rig.invoice("25.00").await;
    let txid = rig.node.send(&deposit(&invoice), Sats::from_sat(38_462), true).await.expect("send");
    let mined = rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
    let (height, _) = rig.node.tip().await;
    // A longer branch without the block; the payer double-spends the payment back to themselves
    // before it is mined again, and the watcher does not run.
    rig.node.reorg(1, 2, false).await.expect("reorg");
    let (elsewhere, _) = rig.node.node().wallet_addresses().await;
    rig.node.replace(txid, &elsewhere, Sats::from_sat(38_462)).await.expect("replace");
    rig.node.mine(1).await.expect("mine");

    let report = rig.reconcile().await;
    assert!(!report.ok);
    assert_eq!(categories(&report), vec![(Category::Orphaned, ItemKind::Deposit)], "{report:#?}");
    let item = &report.items[0];
    assert!(item.reference.starts_with(&format!("{REGTEST}:{txid}:")), "{}", item.reference);
    assert_eq!(item.ledger_amount_minor.as_deref(), Some("38462"));
    assert_eq!(item.block_number, Some(height));
    assert!(item.detail.as_deref().is_some_and(|d| d.contains(&mined[0].to_string())), "{:?}", item.detail);
    assert_eq!(totals_of(&report), ("0".to_owned(), "38462".to_owned(), "-38462".to_owned()));
}

#[sqlx::test]
async fn a_manual_entry_on_the_chain_account_is_missing_on_chain(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.synced_watcher().await;
    let invoice = rig.invoice("25.00").await;
    rig.pay_and_mine(&watcher, &invoice, 38_462).await;
    let manual = NewEntry::new("adjustment:btc-1", "adjustment")
        .debit(AccountCode::chain_assets(&rig.spec.caip2), BTC, Amount::from_u64(5_000))
        .credit(AccountCode::merchant(&rig.merchant_id), BTC, Amount::from_u64(5_000));
    let posted = rig.state.ledger.post_now(&manual).await.expect("manual entry");

    let report = rig.reconcile().await;
    assert!(!report.ok);
    assert_eq!(report.differences, 1);
    let item = report.items.iter().find(|i| i.category == Category::MissingOnChain).expect("missing on chain");
    assert_eq!((item.kind, item.reference.as_str()), (ItemKind::Manual, "adjustment:btc-1"));
    assert_eq!(item.entry_id, Some(posted.entry_id));
    assert_eq!(item.ledger_amount_minor.as_deref(), Some("5000"));
    assert_eq!(report.counts.get("matched"), Some(&1));
    assert_eq!(totals_of(&report), ("38462".to_owned(), "43462".to_owned(), "-5000".to_owned()));
}
