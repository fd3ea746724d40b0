//! Reconciliation of an EVM chain against the ledger, on a real anvil: a clean history (payments in
//! a token and the native coin, sweeps, a payout) reports zero differences; each deliberate break —
//! a payment the watcher never saw, a ledger entry with no chain counterpart, an amount altered in
//! the database, a credited block orphaned — shows up in its own category with its amount; an
//! interrupted run resumes; the command line exits non-zero on differences and writes CSV.

use crate::common;

use std::sync::Arc;

use alloy::primitives::{Address, U256};
use crate::common::evm::Chain;
use crate::common::state_with_clock;
use payrail::api::AppState;
use payrail::chain::evm::{EvmWatcher, Sweeper};
use payrail::config::PayoutsConfig;
use payrail::creator::{create_creator, set_split_rules, CreateCreator, SplitRules};
use payrail_devnet::anvil::DEV_DEPLOYER_KEY;
use payrail::invoice::{load_view, InvoiceStatus};
use payrail::ledger::{AccountCode, NewEntry};
use payrail::merchant::create_merchant;
use payrail::money::Amount;
use payrail::payout::{PayoutSender, PayoutService, Progress, RunRequest};
use payrail::reconcile::{Category, Item, ItemKind, Reconciler, Report};
use serde_json::{json, Value};
use sqlx::PgPool;

struct Rig {
    chain: Chain,
    state: AppState,
    merchant_id: String,
    watcher: EvmWatcher,
}

async fn rig(pool: PgPool) -> Rig {
    let chain = Chain::start("polygon").await;
    let (state, _clock) = state_with_clock(pool);
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let watcher = EvmWatcher::new(
        chain.spec.clone(),
        state.pool.clone(),
        state.ledger.clone(),
        state.rates.clone(),
        state.clock.clone(),
    )
    .expect("watcher");
    Rig { chain, state, merchant_id: merchant.merchant_id, watcher }
}

impl Rig {
    fn reconciler(&self) -> Reconciler {
        Reconciler::new(self.state.pool.clone(), vec![self.chain.spec.clone()])
    }

    async fn reconcile(&self) -> Report {
        self.reconciler().run("polygon", 0, None, &|_| {}).await.expect("reconcile")
    }

    /// An invoice of `amount` USD payable in `asset`; its deposit address and the amount due.
    async fn invoice(&self, asset: &str, amount: &str) -> (String, Address, String) {
        let view = common::invoice(&self.state, &self.merchant_id, amount, &[asset]).await;
        let option = &view.payment_options[0];
        let address = option.address.as_deref().expect("address").parse().expect("address");
        (view.id.clone(), address, option.amount_minor.clone())
    }

    /// Mines the policy's confirmations and lets the watcher catch up.
    async fn confirm(&self) {
        self.chain.mine(u64::from(self.chain.spec.confirmations.confirmations_max())).await;
        for _ in 0..50 {
            if self.watcher.step().await.expect("step").is_idle() {
                return;
            }
        }
        panic!("watcher did not catch up");
    }

    async fn status(&self, invoice: &str) -> InvoiceStatus {
        let mut conn = self.state.pool.acquire().await.expect("conn");
        load_view(&mut conn, None, invoice).await.expect("view").status
    }

    /// Pays a USDC invoice of `usd` dollars in full and has it credited.
    async fn paid_usdc(&self, usd: &str) -> (String, String) {
        let (invoice, to, due) = self.invoice(&self.chain.usdc(), usd).await;
        let tx = self.chain.pay_usdc(to, due.parse().expect("due")).await;
        self.confirm().await;
        assert_eq!(self.status(&invoice).await, InvoiceStatus::Paid);
        (invoice, format!("{tx:#x}"))
    }
}

fn items(report: &Report, category: Category) -> Vec<&Item> {
    report.items.iter().filter(|i| i.category == category).collect()
}

/// `payrail reconcile --chain polygon --format csv` against the test database and anvil.
async fn cli(pool: &PgPool, chain: &Chain) -> (i32, String) {
    let mut command = common::payrail(&common::database_url(pool), &["reconcile", "--chain", "polygon", "--format", "csv"]);
    command.env("PAYRAIL_CHAINS__POLYGON__RPC", format!("[\"{}\"]", chain.anvil.url()));
    let output = command.output().await.expect("payrail reconcile");
    (output.status.code().unwrap_or(-1), String::from_utf8(output.stdout).expect("utf-8"))
}

#[sqlx::test]
async fn a_clean_history_reconciles_with_zero_differences(pool: PgPool) {
    let mut rig = rig(pool.clone()).await;
    // A creator takes 50%, so there is something to pay out.
    let creator = create_creator(
        &rig.state.pool,
        &rig.merchant_id,
        &CreateCreator {
            name: "Ada".to_owned(),
            payout_addresses: [(rig.chain.spec.caip2.to_string(), Address::repeat_byte(0xad).to_checksum(None))].into(),
        },
    )
    .await
    .expect("creator");
    let rules: SplitRules =
        serde_json::from_value(json!({"default": {"splits": [{"creator": creator.creator.id, "bps": 5000}]}})).expect("rules");
    set_split_rules(&rig.state.pool, &rig.merchant_id, &rules).await.expect("rules");
    rig.paid_usdc("40.00").await;
    let native = rig.chain.spec.native_asset_id().to_string();
    let (invoice, to, due) = rig.invoice(&native, "3.00").await;
    rig.chain.pay_native(to, due.parse::<U256>().expect("due")).await;
    rig.confirm().await;
    assert_eq!(rig.status(&invoice).await, InvoiceStatus::Paid);
    // Deposits move to the treasury; the creator's share goes out through the batcher.
    let sweeper = Sweeper::new(rig.chain.spec.clone(), DEV_DEPLOYER_KEY, rig.state.pool.clone(), rig.state.ledger.clone())
        .expect("sweeper");
    assert_eq!(sweeper.pass().await.expect("sweep").confirmed, 2);
    rig.chain.fund_batcher(100_000_000).await;
    let config = PayoutsConfig { threshold_usd_cents: Amount::from_u64(100), ..PayoutsConfig::default() };
    let service = PayoutService::with_chains(
        vec![rig.chain.spec.clone()],
        config.clone(),
        rig.state.pool.clone(),
        rig.state.ledger.clone(),
        rig.state.rates.clone(),
        rig.state.clock.clone(),
    )
    .expect("payouts");
    let batch = service.run(&RunRequest::default()).await.expect("run").created.remove(0);
    let sender = PayoutSender::new(
        rig.chain.spec.clone(),
        DEV_DEPLOYER_KEY,
        rig.state.pool.clone(),
        rig.state.ledger.clone(),
        config,
        rig.state.clock.clone(),
    )
    .expect("sender");
    let open = payrail::payout::store::open_batches(&rig.state.pool, &rig.chain.spec.caip2).await.expect("open");
    let mut progress = sender.advance(&open[0]).await.expect("send");
    for _ in 0..5 {
        rig.chain.mine(200).await;
        progress = sender.advance(&open[0]).await.expect("advance");
        if progress.is_final() {
            break;
        }
    }
    assert!(matches!(progress, Progress::Confirmed { .. }), "{progress:?} for {}", batch.id);

    let report = rig.reconcile().await;
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.differences, 0);
    let matched = items(&report, Category::Matched);
    let kinds = |kind| matched.iter().filter(|i| i.kind == kind).count();
    assert_eq!((kinds(ItemKind::Deposit), kinds(ItemKind::Sweep), kinds(ItemKind::Payout)), (2, 2, 1), "{report:#?}");
    assert!(items(&report, Category::Unswept).is_empty());
    let usdc = report.totals.iter().find(|t| t.asset == rig.chain.usdc()).expect("usdc totals");
    assert_eq!((usdc.chain_in_minor.as_str(), usdc.ledger_in_minor.as_str()), ("40000000", "40000000"));
    assert_eq!((usdc.chain_out_minor.as_str(), usdc.ledger_out_minor.as_str()), ("20000000", "20000000"));
    assert_eq!((usdc.in_difference_minor.as_str(), usdc.out_difference_minor.as_str()), ("0", "0"));

    // The command line agrees, exits 0, and writes one CSV row per item.
    let (code, csv) = cli(&pool, &rig.chain).await;
    assert_eq!(code, 0, "{csv}");
    assert_eq!(csv.trim_end().split("\r\n").count(), report.items.len() + 1);

    // Over HTTP, for finance keys only; runs are kept.
    rig.state.reconciler = Arc::new(rig.reconciler());
    let base = common::serve(&rig.state).await;
    let client = reqwest::Client::new();
    let finance = payrail::merchant::create_platform_key(&pool, payrail::merchant::Role::Finance).await.expect("key");
    let merchant_key = payrail::merchant::create_merchant(&pool, "Other").await.expect("merchant").api_key;
    let post = |key: String| client.post(format!("{base}/v1/reconciliation")).bearer_auth(key).json(&json!({"chain": "polygon", "from_block": 0}));
    assert_eq!(post(merchant_key).send().await.expect("request").status().as_u16(), 403);
    let response = post(finance.clone()).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 201);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["ok"], true, "{body}");
    let id = body["run_id"].as_str().expect("id").to_owned();
    let runs: Value =
        client.get(format!("{base}/v1/reconciliation")).bearer_auth(&finance).send().await.expect("list").json().await.expect("json");
    // The library run, the command line's and this one.
    assert_eq!(runs["data"].as_array().map(Vec::len), Some(3), "{runs}");
    let csv = client
        .get(format!("{base}/v1/reconciliation/{id}?format=csv"))
        .bearer_auth(&finance)
        .send()
        .await
        .expect("csv")
        .text()
        .await
        .expect("text");
    assert!(csv.starts_with("run_id,chain,category,kind,"), "{csv}");
}

#[sqlx::test]
async fn deliberate_breaks_each_show_in_their_category(pool: PgPool) {
    let rig = rig(pool.clone()).await;
    let usdc = rig.chain.usdc();
    let caip2 = rig.chain.spec.caip2.clone();
    // A: paid and credited; stays matched.
    let (_, tx_a) = rig.paid_usdc("10.00").await;
    // C: paid and credited, then its amount is altered in the database.
    let (_, tx_c) = rig.paid_usdc("5.00").await;
    let key_c = format!("payment:{caip2}:{tx_c}:0");
    let mut conn = pool.acquire().await.expect("conn");
    for statement in [
        "ALTER TABLE postings DISABLE TRIGGER postings_append_only".to_owned(),
        format!(
            "UPDATE postings SET amount = amount + 1 WHERE amount > 0 AND entry_id = \
             (SELECT id FROM journal_entries WHERE idempotency_key = '{key_c}')"
        ),
        "ALTER TABLE postings ENABLE TRIGGER postings_append_only".to_owned(),
    ] {
        sqlx::query(&statement).execute(&mut *conn).await.expect("tamper");
    }
    drop(conn);
    // D: paid and credited in blocks that a reorg then removes (the watcher is not told).
    let snapshot = rig.chain.rpc("evm_snapshot", json!([])).await;
    let (_, tx_d) = rig.paid_usdc("4.00").await;
    rig.chain.rpc("evm_revert", json!([snapshot])).await;
    rig.chain.mine(u64::from(rig.chain.spec.confirmations.confirmations_max()) + 5).await;
    // B: paid on chain; the watcher never sees it.
    let (_, to_b, due_b) = rig.invoice(&usdc, "7.00").await;
    let tx_b = rig.chain.pay_usdc(to_b, due_b.parse().expect("due")).await;
    // M: a ledger entry on the chain's account that names nothing on chain.
    rig.state
        .ledger
        .post_now(
            &NewEntry::new("adjustment:1", "manual")
                .debit(AccountCode::chain_assets(&caip2), usdc.as_str(), Amount::from_u64(3_000_000))
                .credit(AccountCode::merchant(&rig.merchant_id), usdc.as_str(), Amount::from_u64(3_000_000)),
        )
        .await
        .expect("manual entry");

    let report = rig.reconcile().await;
    assert!(!report.ok);
    let one = |category| {
        let found = items(&report, category);
        assert_eq!(found.len(), 1, "{category:?}: {report:#?}");
        found[0].clone()
    };
    let matched = one(Category::Matched);
    assert_eq!(matched.tx_hash.as_deref(), Some(tx_a.as_str()));
    let missing = one(Category::MissingInLedger);
    assert_eq!(missing.tx_hash, Some(format!("{tx_b:#x}")));
    assert_eq!(missing.chain_amount_minor.as_deref(), Some("7000000"));
    assert_eq!(missing.ledger_amount_minor, None);
    let mismatch = one(Category::AmountMismatch);
    assert_eq!(mismatch.tx_hash.as_deref(), Some(tx_c.as_str()));
    assert_eq!((mismatch.chain_amount_minor.as_deref(), mismatch.ledger_amount_minor.as_deref()), (Some("5000000"), Some("5000001")));
    let orphaned = one(Category::Orphaned);
    assert_eq!(orphaned.reference, format!("{caip2}:{tx_d}:0"));
    assert_eq!(orphaned.ledger_amount_minor.as_deref(), Some("4000000"));
    let manual = one(Category::MissingOnChain);
    assert_eq!((manual.kind, manual.reference.as_str()), (ItemKind::Manual, "adjustment:1"));
    assert_eq!(manual.ledger_amount_minor.as_deref(), Some("3000000"));
    assert_eq!(report.differences, 4);
    // Chain in: A 10 + C 5 + B 7; ledger in: A 10 + C 5.000001 + D 4 + M 3.
    let totals = report.totals.iter().find(|t| t.asset == usdc).expect("usdc totals");
    assert_eq!((totals.chain_in_minor.as_str(), totals.ledger_in_minor.as_str()), ("22000000", "22000001"));
    assert_eq!(totals.in_difference_minor, "-1");
    // A, B and C still sit at their deposit addresses: unswept, which is not a difference.
    assert_eq!(items(&report, Category::Unswept).len(), 3);

    let (code, csv) = cli(&pool, &rig.chain).await;
    assert_eq!(code, 1, "{csv}");
    assert_eq!(csv.trim_end().split("\r\n").count(), report.items.len() + 1);
}

#[sqlx::test]
async fn an_interrupted_run_resumes_where_it_stopped(pool: PgPool) {
    let rig = rig(pool.clone()).await;
    rig.chain.mine(1_100).await;
    let (invoice, tx) = rig.paid_usdc("2.00").await;
    let reconciler = rig.reconciler();
    let id = reconciler.start("polygon", 0, None).await.expect("start");
    // One chunk, then the process "dies".
    let complete = reconciler.scan(&id, Some(1), &|_| {}).await.expect("scan");
    assert!(!complete);
    let scanned_to: Option<i64> =
        sqlx::query_scalar("SELECT scanned_to FROM reconciliation_runs WHERE id = $1").bind(&id).fetch_one(&pool).await.expect("run");
    assert_eq!(scanned_to, Some(i64::try_from(payrail::reconcile::CHUNK_BLOCKS).unwrap_or(0) - 1));
    let seen = std::sync::Mutex::new(Vec::new());
    let report = reconciler
        .complete(&id, &|p| seen.lock().expect("lock").push(p.scanned_to))
        .await
        .expect("resume");
    let seen = seen.into_inner().expect("lock");
    assert_eq!(seen.first().copied(), Some(2 * payrail::reconcile::CHUNK_BLOCKS - 1), "resumed after the first chunk");
    assert!(report.ok, "{report:#?}");
    let matched = items(&report, Category::Matched);
    assert_eq!(matched.len(), 1, "{invoice}");
    assert_eq!(matched[0].tx_hash.as_deref(), Some(tx.as_str()));
    // A finished run cannot be resumed again.
    assert!(reconciler.scan(&id, None, &|_| {}).await.is_err());
}

/// Money out and problem payments reconcile too: a late payment held on the unapplied balance and
/// applied to a new invoice (its credit rebooked as the next generation), the deposits swept, and
/// the merchant's whole balance settled through the batcher — zero differences.
#[sqlx::test]
async fn an_applied_late_payment_and_a_settlement_reconcile_with_zero_differences(pool: PgPool) {
    let chain = Chain::start("polygon").await;
    let (state, clock) = state_with_clock(pool);
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let watcher = EvmWatcher::new(chain.spec.clone(), state.pool.clone(), state.ledger.clone(), state.rates.clone(), state.clock.clone())
        .expect("watcher");
    let rig = Rig { chain, state, merchant_id: merchant.merchant_id.clone(), watcher };
    rig.paid_usdc("40.00").await;
    // An invoice that expires before its payment arrives: the payment is held, then applied.
    let (late, to, due) = rig.invoice(&rig.chain.usdc(), "10.00").await;
    clock.advance(chrono::Duration::seconds(3_600));
    payrail::invoice::expire_due(&rig.state.pool, payrail::clock::Clock::now(clock.as_ref())).await.expect("expiry");
    rig.chain.pay_usdc(to, due.parse().expect("due")).await;
    rig.confirm().await;
    assert_eq!(rig.status(&late).await, InvoiceStatus::Expired);
    let held = {
        let mut conn = rig.state.pool.acquire().await.expect("conn");
        let view = load_view(&mut conn, None, &late).await.expect("view");
        view.payments[0].id.clone()
    };
    let fresh = common::invoice(&rig.state, &rig.merchant_id, "10.00", &[&rig.chain.usdc()]).await;
    let now = payrail::clock::Clock::now(clock.as_ref());
    let applied = payrail::invoice::apply_held_payment(&rig.state.pool, &rig.state.ledger, &rig.merchant_id, &held, Some(&fresh.id), now)
        .await
        .expect("applied");
    assert_eq!(applied.status, InvoiceStatus::Paid);

    let sweeper = Sweeper::new(rig.chain.spec.clone(), DEV_DEPLOYER_KEY, rig.state.pool.clone(), rig.state.ledger.clone())
        .expect("sweeper");
    assert_eq!(sweeper.pass().await.expect("sweep").confirmed, 2);
    rig.chain.fund_batcher(100_000_000).await;
    let config = PayoutsConfig { address_change_delay_s: 0, ..PayoutsConfig::default() };
    let service = PayoutService::with_chains(
        vec![rig.chain.spec.clone()],
        config.clone(),
        rig.state.pool.clone(),
        rig.state.ledger.clone(),
        rig.state.rates.clone(),
        rig.state.clock.clone(),
    )
    .expect("payouts");
    service.set_payout_address(&rig.merchant_id, "polygon", &Address::repeat_byte(0xd1).to_checksum(None), false, None).await.expect("address");
    let request = payrail::payout::SettlementRequest { chain: "polygon".to_owned(), asset: rig.chain.usdc(), amount_minor: None };
    let batch = service.settle(&rig.merchant_id, &request).await.expect("settle");
    assert_eq!(batch.total_minor, "50000000");
    let sender = PayoutSender::new(rig.chain.spec.clone(), DEV_DEPLOYER_KEY, rig.state.pool.clone(), rig.state.ledger.clone(), config, rig.state.clock.clone())
        .expect("sender");
    let open = payrail::payout::store::open_batches(&rig.state.pool, &rig.chain.spec.caip2).await.expect("open");
    let mut progress = sender.advance(&open[0]).await.expect("send");
    for _ in 0..5 {
        rig.chain.mine(200).await;
        progress = sender.advance(&open[0]).await.expect("advance");
        if progress.is_final() {
            break;
        }
    }
    assert!(matches!(progress, Progress::Confirmed { .. }), "{progress:?}");

    let report = rig.reconcile().await;
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.differences, 0);
    let matched = items(&report, Category::Matched);
    let kinds = |kind| matched.iter().filter(|i| i.kind == kind).count();
    assert_eq!((kinds(ItemKind::Deposit), kinds(ItemKind::Sweep), kinds(ItemKind::Payout)), (2, 2, 1), "{report:#?}");
    let usdc = report.totals.iter().find(|t| t.asset == rig.chain.usdc()).expect("usdc totals");
    assert_eq!((usdc.chain_in_minor.as_str(), usdc.ledger_in_minor.as_str()), ("50000000", "50000000"));
    assert_eq!((usdc.chain_out_minor.as_str(), usdc.ledger_out_minor.as_str()), ("50000000", "50000000"));
}
