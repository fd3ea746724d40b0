//! Creator payouts through the real `PayoutBatcher` on anvil: invoices paid on two chains credit two
//! creators, one run pays both in one transaction per chain, and the ledger, the balances and the
//! `PayoutSent` events agree. Then the ways a payout goes wrong: a crash between signing and sending,
//! a stuck transaction replaced, a batch the contract refuses, a dropped transaction, fees above the
//! cap, and `payrail payouts run` killed at arbitrary moments.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use crate::common::evm::Chain;
use crate::common::state_with_clock;
use payrail::api::AppState;
use payrail::chain::evm::contracts::{PayoutBatcher, TestToken};
use payrail::chain::evm::EvmWatcher;
use payrail::config::PayoutsConfig;
use payrail::creator::{create_creator, set_split_rules, CreateCreator, SplitRules};
use payrail_devnet::anvil::{DEV_DEPLOYER_KEY, DEV_PAYER_KEY};
use payrail::invoice::{load_view, InvoiceStatus};
use payrail::ledger::{AccountCode, SignedAmount};
use payrail::merchant::create_merchant;
use payrail::money::Amount;
use payrail::payout::{store, PayoutSender, PayoutService, Progress, RunRequest, SkipReason};
use serde_json::{json, Value};
use sqlx::PgPool;

struct Rig {
    state: AppState,
    merchant_id: String,
    creators: Vec<(String, Address, String)>,
}

fn creator_address(n: u8) -> Address {
    Address::repeat_byte(0xc0 + n)
}

/// A merchant with two creators (70% and 20%, 5% platform fee) with payout addresses on `chains`.
async fn rig(pool: PgPool, chains: &[&Chain]) -> Rig {
    let (state, _clock) = state_with_clock(pool);
    let merchant = create_merchant(&state.pool, "Studio").await.expect("merchant");
    let mut creators = Vec::new();
    for n in 1..=2u8 {
        let address = creator_address(n);
        let payout_addresses =
            chains.iter().map(|c| (c.spec.caip2.to_string(), address.to_checksum(None))).collect();
        let created = create_creator(&state.pool, &merchant.merchant_id, &CreateCreator { name: format!("Creator {n}"), payout_addresses })
            .await
            .expect("creator");
        creators.push((created.creator.id, address, created.api_key));
    }
    let rules: SplitRules = serde_json::from_value(json!({"default": {"splits": [
        {"creator": creators[0].0, "bps": 7000}, {"creator": creators[1].0, "bps": 2000}], "platform_fee_bps": 500}}))
    .expect("rules");
    set_split_rules(&state.pool, &merchant.merchant_id, &rules).await.expect("rules set");
    Rig { state, merchant_id: merchant.merchant_id, creators }
}

fn config() -> PayoutsConfig {
    PayoutsConfig { threshold_usd_cents: Amount::from_u64(100), ..PayoutsConfig::default() }
}

impl Rig {
    fn service(&self, chains: &[&Chain], config: PayoutsConfig) -> PayoutService {
        PayoutService::with_chains(
            chains.iter().map(|c| c.spec.clone()).collect(),
            config,
            self.state.pool.clone(),
            self.state.ledger.clone(),
            self.state.rates.clone(),
            self.state.clock.clone(),
        )
        .expect("payable chains")
    }

    fn sender(&self, chain: &Chain, config: PayoutsConfig) -> PayoutSender {
        PayoutSender::new(
            chain.spec.clone(),
            DEV_DEPLOYER_KEY,
            self.state.pool.clone(),
            self.state.ledger.clone(),
            config,
            self.state.clock.clone(),
        )
        .expect("sender")
    }

    async fn balance(&self, account: &AccountCode, asset: &str) -> SignedAmount {
        let mut conn = self.state.pool.acquire().await.expect("conn");
        self.state.ledger.balance(&mut conn, account, asset).await.expect("balance")
    }

    /// Credits the creators as a confirmed payment of `units` USDC to an invoice would.
    async fn paid_invoice(&self, chain: &Chain, units: u64) {
        let asset = chain.usdc();
        let invoice = self.invoice(&asset, "100.00").await;
        let payment = payrail::invoice::ObservedPayment {
            invoice_id: invoice.clone(),
            chain: chain.spec.caip2.clone(),
            asset: asset.parse().expect("asset"),
            tx_ref: format!("{}:0x{}:0", chain.spec.caip2, invoice),
            address: None,
            amount: Amount::from_u64(units),
            confirmations: 1,
            confirmations_required: 1,
            block: None,
        };
        let mut tx = self.state.pool.begin().await.expect("begin");
        payrail::invoice::apply_payment(&mut tx, &self.state.ledger, &payment, self.state.clock.now()).await.expect("apply");
        tx.commit().await.expect("commit");
    }

    async fn invoice(&self, asset: &str, amount: &str) -> String {
        common::invoice(&self.state, &self.merchant_id, amount, &[asset]).await.id
    }
}

/// Advances `batch` with `sender`, mining blocks in between, until it is final.
async fn drive_to_end(chain: &Chain, rig: &Rig, sender: &PayoutSender, batch_id: &str) -> Progress {
    for _ in 0..20 {
        let open = store::open_batches(&rig.state.pool, &chain.spec.caip2).await.expect("open");
        let Some(batch) = open.into_iter().find(|b| b.id == batch_id) else {
            let view = store::view(&rig.state.pool, batch_id).await.expect("view");
            return if view.status == "confirmed" { Progress::Confirmed { tx_hash: view.tx_hash.expect("hash").parse().expect("hash") } } else { Progress::Failed(view.error.unwrap_or_default()) };
        };
        let progress = sender.advance(&batch).await.expect("advance");
        if progress.is_final() {
            return progress;
        }
        chain.mine(u64::from(chain.spec.confirmations.confirmations_max())).await;
    }
    panic!("batch {batch_id} did not finish");
}

async fn outbox_types(pool: &PgPool, merchant: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM outbox WHERE merchant_id = $1 AND event_type LIKE 'payout.%' ORDER BY id")
        .bind(merchant)
        .fetch_all(pool)
        .await
        .expect("outbox")
}

/// The whole path on two chains, with the real watcher crediting real on-chain payments.
#[sqlx::test]
async fn invoices_paid_on_two_chains_pay_two_creators_in_one_transaction_per_chain(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let arbitrum = Chain::start("arbitrum").await;
    let chains = [&polygon, &arbitrum];
    let rig = rig(pool, &chains).await;
    let payer: PrivateKeySigner = DEV_PAYER_KEY.parse().expect("key");
    // A 40 USD invoice on each chain, paid in USDC from the payer's wallet and seen by the watcher.
    for chain in chains {
        let watcher = EvmWatcher::new(
            chain.spec.clone(),
            rig.state.pool.clone(),
            rig.state.ledger.clone(),
            rig.state.rates.clone(),
            rig.state.clock.clone(),
        )
        .expect("watcher");
        let invoice_id = rig.invoice(&chain.usdc(), "40.00").await;
        let invoice = {
            let mut conn = rig.state.pool.acquire().await.expect("conn");
            load_view(&mut conn, None, &invoice_id).await.expect("view")
        };
        let to: Address = invoice.payment_options[0].address.as_deref().expect("address").parse().expect("address");
        let provider = ProviderBuilder::new().wallet(EthereumWallet::from(payer.clone())).connect_http(chain.url());
        TestToken::new(chain.contracts.usdc, &provider)
            .transfer(to, U256::from(40_000_000u64))
            .send()
            .await
            .expect("pay")
            .get_receipt()
            .await
            .expect("mined");
        chain.mine(u64::from(chain.spec.confirmations.confirmations_max())).await;
        for _ in 0..50 {
            if watcher.step().await.expect("step").is_idle() {
                break;
            }
        }
        let mut conn = rig.state.pool.acquire().await.expect("conn");
        assert_eq!(load_view(&mut conn, None, &invoice_id).await.expect("view").status, InvoiceStatus::Paid);
        chain.fund_batcher(100_000_000).await;
    }
    // 70% and 20% of 40 USDC each.
    let shares = [28_000_000u64, 8_000_000u64];
    for chain in chains {
        for ((id, _, _), share) in rig.creators.iter().zip(shares) {
            assert_eq!(rig.balance(&AccountCode::creator(id), &chain.usdc()).await, SignedAmount::positive(Amount::from_u64(share)));
        }
    }

    let service = rig.service(&chains, config());
    let summary = service.run(&RunRequest::default()).await.expect("run");
    assert_eq!(summary.created.len(), 2, "one batch per chain: {summary:?}");
    assert!(summary.skipped.is_empty(), "{:?}", summary.skipped);
    // Balances moved to payouts_in_flight with the batch; a second run finds nothing to pay.
    for chain in chains {
        assert_eq!(rig.balance(&AccountCode::payouts_in_flight(), &chain.usdc()).await, SignedAmount::positive(Amount::from_u64(36_000_000)));
    }
    assert!(service.run(&RunRequest::default()).await.expect("second run").created.is_empty());

    for (chain, batch) in chains.iter().zip(&summary.created) {
        assert_eq!(batch.chain, chain.spec.caip2.to_string());
        assert_eq!(batch.recipients, 2);
        let sender = rig.sender(chain, config());
        let progress = drive_to_end(chain, &rig, &sender, &batch.id).await;
        let Progress::Confirmed { tx_hash } = progress else { panic!("{progress:?}") };
        // One transaction paid both creators.
        let attempts = store::attempts(&rig.state.pool, &batch.id).await.expect("attempts");
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].tx_hash, tx_hash);
        let key = store::batch_key(&batch.id);
        let mut events = chain.payout_events().await;
        events.sort();
        assert_eq!(
            events,
            vec![(key, creator_address(1), U256::from(shares[0])), (key, creator_address(2), U256::from(shares[1]))]
        );
        for (n, share) in [(1u8, shares[0]), (2u8, shares[1])] {
            assert_eq!(chain.usdc_of(creator_address(n)).await, U256::from(share));
        }
        let usdc = chain.usdc();
        for (id, _, _) in &rig.creators {
            assert_eq!(rig.balance(&AccountCode::creator(id), &usdc).await, SignedAmount::ZERO);
        }
        assert_eq!(rig.balance(&AccountCode::payouts_in_flight(), &usdc).await, SignedAmount::ZERO);
        // The chain's USDC account holds what was received minus what was paid out.
        assert_eq!(
            rig.balance(&AccountCode::chain_assets(&chain.spec.caip2), &usdc).await,
            SignedAmount::positive(Amount::from_u64(40_000_000 - 36_000_000))
        );
        let view = store::view(&rig.state.pool, &batch.id).await.expect("view");
        let fee: Amount = view.gas_fee_minor.as_deref().expect("gas fee").parse().expect("fee");
        assert!(!fee.is_zero());
        let native = chain.spec.native_asset_id().to_string();
        assert_eq!(rig.balance(&AccountCode::network_fees(), &native).await, SignedAmount::positive(fee));
    }
    assert_eq!(
        outbox_types(&rig.state.pool, &rig.merchant_id).await,
        ["payout.created", "payout.created", "payout.sent", "payout.confirmed", "payout.sent", "payout.confirmed"]
    );
}

/// Creators below the threshold keep their balance until it adds up.
#[sqlx::test]
async fn micro_earnings_stay_until_they_add_up(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let rig = rig(pool, &[&polygon]).await;
    polygon.fund_batcher(100_000_000).await;
    let service = rig.service(&[&polygon], PayoutsConfig { threshold_usd_cents: Amount::from_u64(1_000), ..config() });
    // 70% and 20% of 5 USDC: 3.50 and 1.00, both under 10 USD.
    rig.paid_invoice(&polygon, 5_000_000).await;
    let summary = service.run(&RunRequest::default()).await.expect("run");
    assert!(summary.created.is_empty());
    assert_eq!(summary.skipped.len(), 2);
    assert!(summary.skipped.iter().all(|s| s.reason == SkipReason::BelowThreshold));
    // Two more: 10.50 for the first creator, 3.00 for the second.
    rig.paid_invoice(&polygon, 5_000_000).await;
    rig.paid_invoice(&polygon, 5_000_000).await;
    let summary = service.run(&RunRequest::default()).await.expect("run");
    assert_eq!(summary.created.len(), 1);
    assert_eq!(summary.created[0].items.len(), 1);
    assert_eq!(summary.created[0].items[0].creator_id.as_deref(), Some(rig.creators[0].0.as_str()));
    assert_eq!(summary.created[0].total_minor, "10500000");
    assert_eq!(summary.skipped.len(), 1);
    assert_eq!(rig.balance(&AccountCode::creator(&rig.creators[1].0), &polygon.usdc()).await, SignedAmount::positive(Amount::from_u64(3_000_000)));
}

/// Two transactions for one batch got out (two executors after a lost lock): one pays, the other
/// reverts with `BatchAlreadyPaid`. The paying receipt wins and the batch settles; the reverted one
/// never returns the balances (which would pay the creators twice).
#[sqlx::test]
async fn a_reverted_second_transaction_does_not_fail_a_paid_batch(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let rig = rig(pool, &[&polygon]).await;
    polygon.fund_batcher(100_000_000).await;
    rig.paid_invoice(&polygon, 20_000_000).await;
    let batch_id = rig.service(&[&polygon], config()).run(&RunRequest::default()).await.expect("run").created[0].id.clone();
    let sender = rig.sender(&polygon, config());
    let batch = store::open_batches(&rig.state.pool, &polygon.spec.caip2).await.expect("open").remove(0);
    let Progress::Pending { .. } = sender.advance(&batch).await.expect("send") else { panic!("not sent") };
    // A second executor signed its own transaction for the same batch (the next nonce), stored it
    // and sent it.
    let hot: PrivateKeySigner = DEV_DEPLOYER_KEY.parse().expect("key");
    let provider = ProviderBuilder::new().connect_http(polygon.url());
    let nonce = provider.get_transaction_count(hot.address()).pending().await.expect("nonce");
    let call = PayoutBatcher::payoutCall {
        batchId: batch.batch_key,
        token: batch.token,
        recipients: batch.items.iter().map(|i| i.address).collect(),
        amounts: batch.items.iter().map(|i| i.amount.as_u256()).collect(),
    };
    let envelope = TransactionRequest::default()
        .with_from(hot.address())
        .with_to(batch.batcher)
        .with_input(alloy::sol_types::SolCall::abi_encode(&call))
        .with_nonce(nonce)
        .with_gas_limit(400_000)
        .with_max_fee_per_gas(100_000_000_000)
        .with_max_priority_fee_per_gas(1_000_000_000)
        .with_chain_id(137)
        .build(&EthereumWallet::from(hot.clone()))
        .await
        .expect("signed");
    let raw = alloy::eips::eip2718::Encodable2718::encoded_2718(&envelope);
    let second = store::Attempt {
        tx_hash: *envelope.tx_hash(),
        sender: hot.address(),
        nonce,
        gas_limit: 400_000,
        max_fee_per_gas: 100_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        raw_tx: raw.clone(),
        created_at: rig.state.clock.now(),
    };
    store::record_attempt(&rig.state.pool, &batch.id, &second, rig.state.clock.now()).await.expect("stored");
    let receipt = provider.send_raw_transaction(&raw).await.expect("sent").get_receipt().await.expect("mined");
    assert!(!receipt.status(), "the contract refuses a paid batch id");
    let progress = drive_to_end(&polygon, &rig, &sender, &batch_id).await;
    assert!(matches!(progress, Progress::Confirmed { .. }), "{progress:?}");
    let usdc = polygon.usdc();
    assert_eq!(rig.balance(&AccountCode::payouts_in_flight(), &usdc).await, SignedAmount::ZERO);
    for (id, _, _) in &rig.creators {
        assert_eq!(rig.balance(&AccountCode::creator(id), &usdc).await, SignedAmount::ZERO, "paid once, not returned");
    }
    assert_eq!(polygon.payout_events().await.len(), 2);
}

/// A crash after the transaction was signed and stored but before it was broadcast: the next pass
/// sends exactly those bytes, and the batch is paid once.
#[sqlx::test]
async fn a_crash_between_signing_and_sending_sends_the_stored_transaction(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let rig = rig(pool, &[&polygon]).await;
    polygon.fund_batcher(100_000_000).await;
    rig.paid_invoice(&polygon, 20_000_000).await;
    let batch_id = rig.service(&[&polygon], config()).run(&RunRequest::default()).await.expect("run").created[0].id.clone();
    let batch = store::open_batches(&rig.state.pool, &polygon.spec.caip2).await.expect("open").remove(0);
    let signed = rig.sender(&polygon, config()).sign_only(&batch).await.expect("sign").expect("a transaction");
    // The process died here. Nothing reached the node.
    let provider = ProviderBuilder::new().connect_http(polygon.url());
    assert!(provider.get_transaction_by_hash(signed.tx_hash).await.expect("lookup").is_none());
    // A new process (a new sender) takes over.
    let progress = drive_to_end(&polygon, &rig, &rig.sender(&polygon, config()), &batch_id).await;
    assert_eq!(progress, Progress::Confirmed { tx_hash: signed.tx_hash });
    assert_eq!(polygon.payout_events().await.len(), 2);
    assert_eq!(store::attempts(&rig.state.pool, &batch_id).await.expect("attempts").len(), 1);
    // A crash after confirmation but before anything else: advancing again changes nothing.
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(&rig.state.pool).await.expect("n");
    assert_eq!(drive_to_end(&polygon, &rig, &rig.sender(&polygon, config()), &batch_id).await, progress);
    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(&rig.state.pool).await.expect("n");
    assert_eq!(entries, again);
}

/// With mining stopped, a transaction that waits too long is replaced by one with the same nonce
/// and higher fees; whichever is mined settles the batch, once.
#[sqlx::test]
async fn a_stuck_transaction_is_replaced_with_higher_fees(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let rig = rig(pool, &[&polygon]).await;
    polygon.fund_batcher(100_000_000).await;
    rig.paid_invoice(&polygon, 20_000_000).await;
    let config = PayoutsConfig { replace_after_s: 0, ..config() };
    let batch_id = rig.service(&[&polygon], config.clone()).run(&RunRequest::default()).await.expect("run").created[0].id.clone();
    polygon.rpc("evm_setAutomine", json!([false])).await;
    let sender = rig.sender(&polygon, config);
    let batch = store::open_batches(&rig.state.pool, &polygon.spec.caip2).await.expect("open").remove(0);
    let first = sender.advance(&batch).await.expect("send");
    assert!(matches!(first, Progress::Pending { replaced: false, .. }), "{first:?}");
    let second = sender.advance(&batch).await.expect("replace");
    assert!(matches!(second, Progress::Pending { replaced: true, .. }), "{second:?}");
    let attempts = store::attempts(&rig.state.pool, &batch_id).await.expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].nonce, attempts[1].nonce);
    assert!(attempts[1].max_fee_per_gas > attempts[0].max_fee_per_gas);
    assert!(attempts[1].max_priority_fee_per_gas > attempts[0].max_priority_fee_per_gas);
    polygon.rpc("evm_setAutomine", json!([true])).await;
    polygon.mine(1).await;
    let progress = drive_to_end(&polygon, &rig, &sender, &batch_id).await;
    assert_eq!(progress, Progress::Confirmed { tx_hash: attempts[1].tx_hash });
    assert_eq!(polygon.payout_events().await.len(), 2);
}

/// The batcher was emptied after the run: the contract refuses the batch at estimation, nothing is
/// sent, and both creators get their balances back.
#[sqlx::test]
async fn a_batch_the_contract_refuses_returns_the_balances(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let rig = rig(pool, &[&polygon]).await;
    polygon.fund_batcher(20_000_000).await;
    rig.paid_invoice(&polygon, 20_000_000).await;
    let usdc = polygon.usdc();
    let batch_id = rig.service(&[&polygon], config()).run(&RunRequest::default()).await.expect("run").created[0].id.clone();
    // The owner withdraws the funds before the executor sends.
    let owner: PrivateKeySigner = DEV_DEPLOYER_KEY.parse().expect("key");
    let provider = ProviderBuilder::new().wallet(EthereumWallet::from(owner.clone())).connect_http(polygon.url());
    PayoutBatcher::new(polygon.contracts.payout_batcher, &provider)
        .withdraw(polygon.contracts.usdc, owner.address(), U256::from(20_000_000u64))
        .send()
        .await
        .expect("withdraw")
        .get_receipt()
        .await
        .expect("mined");
    let progress = drive_to_end(&polygon, &rig, &rig.sender(&polygon, config()), &batch_id).await;
    let Progress::Failed(reason) = progress else { panic!("{progress:?}") };
    assert!(reason.contains("refused by the batcher"), "{reason}");
    assert_eq!(rig.balance(&AccountCode::creator(&rig.creators[0].0), &usdc).await, SignedAmount::positive(Amount::from_u64(14_000_000)));
    assert_eq!(rig.balance(&AccountCode::creator(&rig.creators[1].0), &usdc).await, SignedAmount::positive(Amount::from_u64(4_000_000)));
    assert_eq!(rig.balance(&AccountCode::payouts_in_flight(), &usdc).await, SignedAmount::ZERO);
    assert_eq!(outbox_types(&rig.state.pool, &rig.merchant_id).await, ["payout.created", "payout.failed"]);
    assert!(store::attempts(&rig.state.pool, &batch_id).await.expect("attempts").is_empty());
}

/// The sent transaction vanished from the pool and its nonce was used by another transaction: the
/// batch can never be mined under that nonce, so it fails and the balances return.
#[sqlx::test]
async fn a_dropped_transaction_returns_the_balances(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let rig = rig(pool, &[&polygon]).await;
    polygon.fund_batcher(100_000_000).await;
    rig.paid_invoice(&polygon, 20_000_000).await;
    let batch_id = rig.service(&[&polygon], config()).run(&RunRequest::default()).await.expect("run").created[0].id.clone();
    polygon.rpc("evm_setAutomine", json!([false])).await;
    let sender = rig.sender(&polygon, config());
    let batch = store::open_batches(&rig.state.pool, &polygon.spec.caip2).await.expect("open").remove(0);
    let Progress::Pending { tx_hash, .. } = sender.advance(&batch).await.expect("send") else { panic!("not sent") };
    polygon.rpc("anvil_dropTransaction", json!([tx_hash])).await;
    polygon.rpc("evm_setAutomine", json!([true])).await;
    // Someone else spends the hot wallet's nonce.
    let hot: PrivateKeySigner = DEV_DEPLOYER_KEY.parse().expect("key");
    let provider = ProviderBuilder::new().wallet(EthereumWallet::from(hot.clone())).connect_http(polygon.url());
    provider
        .send_transaction(TransactionRequest::default().to(hot.address()).value(U256::from(1u64)))
        .await
        .expect("send")
        .get_receipt()
        .await
        .expect("mined");
    let progress = drive_to_end(&polygon, &rig, &sender, &batch_id).await;
    let Progress::Failed(reason) = progress else { panic!("{progress:?}") };
    assert!(reason.starts_with("dropped"), "{reason}");
    assert_eq!(rig.balance(&AccountCode::payouts_in_flight(), &polygon.usdc()).await, SignedAmount::ZERO);
    assert!(polygon.payout_events().await.is_empty());
}

/// Fees above the operator's cap: the batch waits, nothing is signed.
#[sqlx::test]
async fn fees_above_the_cap_make_the_batch_wait(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let rig = rig(pool, &[&polygon]).await;
    polygon.fund_batcher(100_000_000).await;
    rig.paid_invoice(&polygon, 20_000_000).await;
    let config = PayoutsConfig { max_fee_per_gas_wei_max: Amount::from_u64(1), priority_fee_per_gas_wei_max: Amount::from_u64(1), ..config() };
    let batch_id = rig.service(&[&polygon], config.clone()).run(&RunRequest::default()).await.expect("run").created[0].id.clone();
    let batch = store::open_batches(&rig.state.pool, &polygon.spec.caip2).await.expect("open").remove(0);
    let progress = rig.sender(&polygon, config).advance(&batch).await.expect("advance");
    let Progress::Waiting(reason) = progress else { panic!("{progress:?}") };
    assert!(reason.contains("above max_fee_per_gas_wei_max"), "{reason}");
    let view = store::view(&rig.state.pool, &batch_id).await.expect("view");
    assert_eq!(view.status, "created");
    assert_eq!(view.error.as_deref(), Some(reason.as_str()));
    assert!(store::attempts(&rig.state.pool, &batch_id).await.expect("attempts").is_empty());
}

fn payouts_run(database: &str, chain: &Chain) -> tokio::process::Child {
    common::payrail_on(database, &["payouts", "run", "--chain", "polygon", "--wait-s", "60"], "POLYGON", &chain.anvil.url())
        .env("PAYRAIL_HOT_WALLET_KEY", DEV_DEPLOYER_KEY)
        .env("PAYRAIL_PAYOUTS__THRESHOLD_USD", "1")
        .env("PAYRAIL_PAYOUTS__POLL_INTERVAL_MS", "100")
        .spawn()
        .expect("start payrail payouts run")
}

/// `payrail payouts run` killed with SIGKILL at arbitrary moments, with blocks being mined beside
/// it, then run to the end: each creator is paid exactly once, and the ledger agrees.
#[sqlx::test]
async fn killing_payouts_run_anywhere_pays_each_creator_once(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let rig = rig(pool.clone(), &[&polygon]).await;
    polygon.fund_batcher(1_000_000_000).await;
    let database = common::database_url(&pool);
    let miner = {
        let url = polygon.anvil.url();
        tokio::spawn(async move {
            loop {
                let body = json!({"jsonrpc": "2.0", "id": 1, "method": "anvil_mine", "params": ["0x10"]});
                let _ = reqwest::Client::new().post(&url).json(&body).send().await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let mut expected = [0u64; 2];
    for (round, kill_after_ms) in [40u64, 120, 250, 400, 700].into_iter().enumerate() {
        // New earnings each round, so runs keep writing new batches while older ones are in flight.
        let units = 10_000_000 + 1_000_000 * u64::try_from(round).unwrap_or(0);
        rig.paid_invoice(&polygon, units).await;
        expected[0] += units * 7 / 10;
        expected[1] += units * 2 / 10;
        let mut child = payouts_run(&database, &polygon);
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    // A final run may meet the node pruning the block it pinned a read to (16 blocks mined every
    // 150 ms) and exit with that error; it is run again, as an operator would. Exactly-once is what
    // is asserted below, whatever the number of runs.
    let started = Instant::now();
    let mut finished = false;
    for _ in 0..3 {
        if payouts_run(&database, &polygon).wait().await.expect("final run").success() {
            finished = true;
            break;
        }
    }
    assert!(finished, "no final payouts run finished after {:?}", started.elapsed());
    miner.abort();
    for (n, want) in [(1u8, expected[0]), (2u8, expected[1])] {
        assert_eq!(polygon.usdc_of(creator_address(n)).await, U256::from(want), "creator {n} paid exactly once");
    }
    let usdc = polygon.usdc();
    for (id, _, _) in &rig.creators {
        assert_eq!(rig.balance(&AccountCode::creator(id), &usdc).await, SignedAmount::ZERO);
    }
    assert_eq!(rig.balance(&AccountCode::payouts_in_flight(), &usdc).await, SignedAmount::ZERO);
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM payout_batches WHERE status <> 'confirmed'").fetch_one(&pool).await.expect("n");
    assert_eq!(open, 0);
    // The killed runs did get work done: more than the final run's one batch exists.
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM payout_batches").fetch_one(&pool).await.expect("n");
    assert!(batches > 1, "only {batches} batch(es): the killed runs never wrote one");
    // Every confirmed batch's events sum to its total.
    let events = polygon.payout_events().await;
    let paid: U256 = events.iter().map(|(_, _, amount)| *amount).fold(U256::ZERO, |a, b| a + b);
    assert_eq!(paid, U256::from(expected[0] + expected[1]));
}

/// The HTTP surface: finance keys run payouts, creators see theirs, others are refused.
#[sqlx::test]
async fn payouts_over_http(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let mut rig = rig(pool, &[&polygon]).await;
    polygon.fund_batcher(100_000_000).await;
    rig.paid_invoice(&polygon, 20_000_000).await;
    let service = Arc::new(rig.service(&[&polygon], config()));
    rig.state.payouts = Some(service.clone());
    let base = common::serve(&rig.state).await;
    let client = reqwest::Client::new();
    let finance = payrail::merchant::create_platform_key(&rig.state.pool, payrail::merchant::Role::Finance).await.expect("key");
    let creator_key = rig.creators[0].2.clone();
    let run = |key: String, body: Value| {
        let client = client.clone();
        let url = format!("{base}/v1/payouts/run");
        async move {
            let response = client.post(url).bearer_auth(key).json(&body).send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    // Without an executor in this process nothing would send the batches: refused.
    let (status, body) = run(finance.clone(), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("payouts_unavailable")));
    service.set_executor_running(true);
    let (status, _) = run(creator_key.clone(), json!({})).await;
    assert_eq!(status, 403);
    let (status, body) = run(finance.clone(), json!({"chain": "dogecoin"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("parameter_invalid")), "{body}");
    let (status, body) = run(finance.clone(), json!({"chain": "polygon", "extra": 1})).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = run(finance.clone(), json!({"chain": "polygon", "asset": polygon.usdc()})).await;
    assert_eq!(status, 201, "{body}");
    let id = body["created"][0]["id"].as_str().expect("batch id").to_owned();
    assert_eq!(body["created"][0]["status"], "created");

    let get = |key: String, path: String| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let response = client.get(url).bearer_auth(key).send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let (status, body) = get(finance.clone(), format!("/v1/payouts/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["items"].as_array().map(Vec::len), Some(2));
    let (status, body) = get(finance.clone(), "/v1/payouts?status=created".to_owned()).await;
    assert_eq!((status, body["data"][0]["id"].as_str()), (200, Some(id.as_str())));
    let (status, body) = get(creator_key.clone(), "/v1/creators/me/payouts".to_owned()).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"][0]["payout_id"], id.as_str());
    assert_eq!(body["data"][0]["amount_minor"], "14000000");
    let (status, _) = get(creator_key, format!("/v1/payouts/{id}")).await;
    assert_eq!(status, 403);
}
