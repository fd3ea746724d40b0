//! Revenue splits against a real PostgreSQL and a real socket: the one entry a paid invoice writes
//! credits the merchant, its creators, the platform fee and the rounding dust exactly; rules are
//! chosen by the longest `order_id` prefix and fixed on the invoice when it is created; payments
//! held for review are not split; invalid splits are refused.

use crate::common;

use crate::common::{Server, USDC_POLYGON, USDT_POLYGON};
use payrail::invoice::{apply_payment, AppliedTo, CreateInvoice, InvoiceView, ObservedPayment};
use payrail::ledger::{AccountCode, SignedAmount};
use payrail::merchant::create_merchant;
use payrail::money::Amount;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

/// The server, with what these tests do to it.
struct Rig(Server);

impl std::ops::Deref for Rig {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.0
    }
}

async fn start(pool: PgPool) -> Rig {
    Rig(Server::start(pool).await)
}

impl Rig {
    async fn post_invoice(&self, key: &str, body: Value) -> (StatusCode, Value) {
        self.post(key, "/v1/invoices", body, None).await
    }

    /// Pays `value` of `asset` to `invoice`, confirmed at first sight.
    async fn pay(&self, invoice: &InvoiceView, asset: &str, tx: &str, value: u128) -> payrail::invoice::Applied {
        let asset: payrail::money::AssetId = asset.parse().expect("asset");
        let payment = ObservedPayment {
            invoice_id: invoice.id.clone(),
            chain: asset.chain().clone(),
            tx_ref: format!("{}:{tx}:0", asset.chain()),
            asset,
            address: None,
            amount: Amount::from_u128(value),
            confirmations: 2,
            confirmations_required: 2,
            block: None,
        };
        let mut tx = self.state.pool.begin().await.expect("begin");
        let applied = apply_payment(&mut tx, &self.state.ledger, &payment, self.state.clock.now()).await.expect("apply");
        tx.commit().await.expect("commit");
        applied
    }

    /// The postings of the payment entry `tx`, as (account, signed amount).
    async fn entry(&self, asset: &str, tx: &str) -> Vec<(String, SignedAmount)> {
        let asset: payrail::money::AssetId = asset.parse().expect("asset");
        let key = format!("payment:{}:{tx}:0", asset.chain());
        let id: i64 = sqlx::query_scalar("SELECT id FROM journal_entries WHERE idempotency_key = $1")
            .bind(&key)
            .fetch_one(&self.state.pool)
            .await
            .expect("entry id");
        let mut conn = self.state.pool.acquire().await.expect("conn");
        let entry = self.state.ledger.entry(&mut conn, id).await.expect("entry");
        entry.postings.iter().map(|p| (p.account.to_string(), p.signed_amount())).collect()
    }
}

fn positive(v: u64) -> SignedAmount {
    SignedAmount::positive(Amount::from_u64(v))
}

/// A credit posting of `v` (credits are stored negative).
fn credit(v: u64) -> SignedAmount {
    SignedAmount::negative(Amount::from_u64(v))
}

async fn creator(pool: &PgPool, merchant_id: &str, name: &str) -> String {
    let id = payrail::ids::new_id("cr");
    sqlx::query("INSERT INTO creators (id, merchant_id, name) VALUES ($1, $2, $3)")
        .bind(&id)
        .bind(merchant_id)
        .bind(name)
        .execute(pool)
        .await
        .expect("creator");
    id
}

async fn set_rule(pool: &PgPool, merchant_id: &str, prefix: &str, shares: &[(&str, i32)], fee: i32) {
    sqlx::query("DELETE FROM split_rules WHERE merchant_id = $1 AND order_id_prefix = $2")
        .bind(merchant_id)
        .bind(prefix)
        .execute(pool)
        .await
        .expect("delete rule");
    sqlx::query("INSERT INTO split_rules (merchant_id, order_id_prefix, platform_fee_bps) VALUES ($1, $2, $3)")
        .bind(merchant_id)
        .bind(prefix)
        .bind(fee)
        .execute(pool)
        .await
        .expect("rule");
    for (position, (creator, bps)) in shares.iter().enumerate() {
        sqlx::query(
            "INSERT INTO split_rule_shares (merchant_id, order_id_prefix, creator_id, bps, position) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(merchant_id)
        .bind(prefix)
        .bind(creator)
        .bind(bps)
        .bind(i16::try_from(position).expect("position"))
        .execute(pool)
        .await
        .expect("share");
    }
}

async fn invoice_with_order(server: &Rig, merchant_id: &str, order_id: &str) -> InvoiceView {
    let request = CreateInvoice {
        expires_in: Some(900),
        order_id: Some(order_id.to_owned()),
        ..common::invoice_request("25.00", Some(&[USDC_POLYGON]))
    };
    common::create_invoice_at(&server.state, merchant_id, &request, server.state.clock.now()).await
}

#[sqlx::test]
async fn seventy_thirty_with_platform_fee_credits_everyone_exactly(pool: PgPool) {
    let server = start(pool.clone()).await;
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let cr = creator(&pool, &merchant.merchant_id, "Ada").await;
    let body = json!({"amount":"25.00","currency":"USD","accepted":[USDC_POLYGON],
                      "splits":[{"creator": cr, "bps": 3000}], "platform_fee_bps": 200});
    let (status, created) = server.post_invoice(&merchant.api_key, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let invoice = server.invoice_view(created["id"].as_str().expect("id")).await;

    // 25 USDC even: 30% to the creator, 2% to the platform, 68% to the merchant, no dust.
    let applied = server.pay(&invoice, USDC_POLYGON, "0xa1", 25_000_000).await;
    assert!(applied.credited);
    let postings = server.entry(USDC_POLYGON, "0xa1").await;
    let merchant_account = AccountCode::merchant(&merchant.merchant_id).to_string();
    let creator_account = AccountCode::creator(&cr).to_string();
    let find = |postings: &[(String, SignedAmount)], account: &str| {
        postings.iter().find(|(a, _)| a == account).map(|(_, v)| *v)
    };
    assert_eq!(find(&postings, &creator_account), Some(credit(7_500_000)));
    assert_eq!(find(&postings, "revenue:platform_fees"), Some(credit(500_000)));
    assert_eq!(find(&postings, &merchant_account), Some(credit(17_000_000)));
    assert_eq!(find(&postings, "revenue:rounding"), None);
    assert_eq!(postings.len(), 4);
    let sum = postings.iter().try_fold(SignedAmount::ZERO, |acc, (_, v)| acc.checked_add(*v)).expect("sum");
    assert_eq!(sum, SignedAmount::ZERO);

    // An amount that does not divide evenly: 25000333 × 3000 / 10000 = 7500099.9 → 7500099;
    // × 200 / 10000 = 500006.66 → 500006; the allocated 3200 bps are 8000106.56 → 8000106, so one
    // unit of dust goes to rounding and the merchant gets 25000333 − 8000106 = 17000227.
    let (_, second) = server.post_invoice(&merchant.api_key, body).await;
    let second = server.invoice_view(second["id"].as_str().expect("id")).await;
    server.pay(&second, USDC_POLYGON, "0xa2", 25_000_333).await;
    let postings = server.entry(USDC_POLYGON, "0xa2").await;
    assert_eq!(find(&postings, &creator_account), Some(credit(7_500_099)));
    assert_eq!(find(&postings, "revenue:platform_fees"), Some(credit(500_006)));
    assert_eq!(find(&postings, "revenue:rounding"), Some(credit(1)));
    assert_eq!(find(&postings, &merchant_account), Some(credit(17_000_227)));
    let sum = postings.iter().try_fold(SignedAmount::ZERO, |acc, (_, v)| acc.checked_add(*v)).expect("sum");
    assert_eq!(sum, SignedAmount::ZERO);

    // Balances add up over both entries.
    assert_eq!(server.balance(&AccountCode::creator(&cr), USDC_POLYGON).await, positive(15_000_099));
    assert_eq!(server.balance(&AccountCode::merchant(&merchant.merchant_id), USDC_POLYGON).await, positive(34_000_227));
    assert_eq!(server.balance(&AccountCode::platform_fees(), USDC_POLYGON).await, positive(1_000_006));
    assert_eq!(server.balance(&AccountCode::rounding(), USDC_POLYGON).await, positive(1));
}

#[sqlx::test]
async fn longest_prefix_rule_wins_and_is_fixed_at_creation(pool: PgPool) {
    let server = start(pool.clone()).await;
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let (a, b) = (creator(&pool, &merchant.merchant_id, "A").await, creator(&pool, &merchant.merchant_id, "B").await);
    set_rule(&pool, &merchant.merchant_id, "", &[(&a, 1000)], 0).await;
    set_rule(&pool, &merchant.merchant_id, "vip-", &[(&b, 4000)], 100).await;
    set_rule(&pool, &merchant.merchant_id, "vip-gold-", &[(&b, 5000)], 100).await;

    let gold = invoice_with_order(&server, &merchant.merchant_id, "vip-gold-7").await;
    let plain = invoice_with_order(&server, &merchant.merchant_id, "order-7").await;
    // The rule changes after the invoices exist: they keep the split they were created with.
    set_rule(&pool, &merchant.merchant_id, "vip-gold-", &[(&a, 9000)], 0).await;
    set_rule(&pool, &merchant.merchant_id, "", &[(&b, 9000)], 0).await;

    server.pay(&gold, USDC_POLYGON, "0xb1", 10_000_000).await;
    server.pay(&plain, USDC_POLYGON, "0xb2", 10_000_000).await;
    assert_eq!(server.balance(&AccountCode::creator(&b), USDC_POLYGON).await, positive(5_000_000));
    assert_eq!(server.balance(&AccountCode::creator(&a), USDC_POLYGON).await, positive(1_000_000));
    assert_eq!(server.balance(&AccountCode::platform_fees(), USDC_POLYGON).await, positive(100_000));
    assert_eq!(
        server.balance(&AccountCode::merchant(&merchant.merchant_id), USDC_POLYGON).await,
        positive(4_900_000 + 9_000_000)
    );
}

#[sqlx::test]
async fn an_unapplied_payment_is_not_split(pool: PgPool) {
    let server = start(pool.clone()).await;
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let cr = creator(&pool, &merchant.merchant_id, "Ada").await;
    let body = json!({"amount":"25.00","currency":"USD","accepted":[USDC_POLYGON],
                      "splits":[{"creator": cr, "bps": 7000}], "platform_fee_bps": 200});
    let (status, created) = server.post_invoice(&merchant.api_key, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let invoice = server.invoice_view(created["id"].as_str().expect("id")).await;
    // USDT was not quoted: the payment is held for review, whole.
    let applied = server.pay(&invoice, USDT_POLYGON, "0xc1", 25_000_000).await;
    assert_eq!(applied.applied_to, AppliedTo::Unapplied);
    let postings = server.entry(USDT_POLYGON, "0xc1").await;
    assert_eq!(postings.len(), 2);
    assert_eq!(
        server.balance(&AccountCode::unapplied(&merchant.merchant_id), USDT_POLYGON).await,
        positive(25_000_000)
    );
    assert_eq!(server.balance(&AccountCode::creator(&cr), USDT_POLYGON).await, SignedAmount::ZERO);
    assert_eq!(server.balance(&AccountCode::platform_fees(), USDT_POLYGON).await, SignedAmount::ZERO);
}

#[sqlx::test]
async fn invalid_splits_are_refused(pool: PgPool) {
    let server = start(pool.clone()).await;
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let other = create_merchant(&pool, "Other").await.expect("merchant");
    let mine = creator(&pool, &merchant.merchant_id, "Mine").await;
    let theirs = creator(&pool, &other.merchant_id, "Theirs").await;
    let base = |splits: Value, fee: u32| {
        json!({"amount":"25.00","currency":"USD","accepted":[USDC_POLYGON],"splits": splits, "platform_fee_bps": fee})
    };
    for body in [
        base(json!([{"creator": mine, "bps": 9900}]), 200),
        base(json!([{"creator": mine, "bps": 0}]), 0),
        base(json!([{"creator": mine, "bps": 100}, {"creator": mine, "bps": 100}]), 0),
        base(json!([{"creator": "cr_nope", "bps": 100}]), 0),
        base(json!([{"creator": theirs, "bps": 100}]), 0),
        base(json!([]), 10_001),
    ] {
        let (status, response) = server.post_invoice(&merchant.api_key, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {response}");
        assert_eq!(response["error"]["code"], "parameter_invalid", "{response}");
    }
    let invoices: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices").fetch_one(&pool).await.expect("count");
    assert_eq!(invoices, 0);
}

impl Rig {
    /// The answer's status and body as text (CSV statements, refusals).
    async fn text(&self, method: reqwest::Method, key: &str, path: &str, body: Option<Value>) -> (StatusCode, String) {
        let mut request = self.request(method, Some(key), path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }

    async fn json(&self, method: reqwest::Method, key: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, text) = self.text(method, key, path, body).await;
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("json body: {text}")))
    }
}

const POLYGON_ADDRESS: &str = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";

#[sqlx::test]
async fn creators_rules_balances_and_statements_through_the_api(pool: PgPool) {
    use reqwest::Method;
    let server = start(pool.clone()).await;
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let key = merchant.api_key.as_str();

    // Lower-case addresses are accepted and stored checksummed.
    let (status, created) = server
        .json(Method::POST, key, "/v1/creators",
            Some(json!({"name":"Ada","payout_addresses":{"eip155:137": POLYGON_ADDRESS.to_lowercase()}})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let cr = created["id"].as_str().expect("id").to_owned();
    assert!(cr.starts_with("cr_"));
    assert_eq!(created["payout_addresses"]["eip155:137"], POLYGON_ADDRESS);
    let creator_key = created["api_key"].as_str().expect("key").to_owned();
    let (status, list) = server.json(Method::GET, key, "/v1/creators", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
    assert!(list["data"][0].get("api_key").is_none(), "the key is shown once: {list}");

    let rules = json!({"default": {"splits":[{"creator": cr, "bps": 3000}], "platform_fee_bps": 200}, "prefixes": []});
    let (status, stored) = server.json(Method::PUT, key, "/v1/split_rules", Some(rules.clone())).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    let (_, fetched) = server.json(Method::GET, key, "/v1/split_rules", None).await;
    assert_eq!(fetched, rules);

    let (_, created) = server
        .post_invoice(key, json!({"amount":"25.00","currency":"USD","accepted":[USDC_POLYGON]}))
        .await;
    // The invoice shows the split it was created with.
    assert_eq!(created["split"], json!({"splits":[{"creator": cr, "bps": 3000}], "platform_fee_bps": 200}), "{created}");
    let invoice = server.invoice_view(created["id"].as_str().expect("id")).await;
    // Seen, not yet confirmed: pending; then confirmed: available.
    let asset: payrail::money::AssetId = USDC_POLYGON.parse().expect("asset");
    let seen = ObservedPayment {
        invoice_id: invoice.id.clone(),
        chain: asset.chain().clone(),
        tx_ref: format!("{}:0xd1:0", asset.chain()),
        asset,
        address: None,
        amount: Amount::from_u64(25_000_001),
        confirmations: 0,
        confirmations_required: 2,
        block: None,
    };
    let mut tx = pool.begin().await.expect("begin");
    apply_payment(&mut tx, &server.state.ledger, &seen, server.state.clock.now()).await.expect("seen");
    tx.commit().await.expect("commit");
    let (status, me) = server.json(Method::GET, &creator_key, "/v1/creators/me", None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["id"], cr.as_str());
    assert_eq!(me["balances"], json!([{"asset": USDC_POLYGON, "available_minor": "0", "pending_minor": "7500000"}]));
    server.pay(&invoice, USDC_POLYGON, "0xd1", 25_000_001).await;
    let (_, me) = server.json(Method::GET, &creator_key, "/v1/creators/me", None).await;
    assert_eq!(me["balances"], json!([{"asset": USDC_POLYGON, "available_minor": "7500000", "pending_minor": "0"}]));

    let (status, csv) = server
        .text(Method::GET, &creator_key, "/v1/creators/me/statement?format=csv&from=2000-01-01T00:00:00Z", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "entry_id,at,kind,asset,amount_minor,invoice_id");
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[1].ends_with(&format!(",payment,{USDC_POLYGON},7500000,{}", invoice.id)), "{csv}");
    let (_, empty) = server
        .json(Method::GET, &creator_key, "/v1/creators/me/statement?to=2000-01-01T00:00:00Z", None)
        .await;
    assert_eq!(empty["data"], json!([]));
}

#[sqlx::test]
async fn merchant_and_creator_keys_stay_in_their_lanes(pool: PgPool) {
    use reqwest::Method;
    let server = start(pool.clone()).await;
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let other = create_merchant(&pool, "Other").await.expect("merchant");
    let (_, created) = server.json(Method::POST, &merchant.api_key, "/v1/creators", Some(json!({"name":"Ada"}))).await;
    let creator_key = created["api_key"].as_str().expect("key").to_owned();
    let (_, theirs) = server.json(Method::POST, &other.api_key, "/v1/creators", Some(json!({"name":"Bob"}))).await;
    let theirs = theirs["id"].as_str().expect("id").to_owned();

    let (status, _) = server.text(Method::GET, &merchant.api_key, "/v1/creators/me", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server.text(Method::GET, &merchant.api_key, "/v1/creators/me/statement", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (method, path) in [(Method::GET, "/v1/creators"), (Method::GET, "/v1/split_rules"), (Method::GET, "/v1/invoices")] {
        let (status, _) = server.text(method, &creator_key, path, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    // Another merchant's creator cannot be named in a rule or an invoice, and is not listed.
    let (status, body) = server
        .json(Method::PUT, &merchant.api_key, "/v1/split_rules",
            Some(json!({"default": {"splits":[{"creator": theirs, "bps": 100}]}})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("not found")), "{body}");
    let (_, list) = server.json(Method::GET, &merchant.api_key, "/v1/creators", None).await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
    let (status, body) = server.json(Method::GET, &merchant.api_key, &format!("/v1/creators/{theirs}"), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{body}");
    let mine = created["id"].as_str().expect("id");
    let (status, body) = server.json(Method::GET, &merchant.api_key, &format!("/v1/creators/{mine}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "Ada");
    let (status, _) = server.text(Method::GET, &creator_key, &format!("/v1/creators/{mine}"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[sqlx::test]
async fn bad_addresses_and_bps_sums_are_refused(pool: PgPool) {
    use reqwest::Method;
    let server = start(pool.clone()).await;
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let key = merchant.api_key.as_str();
    // One letter's case flipped: the EIP-55 checksum catches it.
    let bad_checksum = POLYGON_ADDRESS.replacen('a', "A", 1);
    for addresses in [
        json!({"eip155:137": bad_checksum}),
        json!({"eip155:137": "0x1234"}),
        json!({"eip155:137": "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"}),
        json!({"eip155:137": "0x0000000000000000000000000000000000000000"}),
        json!({"not a chain": POLYGON_ADDRESS}),
    ] {
        let (status, body) =
            server.json(Method::POST, key, "/v1/creators", Some(json!({"name":"Ada","payout_addresses": addresses}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{addresses} → {body}");
        assert_eq!(body["error"]["code"], "parameter_invalid");
    }
    let (_, created) = server.json(Method::POST, key, "/v1/creators", Some(json!({"name":"Ada"}))).await;
    let cr = created["id"].as_str().expect("id").to_owned();
    for rules in [
        json!({"default": {"splits":[{"creator": cr, "bps": 9900}], "platform_fee_bps": 101}}),
        json!({"prefixes": [{"order_id_prefix": "a-", "splits":[{"creator": cr, "bps": 10001}]}]}),
        json!({"prefixes": [{"order_id_prefix": "", "splits":[]}]}),
        json!({"prefixes": [{"order_id_prefix": "a\u{0}", "splits":[]}]}),
    ] {
        let (status, body) = server.json(Method::PUT, key, "/v1/split_rules", Some(rules.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{rules} → {body}");
    }
    let (_, fetched) = server.json(Method::GET, key, "/v1/split_rules", None).await;
    assert_eq!(fetched, json!({"default": null, "prefixes": []}));
    // PostgreSQL cannot store NUL in text: such input is refused up front, never a 500.
    let (status, body) = server.json(Method::POST, key, "/v1/creators", Some(json!({"name":"A\u{0}da"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    for invoice in [
        json!({"amount":"5.00","currency":"USD","order_id":"o\u{0}"}),
        json!({"amount":"5.00","currency":"USD","metadata":{"k":"v\u{0}"}}),
        json!({"amount":"5.00","currency":"USD","metadata":{"k\u{0}":"v"}}),
    ] {
        let (status, body) = server.post_invoice(key, invoice.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{invoice} → {body}");
    }
}

#[sqlx::test]
async fn creator_lists_and_statements_come_in_pages(pool: PgPool) {
    use reqwest::Method;
    let server = start(pool.clone()).await;
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let key = merchant.api_key.as_str();
    let mut ids = Vec::new();
    let mut creator_key = String::new();
    for name in ["A", "B", "C"] {
        let (_, created) = server.json(Method::POST, key, "/v1/creators", Some(json!({"name": name}))).await;
        ids.push(created["id"].as_str().expect("id").to_owned());
        creator_key = created["api_key"].as_str().expect("key").to_owned();
    }
    let (status, first) = server.json(Method::GET, key, "/v1/creators?limit=2", None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let page: Vec<&str> = first["data"].as_array().expect("data").iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!((page, first["has_more"].as_bool()), (vec![ids[0].as_str(), ids[1].as_str()], Some(true)));
    let (_, second) = server.json(Method::GET, key, &format!("/v1/creators?limit=2&starting_after={}", ids[1]), None).await;
    let page: Vec<&str> = second["data"].as_array().expect("data").iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!((page, second["has_more"].as_bool()), (vec![ids[2].as_str()], Some(false)));
    let (status, _) = server.text(Method::GET, key, "/v1/creators?limit=101", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = server.text(Method::GET, key, "/v1/creators?starting_after=O%00%C2%92", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a cursor that is not a creator id");

    // Three credits to the last creator: a statement of pages of two.
    for n in 1..=3u64 {
        let chain: payrail::money::ChainId = "eip155:137".parse().expect("chain");
        let entry = common::transfer(&format!("page-{n}"), AccountCode::chain_assets(&chain), AccountCode::creator(&ids[2]), USDC_POLYGON, n);
        server.state.ledger.post_now(&entry).await.expect("post");
    }
    let (_, first) = server.json(Method::GET, &creator_key, "/v1/creators/me/statement?limit=2", None).await;
    let amounts: Vec<&str> = first["data"].as_array().expect("data").iter().filter_map(|l| l["amount_minor"].as_str()).collect();
    assert_eq!((amounts, first["has_more"].as_bool()), (vec!["1", "2"], Some(true)), "{first}");
    let last = first["data"][1]["entry_id"].as_i64().expect("entry id");
    let (_, second) = server.json(Method::GET, &creator_key, &format!("/v1/creators/me/statement?limit=2&starting_after={last}"), None).await;
    let amounts: Vec<&str> = second["data"].as_array().expect("data").iter().filter_map(|l| l["amount_minor"].as_str()).collect();
    assert_eq!((amounts, second["has_more"].as_bool()), (vec!["3"], Some(false)), "{second}");
}

/// A merchant's balance transactions: the net of a split payment on its available balance, a payment
/// in an asset the invoice did not quote on its unapplied balance, pages that end on an entry, CSV
/// with the account column, and nobody else's postings.
#[sqlx::test]
async fn a_merchant_reads_its_own_postings_as_balance_transactions(pool: PgPool) {
    use reqwest::Method;
    let server = start(pool.clone()).await;
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let other = create_merchant(&pool, "Other").await.expect("other");
    let key = merchant.api_key.as_str();
    let cr = creator(&pool, &merchant.merchant_id, "Ada").await;
    let body = json!({"amount":"25.00","currency":"USD","accepted":[USDC_POLYGON],
                      "splits":[{"creator": cr, "bps": 3000}], "platform_fee_bps": 200});
    let (status, created) = server.post_invoice(key, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let invoice = server.invoice_view(created["id"].as_str().expect("id")).await;
    server.pay(&invoice, USDC_POLYGON, "0xb1", 25_000_000).await;
    // USDT was not quoted: held on the unapplied balance, unsplit.
    server.pay(&invoice, USDT_POLYGON, "0xb2", 3_000_000).await;

    let (status, page) = server.json(Method::GET, key, "/v1/balance_transactions", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["has_more"], false);
    let lines = page["data"].as_array().expect("data");
    assert_eq!(lines.len(), 2, "{page}");
    let merchant_account = AccountCode::merchant(&merchant.merchant_id).to_string();
    let unapplied_account = AccountCode::unapplied(&merchant.merchant_id).to_string();
    assert_eq!(
        (lines[0]["kind"].as_str(), lines[0]["account"].as_str(), lines[0]["asset"].as_str(), lines[0]["amount_minor"].as_str()),
        (Some("payment"), Some(merchant_account.as_str()), Some(USDC_POLYGON), Some("17000000"))
    );
    assert_eq!(
        (lines[1]["account"].as_str(), lines[1]["asset"].as_str(), lines[1]["amount_minor"].as_str()),
        (Some(unapplied_account.as_str()), Some(USDT_POLYGON), Some("3000000"))
    );
    assert_eq!(lines[0]["invoice_id"], json!(invoice.id));
    assert_eq!(lines[1]["invoice_id"], json!(invoice.id));

    // One line a page: the first page says more follow, the cursor gives the second and the end.
    let (_, first) = server.json(Method::GET, key, "/v1/balance_transactions?limit=1", None).await;
    assert_eq!(first["has_more"], true);
    let after = first["data"][0]["entry_id"].as_i64().expect("entry id");
    let (_, second) =
        server.json(Method::GET, key, &format!("/v1/balance_transactions?limit=1&starting_after={after}"), None).await;
    assert_eq!(second["data"][0]["account"].as_str(), Some(unapplied_account.as_str()));
    assert_eq!(second["has_more"], false);

    let (status, csv) = server.text(Method::GET, key, "/v1/balance_transactions?format=csv", None).await;
    assert_eq!(status, StatusCode::OK, "{csv}");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "entry_id,at,kind,account,asset,amount_minor,invoice_id");
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[1].ends_with(&format!(",payment,{merchant_account},{USDC_POLYGON},17000000,{}", invoice.id)), "{csv}");

    // Another merchant sees none of it; a creator key and a bad query are refused.
    let (status, theirs) = server.json(Method::GET, &other.api_key, "/v1/balance_transactions", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(theirs["data"], json!([]));
    let mut conn = pool.acquire().await.expect("conn");
    let creator_key = payrail::merchant::issue_creator_key(&mut conn, &merchant.merchant_id, &cr).await.expect("creator key");
    let (status, _) = server.text(Method::GET, &creator_key, "/v1/balance_transactions", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for query in ["format=xml", "from=yesterday", "limit=0", "limit=1001"] {
        let (status, body) = server.json(Method::GET, key, &format!("/v1/balance_transactions?{query}"), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["error"]["code"], "parameter_invalid");
    }
    let (status, _) = server.text(Method::GET, key, "/v1/balance_transactions?surprise=1", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}
