//! Reconciliation of the Bitcoin rail against payrail's regtest node over real sockets: the chain is
//! re-read through Electrum (never the watcher's tables) and compared with the ledger — a clean
//! range, a payment the watcher never saw, a credit whose block was orphaned, and a manual entry on
//! the chain's asset account.

mod common;

use std::sync::Arc;

use bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bitcoin::{Address, Amount as Sats, Network, NetworkKind};
use common::state_with_clock;
use payrail::api::AppState;
use payrail::chain::bitcoin::allocate::SetDescriptor;
use payrail::chain::bitcoin::{set_descriptor, BitcoinWatcher, Pass};
use payrail::clock::{Clock, ManualClock};
use payrail::config::{ChainSpec, RpcUrl};
use payrail::devnet::regtest::{RegtestConfig, RegtestHandle, RegtestNode};
use payrail::invoice::{create_invoice, CreateInvoice, InvoiceView};
use payrail::ledger::{AccountCode, NewEntry};
use payrail::merchant::create_merchant;
use payrail::money::Amount;
use payrail::reconcile::{BitcoinReader, Category, ItemKind, Reconciler, Report};
use sqlx::PgPool;

const REGTEST: &str = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328";
const BTC: &str = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328/slip44:0";

/// A BIP84 receive descriptor on a test network key made from `seed`.
fn tpub_descriptor(seed: u8) -> String {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let root = Xpriv::new_master(NetworkKind::Test, &[seed; 32]).expect("root");
    let path: DerivationPath = "m/84'/1'/0'".parse().expect("path");
    let tpub = Xpub::from_priv(&secp, &root.derive_priv(&secp, &path).expect("derive"));
    format!("wpkh([{}/84h/1h/0h]{tpub}/0/*)", root.fingerprint(&secp))
}

struct Rig {
    node: RegtestHandle,
    state: AppState,
    clock: Arc<ManualClock>,
    spec: ChainSpec,
    merchant_id: String,
}

async fn rig(pool: PgPool) -> Rig {
    let node = RegtestNode::start(RegtestConfig { listen: "127.0.0.1:0".parse().expect("addr"), mine_interval: None })
        .await
        .expect("regtest node starts");
    let config = common::repo_config();
    let mut spec = config.chain("bitcoin").expect("bitcoin configured").clone();
    assert_eq!(spec.caip2.to_string(), REGTEST, "the dev stack follows regtest");
    spec.rpc = vec![RpcUrl::new(&node.electrum_url()).expect("url")];
    let (state, clock) = state_with_clock(pool);
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    set_descriptor(&state.pool, &merchant.merchant_id, &spec.caip2, &SetDescriptor { descriptor: tpub_descriptor(1), gap_limit: None })
        .await
        .expect("descriptor");
    Rig { node, state, clock, spec, merchant_id: merchant.merchant_id }
}

impl Rig {
    fn watcher(&self) -> BitcoinWatcher {
        BitcoinWatcher::new(self.spec.clone(), self.state.pool.clone(), self.state.ledger.clone(), self.state.rates.clone(), self.state.clock.clone())
            .expect("watcher")
    }

    async fn invoice(&self, amount: &str) -> InvoiceView {
        let request = CreateInvoice {
            amount: amount.to_owned(),
            currency: "USD".to_owned(),
            accepted: Some(vec![BTC.to_owned()]),
            expires_in: Some(3600),
            order_id: None,
            metadata: None,
        };
        let (view, _) = create_invoice(
            &self.state.pool,
            &self.state.catalog,
            self.state.rates.as_ref(),
            &self.state.policy,
            &self.merchant_id,
            &request,
            None,
            self.clock.now(),
        )
        .await
        .expect("invoice");
        view
    }

    /// Runs passes until the watcher has read the scripts at the tip.
    async fn sync(&self, watcher: &BitcoinWatcher) -> Pass {
        for _ in 0..20 {
            if let pass @ (Pass::Synced { .. } | Pass::Reorged { .. }) = watcher.pass().await.expect("pass") {
                return pass;
            }
        }
        panic!("watcher did not reach the tip");
    }

    /// A whole reconciliation from block 1 (its time is the node's start, before any entry of the
    /// test) to the tip.
    async fn reconcile(&self) -> Report {
        let reconciler = Reconciler::new(self.state.pool.clone(), vec![self.spec.clone()]);
        reconciler.run("bitcoin", 1, None, &|_| {}).await.expect("reconciliation")
    }
}

fn deposit(invoice: &InvoiceView) -> Address {
    let text = invoice.payment_options[0].address.as_deref().expect("deposit address");
    text.parse::<Address<bitcoin::address::NetworkUnchecked>>().expect("address").require_network(Network::Regtest).expect("regtest")
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
    let watcher = rig.watcher();
    rig.sync(&watcher).await;
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
    let watcher = rig.watcher();
    rig.sync(&watcher).await;
    let seen = rig.invoice("25.00").await;
    rig.node.send(&deposit(&seen), Sats::from_sat(38_462), true).await.expect("seen");
    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
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
    let watcher = rig.watcher();
    rig.sync(&watcher).await;
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
    let watcher = rig.watcher();
    rig.sync(&watcher).await;
    let invoice = rig.invoice("25.00").await;
    rig.node.send(&deposit(&invoice), Sats::from_sat(38_462), true).await.expect("send");
    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
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
