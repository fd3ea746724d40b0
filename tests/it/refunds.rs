//! Crypto refunds by claim link: a USDC refund on Polygon claimed over the payer's page and paid
//! by a payout batch on anvil; a BTC refund the merchant pays on regtest, marked paid by the
//! watcher; a refund and a settlement of the same funds at once (one wins, the other is told what
//! is available); cancel and expiry give the funds back.

use crate::common;
use crate::common::evm::Chain;
use crate::settlements::{drive_to_end, no_delay, pay_usdc, server_with_payouts};

use std::sync::Arc;

use alloy::primitives::{Address, U256};
use payrail::invoice::InvoiceView;
use payrail::ledger::{AccountCode, SignedAmount};
use payrail::merchant::create_merchant;
use payrail::money::Amount;
use payrail::payout::{PayoutSender, PayoutService};
use payrail_devnet::anvil::DEV_DEPLOYER_KEY;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

fn payer() -> Address {
    Address::repeat_byte(0xb7)
}

/// An invoice of `usd` paid in full with `chain`'s USDC, confirmed.
async fn paid_usdc_invoice(state: &payrail::api::AppState, merchant_id: &str, chain: &Chain, usd: &str, tx: &str) -> InvoiceView {
    let invoice = common::invoice(state, merchant_id, usd, &[&chain.usdc()]).await;
    let units: u64 = invoice.payment_options[0].amount_minor.parse().expect("units");
    pay_usdc(state, &invoice.id, chain, units, tx).await;
    invoice
}

fn token_of(refund: &Value) -> String {
    let url = refund["claim_url"].as_str().expect("claim_url");
    url.rsplit('/').next().expect("token").to_owned()
}

fn units(n: u64) -> SignedAmount {
    SignedAmount::positive(Amount::from_u64(n))
}

async fn events(pool: &PgPool, object: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM outbox WHERE object_id = $1 ORDER BY id").bind(object).fetch_all(pool).await.expect("events")
}

/// The whole EVM path over HTTP: a partial refund at the rate then is reserved at once (a second
/// one for more than is left is refused), the payer's page takes an EIP-681 request as the
/// address, a second claim is refused, the payout pays the payer on chain and marks the refund
/// paid; the rest refunded and cancelled goes back to the balances.
#[sqlx::test]
async fn a_usdc_refund_is_claimed_on_the_page_and_paid_by_a_payout(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let server = server_with_payouts(pool.clone(), &[&polygon], no_delay()).await;
    let state = &server.state;
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    polygon.fund_batcher(100_000_000).await;
    let usdc = polygon.usdc();
    let invoice = paid_usdc_invoice(state, &merchant.merchant_id, &polygon, "50.00", "0xa1").await;
    let merchant_account = AccountCode::merchant(&merchant.merchant_id);
    let credited = server.balance(&merchant_account, &usdc).await;
    assert!(!credited.is_negative() && credited != SignedAmount::ZERO, "{credited}");

    let path = format!("/v1/invoices/{}/refunds", invoice.id);
    let (status, body) = server.post(&merchant.api_key, &path, json!({"method": "crypto", "amount": {"kind": "rate_then", "amount": "20.00"}}), None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!((body["status"].as_str(), body["amount_minor"].as_str(), body["value_minor"].as_str()), (Some("open"), Some("20000000"), Some("2000")));
    let refund_id = body["id"].as_str().expect("id").to_owned();
    let token = token_of(&body);
    assert_eq!(server.balance(&AccountCode::refund(&refund_id), &usdc).await, units(20_000_000), "reserved at once");
    assert_eq!(server.balance(&merchant_account, &usdc).await, credited.checked_add(SignedAmount::negative(Amount::from_u64(20_000_000))).expect("sum"));

    let (status, body) = server.post(&merchant.api_key, &path, json!({"method": "crypto", "amount": {"kind": "fiat", "amount": "30.01"}}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("refund_exceeds")), "{body}");
    let (status, body) = server.post(&merchant.api_key, &path, json!({"method": "crypto", "amount": {"kind": "sideways"}}), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // The payer's page.
    let page = server.request(reqwest::Method::GET, None, &format!("/refund/{token}")).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(html.contains("Claim your refund") && html.contains("20 USDC") && html.contains("name=\"address\""), "{html}");
    let missing = server.request(reqwest::Method::GET, None, &format!("/refund/{}", "0".repeat(64))).send().await.expect("page");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let claim = |address: String| {
        let request = server.request(reqwest::Method::POST, None, &format!("/refund/{token}"));
        async move {
            let response = request.header("accept", "application/json").form(&[("address", address)]).send().await.expect("claim");
            let status = response.status();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    let (status, body) = claim("0x1234".to_owned()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let request = format!("ethereum:{}@137/transfer?address={}&uint256=20000000", usdc.rsplit(':').next().expect("token"), payer().to_checksum(None));
    let (status, body) = claim(request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["status"].as_str(), body["address"].as_str()), (Some("claimed"), Some(payer().to_checksum(None).as_str())));
    let payout_id = body["payout_id"].as_str().expect("payout").to_owned();
    let (status, body) = claim(payer().to_checksum(None)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("refund_state")), "a link claims once: {body}");

    let sender = PayoutSender::new(polygon.spec.clone(), DEV_DEPLOYER_KEY, state.pool.clone(), state.ledger.clone(), no_delay(), state.clock.clone())
        .expect("sender");
    assert!(drive_to_end(&polygon, state, &sender, &payout_id).await.is_final());
    assert_eq!(polygon.usdc_of(payer()).await, U256::from(20_000_000u64), "the payer got it on chain");
    let (_, paid) = server.get(&merchant.api_key, &format!("/v1/refunds/{refund_id}")).await;
    assert_eq!(paid["status"], "paid", "{paid}");
    assert!(paid["tx_hash"].as_str().is_some_and(|h| h.starts_with("0x")), "{paid}");
    assert_eq!(server.balance(&AccountCode::refund(&refund_id), &usdc).await, SignedAmount::ZERO);
    let html = server.request(reqwest::Method::GET, None, &format!("/refund/{token}")).send().await.expect("page").text().await.expect("html");
    assert!(html.contains("Refund paid"), "{html}");
    assert_eq!(events(&state.pool, &refund_id).await, ["refund.created", "refund.claimed", "refund.paid"]);
    assert_eq!(server.invoice_view(&invoice.id).await.status.to_string(), "paid", "30 USD is not refunded yet");

    // The rest: refunded, then cancelled: the balances are back.
    server.clock.advance(chrono::Duration::seconds(1));
    let before = server.balance(&merchant_account, &usdc).await;
    let (status, rest) = server.post(&merchant.api_key, &path, json!({"method": "crypto"}), None).await;
    assert_eq!((status, rest["amount_minor"].as_str()), (StatusCode::CREATED, Some("30000000")), "{rest}");
    let rest_id = rest["id"].as_str().expect("id");
    let (status, canceled) = server.post(&merchant.api_key, &format!("/v1/refunds/{rest_id}/cancel"), json!({}), None).await;
    assert_eq!((status, canceled["status"].as_str()), (StatusCode::OK, Some("canceled")), "{canceled}");
    assert_eq!(server.balance(&merchant_account, &usdc).await, before);
    let (status, _) = server.post(&merchant.api_key, &format!("/v1/refunds/{refund_id}/cancel"), json!({}), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a paid refund cannot be cancelled");
    let (_, listed) = server.get(&merchant.api_key, &format!("/v1/refunds?invoice={}", invoice.id)).await;
    assert_eq!((listed["data"].as_array().map(Vec::len), listed["has_more"].as_bool()), (Some(2), Some(false)), "{listed}");
    let (_, first) = server.get(&merchant.api_key, "/v1/refunds?limit=1").await;
    assert_eq!((first["object"].as_str(), first["has_more"].as_bool()), (Some("list"), Some(true)), "{first}");
    let last = first["data"][0]["id"].as_str().expect("id");
    assert_eq!(last, rest_id, "newest first");
    let (_, second) = server.get(&merchant.api_key, &format!("/v1/refunds?limit=1&starting_after={last}")).await;
    assert_eq!((second["data"][0]["id"].as_str(), second["has_more"].as_bool()), (Some(refund_id.as_str()), Some(false)), "{second}");
}

/// A refund and a settlement of the same funds at once: exactly one takes them; the other is a
/// 409 saying what is available.
#[sqlx::test]
async fn a_refund_and_a_settlement_of_the_same_funds_take_them_once(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let server = server_with_payouts(pool.clone(), &[&polygon], no_delay()).await;
    let state = &server.state;
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    polygon.fund_batcher(100_000_000).await;
    let (status, body) = server
        .request(reqwest::Method::PUT, Some(&merchant.api_key), "/v1/merchants/me/payout_addresses/polygon")
        .json(&json!({"address": Address::repeat_byte(0xd1).to_checksum(None)}))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .expect("put");
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let invoice = paid_usdc_invoice(state, &merchant.merchant_id, &polygon, "40.00", "0xb1").await;
    let usdc = polygon.usdc();
    let refund_path = format!("/v1/invoices/{}/refunds", invoice.id);
    let refund = server.post(&merchant.api_key, &refund_path, json!({"method": "crypto"}), None);
    let settle = server.post(&merchant.api_key, "/v1/settlements", json!({"chain": "polygon", "asset": usdc}), None);
    let ((refund_status, refund_body), (settle_status, settle_body)) = tokio::join!(refund, settle);
    let created = [refund_status, settle_status].iter().filter(|s| **s == StatusCode::CREATED).count();
    assert_eq!(created, 1, "one wins: {refund_body} {settle_body}");
    let (loser_status, loser) = if refund_status == StatusCode::CREATED { (settle_status, settle_body) } else { (refund_status, refund_body) };
    assert_eq!((loser_status, loser["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("insufficient_funds")), "{loser}");
    assert!(loser["error"]["message"].as_str().is_some_and(|m| m.contains("available")), "{loser}");
    assert_eq!(server.balance(&AccountCode::merchant(&merchant.merchant_id), &usdc).await, SignedAmount::ZERO);
}

/// A BTC refund: the merchant holds the deposits, so it pays the payer from its wallet; the
/// watcher sees the amount arrive at the claimed address and marks the refund paid once it is as
/// deep as the chain's deepest tier; the invoice, fully given back, is refunded.
#[sqlx::test]
async fn a_btc_refund_is_marked_paid_when_the_merchant_pays_the_address(pool: PgPool) {
    use crate::common::bitcoin::{due, rig};
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use bitcoin::{Address as BtcAddress, CompressedPublicKey, Network};

    let rig = rig(pool).await;
    let watcher = rig.synced_watcher().await;
    let invoice = rig.invoice("25.00").await;
    rig.pay_and_mine(&watcher, &invoice, due(&invoice)).await;
    assert_eq!(rig.view(&invoice.id).await.status.to_string(), "paid");
    let btc = common::BTC;

    let request = payrail::refund::NewCryptoRefund {
        asset: None,
        amount: payrail::refund::RefundAmount::RateThen { value: None },
        reason: None,
        expires_in_s: None,
        asset_info: None,
    };
    let now = rig.state.clock.now();
    let source = payrail::refund::RefundSource::Invoice(&invoice.id);
    let created = payrail::refund::create(&rig.state.pool, &rig.state.ledger, &rig.merchant_id, source, &request, now).await.expect("refund");
    assert_eq!(created.refund.amount_minor.as_deref(), Some(due(&invoice).to_string().as_str()));
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[7u8; 32]).expect("key");
    let payer = BtcAddress::p2wpkh(&CompressedPublicKey(key.public_key(&secp)), Network::Regtest);
    let claimed = payrail::refund::claim_merchant_paid(&rig.state.pool, &rig.state.ledger, rig.state.rates.as_ref(), &created.token, &payer.to_string(), now)
        .await
        .expect("claim");
    assert_eq!(claimed.status, "claimed");
    let uri = claimed.payment_uri.as_deref().expect("uri");
    assert!(uri.starts_with(&format!("bitcoin:{payer}?amount=0.000")), "{uri}");

    // Too little does not pay it; the amount does, once deep enough.
    rig.node.send(&payer, bitcoin::Amount::from_sat(due(&invoice) - 1), false).await.expect("send");
    rig.node.mine(1).await.expect("mine");
    rig.sync(&watcher).await;
    let id = claimed.id.clone();
    let status = |rig: &crate::common::bitcoin::Rig| {
        let pool = rig.state.pool.clone();
        let id = id.clone();
        async move { sqlx::query_scalar::<_, String>("SELECT status FROM crypto_refunds WHERE id = $1").bind(id).fetch_one(&pool).await.expect("status") }
    };
    assert_eq!(status(&rig).await, "claimed");
    let txid = rig.node.send(&payer, bitcoin::Amount::from_sat(due(&invoice)), false).await.expect("send");
    rig.node.mine(rig.spec.confirmations.confirmations_max()).await.expect("mine");
    rig.sync(&watcher).await;
    assert_eq!(status(&rig).await, "paid");
    let tx_hash: Option<String> = sqlx::query_scalar("SELECT tx_hash FROM crypto_refunds WHERE id = $1").bind(&id).fetch_one(&rig.state.pool).await.expect("tx");
    assert_eq!(tx_hash, Some(txid.to_string()));
    assert_eq!(rig.view(&invoice.id).await.status.to_string(), "refunded");
    let refund_account = {
        let mut conn = rig.state.pool.acquire().await.expect("conn");
        rig.state.ledger.balance(&mut conn, &AccountCode::refund(&id), btc).await.expect("balance")
    };
    assert_eq!(refund_account, SignedAmount::ZERO);
    assert_eq!(rig.balance(&AccountCode::merchant(&rig.merchant_id)).await, SignedAmount::ZERO, "all of it went back");
    // More passes mark nothing twice.
    rig.node.mine(2).await.expect("mine");
    rig.sync(&watcher).await;
    let paid_entries: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries WHERE idempotency_key LIKE 'refund-paid:%'")
        .fetch_one(&rig.state.pool)
        .await
        .expect("count");
    assert_eq!(paid_entries, 1);

    // Reconciliation re-reads the chain: the deposit and the refund the merchant paid both match.
    let reconciler = payrail::reconcile::Reconciler::new(rig.state.pool.clone(), vec![rig.spec.clone()]);
    let report = reconciler.run("bitcoin", 1, None, &|_| {}).await.expect("reconciliation");
    assert!(report.ok && report.differences == 0, "{report:#?}");
    let kinds: Vec<(payrail::reconcile::Category, payrail::reconcile::ItemKind)> = report.items.iter().map(|i| (i.category, i.kind)).collect();
    assert!(kinds.contains(&(payrail::reconcile::Category::Matched, payrail::reconcile::ItemKind::Refund)), "{report:#?}");
}

/// A late payment held on the unapplied balance is refunded whole by claim link: it leaves the
/// unapplied list and cannot be applied while the refund stands; cancelled, it is held again.
#[sqlx::test]
async fn a_held_late_payment_is_refunded_by_claim_link(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let server = server_with_payouts(pool.clone(), &[&polygon], no_delay()).await;
    let state = &server.state;
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    polygon.fund_batcher(100_000_000).await;
    let usdc = polygon.usdc();
    let invoice = common::invoice(state, &merchant.merchant_id, "10.00", &[&usdc]).await;
    server.clock.advance(chrono::Duration::hours(2));
    payrail::invoice::expire_due(&state.pool, state.clock.now()).await.expect("expire");
    pay_usdc(state, &invoice.id, &polygon, 10_000_000, "0xd1").await;
    let (_, held) = server.get(&merchant.api_key, "/v1/unapplied").await;
    let payment_id = held["data"][0]["id"].as_str().expect("held payment").to_owned();
    let unapplied = AccountCode::unapplied(&merchant.merchant_id);
    assert_eq!(server.balance(&unapplied, &usdc).await, units(10_000_000));

    let path = format!("/v1/unapplied/{payment_id}/refund");
    let (status, refund) = server.post(&merchant.api_key, &path, json!({"reason": "paid too late"}), None).await;
    assert_eq!(status, StatusCode::CREATED, "{refund}");
    assert_eq!((refund["amount_minor"].as_str(), refund["invoice_id"].as_str()), (Some("10000000"), Some(invoice.id.as_str())));
    assert_eq!(server.balance(&unapplied, &usdc).await, SignedAmount::ZERO, "reserved from the unapplied balance");
    let (_, held) = server.get(&merchant.api_key, "/v1/unapplied").await;
    assert_eq!(held["data"].as_array().map(Vec::len), Some(0), "being refunded: not held for review: {held}");
    let (status, body) = server.post(&merchant.api_key, &format!("/v1/unapplied/{payment_id}/apply"), json!({}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("payment_refunding")), "{body}");
    let (status, body) = server.post(&merchant.api_key, &path, json!({}), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("nothing_to_refund")), "once: {body}");

    let id = refund["id"].as_str().expect("id");
    let (status, _) = server.post(&merchant.api_key, &format!("/v1/refunds/{id}/cancel"), json!({}), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.balance(&unapplied, &usdc).await, units(10_000_000), "held again");
    let (_, held) = server.get(&merchant.api_key, "/v1/unapplied").await;
    assert_eq!(held["data"][0]["id"].as_str(), Some(payment_id.as_str()));

    // Refunded again and claimed: paid by a payout.
    let (_, refund) = server.post(&merchant.api_key, &path, json!({}), None).await;
    let token = token_of(&refund);
    let response = server
        .request(reqwest::Method::POST, None, &format!("/refund/{token}"))
        .header("accept", "application/json")
        .form(&[("address", payer().to_checksum(None))])
        .send()
        .await
        .expect("claim");
    let claimed: Value = response.json().await.expect("json");
    let sender = PayoutSender::new(polygon.spec.clone(), DEV_DEPLOYER_KEY, state.pool.clone(), state.ledger.clone(), no_delay(), state.clock.clone())
        .expect("sender");
    assert!(drive_to_end(&polygon, state, &sender, claimed["payout_id"].as_str().expect("payout")).await.is_final());
    assert_eq!(polygon.usdc_of(payer()).await, U256::from(10_000_000u64));
    assert_eq!(server.invoice_view(&invoice.id).await.status.to_string(), "expired", "the invoice was never paid");
}

/// A current-rate refund of POL claimed after POL doubled: the payer gets half the coins and the
/// other half goes back to the merchant at the claim. Its payout is cancelled before it is sent,
/// so the refund fails; cancelling it then returns everything it booked, in the order that keeps
/// its account from going below zero.
#[sqlx::test]
async fn a_failed_current_rate_refund_is_cancelled_back_to_the_balances(pool: PgPool) {
    let polygon = Chain::start("polygon").await;
    let server = common::Server::start_with(pool.clone(), |state| {
        // Claims are priced by the payout service's feed: POL at 1 USD, twice the invoice's rate.
        let doubled = payrail::rates::FixedFeed::new([(("POL".to_owned(), "USD".to_owned()), "1".parse().expect("rate"))]);
        let payouts = PayoutService::with_chains(
            vec![polygon.spec.clone()],
            no_delay(),
            state.pool.clone(),
            state.ledger.clone(),
            Arc::new(doubled),
            state.clock.clone(),
        )
        .expect("payouts");
        payouts.set_executor_running(true);
        state.payouts = Some(Arc::new(payouts));
    })
    .await;
    let state = &server.state;
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    polygon.pay_native(polygon.contracts.payout_batcher, U256::from(50_000_000_000_000_000_000u128)).await;
    let pol = polygon.spec.native_asset_id().to_string();
    let invoice = common::invoice(state, &merchant.merchant_id, "10.00", &[&pol]).await;
    let wei: u128 = invoice.payment_options[0].amount_minor.parse().expect("wei");
    assert_eq!(wei, 20_000_000_000_000_000_000, "10 USD at 0.5 USD per POL");
    let payment = payrail::invoice::ObservedPayment {
        invoice_id: invoice.id.clone(),
        chain: polygon.spec.caip2.clone(),
        asset: pol.parse().expect("asset"),
        tx_ref: format!("{}:0xf1:native", polygon.spec.caip2),
        address: None,
        amount: Amount::from_u128(wei),
        confirmations: 1,
        confirmations_required: 1,
        block: None,
    };
    let mut db = state.pool.begin().await.expect("begin");
    payrail::invoice::apply_payment(&mut db, &state.ledger, &payment, state.clock.now()).await.expect("apply");
    db.commit().await.expect("commit");
    let merchant_account = AccountCode::merchant(&merchant.merchant_id);
    let before = server.balance(&merchant_account, &pol).await;

    let path = format!("/v1/invoices/{}/refunds", invoice.id);
    let (status, refund) = server.post(&merchant.api_key, &path, json!({"method": "crypto", "amount": {"kind": "current_rate"}}), None).await;
    assert_eq!((status, refund["amount_minor"].as_str()), (StatusCode::CREATED, None), "priced at claim: {refund}");
    let token = token_of(&refund);
    let response = server
        .request(reqwest::Method::POST, None, &format!("/refund/{token}"))
        .header("accept", "application/json")
        .form(&[("address", payer().to_checksum(None))])
        .send()
        .await
        .expect("claim");
    let claimed: Value = response.json().await.expect("json");
    assert_eq!(claimed["amount_minor"].as_str(), Some("10000000000000000000"), "10 USD at 1 USD per POL: {claimed}");
    let half = SignedAmount::positive(Amount::from_u128(wei / 2));
    assert_eq!(server.balance(&merchant_account, &pol).await, before.checked_add(half.negated()).expect("sum"), "the merchant keeps the other half");

    let payout_id = claimed["payout_id"].as_str().expect("payout");
    payrail::payout::store::cancel(&state.pool, &state.ledger, payout_id, "test", state.clock.now()).await.expect("cancel payout");
    let id = refund["id"].as_str().expect("id");
    let (_, failed) = server.get(&merchant.api_key, &format!("/v1/refunds/{id}")).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let (status, canceled) = server.post(&merchant.api_key, &format!("/v1/refunds/{id}/cancel"), json!({}), None).await;
    assert_eq!((status, canceled["status"].as_str()), (StatusCode::OK, Some("canceled")), "{canceled}");
    assert_eq!(server.balance(&merchant_account, &pol).await, before, "everything it booked is back");
    assert_eq!(server.balance(&AccountCode::refund(id), &pol).await, SignedAmount::ZERO);
}
