//! Merchant settlement through the real `PayoutBatcher` on anvil: a merchant's USDC balance leaves
//! on two chains, one transaction per chain, and the ledger agrees with the `PayoutSent` events; a
//! second settlement of the same funds is refused with what is available; a new payout address
//! waits out the takeover delay; and `payrail payouts run` killed at arbitrary moments pays each
//! settlement once.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use crate::common::evm::Chain;
use payrail::api::AppState;
use payrail::clock::Clock;
use payrail::config::PayoutsConfig;
use payrail::ledger::{AccountCode, SignedAmount};
use payrail::merchant::create_merchant;
use payrail::money::Amount;
use payrail::payout::{store, PayoutSender, PayoutService, Progress, SettlementRequest};
use payrail_devnet::anvil::DEV_DEPLOYER_KEY;
use serde_json::json;
use sqlx::PgPool;

fn merchant_wallet() -> Address {
    Address::repeat_byte(0xd1)
}

pub(crate) fn service(state: &AppState, chains: &[&Chain], config: PayoutsConfig) -> PayoutService {
    PayoutService::with_chains(
        chains.iter().map(|c| c.spec.clone()).collect(),
        config,
        state.pool.clone(),
        state.ledger.clone(),
        state.rates.clone(),
        state.clock.clone(),
    )
    .expect("payable chains")
}

/// payrail's API over real sockets with payouts on `chains`, whose executor is running (a hot
/// wallet key is configured), so settlements, withdrawals and refunds are taken.
pub(crate) async fn server_with_payouts(pool: PgPool, chains: &[&Chain], config: PayoutsConfig) -> common::Server {
    common::Server::start_with(pool, |state| {
        let payouts = service(state, chains, config);
        payouts.set_executor_running(true);
        state.payouts = Some(Arc::new(payouts));
    })
    .await
}

pub(crate) fn no_delay() -> PayoutsConfig {
    PayoutsConfig { address_change_delay_s: 0, ..PayoutsConfig::default() }
}

/// Credits the merchant `units` of `chain`'s USDC as a confirmed payment to an invoice would.
async fn earn(state: &AppState, merchant_id: &str, chain: &Chain, units: u64, tx: &str) {
    let invoice = common::invoice(state, merchant_id, "500.00", &[&chain.usdc()]).await;
    pay_usdc(state, &invoice.id, chain, units, tx).await;
}

/// A confirmed payment of `units` of `chain`'s USDC to `invoice_id`, in transaction `tx`.
pub(crate) async fn pay_usdc(state: &AppState, invoice_id: &str, chain: &Chain, units: u64, tx: &str) {
    let payment = payrail::invoice::ObservedPayment {
        invoice_id: invoice_id.to_owned(),
        chain: chain.spec.caip2.clone(),
        asset: chain.usdc().parse().expect("asset"),
        tx_ref: format!("{}:{tx}:0", chain.spec.caip2),
        address: None,
        amount: Amount::from_u64(units),
        confirmations: 1,
        confirmations_required: 1,
        block: None,
    };
    let mut db = state.pool.begin().await.expect("begin");
    payrail::invoice::apply_payment(&mut db, &state.ledger, &payment, state.clock.now()).await.expect("apply");
    db.commit().await.expect("commit");
}

pub(crate) async fn drive_to_end(chain: &Chain, state: &AppState, sender: &PayoutSender, batch_id: &str) -> Progress {
    for _ in 0..20 {
        let open = store::open_batches(&state.pool, &chain.spec.caip2).await.expect("open");
        let Some(batch) = open.into_iter().find(|b| b.id == batch_id) else { panic!("batch {batch_id} is not open") };
        let progress = sender.advance(&batch).await.expect("advance");
        if progress.is_final() {
            return progress;
        }
        chain.mine(u64::from(chain.spec.confirmations.confirmations_max())).await;
    }
    panic!("batch {batch_id} did not finish");
}

async fn balance(state: &AppState, account: &AccountCode, asset: &str) -> SignedAmount {
    let mut conn = state.pool.acquire().await.expect("conn");
    state.ledger.balance(&mut conn, account, asset).await.expect("balance")
}

/// The whole path over HTTP on two chains: payout addresses (a contract refused unless
/// confirmed), a part withdrawn on one chain and all on the other, each paid in its own
/// transaction, the ledger equal to what the contract emitted; the rest cannot be taken twice.
#[sqlx::test]
async fn a_merchant_withdraws_usdc_on_two_chains_in_one_transaction_each(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let arbitrum = Chain::start("arbitrum").await;
    let chains = [&polygon, &arbitrum];
    let server = server_with_payouts(pool.clone(), &chains, no_delay()).await;
    let state = &server.state;
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let other = create_merchant(&state.pool, "Other").await.expect("other");
    for (n, chain) in chains.iter().enumerate() {
        earn(state, &merchant.merchant_id, chain, 50_000_000, &format!("0xe{n}")).await;
        chain.fund_batcher(200_000_000).await;
    }

    let (status, body) = server.post(&merchant.api_key, "/v1/settlements", json!({"chain": "polygon", "asset": polygon.usdc()}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("payout_address_missing")), "{body}");
    let batcher = polygon.contracts.payout_batcher.to_checksum(None);
    let put = |chain: &'static str, body: serde_json::Value| {
        let server = &server;
        let key = merchant.api_key.clone();
        async move {
            let response = server
                .request(reqwest::Method::PUT, Some(&key), &format!("/v1/merchants/me/payout_addresses/{chain}"))
                .json(&body)
                .send()
                .await
                .expect("put");
            let status = response.status();
            (status, response.json::<serde_json::Value>().await.expect("json"))
        }
    };
    let (status, body) = put("polygon", json!({"address": batcher})).await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "a contract without confirmation: {body}");
    let (status, body) = put("polygon", json!({"address": "0xD1d1d1d1D1d1d1d1d1d1D1d1d1d1d1d1d1d1d1d2"})).await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "a broken checksum: {body}");
    let wallet = merchant_wallet().to_checksum(None);
    for chain in ["polygon", "arbitrum"] {
        let (status, body) = put(chain, json!({"address": wallet.to_lowercase()})).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        assert_eq!(body["address"].as_str(), Some(wallet.as_str()), "stored checksummed");
    }
    let (_, listed) = server.get(&merchant.api_key, "/v1/merchants/me/payout_addresses").await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2));

    let (status, first) = server
        .post(&merchant.api_key, "/v1/settlements", json!({"chain": "polygon", "asset": polygon.usdc(), "amount_minor": "30000000"}), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{first}");
    assert_eq!((first["status"].as_str(), first["total_minor"].as_str()), (Some("created"), Some("30000000")));
    assert_eq!(first["items"][0]["recipient"], "merchant");
    let (status, body) = server
        .post(&merchant.api_key, "/v1/settlements", json!({"chain": "polygon", "asset": polygon.usdc(), "amount_minor": "30000000"}), None)
        .await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("insufficient_funds")), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.starts_with("20000000 of ")), "{body}");
    let (status, second) =
        server.post(&merchant.api_key, "/v1/settlements", json!({"chain": "arbitrum", "asset": arbitrum.usdc()}), None).await;
    assert_eq!((status, second["total_minor"].as_str()), (reqwest::StatusCode::CREATED, Some("50000000")), "{second}");
    for body in [json!({"chain": "polygon", "asset": polygon.usdc(), "amount_minor": "0"}), json!({"chain": "dogecoin", "asset": "x"})] {
        let (status, answer) = server.post(&merchant.api_key, "/v1/settlements", body.clone(), None).await;
        assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
    }

    for (chain, settlement, paid) in [(&polygon, &first, 30_000_000u64), (&arbitrum, &second, 50_000_000)] {
        let id = settlement["id"].as_str().expect("id");
        let sender = PayoutSender::new(
            chain.spec.clone(),
            DEV_DEPLOYER_KEY,
            state.pool.clone(),
            state.ledger.clone(),
            no_delay(),
            state.clock.clone(),
        )
        .expect("sender");
        let progress = drive_to_end(chain, state, &sender, id).await;
        assert!(matches!(progress, Progress::Confirmed { .. }), "{progress:?}");
        assert_eq!(store::attempts(&state.pool, id).await.expect("attempts").len(), 1, "one transaction");
        assert_eq!(chain.payout_events().await, vec![(store::batch_key(id), merchant_wallet(), U256::from(paid))]);
        assert_eq!(chain.usdc_of(merchant_wallet()).await, U256::from(paid));
        let usdc = chain.usdc();
        assert_eq!(balance(state, &AccountCode::payouts_in_flight(), &usdc).await, SignedAmount::ZERO);
        let left = SignedAmount::positive(Amount::from_u64(50_000_000 - paid));
        assert_eq!(balance(state, &AccountCode::merchant(&merchant.merchant_id), &usdc).await, left);
        assert_eq!(balance(state, &AccountCode::chain_assets(&chain.spec.caip2), &usdc).await, left);
    }
    let (status, page) = server.get(&merchant.api_key, "/v1/settlements").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let statuses: Vec<&str> = page["data"].as_array().expect("data").iter().filter_map(|s| s["status"].as_str()).collect();
    assert_eq!(statuses, ["confirmed", "confirmed"]);
    let id = first["id"].as_str().expect("id");
    let (status, shown) = server.get(&merchant.api_key, &format!("/v1/settlements/{id}")).await;
    assert_eq!((status, shown["tx_hash"].is_string()), (reqwest::StatusCode::OK, true), "{shown}");
    let (status, _) = server.get(&other.api_key, &format!("/v1/settlements/{id}")).await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "another merchant's settlement");
    let (_, theirs) = server.get(&other.api_key, "/v1/settlements").await;
    assert_eq!(theirs["data"], json!([]));
    let unbalanced: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT asset FROM postings GROUP BY asset HAVING sum(amount) <> 0) u")
        .fetch_one(&pool)
        .await
        .expect("trial balance");
    assert_eq!(unbalanced, 0);
}

/// A payout address set or changed is usable only after the takeover delay; setting the same
/// address again does not restart it.
#[sqlx::test]
async fn a_new_payout_address_waits_out_the_takeover_delay(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let (state, clock) = common::state_with_clock(pool);
    let payouts = service(&state, &[&polygon], PayoutsConfig::default());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    earn(&state, &merchant.merchant_id, &polygon, 10_000_000, "0xf1").await;
    polygon.fund_batcher(10_000_000).await;
    let wallet = merchant_wallet().to_checksum(None);
    let set = payouts.set_payout_address(&merchant.merchant_id, "polygon", &wallet, false, None).await.expect("set");
    assert_eq!(set.usable_from, Some(clock.now() + chrono::Duration::days(1)));
    let request = SettlementRequest { chain: "polygon".to_owned(), asset: polygon.usdc(), amount_minor: None };
    let refused = payouts.settle(&merchant.merchant_id, &request).await.expect_err("too soon");
    assert!(matches!(refused, payrail::payout::PayoutError::Refused { code: "payout_address_recent", .. }), "{refused}");
    clock.advance(chrono::Duration::hours(23));
    let again = payouts.set_payout_address(&merchant.merchant_id, "polygon", &wallet, false, None).await.expect("same again");
    assert_eq!(again.changed_at, set.changed_at, "the same address keeps its time");
    clock.advance(chrono::Duration::hours(1));
    let batch = payouts.settle(&merchant.merchant_id, &request).await.expect("after the delay");
    assert_eq!(batch.total_minor, "10000000");
    // A changed address starts the delay again.
    let changed = payouts.set_payout_address(&merchant.merchant_id, "polygon", &Address::repeat_byte(0xd2).to_checksum(None), false, None).await;
    assert_eq!(changed.expect("changed").changed_at, Some(clock.now()));
}

/// Settlements written, then `payrail payouts run` SIGKILLed at arbitrary moments while it sends
/// them, with blocks mined beside it, then run to the end: the merchant is paid each settlement
/// exactly once, and the ledger agrees.
#[sqlx::test]
async fn killing_payouts_run_anywhere_pays_each_settlement_once(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let (state, _clock) = common::state_with_clock(pool.clone());
    let payouts = service(&state, &[&polygon], no_delay());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    polygon.fund_batcher(1_000_000_000).await;
    payouts.set_payout_address(&merchant.merchant_id, "polygon", &merchant_wallet().to_checksum(None), false, None).await.expect("set");
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
    let mut expected = 0u64;
    for (round, kill_after_ms) in [40u64, 120, 250, 400, 700].into_iter().enumerate() {
        let units = 10_000_000 + 1_000_000 * u64::try_from(round).unwrap_or(0);
        earn(&state, &merchant.merchant_id, &polygon, units, &format!("0xa{round}")).await;
        let request = SettlementRequest { chain: "polygon".to_owned(), asset: polygon.usdc(), amount_minor: None };
        // The node is busy (blocks mined beside a payout run): an unanswered call is retried, as a
        // client retries a 503; anything else fails the test.
        let mut attempt = 0;
        loop {
            match payouts.settle(&merchant.merchant_id, &request).await {
                Ok(_) => break,
                Err(error) if error.is_retryable() && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => panic!("settle: {error}"),
            }
        }
        expected += units;
        let mut child = common::payrail_on(&database, &["payouts", "run", "--chain", "polygon", "--wait-s", "60"], "POLYGON", &polygon.anvil.url())
            .env("PAYRAIL_HOT_WALLET_KEY", DEV_DEPLOYER_KEY)
            .env("PAYRAIL_PAYOUTS__POLL_INTERVAL_MS", "100")
            .spawn()
            .expect("start payrail payouts run");
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    // The final run may meet the node pruning the block it pinned a read to (the miner runs 16
    // blocks every 150 ms) and exit with that error, as an operator would see; it is run again, as
    // an operator would. Exactly-once is what is asserted below, whatever the number of runs.
    let mut finished = false;
    for _ in 0..3 {
        let status = common::payrail_on(&database, &["payouts", "run", "--chain", "polygon", "--wait-s", "60"], "POLYGON", &polygon.anvil.url())
            .env("PAYRAIL_HOT_WALLET_KEY", DEV_DEPLOYER_KEY)
            .env("PAYRAIL_PAYOUTS__POLL_INTERVAL_MS", "100")
            .status()
            .await
            .expect("final run");
        if status.success() {
            finished = true;
            break;
        }
    }
    miner.abort();
    assert!(finished, "a final run drove every settlement to the end");
    assert_eq!(polygon.usdc_of(merchant_wallet()).await, U256::from(expected), "each settlement paid exactly once");
    let usdc = polygon.usdc();
    assert_eq!(balance(&state, &AccountCode::merchant(&merchant.merchant_id), &usdc).await, SignedAmount::ZERO);
    assert_eq!(balance(&state, &AccountCode::payouts_in_flight(), &usdc).await, SignedAmount::ZERO);
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM payout_batches WHERE status <> 'confirmed'").fetch_one(&pool).await.expect("n");
    assert_eq!(open, 0);
    let paid: U256 = polygon.payout_events().await.iter().map(|(_, _, amount)| *amount).fold(U256::ZERO, |a, b| a + b);
    assert_eq!(paid, U256::from(expected));
}

/// Two settlements of the whole balance at once: one takes it, the other is refused with what is
/// left (nothing), and the balance leaves once.
#[sqlx::test]
async fn two_settlements_of_the_same_funds_at_once_take_them_once(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let (state, _clock) = common::state_with_clock(pool);
    let payouts = service(&state, &[&polygon], no_delay());
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    earn(&state, &merchant.merchant_id, &polygon, 25_000_000, "0xc1").await;
    polygon.fund_batcher(100_000_000).await;
    payouts.set_payout_address(&merchant.merchant_id, "polygon", &merchant_wallet().to_checksum(None), false, None).await.expect("set");
    let request = SettlementRequest { chain: "polygon".to_owned(), asset: polygon.usdc(), amount_minor: Some("25000000".to_owned()) };
    let (a, b) = tokio::join!(payouts.settle(&merchant.merchant_id, &request), payouts.settle(&merchant.merchant_id, &request));
    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        other => panic!("expected one settlement and one refusal: {other:?}"),
    };
    assert_eq!(won.total_minor, "25000000");
    match lost {
        payrail::payout::PayoutError::Refused { code: "insufficient_funds", reason } => {
            assert!(reason.starts_with("0 of "), "{reason}");
        }
        other => panic!("{other}"),
    }
    let usdc = polygon.usdc();
    assert_eq!(balance(&state, &AccountCode::merchant(&merchant.merchant_id), &usdc).await, SignedAmount::ZERO);
    assert_eq!(balance(&state, &AccountCode::payouts_in_flight(), &usdc).await, SignedAmount::positive(Amount::from_u64(25_000_000)));
}

/// A daily schedule with a minimum: a balance below it stays, one above it is settled whole on
/// the next pass, and the schedule waits a day before it settles again.
#[sqlx::test]
async fn a_daily_schedule_settles_balances_above_the_minimum_once_a_day(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let server = server_with_payouts(pool.clone(), &[&polygon], no_delay()).await;
    let state = &server.state;
    let payouts = state.payouts.clone().expect("payouts");
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    polygon.fund_batcher(100_000_000).await;
    payouts.set_payout_address(&merchant.merchant_id, "polygon", &merchant_wallet().to_checksum(None), false, None).await.expect("set");
    let (status, shown) = server.get(&merchant.api_key, "/v1/merchants/me/settlement_schedule").await;
    assert_eq!((status, shown["schedule"].as_str()), (reqwest::StatusCode::OK, Some("manual")));
    let put = |body: serde_json::Value| {
        let server = &server;
        let key = merchant.api_key.clone();
        async move {
            let response = server
                .request(reqwest::Method::PUT, Some(&key), "/v1/merchants/me/settlement_schedule")
                .json(&body)
                .send()
                .await
                .expect("put");
            let status = response.status();
            (status, response.json::<serde_json::Value>().await.expect("json"))
        }
    };
    for bad in [json!({"schedule": "hourly"}), json!({"schedule": "daily", "minimum_usd": "1.005"}), json!({"schedule": "daily", "x": 1})] {
        let (status, body) = put(bad.clone()).await;
        assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    let (status, body) = put(json!({"schedule": "daily", "minimum_usd": "10"})).await;
    assert_eq!((status, body["minimum_usd"].as_str()), (reqwest::StatusCode::OK, Some("10.00")), "{body}");

    earn(state, &merchant.merchant_id, &polygon, 5_000_000, "0xb1").await;
    assert!(payouts.settle_due().await.expect("due").is_empty(), "5 USDC is below the minimum");
    earn(state, &merchant.merchant_id, &polygon, 7_000_000, "0xb2").await;
    assert!(payouts.settle_due().await.expect("not due").is_empty(), "the day's pass already happened");
    server.clock.advance(chrono::Duration::days(1));
    let settled = payouts.settle_due().await.expect("due");
    assert_eq!(settled.iter().map(|b| b.total_minor.as_str()).collect::<Vec<_>>(), ["12000000"]);
    assert!(payouts.settle_due().await.expect("again").is_empty());
    let (_, schedule) = server.get(&merchant.api_key, "/v1/merchants/me/settlement_schedule").await;
    assert!(schedule["last_settled_at"].is_string(), "{schedule}");
    let (_, page) = server.get(&merchant.api_key, "/v1/settlements").await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
}

/// Finance cancels a settlement nothing was signed for: the balance is back at once. An executor
/// that read the batch before the cancel cannot sign and send it after (its attempt is refused
/// under the batch's lock); a sent batch cannot be cancelled.
#[sqlx::test]
async fn a_cancelled_settlement_returns_the_balance_and_is_never_sent(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let server = server_with_payouts(pool.clone(), &[&polygon], no_delay()).await;
    let state = &server.state;
    let payouts = state.payouts.clone().expect("payouts");
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let finance = payrail::merchant::create_platform_key(&state.pool, payrail::merchant::Role::Finance).await.expect("key");
    earn(state, &merchant.merchant_id, &polygon, 20_000_000, "0xd1").await;
    polygon.fund_batcher(100_000_000).await;
    payouts.set_payout_address(&merchant.merchant_id, "polygon", &merchant_wallet().to_checksum(None), false, None).await.expect("set");
    let request = SettlementRequest { chain: "polygon".to_owned(), asset: polygon.usdc(), amount_minor: Some("8000000".to_owned()) };
    let first = payouts.settle(&merchant.merchant_id, &request).await.expect("settle");
    let read_before = store::open_batches(&state.pool, &polygon.spec.caip2).await.expect("open");

    let path = format!("/v1/payouts/{}/cancel", first.id);
    let (status, _) = server.post(&merchant.api_key, &path, json!({}), None).await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "a merchant key cannot cancel");
    let (status, body) = server.post(&finance, &path, json!({}), None).await;
    assert_eq!((status, body["status"].as_str(), body["error"].as_str()), (reqwest::StatusCode::OK, Some("failed"), Some("cancelled")), "{body}");
    let usdc = polygon.usdc();
    let merchant_account = AccountCode::merchant(&merchant.merchant_id);
    assert_eq!(balance(state, &merchant_account, &usdc).await, SignedAmount::positive(Amount::from_u64(20_000_000)));
    assert_eq!(balance(state, &AccountCode::payouts_in_flight(), &usdc).await, SignedAmount::ZERO);
    let (status, body) = server.post(&finance, &path, json!({}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("payout_closed")));

    let sender = PayoutSender::new(polygon.spec.clone(), DEV_DEPLOYER_KEY, state.pool.clone(), state.ledger.clone(), no_delay(), state.clock.clone())
        .expect("sender");
    let stale = read_before.iter().find(|b| b.id == first.id).expect("read before the cancel");
    assert!(sender.advance(stale).await.is_err(), "a cancelled batch is not signed and sent");
    assert!(store::attempts(&state.pool, &first.id).await.expect("attempts").is_empty());
    polygon.mine(5).await;
    assert_eq!(polygon.usdc_of(merchant_wallet()).await, U256::ZERO);

    let second = payouts.settle(&merchant.merchant_id, &request).await.expect("settle again");
    let open = store::open_batches(&state.pool, &polygon.spec.caip2).await.expect("open");
    let batch = open.iter().find(|b| b.id == second.id).expect("open");
    sender.advance(batch).await.expect("sent");
    let (status, body) = server.post(&finance, &format!("/v1/payouts/{}/cancel", second.id), json!({}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("payout_sent")), "{body}");
    let progress = drive_to_end(&polygon, state, &sender, &second.id).await;
    assert!(matches!(progress, Progress::Confirmed { .. }), "{progress:?}");
    assert_eq!(polygon.usdc_of(merchant_wallet()).await, U256::from(8_000_000u64));
}

/// A creator withdraws its earnings over its own key, above the payout threshold; changing its
/// payout address starts the takeover delay, which both its withdrawals and payout runs respect.
#[sqlx::test]
async fn a_creator_withdraws_and_a_changed_address_waits_out_the_delay(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let config = PayoutsConfig { threshold_usd_cents: Amount::from_u64(1_000), ..PayoutsConfig::default() };
    let server = server_with_payouts(pool.clone(), &[&polygon], config.clone()).await;
    let state = &server.state;
    let payouts = state.payouts.clone().expect("payouts");
    let merchant = create_merchant(&state.pool, "Studio").await.expect("merchant");
    let first_wallet = Address::repeat_byte(0xc1);
    let creator = payrail::creator::create_creator(
        &state.pool,
        &merchant.merchant_id,
        &payrail::creator::CreateCreator {
            name: "Ada".to_owned(),
            payout_addresses: [(polygon.spec.caip2.to_string(), first_wallet.to_checksum(None))].into(),
        },
    )
    .await
    .expect("creator");
    let rules: payrail::creator::SplitRules =
        serde_json::from_value(json!({"default": {"splits": [{"creator": creator.creator.id, "bps": 5000}]}})).expect("rules");
    payrail::creator::set_split_rules(&state.pool, &merchant.merchant_id, &rules).await.expect("rules");
    polygon.fund_batcher(100_000_000).await;
    let key = creator.api_key.clone();
    let withdraw = |body: serde_json::Value| {
        let server = &server;
        let key = key.clone();
        async move { server.post(&key, "/v1/creators/me/withdrawals", body, None).await }
    };

    earn(state, &merchant.merchant_id, &polygon, 16_000_000, "0x71").await;
    let all = json!({"chain": "polygon", "asset": polygon.usdc()});
    let (status, body) = withdraw(all.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("below_threshold")), "8 USDC: {body}");
    let (status, _) = server.post(&merchant.api_key, "/v1/creators/me/withdrawals", all.clone(), None).await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "a merchant key is not a creator's");
    earn(state, &merchant.merchant_id, &polygon, 4_000_000, "0x72").await;
    // The address its merchant set at creation is usable at once.
    let (status, batch) = withdraw(all.clone()).await;
    assert_eq!((status, batch["total_minor"].as_str()), (reqwest::StatusCode::CREATED, Some("10000000")), "{batch}");
    assert_eq!(batch["items"][0]["creator_id"].as_str(), Some(creator.creator.id.as_str()));
    let sender = PayoutSender::new(polygon.spec.clone(), DEV_DEPLOYER_KEY, state.pool.clone(), state.ledger.clone(), config.clone(), state.clock.clone())
        .expect("sender");
    let progress = drive_to_end(&polygon, state, &sender, batch["id"].as_str().expect("id")).await;
    assert!(matches!(progress, Progress::Confirmed { .. }), "{progress:?}");
    assert_eq!(polygon.usdc_of(first_wallet).await, U256::from(10_000_000u64));

    // The creator moves its address: neither a withdrawal nor a run pays it for a day.
    let second_wallet = Address::repeat_byte(0xc2);
    let response = server
        .request(reqwest::Method::PUT, Some(&key), "/v1/creators/me/payout_addresses/polygon")
        .json(&json!({"address": second_wallet.to_checksum(None)}))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    earn(state, &merchant.merchant_id, &polygon, 30_000_000, "0x73").await;
    let (status, body) = withdraw(all.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("payout_address_recent")), "{body}");
    let run = payouts.run(&payrail::payout::RunRequest::default()).await.expect("run");
    assert!(run.created.is_empty(), "a run skips an address in its delay: {run:?}");
    server.clock.advance(chrono::Duration::days(1));
    let run = payouts.run(&payrail::payout::RunRequest::default()).await.expect("run");
    assert_eq!(run.created.len(), 1);
    assert_eq!(run.created[0].items[0].address, second_wallet.to_checksum(None));
    assert_eq!(run.created[0].total_minor, "15000000");
}

/// An address change confirmed by a second key is usable at once: another of the merchant's keys
/// for its own address (never the key that made the change, nor a key younger than the delay),
/// the merchant for its creator's.
#[sqlx::test]
async fn a_second_key_confirms_an_address_change_at_once(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let config = PayoutsConfig { threshold_usd_cents: Amount::from_u64(100), ..PayoutsConfig::default() };
    let server = server_with_payouts(pool.clone(), &[&polygon], config.clone()).await;
    let state = &server.state;
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    let other = create_merchant(&state.pool, "Other").await.expect("other");
    let (status, second) = server.post(&merchant.api_key, "/v1/api_keys", json!({"name": "second"}), None).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{second}");
    let second_key = second["secret"].as_str().expect("secret").to_owned();
    earn(state, &merchant.merchant_id, &polygon, 10_000_000, "0xc9").await;
    polygon.fund_batcher(100_000_000).await;

    let response = server
        .request(reqwest::Method::PUT, Some(&merchant.api_key), "/v1/merchants/me/payout_addresses/polygon")
        .json(&json!({"address": merchant_wallet().to_checksum(None)}))
        .send()
        .await
        .expect("put");
    let set: serde_json::Value = response.json().await.expect("json");
    assert!(set["confirmed_at"].is_null() && set["usable_from"].is_string(), "{set}");
    let all = json!({"chain": "polygon", "asset": polygon.usdc()});
    let (status, body) = server.post(&merchant.api_key, "/v1/settlements", all.clone(), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("payout_address_recent")), "{body}");
    let confirm = "/v1/merchants/me/payout_addresses/polygon/confirm";
    let (status, body) = server.post(&merchant.api_key, confirm, json!({}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("second_key_required")), "{body}");
    // A key made moments ago (as the holder of a stolen key would make one) does not count either.
    let (status, body) = server.post(&second_key, confirm, json!({}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("second_key_required")), "{body}");
    // A key that existed a delay before the change does.
    let old = |key: &str| {
        let id = payrail::merchant::split_token(key).expect("token").0;
        sqlx::query("UPDATE api_keys SET created_at = '2020-01-01T00:00:00Z' WHERE id = $1").bind(id).execute(&state.pool)
    };
    old(&second_key).await.expect("an old key");
    let (status, body) = server.post(&second_key, confirm, json!({}), None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert!(body["confirmed_at"].is_string(), "{body}");
    let (status, body) = server.post(&merchant.api_key, "/v1/settlements", all.clone(), None).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "confirmed: usable at once: {body}");

    // A creator's change is confirmed by its merchant, and only by its merchant.
    let creator = payrail::creator::create_creator(
        &state.pool,
        &merchant.merchant_id,
        &payrail::creator::CreateCreator { name: "Ada".to_owned(), payout_addresses: Default::default() },
    )
    .await
    .expect("creator");
    let rules: payrail::creator::SplitRules =
        serde_json::from_value(json!({"default": {"splits": [{"creator": creator.creator.id, "bps": 5000}]}})).expect("rules");
    payrail::creator::set_split_rules(&state.pool, &merchant.merchant_id, &rules).await.expect("rules");
    earn(state, &merchant.merchant_id, &polygon, 4_000_000, "0xca").await;
    let response = server
        .request(reqwest::Method::PUT, Some(&creator.api_key), "/v1/creators/me/payout_addresses/polygon")
        .json(&json!({"address": Address::repeat_byte(0xc3).to_checksum(None)}))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let (status, body) = server.post(&creator.api_key, "/v1/creators/me/withdrawals", all.clone(), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (reqwest::StatusCode::CONFLICT, Some("payout_address_recent")), "{body}");
    let path = format!("/v1/creators/{}/payout_addresses/polygon/confirm", creator.creator.id);
    let (status, _) = server.post(&other.api_key, &path, json!({}), None).await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "another merchant's creator");
    old(&merchant.api_key).await.expect("an old key");
    let (status, body) = server.post(&merchant.api_key, &path, json!({}), None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let (status, body) = server.post(&creator.api_key, "/v1/creators/me/withdrawals", all, None).await;
    assert_eq!((status, body["total_minor"].as_str()), (reqwest::StatusCode::CREATED, Some("2000000")), "{body}");
}

/// Bitcoin a merchant holds carries its creator's share: settling USDC first buys that share out
/// of the merchant's USDC at the current rate, so the creator is owed USDC it can withdraw and the
/// merchant owes nothing more; the creator's US-dollar card share is bought out at par; the rest is
/// settled.
#[sqlx::test]
async fn settling_usdc_first_buys_out_the_creators_bitcoin_and_card_shares(pool: PgPool) {
    let rig = crate::common::bitcoin::rig(pool).await;
    let polygon = Chain::start("polygon").await;
    let state = &rig.state;
    let payouts = PayoutService::with_chains(
        vec![polygon.spec.clone(), rig.spec.clone()],
        no_delay(),
        state.pool.clone(),
        state.ledger.clone(),
        state.rates.clone(),
        state.clock.clone(),
    )
    .expect("payouts");
    let creator = payrail::creator::create_creator(
        &state.pool,
        &rig.merchant_id,
        &payrail::creator::CreateCreator { name: "Ada".to_owned(), payout_addresses: Default::default() },
    )
    .await
    .expect("creator");
    let rules: payrail::creator::SplitRules =
        serde_json::from_value(json!({"default": {"splits": [{"creator": creator.creator.id, "bps": 1000}]}})).expect("rules");
    payrail::creator::set_split_rules(&state.pool, &rig.merchant_id, &rules).await.expect("rules");
    let btc_invoice = rig.invoice("25.00").await;
    let sats = crate::common::bitcoin::due(&btc_invoice);
    let payment = payrail::invoice::ObservedPayment {
        invoice_id: btc_invoice.id.clone(),
        chain: rig.spec.caip2.clone(),
        asset: common::BTC.parse().expect("asset"),
        tx_ref: format!("{}:{}:0", rig.spec.caip2, "ab".repeat(32)),
        address: None,
        amount: Amount::from_u64(sats),
        confirmations: 1,
        confirmations_required: 1,
        block: None,
    };
    let mut db = state.pool.begin().await.expect("begin");
    payrail::invoice::apply_payment(&mut db, &state.ledger, &payment, state.clock.now()).await.expect("apply");
    db.commit().await.expect("commit");
    let usdc_invoice = common::invoice(state, &rig.merchant_id, "50.00", &[&polygon.usdc()]).await;
    pay_usdc(state, &usdc_invoice.id, &polygon, 50_000_000, "0xe9").await;
    polygon.fund_batcher(100_000_000).await;
    payouts.set_payout_address(&rig.merchant_id, "polygon", &merchant_wallet().to_checksum(None), false, None).await.expect("address");
    let creator_account = AccountCode::creator(&creator.creator.id);
    assert_eq!(balance(state, &creator_account, common::BTC).await, SignedAmount::positive(Amount::from_u64(3_846)));

    // A card payment of 10.00 USD of which 1.00 is the creator's (the processor holds it).
    let merchant = AccountCode::merchant(&rig.merchant_id);
    let card = payrail::ledger::NewEntry::new("payment:stripe:pi_netting", "payment")
        .debit(AccountCode::stripe(payrail::money::Fiat::USD), common::USD, Amount::from_u64(1_000))
        .credit(creator_account.clone(), common::USD, Amount::from_u64(100))
        .credit(merchant.clone(), common::USD, Amount::from_u64(900));
    state.ledger.post_now(&card).await.expect("card payment");
    // 10 coins (1 coin = 0.01 USD) spent on the creator's work, 70 % its: 7 coins, worth 0.07 USD.
    let now = state.clock.now();
    let coins: payrail::credits::currency::CreateCurrency =
        serde_json::from_value(json!({ "code": "coins", "name": "Coins", "peg": "0.01", "peg_currency": "USD" })).expect("currency");
    let coins = payrail::credits::currency::create(&state.pool, &rig.merchant_id, &coins, now).await.expect("currency");
    let reader = payrail::credits::customer::create(&state.pool, &rig.merchant_id, &serde_json::from_value(json!({ "external_id": "reader" })).expect("customer"), now)
        .await
        .expect("customer");
    let grant: payrail::credits::movement::GrantRequest = serde_json::from_value(json!({ "currency": "coins", "amount_minor": "10" })).expect("grant");
    payrail::credits::movement::grant(&state.pool, &state.ledger, &rig.merchant_id, &reader.id, &grant, "g1", now).await.expect("grant");
    let spend: payrail::credits::movement::SpendRequest =
        serde_json::from_value(json!({ "currency": "coins", "amount_minor": "10", "splits": [{ "creator": creator.creator.id, "bps": 7000 }] })).expect("spend");
    payrail::credits::movement::spend(&state.pool, &state.ledger, &rig.merchant_id, &reader.id, &spend, "s1", now).await.expect("spend");
    assert_eq!(balance(state, &creator_account, &coins.asset).await, SignedAmount::positive(Amount::from_u64(7)));

    let request = SettlementRequest { chain: "polygon".to_owned(), asset: polygon.usdc(), amount_minor: None };
    let batch = payouts.settle(&rig.merchant_id, &request).await.expect("settle");
    // 3,846 sats at 65,000 USD/BTC is 2.49 USD (rounded down), the card share 1.00 USD and the 7
    // coins 0.07 USD: 3.56 USDC to the creator.
    assert_eq!(batch.total_minor, (45_000_000u64 - 2_490_000 - 1_000_000 - 70_000).to_string(), "the merchant's 45 USDC less the buy-outs");
    assert_eq!(balance(state, &creator_account, &coins.asset).await, SignedAmount::ZERO);
    assert_eq!(
        balance(state, &AccountCode::credits_issued(&rig.merchant_id), &coins.asset).await.to_string(),
        "7",
        "the creator's 7 coins went back to the merchant's issue"
    );
    assert_eq!(balance(state, &creator_account, common::BTC).await, SignedAmount::ZERO);
    assert_eq!(balance(state, &creator_account, common::USD).await, SignedAmount::ZERO);
    assert_eq!(balance(state, &merchant, common::USD).await, SignedAmount::positive(Amount::from_u64(1_000)), "the card money is all the merchant's");
    assert_eq!(balance(state, &creator_account, &polygon.usdc()).await, SignedAmount::positive(Amount::from_u64(5_000_000 + 2_490_000 + 1_000_000 + 70_000)));
    assert_eq!(balance(state, &merchant, common::BTC).await, SignedAmount::positive(Amount::from_u64(sats)), "all the coins it holds are its own now");
    assert_eq!(balance(state, &AccountCode::held_by_merchant(&rig.merchant_id), common::BTC).await, SignedAmount::positive(Amount::from_u64(sats)));
    // Nothing is owed any more: a second settlement buys nothing out.
    pay_usdc(state, &usdc_invoice.id, &polygon, 10_000_000, "0xea").await;
    let again = payouts.settle(&rig.merchant_id, &request).await.expect("settle again");
    assert_eq!(again.total_minor, "9000000");
}
