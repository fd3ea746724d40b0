//! Kill the daemon with SIGKILL at arbitrary moments while it follows a chain, restart it, and check
//! that no payment was lost and none was credited twice.

use crate::common;

use std::time::{Duration, Instant};

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, U256};
use alloy::providers::ProviderBuilder;
use alloy::signers::local::PrivateKeySigner;
use payrail::chain::evm::contracts::TestToken;
use payrail_devnet::anvil::{deploy_dev_contracts, Anvil, DEV_PAYER_KEY};
use payrail::ledger::{AccountCode, SignedAmount};
use payrail::merchant::create_merchant;
use serde_json::json;
use sqlx::PgPool;
use tokio::process::Child;

const INVOICES: usize = 6;

fn daemon(database: &str, anvil: &Anvil) -> Child {
    common::daemon(database, "POLYGON", &anvil.url())
}

async fn mine(anvil: &Anvil, blocks: u64) {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "anvil_mine", "params": [format!("{blocks:#x}")]});
    reqwest::Client::new().post(anvil.url()).json(&body).send().await.expect("mine");
}

#[sqlx::test]
async fn killing_the_daemon_anywhere_loses_and_duplicates_nothing(pool: PgPool) {
    let anvil = Anvil::start(137, 0, None).await.expect("anvil");
    let contracts = deploy_dev_contracts(&anvil.url()).await.expect("contracts");
    let (state, _clock) = common::state_with_clock(pool.clone());
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let usdc = format!("eip155:137/erc20:{:#x}", contracts.usdc);
    let mut invoices = Vec::new();
    for _ in 0..INVOICES {
        invoices.push(common::invoice_at(&state, &merchant.merchant_id, "12.34", &[&usdc], chrono::Utc::now()).await);
    }
    let url = alloy::transports::http::reqwest::Url::parse(&anvil.url()).expect("url");
    let payer: PrivateKeySigner = DEV_PAYER_KEY.parse().expect("key");
    let provider = ProviderBuilder::new().wallet(EthereumWallet::from(payer)).connect_http(url);
    let token = TestToken::new(contracts.usdc, &provider);

    let database = common::database_url(&pool);
    let mut child = daemon(&database, &anvil);
    let mut kills = 0;
    for (i, invoice) in invoices.iter().enumerate() {
        let to: Address = invoice.payment_options[0].address.as_deref().expect("address").parse().expect("address");
        let amount: U256 = invoice.payment_options[0].amount_minor.parse().expect("amount");
        token.transfer(to, amount).send().await.expect("send").get_receipt().await.expect("mined");
        mine(&anvil, 7).await;
        // Let the daemon work for a varying moment, then kill it without warning.
        tokio::time::sleep(Duration::from_millis(150 + 120 * (i as u64 % 4))).await;
        child.kill().await.expect("SIGKILL");
        kills += 1;
        child = daemon(&database, &anvil);
    }
    // Enough blocks for every payment's confirmations; the last daemon finishes the work.
    mine(&anvil, 64).await;
    let started = Instant::now();
    loop {
        let paid: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices WHERE status = 'paid'")
            .fetch_one(&pool)
            .await
            .expect("count");
        if paid == INVOICES as i64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "only {paid} of {INVOICES} invoices paid");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    child.kill().await.expect("stop");
    assert_eq!(kills, INVOICES);

    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&pool).await.expect("n");
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(&pool).await.expect("n");
    assert_eq!((payments, entries), (INVOICES as i64, INVOICES as i64), "one payment and one credit per transfer");
    let due: u64 = invoices[0].payment_options[0].amount_minor.parse().expect("amount");
    let mut conn = pool.acquire().await.expect("conn");
    let balance = state
        .ledger
        .balance(&mut conn, &AccountCode::merchant(&merchant.merchant_id), &usdc)
        .await
        .expect("balance");
    assert_eq!(balance, SignedAmount::positive(payrail::money::Amount::from_u64(due * INVOICES as u64)));
    let outbox_paid: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'invoice.paid'")
        .fetch_one(&pool)
        .await
        .expect("n");
    assert_eq!(outbox_paid, INVOICES as i64, "one invoice.paid event per invoice");
}
