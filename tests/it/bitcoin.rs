//! The Bitcoin rail against payrail's regtest node over real sockets: descriptors and address
//! allocation, BIP21 requests, payments from the mempool to paid, under- and overpayment, late
//! payments, reorgs, replace-by-fee, and a daemon killed while it follows the chain.

use crate::common;

use std::time::{Duration, Instant};

use bitcoin::Amount as Sats;
use crate::common::bitcoin::{deposit, due, rig, tpub_descriptor, REGTEST};
use crate::common::{create_invoice_at, database_url, invoice_at, invoice_request, BTC};
use payrail::merchant::bitcoin::{set_descriptor, AllocationError, SetDescriptor};
use payrail::chain::ChainEvent;
use payrail::clock::Clock;
use payrail::config::RpcUrl;
use payrail_devnet::regtest::RegtestHandle;
use payrail::invoice::InvoiceStatus;
use payrail::ledger::{AccountCode, SignedAmount};
use payrail::merchant::create_merchant;
use payrail::money::Amount;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test]
async fn descriptors_are_set_and_checked_over_the_api(pool: PgPool) {
    let rig = rig(pool).await;
    let base = format!("{}/v1/merchants/me/bitcoin", common::serve(&rig.state).await);
    let client = reqwest::Client::new();
    let other = create_merchant(&rig.state.pool, "Other").await.expect("merchant");
    let put = |key: String, body: Value| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let response = client.put(&base).bearer_auth(key).json(&body).send().await.expect("put");
            let status = response.status();
            (status, response.json::<Value>().await.expect("json"))
        }
    };

    let status = client.get(&base).bearer_auth(&other.api_key).send().await.expect("get").status();
    assert_eq!(status, StatusCode::NOT_FOUND, "no descriptor yet");
    let text = tpub_descriptor(9);
    let (status, body) = put(other.api_key.clone(), json!({"descriptor": text, "gap_limit": 5})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["chain"], REGTEST);
    assert_eq!(body["gap_limit"], 5);
    assert_eq!(body["next_index"], 0);
    assert!(body["descriptor"].as_str().is_some_and(|d| d.contains('#')), "canonical text with checksum: {body}");
    assert!(body["first_address"].as_str().is_some_and(|a| a.starts_with("bcrt1q")), "{body}");
    let fetched: Value = client.get(&base).bearer_auth(&other.api_key).send().await.expect("get").json().await.expect("json");
    assert_eq!(fetched["descriptor"], body["descriptor"]);

    let canonical = body["descriptor"].as_str().expect("descriptor").to_owned();
    let (without, checksum) = canonical.split_once('#').expect("checksum");
    let damaged = format!("{without}#{}", if checksum.starts_with('q') { checksum.replacen('q', "p", 1) } else { format!("q{}", &checksum[1..]) });
    let mainnet = "tr(xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ/0/*)";
    let secret = "tr(tprv8ZgxMBicQKsPd7Uf69XL1XwhmjHopUGep8GuEiJDZmbQz6o58LninorQAfcKZWARbtRtfnLcJ5MQ2AtHcQJCCRUcMRvmDUjyEmNUWwx8UbK/0/*)";
    for (body, code) in [
        (json!({"descriptor": damaged}), "descriptor_checksum"),
        (json!({"descriptor": secret}), "descriptor_private_key"),
        (json!({"descriptor": without.replace("/0/*", "/0/7")}), "descriptor_not_ranged"),
        (json!({"descriptor": mainnet}), "descriptor_network"),
        (json!({"descriptor": "wpkh(not a key/0/*)"}), "descriptor_invalid"),
        (json!({"descriptor": without, "gap_limit": 0}), "parameter_invalid"),
    ] {
        let (status, answer) = put(rig.api_key.clone(), body.clone()).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(code)), "{body}: {answer}");
        assert!(!answer.to_string().contains("tprv8Zgx"), "a private key is never echoed: {answer}");
    }
    // One descriptor, one merchant: refused as unusable, without revealing that another merchant
    // registered it.
    let (status, answer) = put(rig.api_key.clone(), json!({"descriptor": without})).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("descriptor_invalid")), "{answer}");
    let text = answer.to_string();
    assert!(!text.contains("merchant") && !text.contains("in use") && !text.contains("bcrt1"), "{answer}");
}

#[sqlx::test]
async fn every_invoice_gets_a_fresh_index_even_concurrently_and_none_is_ever_reused(pool: PgPool) {
    let rig = rig(pool).await;
    let mut addresses = Vec::new();
    for _ in 0..25 {
        addresses.push(rig.invoice("10.00").await.payment_options[0].address.clone().expect("address"));
    }
    // Concurrent invoices: the descriptor row lock hands out distinct indexes.
    let concurrent = futures::future::join_all((0..20).map(|_| rig.invoice("10.00"))).await;
    addresses.extend(concurrent.iter().map(|v| v.payment_options[0].address.clone().expect("address")));
    let mut distinct = addresses.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 45, "an address was given twice");
    let indexes: Vec<i64> = sqlx::query_scalar("SELECT child_index FROM bitcoin_addresses ORDER BY child_index")
        .fetch_all(&rig.state.pool)
        .await
        .expect("indexes");
    assert_eq!(indexes, (0..45).collect::<Vec<i64>>());

    // Another descriptor, then the first one again: it goes on from where it was.
    let chain = rig.spec.caip2.clone();
    set_descriptor(&rig.state.pool, &rig.merchant_id, &chain, &SetDescriptor { descriptor: tpub_descriptor(2), gap_limit: None })
        .await
        .expect("second");
    let second = rig.invoice("10.00").await;
    let settings = set_descriptor(&rig.state.pool, &rig.merchant_id, &chain, &SetDescriptor { descriptor: tpub_descriptor(1), gap_limit: Some(50) })
        .await
        .expect("first again");
    assert_eq!(settings.next_index, 45);
    let again = rig.invoice("10.00").await;
    let address = again.payment_options[0].address.clone().expect("address");
    assert!(!addresses.contains(&address) && second.payment_options[0].address.as_deref() != Some(address.as_str()));
    let index: i64 = sqlx::query_scalar("SELECT child_index FROM bitcoin_addresses WHERE invoice_id = $1")
        .bind(&again.id)
        .fetch_one(&rig.state.pool)
        .await
        .expect("index");
    assert_eq!(index, 45);

    // The same keys for another merchant are refused.
    let other = create_merchant(&rig.state.pool, "Other").await.expect("merchant");
    let refused = set_descriptor(&rig.state.pool, &other.merchant_id, &chain, &SetDescriptor { descriptor: tpub_descriptor(1), gap_limit: None }).await;
    assert!(matches!(refused, Err(AllocationError::InUse { .. })), "{refused:?}");
}

#[sqlx::test]
async fn a_merchant_without_descriptor_is_not_offered_bitcoin_and_the_gap_limit_warns(pool: PgPool) {
    let rig = rig(pool).await;
    let plain = create_merchant(&rig.state.pool, "Plain").await.expect("merchant");
    let default_list = create_invoice_at(&rig.state, &plain.merchant_id, &invoice_request("10.00", None), rig.clock.now()).await;
    assert!(!default_list.payment_options.is_empty());
    assert!(default_list.payment_options.iter().all(|o| o.asset != BTC), "bitcoin offered without a descriptor");
    let by_name = rig.invoice_for(&plain.merchant_id, "10.00").await;
    assert_eq!(by_name.payment_options[0].asset, BTC);
    assert_eq!((by_name.payment_options[0].address.as_deref(), by_name.payment_options[0].uri.as_deref()), (None, None));

    // A small gap limit: unused addresses beyond it are still new ones, and the merchant is told.
    let chain = rig.spec.caip2.clone();
    set_descriptor(&rig.state.pool, &rig.merchant_id, &chain, &SetDescriptor { descriptor: tpub_descriptor(1), gap_limit: Some(3) })
        .await
        .expect("gap limit");
    for _ in 0..4 {
        rig.invoice("10.00").await;
    }
    let mut conn = rig.state.pool.acquire().await.expect("conn");
    let settings = payrail::merchant::bitcoin::bitcoin_settings(&mut conn, &rig.merchant_id, &chain).await.expect("settings").expect("set");
    assert_eq!((settings.next_index, settings.unused_addresses, settings.gap_limit_reached), (4, 4, true));
    assert!(payrail::metrics::render().contains("payrail_bitcoin_gap_limit_reached_total"));
}

#[sqlx::test]
async fn a_mempool_payment_is_processing_then_paid_once_confirmed(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.watcher();
    watcher.check_chain().await.expect("regtest genesis");
    rig.sync(&watcher).await;
    let invoice = rig.invoice("25.00").await;
    let address = deposit(&invoice);
    // 25 USD at 65000 USD/BTC: 38461.54 sats, rounded up for the payer.
    assert_eq!(due(&invoice), 38_462);
    let uri = invoice.payment_options[0].uri.as_deref().expect("BIP21 uri");
    assert_eq!(uri, format!("bitcoin:{address}?amount=0.00038462&label=Shop&message=Invoice%20{}", invoice.id));

    let txid = rig.node.send(&address, Sats::from_sat(38_462), true).await.expect("send");
    rig.sync(&watcher).await;
    let seen = rig.view(&invoice.id).await;
    assert_eq!(seen.status, InvoiceStatus::Processing, "a mempool payment is processing");
    assert_eq!(seen.payments.len(), 1);
    let payment = &seen.payments[0];
    assert_eq!((payment.confirmations, payment.confirmations_required, payment.status.as_str()), (0, 1, "seen"));
    assert!(payment.tx_ref.starts_with(&format!("{REGTEST}:{txid}:")), "{}", payment.tx_ref);
    assert_eq!(rig.balance(&AccountCode::merchant(&rig.merchant_id)).await, SignedAmount::ZERO, "never credited at 0 conf");

    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
    let paid = rig.view(&invoice.id).await;
    assert_eq!(paid.status, InvoiceStatus::Paid);
    assert_eq!((paid.payments[0].confirmations, paid.payments[0].status.as_str()), (1, "confirmed"));
    let sats = SignedAmount::positive(Amount::from_u64(38_462));
    assert_eq!(rig.balance(&AccountCode::merchant(&rig.merchant_id)).await, sats);
    assert_eq!(rig.balance(&AccountCode::held_by_merchant(&rig.merchant_id)).await, sats, "the merchant's own wallet holds it");
    assert_eq!(rig.balance(&AccountCode::chain_assets(&rig.spec.caip2)).await, SignedAmount::ZERO, "payrail holds no Bitcoin");
    assert_eq!(rig.entries().await, 1);

    // More blocks and passes, and a watcher replaying from scratch, credit nothing more.
    rig.node.mine(3).await.expect("mine");
    rig.sync(&watcher).await;
    sqlx::query("DELETE FROM chain_cursors").execute(&rig.state.pool).await.expect("reset");
    let fresh = rig.watcher();
    rig.sync(&fresh).await;
    assert_eq!(rig.entries().await, 1);
    assert_eq!(rig.view(&invoice.id).await.payments[0].status, "confirmed");
    let metrics = payrail::metrics::render();
    assert!(metrics.contains(&format!("payrail_chain_tip_height{{chain=\"{REGTEST}\"}}")), "{metrics}");
}

/// A payment entering the mempool is announced by the server (`blockchain.scripthash.subscribe`):
/// the next tip poll is told before any block is mined, so the watcher steps at once instead of
/// at its periodic re-check. Prints how long the announcement took.
#[sqlx::test]
async fn a_mempool_payment_is_announced_before_any_block(pool: PgPool) {
    let rig = rig(pool).await;
    let invoice = rig.invoice("25.00").await;
    // A scan at the tip reads (and subscribes to) the invoice's script.
    let watcher = rig.synced_watcher().await;
    let quiet = watcher.head().await.expect("head");
    assert!(!watcher.head().await.expect("head").notified, "nothing happened yet");
    let sent = Instant::now();
    rig.node.send(&deposit(&invoice), Sats::from_sat(due(&invoice)), true).await.expect("send");
    let mut announced = None;
    for _ in 0..200 {
        let head = watcher.head().await.expect("head");
        assert_eq!(head.tip, quiet.tip, "no block was mined");
        if head.notified {
            announced = Some(sent.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let announced = announced.expect("the mempool payment was announced");
    eprintln!("bitcoin: broadcast → announced to the watcher in {announced:?}");
    rig.sync(&watcher).await;
    assert_eq!(rig.view(&invoice.id).await.status, InvoiceStatus::Processing);
}

/// Bitcoin deposits are booked where they are: in the merchant's own wallet. Its share is its own;
/// its creators' shares are what it owes, and `GET /v1/balances` says so per asset.
#[sqlx::test]
async fn bitcoin_is_held_by_the_merchant_which_owes_its_creators_shares(pool: PgPool) {
    let rig = rig(pool).await;
    let creator = payrail::creator::create_creator(
        &rig.state.pool,
        &rig.merchant_id,
        &payrail::creator::CreateCreator { name: "Ada".to_owned(), payout_addresses: Default::default() },
    )
    .await
    .expect("creator");
    let rules: payrail::creator::SplitRules =
        serde_json::from_value(serde_json::json!({"default": {"splits": [{"creator": creator.creator.id, "bps": 1000}]}})).expect("rules");
    payrail::creator::set_split_rules(&rig.state.pool, &rig.merchant_id, &rules).await.expect("rules");
    let watcher = rig.synced_watcher().await;
    let invoice = rig.invoice("25.00").await;
    rig.pay_and_mine(&watcher, &invoice, due(&invoice)).await;
    assert_eq!(rig.view(&invoice.id).await.status, InvoiceStatus::Paid);

    let base = common::serve(&rig.state).await;
    let balances: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/v1/balances"))
        .bearer_auth(&rig.api_key)
        .send()
        .await
        .expect("balances")
        .json()
        .await
        .expect("json");
    let btc = balances["holdings"].as_array().and_then(|h| h.iter().find(|l| l["asset"] == BTC)).unwrap_or_else(|| panic!("{balances}"));
    assert_eq!(btc["custody"], "merchant", "{btc}");
    assert_eq!(btc["held_by_you_minor"], "38462");
    assert_eq!(btc["available_minor"], "34616", "90 % is the merchant's own");
    assert_eq!(btc["owed_to_creators_minor"], "3846");
    assert_eq!(btc["owed_by_you_minor"], "3846", "the creator's share, held in the merchant's wallet");
    assert_eq!(rig.balance(&AccountCode::chain_assets(&rig.spec.caip2)).await, SignedAmount::ZERO);
}

#[sqlx::test]
async fn under_over_split_and_late_payments(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.synced_watcher().await;
    let under = rig.invoice("25.00").await;
    let over = rig.invoice("25.00").await;
    let split = rig.invoice("25.00").await;
    let late = rig.invoice("25.00").await;
    rig.node.send(&deposit(&under), Sats::from_sat(20_000), true).await.expect("under");
    rig.node.send(&deposit(&over), Sats::from_sat(50_000), true).await.expect("over");
    rig.node.send(&deposit(&split), Sats::from_sat(20_000), true).await.expect("split 1");
    rig.node.send(&deposit(&split), Sats::from_sat(18_462), false).await.expect("split 2");
    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
    assert_eq!(rig.view(&under.id).await.status, InvoiceStatus::Open, "too little stays open");
    assert_eq!(rig.view(&over.id).await.status, InvoiceStatus::Overpaid);
    let split_view = rig.view(&split.id).await;
    assert_eq!(split_view.status, InvoiceStatus::Paid, "two payments to one address add up");
    assert_eq!(split_view.payments.len(), 2);

    // After expiry the under-paid invoice keeps what came; a late payment is held for review.
    rig.clock.advance(chrono::Duration::seconds(3_601));
    payrail::invoice::expire_due(&rig.state.pool, rig.clock.now()).await.expect("expire");
    assert_eq!(rig.view(&under.id).await.status, InvoiceStatus::Expired);
    rig.pay_and_mine(&watcher, &late, 38_462).await;
    let late_view = rig.view(&late.id).await;
    assert_eq!(late_view.status, InvoiceStatus::Expired, "a late payment does not pay the invoice");
    assert_eq!(late_view.payments[0].applied_to, "unapplied");
    assert_eq!(
        rig.balance(&AccountCode::unapplied(&rig.merchant_id)).await,
        SignedAmount::positive(Amount::from_u64(38_462))
    );
    assert_eq!(
        rig.balance(&AccountCode::merchant(&rig.merchant_id)).await,
        SignedAmount::positive(Amount::from_u64(20_000 + 50_000 + 20_000 + 18_462))
    );
    assert_eq!(rig.entries().await, 5, "one entry per output");
}

#[sqlx::test]
async fn a_reorg_returns_a_payment_to_the_mempool_and_it_is_credited_once(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.synced_watcher().await;
    // 5000 USD needs 3 confirmations on this chain.
    let invoice = rig.invoice("5000.00").await;
    rig.pay_and_mine(&watcher, &invoice, due(&invoice)).await;
    let mined = rig.view(&invoice.id).await;
    assert_eq!((mined.status, mined.payments[0].confirmations, mined.payments[0].confirmations_required), (InvoiceStatus::Processing, 1, 3));

    // The block is replaced by a longer branch without the transaction: back to the mempool.
    rig.node.reorg(1, 2, false).await.expect("reorg");
    let pass = rig.sync(&watcher).await;
    assert!(matches!(pass, ChainEvent::Reorged { .. }), "{pass:?}");
    let back = rig.view(&invoice.id).await;
    assert_eq!(back.status, InvoiceStatus::Processing);
    assert_eq!((back.payments.len(), back.payments[0].confirmations, back.payments[0].status.as_str()), (1, 0, "seen"));

    // Mined again on the new branch: confirmed and credited once.
    rig.node.mine(3).await.expect("mine");
    rig.sync(&watcher).await;
    let paid = rig.view(&invoice.id).await;
    assert_eq!(paid.status, InvoiceStatus::Paid);
    assert_eq!(paid.payments.len(), 1);
    assert_eq!(rig.entries().await, 1);
    assert_eq!(rig.balance(&AccountCode::merchant(&rig.merchant_id)).await, SignedAmount::positive(Amount::from_u64(due(&invoice))));
}

#[sqlx::test]
async fn a_credited_payment_whose_block_is_orphaned_is_reversed(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.synced_watcher().await;
    let invoice = rig.invoice("25.00").await;
    rig.pay_and_mine(&watcher, &invoice, 38_462).await;
    assert_eq!(rig.view(&invoice.id).await.status, InvoiceStatus::Paid);
    rig.node.reorg(1, 2, false).await.expect("reorg");
    let pass = rig.sync(&watcher).await;
    assert!(matches!(pass, ChainEvent::Reorged { orphaned: 1, .. }), "{pass:?}");
    let view = rig.view(&invoice.id).await;
    assert_eq!(view.payments[0].status, "reversed");
    assert_eq!(rig.balance(&AccountCode::merchant(&rig.merchant_id)).await, SignedAmount::ZERO, "the credit is reversed");
    assert_eq!(rig.entries().await, 2, "the credit and its reversal");
    // Mined again: credited again, once.
    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
    rig.sync(&watcher).await;
    assert_eq!(rig.view(&invoice.id).await.status, InvoiceStatus::Paid);
    assert_eq!(rig.entries().await, 3, "the credit, its reversal and the new credit");
    assert_eq!(
        rig.balance(&AccountCode::merchant(&rig.merchant_id)).await,
        SignedAmount::positive(Amount::from_u64(due(&invoice)))
    );
}

/// A step reads the history of only the scripts whose status changed: none when nothing
/// happened, one for a payment to one of many open invoices, whether it enters the mempool or
/// its block; and the whole set again only for a new watcher.
#[sqlx::test]
async fn a_step_reads_only_the_scripts_that_changed(pool: PgPool) {
    let rig = rig(pool).await;
    let mut invoices = Vec::new();
    for _ in 0..12 {
        invoices.push(rig.invoice("5.00").await);
    }
    let watcher = rig.synced_watcher().await;
    let reads = || watcher.source().scripts_read();
    let start = reads();
    assert_eq!(start, 0, "no script has a history yet");
    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
    assert_eq!(reads(), start, "a new block that pays no one reads nothing");

    let paid = &invoices[7];
    rig.node.send(&deposit(paid), Sats::from_sat(due(paid)), true).await.expect("send");
    rig.sync(&watcher).await;
    assert_eq!(reads(), start + 1, "one script read for the mempool payment");
    assert_eq!(rig.view(&paid.id).await.status, InvoiceStatus::Processing);
    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
    assert_eq!(reads(), start + 2, "and one when its block came");
    assert_eq!(rig.view(&paid.id).await.status, InvoiceStatus::Paid);
    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
    assert_eq!(reads(), start + 2, "its next confirmation is counted without reading it");
    for other in invoices.iter().filter(|i| i.id != paid.id) {
        assert_eq!(rig.view(&other.id).await.status, InvoiceStatus::Open);
    }
    // A new watcher hears every status anew and reads the one script with a history.
    let fresh = rig.synced_watcher().await;
    assert_eq!(fresh.source().scripts_read(), 1);
    assert_eq!(rig.view(&paid.id).await.payments.len(), 1);
}

#[sqlx::test]
async fn a_replaced_mempool_payment_is_dropped(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.synced_watcher().await;
    let invoice = rig.invoice("25.00").await;
    let txid = rig.node.send(&deposit(&invoice), Sats::from_sat(38_462), true).await.expect("send");
    rig.sync(&watcher).await;
    assert_eq!(rig.view(&invoice.id).await.status, InvoiceStatus::Processing);

    // The payer double-spends it to themselves with a higher fee (BIP125).
    let (elsewhere, _) = rig.node.node().wallet_addresses().await;
    rig.node.replace(txid, &elsewhere, Sats::from_sat(38_462)).await.expect("replace");
    let pass = rig.sync(&watcher).await;
    assert!(matches!(pass, ChainEvent::Committed { orphaned: 1, .. }), "{pass:?}");
    rig.node.mine(2).await.expect("mine");
    rig.sync(&watcher).await;
    let view = rig.view(&invoice.id).await;
    assert_eq!(view.status, InvoiceStatus::Open, "the replaced payment no longer counts");
    assert_eq!(view.payments[0].status, "orphaned");
    assert_eq!(rig.entries().await, 0, "nothing was credited");

    // A fee bump of a payment keeps paying the invoice: the new transaction is the payment.
    let bumped_invoice = rig.invoice("25.00").await;
    let first = rig.node.send(&deposit(&bumped_invoice), Sats::from_sat(38_462), true).await.expect("send");
    rig.sync(&watcher).await;
    rig.node.bump(first, Sats::from_sat(500)).await.expect("bump");
    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
    let bumped = rig.view(&bumped_invoice.id).await;
    assert_eq!(bumped.status, InvoiceStatus::Paid);
    assert_eq!(bumped.payments.iter().filter(|p| p.status == "confirmed").count(), 1);
    assert_eq!(rig.entries().await, 1);
}

#[sqlx::test]
async fn a_server_of_another_chain_is_refused_and_a_dead_one_fails_over(pool: PgPool) {
    let mut rig = rig(pool).await;
    let live = rig.spec.rpc.clone();
    rig.spec.rpc = vec![RpcUrl::new("tcp://127.0.0.1:9").expect("url"), live[0].clone()];
    let watcher = rig.watcher();
    watcher.check_chain().await.expect("the dead endpoint is skipped");
    rig.sync(&watcher).await;
    rig.spec.rpc = vec![RpcUrl::new("tcp://127.0.0.1:9").expect("url")];
    let error = rig.watcher().step().await.expect_err("dead");
    assert!(error.is_retryable(), "{error}");
    rig.spec.rpc = live;
    rig.spec.caip2 = payrail::money::ChainId::bitcoin_testnet();
    let error = rig.watcher().check_chain().await.expect_err("wrong chain");
    assert!(!error.is_retryable(), "{error}");
    assert!(error.to_string().contains("genesis"), "{error}");
}

fn daemon(database: &str, node: &RegtestHandle) -> tokio::process::Child {
    common::daemon(database, "BITCOIN", &node.electrum_url())
}

#[sqlx::test]
async fn killing_the_daemon_during_payments_loses_and_duplicates_nothing(pool: PgPool) {
    const INVOICES: usize = 5;
    let rig = rig(pool.clone()).await;
    let mut invoices = Vec::new();
    for _ in 0..INVOICES {
        invoices.push(invoice_at(&rig.state, &rig.merchant_id, "12.34", &[BTC], chrono::Utc::now()).await);
    }
    let database = database_url(&pool);
    let mut child = daemon(&database, &rig.node);
    for (i, invoice) in invoices.iter().enumerate() {
        rig.node.send(&deposit(invoice), Sats::from_sat(due(invoice)), true).await.expect("send");
        if i % 2 == 1 {
            rig.node.mine(1).await.expect("mine");
        }
        // Let the daemon work for a varying moment, then kill it without warning.
        tokio::time::sleep(Duration::from_millis(300 + 250 * (i as u64 % 4))).await;
        child.kill().await.expect("SIGKILL");
        child = daemon(&database, &rig.node);
    }
    rig.node.mine(2).await.expect("mine");
    let started = Instant::now();
    loop {
        let paid: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices WHERE status = 'paid'").fetch_one(&pool).await.expect("count");
        if paid == INVOICES as i64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "only {paid} of {INVOICES} invoices paid");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    child.kill().await.expect("stop");
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments").fetch_one(&pool).await.expect("n");
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(&pool).await.expect("n");
    assert_eq!((payments, entries), (INVOICES as i64, INVOICES as i64), "one payment and one credit per output");
    let total: u64 = invoices.iter().map(due).sum();
    assert_eq!(rig.balance(&AccountCode::merchant(&rig.merchant_id)).await, SignedAmount::positive(Amount::from_u64(total)));
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'invoice.paid'").fetch_one(&pool).await.expect("n");
    assert_eq!(events, INVOICES as i64, "one invoice.paid event per invoice");
}

/// A database restart ends the Bitcoin watcher's lock session: it stops writing, takes the lock
/// again on a new session and goes on following the chain.
#[sqlx::test]
async fn a_bitcoin_watcher_whose_lock_session_ends_takes_the_lock_again(pool: PgPool) {
    let rig = rig(pool.clone()).await;
    let lock = format!("payrail.watch.{}", rig.spec.caip2);
    let holder = |not: Option<i32>| {
        let pool = pool.clone();
        let lock = lock.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let pid: Option<i32> = sqlx::query_scalar(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                     AND ((classid::bigint << 32) | objid::bigint) = hashtext($1)::bigint",
                )
                .bind(&lock)
                .fetch_optional(&pool)
                .await
                .expect("pg_locks");
                if let Some(pid) = pid.filter(|pid| Some(*pid) != not) {
                    return pid;
                }
                assert!(Instant::now() < deadline, "nobody took {lock}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(rig.watcher().run(stopped));
    let first = holder(None).await;
    let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)").bind(first).fetch_one(&pool).await.expect("terminate");
    assert!(done);
    let second = holder(Some(first)).await;
    assert_ne!(first, second);
    assert!(!task.is_finished(), "the watcher did not stop");

    let invoice = rig.invoice("25.00").await;
    rig.node.send(&deposit(&invoice), Sats::from_sat(due(&invoice)), false).await.expect("send");
    rig.node.mine(3).await.expect("mine");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.view(&invoice.id).await.status != InvoiceStatus::Paid {
        assert!(Instant::now() < deadline, "the watcher follows the chain after taking the lock again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops").expect("task").expect("clean stop");
}

/// The speed policy per invoice: `fast` counts a small payment from the mempool (and reverses it
/// when it is replaced; once mined it stands, credited once), a larger one still waits for the
/// tiers; `slow` waits for the deepest tier whatever the amount.
#[sqlx::test]
async fn the_speed_policy_decides_when_a_payment_counts(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.synced_watcher().await;
    let with_speed = |amount: &str, speed: &str| {
        let mut request = invoice_request(amount, Some(&[BTC]));
        request.speed_policy = Some(speed.to_owned());
        request
    };
    let now = rig.state.clock.now();
    let merchant = AccountCode::merchant(&rig.merchant_id);

    // 25 USD, fast: paid from the mempool (the chain file allows up to 50 USD unconfirmed).
    let fast = create_invoice_at(&rig.state, &rig.merchant_id, &with_speed("25.00", "fast"), now).await;
    assert_eq!(fast.speed_policy.as_str(), "fast");
    let txid = rig.node.send(&deposit(&fast), Sats::from_sat(due(&fast)), true).await.expect("send");
    rig.sync(&watcher).await;
    let paid = rig.view(&fast.id).await;
    assert_eq!(paid.status, InvoiceStatus::Paid, "a fast payment counts unconfirmed");
    let p = &paid.payments[0];
    assert_eq!((p.confirmations, p.confirmations_required, p.status.as_str()), (0, 0, "confirmed"));
    let sats = SignedAmount::positive(Amount::from_u64(due(&fast)));
    assert_eq!(rig.balance(&merchant).await, sats);
    assert_eq!(rig.entries().await, 1);

    // The payer replaces it before any block: the credit is reversed, the invoice is open again.
    let (elsewhere, _) = rig.node.node().wallet_addresses().await;
    rig.node.replace(txid, &elsewhere, Sats::from_sat(due(&fast))).await.expect("replace");
    let pass = rig.sync(&watcher).await;
    assert!(matches!(pass, ChainEvent::Committed { orphaned: 1, .. }), "{pass:?}");
    let replaced = rig.view(&fast.id).await;
    assert_eq!(replaced.status, InvoiceStatus::Open, "the replaced payment no longer counts");
    assert_eq!(replaced.payments[0].status, "reversed");
    assert_eq!(rig.balance(&merchant).await, SignedAmount::ZERO);
    assert_eq!(rig.entries().await, 2, "the credit and its reversal");

    // Paid again and mined: credited from the mempool once, the block changes nothing more.
    rig.node.send(&deposit(&fast), Sats::from_sat(due(&fast)), true).await.expect("send");
    rig.sync(&watcher).await;
    assert_eq!(rig.view(&fast.id).await.status, InvoiceStatus::Paid);
    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
    let mined = rig.view(&fast.id).await;
    let confirmed: Vec<_> = mined.payments.iter().filter(|p| p.status == "confirmed").collect();
    assert_eq!(confirmed.len(), 1);
    assert_eq!((confirmed[0].confirmations, mined.status), (1, InvoiceStatus::Paid));
    assert_eq!(rig.entries().await, 3);

    // 100 USD, fast: above what the chain lets count unconfirmed, so the tiers (1 confirmation).
    let large = create_invoice_at(&rig.state, &rig.merchant_id, &with_speed("100.00", "fast"), now).await;
    rig.node.send(&deposit(&large), Sats::from_sat(due(&large)), true).await.expect("send");
    rig.sync(&watcher).await;
    let waiting = rig.view(&large.id).await;
    assert_eq!((waiting.status, waiting.payments[0].confirmations_required), (InvoiceStatus::Processing, 1));

    // 25 USD, slow: the deepest tier (6), not the 1 its value would need.
    let slow = create_invoice_at(&rig.state, &rig.merchant_id, &with_speed("25.00", "slow"), now).await;
    rig.node.send(&deposit(&slow), Sats::from_sat(due(&slow)), true).await.expect("send");
    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
    let one = rig.view(&slow.id).await;
    assert_eq!((one.status, one.payments[0].confirmations, one.payments[0].confirmations_required), (InvoiceStatus::Processing, 1, 6));
    assert_eq!(rig.view(&large.id).await.status, InvoiceStatus::Paid, "the large fast payment met its tier");
    rig.node.mine(5).await.expect("mine");
    rig.sync(&watcher).await;
    assert_eq!(rig.view(&slow.id).await.status, InvoiceStatus::Paid);
}
