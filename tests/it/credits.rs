//! Customers and credits over HTTP against PostgreSQL: grants, spending order, splits to the unit,
//! idempotency, transfers and tips, expiry as breakage, and spends racing on one customer.

use std::ops::Deref;

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::common;
use payrail::ledger::AccountCode;

struct Shop {
    server: common::Server,
    key: String,
    merchant_id: String,
}

impl Deref for Shop {
    type Target = common::Server;
    fn deref(&self) -> &common::Server {
        &self.server
    }
}

impl Shop {
    async fn start(pool: PgPool) -> Self {
        let server = common::Server::start(pool).await;
        let merchant = payrail::merchant::create_merchant(&server.state.pool, "Comics").await.expect("merchant");
        Shop { server, key: merchant.api_key, merchant_id: merchant.merchant_id }
    }

    async fn call(&self, path: &str, body: Value, key: Option<&str>) -> (StatusCode, Value) {
        self.server.post(&self.key, path, body, key).await
    }

    async fn read(&self, path: &str) -> Value {
        let (status, body) = self.server.get(&self.key, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn customer(&self, external_id: &str) -> String {
        let (status, body) = self.call("/v1/customers", json!({ "external_id": external_id }), None).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }

    async fn coins(&self) -> String {
        let (status, body) = self.call("/v1/credit_currencies", json!({ "code": "coins", "name": "Coins", "peg": "0.01", "peg_currency": "USD" }), None).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["asset"].as_str().expect("asset").to_owned()
    }

    async fn grant(&self, customer: &str, amount: u64, source: &str, expires_in: Option<Duration>) -> Value {
        let mut body = json!({ "currency": "coins", "amount_minor": amount.to_string(), "source": source });
        if let Some(after) = expires_in {
            body["expires_at"] = json!(self.clock.now() + after);
        }
        let (status, grant) = self.call(&format!("/v1/customers/{customer}/grants"), body, Some(&payrail::ids::new_id("k"))).await;
        assert_eq!(status, StatusCode::CREATED, "{grant}");
        grant
    }

    async fn spend(&self, customer: &str, body: Value, key: &str) -> (StatusCode, Value) {
        self.call(&format!("/v1/customers/{customer}/spend"), body, Some(key)).await
    }

    async fn creator(&self, name: &str) -> String {
        let request = payrail::creator::CreateCreator { name: name.to_owned(), payout_addresses: Default::default() };
        payrail::creator::create_creator(&self.state.pool, &self.merchant_id, &request).await.expect("creator").creator.id
    }

    async fn total(&self, customer: &str) -> String {
        let balance = self.read(&format!("/v1/customers/{customer}/balance")).await;
        balance["balances"].as_array().and_then(|b| b.first()).map_or_else(|| "0".to_owned(), |b| b["total_minor"].as_str().expect("total").to_owned())
    }

    async fn held(&self, account: &AccountCode, asset: &str) -> String {
        self.balance(account, asset).await.to_string()
    }
}

use payrail::clock::Clock;

#[sqlx::test]
async fn customers_are_created_found_by_external_id_updated_and_paged(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let (status, ada) = shop.call("/v1/customers", json!({ "external_id": "user-1", "email": "ada@example.com", "metadata": { "tier": "gold" } }), None).await;
    assert_eq!(status, StatusCode::CREATED, "{ada}");
    assert_eq!((ada["object"].as_str(), ada["metadata"]["tier"].as_str()), (Some("customer"), Some("gold")));
    let (status, again) = shop.call("/v1/customers", json!({ "external_id": "user-1" }), None).await;
    assert_eq!((status, again["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("already_exists")), "{again}");
    for body in [json!({ "external_id": "" }), json!({ "external_id": "x", "email": "not-an-email" }), json!({ "external_id": "x", "colour": "red" })] {
        let (status, error) = shop.call("/v1/customers", body.clone(), None).await;
        assert!(status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST, "{body} → {status} {error}");
    }
    shop.customer("user-2").await;
    shop.customer("user-3").await;

    let found = shop.read("/v1/customers?external_id=user-1").await;
    assert_eq!(found["data"][0]["id"], ada["id"], "{found}");
    let first = shop.read("/v1/customers?limit=2").await;
    assert_eq!((first["data"].as_array().map(Vec::len), first["has_more"].as_bool()), (Some(2), Some(true)), "{first}");
    let last = first["data"][1]["id"].as_str().expect("id");
    let rest = shop.read(&format!("/v1/customers?limit=2&starting_after={last}")).await;
    assert_eq!((rest["data"][0]["id"].clone(), rest["has_more"].as_bool()), (ada["id"].clone(), Some(false)), "{rest}");

    let id = ada["id"].as_str().expect("id");
    let (status, updated) = shop.send(reqwest::Method::PATCH, Some(&shop.key), &format!("/v1/customers/{id}"), Some(json!({ "email": null, "name": "Ada" })), None).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!((updated["email"].clone(), updated["name"].as_str(), updated["metadata"]["tier"].as_str()), (Value::Null, Some("Ada"), Some("gold")));
    // Another merchant's key does not see it.
    let other = payrail::merchant::create_merchant(&shop.state.pool, "Other").await.expect("merchant");
    let (status, _) = shop.get(&other.api_key, &format!("/v1/customers/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A currency or promo code no such object can have — a NUL byte, which PostgreSQL refuses in any
/// text — is not found, on every route that names one.
#[sqlx::test]
async fn a_code_with_a_nul_byte_is_not_found(pool: PgPool) {
    let shop = Shop::start(pool).await;
    shop.coins().await;
    let reader = shop.customer("reader-nul").await;
    let (status, body) = shop.spend(&reader, json!({ "amount_minor": "5", "currency": "\u{0}f" }), "nul-spend").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{body}");
    let grant = json!({ "currency": "co\u{0}ins", "amount_minor": "5", "source": "bonus" });
    let (status, body) = shop.call(&format!("/v1/customers/{reader}/grants"), grant, Some("nul-grant")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // A promo code likewise, on an invoice.
    let invoice = json!({ "amount": "5.00", "currency": "USD", "promo_code": "sp\u{0}ring" });
    let (status, body) = shop.server.post(&shop.key, "/v1/invoices", invoice, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{body}");
}

#[sqlx::test]
async fn spending_takes_the_soonest_expiring_lot_first_and_splits_to_the_unit(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let asset = shop.coins().await;
    assert_eq!(asset, format!("credit:{}/coins", shop.merchant_id));
    let writer = shop.creator("Writer").await;
    let reader = shop.customer("reader").await;
    let purchase = shop.grant(&reader, 100, "bonus", None).await;
    let reward = shop.grant(&reader, 5, "reward", Some(Duration::days(30))).await;
    assert_eq!(shop.total(&reader).await, "105");

    // 10 coins for a chapter, 70 % to its writer: the reward lot (expiring) goes first.
    let body = json!({ "currency": "coins", "amount_minor": "10", "resource": "chapter/1", "splits": [{ "creator": writer, "bps": 7000 }] });
    let (status, spent) = shop.spend(&reader, body.clone(), "spend-1").await;
    assert_eq!(status, StatusCode::CREATED, "{spent}");
    assert_eq!(spent["amount_minor"], "-10");
    let lots: Vec<(String, String)> = spent["detail"]["lots"]
        .as_array()
        .expect("lots")
        .iter()
        .map(|l| (l["lot"].as_str().expect("lot").to_owned(), l["amount_minor"].as_str().expect("amount").to_owned()))
        .collect();
    assert_eq!(lots, vec![(reward["detail"]["lot"].as_str().expect("lot").to_owned(), "5".to_owned()), (purchase["detail"]["lot"].as_str().expect("lot").to_owned(), "5".to_owned())]);
    assert_eq!(shop.held(&AccountCode::creator(&writer), &asset).await, "7");
    assert_eq!(shop.held(&AccountCode::credits_revenue(&shop.merchant_id), &asset).await, "3");

    // The same request again under its key: the first answer again, not spent twice; another body
    // under it: refused.
    let (status, replay) = shop.spend(&reader, body.clone(), "spend-1").await;
    assert_eq!((status, replay["id"].clone()), (StatusCode::CREATED, spent["id"].clone()), "{replay}");
    let (status, reused) = shop.spend(&reader, json!({ "currency": "coins", "amount_minor": "11" }), "spend-1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{reused}");
    // Even when the HTTP answer was lost (the process died after the commit): the movement's own
    // key finds it.
    let request: payrail::credits::movement::SpendRequest = serde_json::from_value(body).expect("request");
    let again = payrail::credits::movement::spend(&shop.state.pool, &shop.state.ledger, &shop.merchant_id, &reader, &request, "spend-1", shop.clock.now())
        .await
        .expect("replayed");
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.transaction.id, spent["id"].as_str().expect("id"));
    let other: payrail::credits::movement::SpendRequest = serde_json::from_value(json!({ "currency": "coins", "amount_minor": "11" })).expect("request");
    let refused = payrail::credits::movement::spend(&shop.state.pool, &shop.state.ledger, &shop.merchant_id, &reader, &other, "spend-1", shop.clock.now()).await;
    assert!(matches!(refused, Err(payrail::credits::CreditsError::KeyReused { .. })), "{refused:?}");
    assert_eq!(shop.total(&reader).await, "95");

    // 33 coins at 70 % to the writer and a 5 % fee: 23 (23.1) and 1 (1.65), the merchant the other 9.
    let body = json!({ "currency": "coins", "amount_minor": "33", "splits": [{ "creator": writer, "bps": 7000 }], "platform_fee_bps": 500 });
    let (status, spent) = shop.spend(&reader, body, "spend-2").await;
    assert_eq!(status, StatusCode::CREATED, "{spent}");
    let shares = &spent["detail"]["shares"];
    let creator_share = shares[AccountCode::creator(&writer).as_str()].as_str().expect("creator");
    let fee = shares["revenue:platform_fees"].as_str().expect("fee");
    assert_eq!((creator_share, fee), ("23", "1"), "{shares}");
    let total: u64 = shares.as_object().expect("shares").values().map(|v| v.as_str().expect("share").parse::<u64>().expect("n")).sum();
    assert_eq!(total, 33, "{shares}");

    // More than is left: 402 with what is available; no key: 400; nothing moved.
    let (status, short) = shop.spend(&reader, json!({ "currency": "coins", "amount_minor": "63" }), "spend-3").await;
    assert_eq!((status, short["error"]["code"].as_str()), (StatusCode::PAYMENT_REQUIRED, Some("insufficient_credits")), "{short}");
    assert!(short["error"]["message"].as_str().is_some_and(|m| m.contains("62 coins available")), "{short}");
    let (status, keyless) = shop.call(&format!("/v1/customers/{reader}/spend"), json!({ "currency": "coins", "amount_minor": "1" }), None).await;
    assert_eq!((status, keyless["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("idempotency_key_required")), "{keyless}");
    assert_eq!(shop.total(&reader).await, "62");

    let history = shop.read(&format!("/v1/customers/{reader}/transactions")).await;
    let kinds: Vec<(&str, &str)> = history["data"].as_array().expect("data").iter().map(|t| (t["kind"].as_str().expect("kind"), t["amount_minor"].as_str().expect("amount"))).collect();
    assert_eq!(kinds, [("spend", "-33"), ("spend", "-10"), ("grant", "5"), ("grant", "100")]);
    let csv = shop.request(reqwest::Method::GET, Some(&shop.key), &format!("/v1/customers/{reader}/transactions?format=csv&limit=3")).send().await.expect("csv");
    assert_eq!(csv.headers().get("payrail-has-more").and_then(|v| v.to_str().ok()), Some("true"));
    let text = csv.text().await.expect("text");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("id,created_at,kind,currency,amount_minor") && lines[1].contains(",spend,coins,-33,"), "{text}");
    let events: Vec<String> = sqlx::query_scalar("SELECT event_type FROM outbox WHERE object_id = $1 ORDER BY id").bind(&reader).fetch_all(&shop.state.pool).await.expect("outbox");
    assert_eq!(events, ["credits.granted", "credits.granted", "credits.spent", "credits.spent"]);
}

#[sqlx::test]
async fn expired_lots_are_booked_as_breakage_once(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let asset = shop.coins().await;
    let reader = shop.customer("reader").await;
    shop.grant(&reader, 50, "reward", Some(Duration::hours(1))).await;
    shop.grant(&reader, 10, "bonus", None).await;
    let (status, _) = shop.spend(&reader, json!({ "currency": "coins", "amount_minor": "20" }), "s1").await;
    assert_eq!(status, StatusCode::CREATED);
    let balance = shop.read(&format!("/v1/customers/{reader}/balance")).await;
    assert_eq!((balance["balances"][0]["next_expiry_minor"].as_str(), balance["balances"][0]["value"].as_str()), (Some("30"), Some("0.40")), "{balance}");

    // Past its expiry the rest of the lot is not spendable, even before the job ran.
    shop.clock.advance(Duration::hours(2));
    let (status, short) = shop.spend(&reader, json!({ "currency": "coins", "amount_minor": "11" }), "s2").await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{short}");
    let expired = payrail::credits::movement::expire_due(&shop.state.pool, &shop.state.ledger, shop.clock.now()).await.expect("expire");
    assert_eq!(expired, 1);
    let again = payrail::credits::movement::expire_due(&shop.state.pool, &shop.state.ledger, shop.clock.now()).await.expect("expire again");
    assert_eq!(again, 0);
    assert_eq!(shop.held(&AccountCode::breakage(&shop.merchant_id), &asset).await, "30");
    assert_eq!(shop.total(&reader).await, "10");
    let history = shop.read(&format!("/v1/customers/{reader}/transactions?limit=1")).await;
    assert_eq!((history["data"][0]["kind"].as_str(), history["data"][0]["amount_minor"].as_str()), (Some("expiry"), Some("-30")), "{history}");
    let expired_events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'credits.expired'").fetch_one(&shop.state.pool).await.expect("count");
    assert_eq!(expired_events, 1);
}

#[sqlx::test]
async fn gifts_keep_their_expiry_and_tips_pay_the_creator_less_the_fee(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let asset = shop.coins().await;
    let writer = shop.creator("Writer").await;
    let rules = json!({ "default": { "splits": [], "platform_fee_bps": 1000 } });
    let (status, body) = shop.send(reqwest::Method::PUT, Some(&shop.key), "/v1/split_rules", Some(rules), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ada = shop.customer("ada").await;
    let bob = shop.customer("bob").await;
    let reward = shop.grant(&ada, 8, "reward", Some(Duration::days(7))).await;
    shop.grant(&ada, 100, "bonus", None).await;

    let gift = json!({ "kind": "gift", "from_customer": ada, "to_customer": bob, "currency": "coins", "amount_minor": "12", "description": "happy birthday" });
    let (status, sent) = shop.call("/v1/transfers", gift.clone(), Some("gift-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_eq!((sent["kind"].as_str(), sent["amount_minor"].as_str(), sent["counterparty"].as_str()), (Some("gift_sent"), Some("-12"), Some(bob.as_str())));
    let (status, again) = shop.call("/v1/transfers", gift, Some("gift-1")).await;
    assert_eq!((status, again["id"].clone()), (StatusCode::CREATED, sent["id"].clone()), "a retry is answered, not sent again");
    let bobs = shop.read(&format!("/v1/customers/{bob}/balance")).await;
    let lots = bobs["balances"][0]["lots"].as_array().expect("lots");
    let kept: Vec<(Option<&str>, &str)> = lots.iter().map(|l| (l["expires_at"].as_str(), l["remaining_minor"].as_str().expect("remaining"))).collect();
    let reward_expiry = reward["detail"]["expires_at"].as_str().expect("expiry");
    assert_eq!(kept, vec![(Some(reward_expiry), "8"), (None, "4")], "{bobs}");
    assert_eq!(shop.total(&ada).await, "96");

    // A tip of 12 to the writer under a 10 % platform fee: 10 (10.8) to the writer, 1 (1.2) to the
    // platform, the dust of 1 to rounding.
    let tip = json!({ "kind": "tip", "from_customer": bob, "to_creator": writer, "currency": "coins", "amount_minor": "12" });
    let (status, tipped) = shop.call("/v1/transfers", tip, Some("tip-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{tipped}");
    assert_eq!(shop.held(&AccountCode::creator(&writer), &asset).await, "10");
    assert_eq!(shop.held(&AccountCode::platform_fees(), &asset).await, "1");
    assert_eq!(shop.held(&AccountCode::rounding(), &asset).await, "1");
    let (status, short) = shop.call("/v1/transfers", json!({ "kind": "tip", "from_customer": bob, "to_creator": writer, "currency": "coins", "amount_minor": "1" }), Some("tip-2")).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{short}");
    for bad in [
        json!({ "kind": "gift", "from_customer": ada, "to_customer": ada, "currency": "coins", "amount_minor": "1" }),
        json!({ "kind": "tip", "from_customer": ada, "to_customer": bob, "currency": "coins", "amount_minor": "1" }),
        json!({ "kind": "loan", "from_customer": ada, "to_customer": bob, "currency": "coins", "amount_minor": "1" }),
        json!({ "kind": "gift", "from_customer": ada, "to_customer": bob, "currency": "gems", "amount_minor": "1" }),
    ] {
        let (status, error) = shop.call("/v1/transfers", bad.clone(), Some(&payrail::ids::new_id("k"))).await;
        assert!(status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::NOT_FOUND, "{bad} → {status} {error}");
    }
}

/// Spends racing on one customer in random order never take more than it has: exactly as many
/// succeed as the balance covers, the rest get 402, and the ledger agrees.
#[sqlx::test]
async fn concurrent_spends_never_overdraw(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let asset = shop.coins().await;
    let reader = shop.customer("reader").await;
    shop.grant(&reader, 47, "bonus", None).await;
    shop.grant(&reader, 30, "reward", Some(Duration::days(1))).await;
    // Amounts 1..=12 in a shuffled order: together 78, one more than the 77 granted.
    let mut amounts: Vec<u64> = (1..=12).collect();
    let seed = u64::try_from(shop.clock.now().timestamp_nanos_opt().unwrap_or(7)).unwrap_or(7) ^ u64::from(std::process::id());
    let mut state = seed | 1;
    for i in (1..amounts.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        amounts.swap(i, usize::try_from(state % u64::try_from(i + 1).expect("small")).expect("small"));
    }
    let results = futures::future::join_all(amounts.iter().map(|amount| {
        let shop = &shop;
        let reader = reader.clone();
        async move {
            let (status, _) = shop.spend(&reader, json!({ "currency": "coins", "amount_minor": amount.to_string() }), &format!("race-{amount}")).await;
            (*amount, status)
        }
    }))
    .await;
    let spent: u64 = results.iter().filter(|(_, s)| *s == StatusCode::CREATED).map(|(a, _)| a).sum();
    assert!(results.iter().all(|(_, s)| *s == StatusCode::CREATED || *s == StatusCode::PAYMENT_REQUIRED), "{results:?} (seed {seed})");
    assert!(spent <= 77 && results.iter().any(|(_, s)| *s == StatusCode::PAYMENT_REQUIRED), "{results:?} (seed {seed})");
    assert_eq!(shop.total(&reader).await, (77 - spent).to_string(), "seed {seed}");
    assert_eq!(shop.held(&AccountCode::credits_revenue(&shop.merchant_id), &asset).await, spent.to_string());
}

impl Shop {
    /// A pack of 100 + 10 bonus coins for 1.00 USD, its lots expiring after 30 days.
    async fn pack(&self) -> String {
        let body = json!({ "name": "100 coins", "currency": "coins", "credits": "100", "bonus_credits": "10", "price": "1.00", "price_currency": "USD", "expires_in_s": 2_592_000 });
        let (status, pack) = self.call("/v1/credit_packs", body, None).await;
        assert_eq!(status, StatusCode::CREATED, "{pack}");
        pack["id"].as_str().expect("id").to_owned()
    }

    /// Pays `invoice` in full with USDC on Polygon, as the watcher would report it.
    async fn pay(&self, invoice: &Value, tx: &str, confirmations: u32) -> payrail::invoice::ObservedPayment {
        let option = invoice["payment_options"].as_array().expect("options").iter().find(|o| o["asset"] == common::USDC_POLYGON).expect("a USDC option");
        let payment = payrail::invoice::ObservedPayment {
            invoice_id: invoice["id"].as_str().expect("id").to_owned(),
            chain: "eip155:137".parse().expect("chain"),
            asset: common::USDC_POLYGON.parse().expect("asset"),
            tx_ref: format!("eip155:137:{tx}:0"),
            address: None,
            amount: payrail::money::Amount::parse_decimal(option["amount_minor"].as_str().expect("amount"), 0).expect("amount"),
            confirmations,
            confirmations_required: 2,
            block: None,
        };
        let mut db = self.state.pool.begin().await.expect("begin");
        payrail::invoice::apply_payment(&mut db, &self.state.ledger, &payment, self.clock.now()).await.expect("apply");
        db.commit().await.expect("commit");
        payment
    }

    async fn purchase_status(&self, invoice: &str) -> (String, String) {
        sqlx::query_as("SELECT status, owed_minor::text FROM credit_purchases WHERE invoice_id = $1").bind(invoice).fetch_one(&self.state.pool).await.expect("purchase")
    }
}

/// A pack bought with USDC: its credits and bonus are granted in the transaction that makes the
/// invoice paid, once; a reorg that takes the payment back reverses what is unspent and records
/// what was spent; mined again, the pack is granted less what is owed.
#[sqlx::test]
async fn a_pack_paid_in_usdc_grants_once_and_a_reorg_takes_back_what_is_unspent(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let asset = shop.coins().await;
    let pack = shop.pack().await;
    let reader = shop.customer("reader").await;
    let (status, bought) = shop.call(&format!("/v1/customers/{reader}/purchases"), json!({ "pack": pack }), Some("buy-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{bought}");
    assert_eq!((bought["purchase"]["status"].as_str(), bought["invoice"]["amount"].as_str()), (Some("pending"), Some("1.00")), "{bought}");
    let invoice = bought["invoice"].clone();
    let invoice_id = invoice["id"].as_str().expect("id").to_owned();
    assert_eq!(invoice["order_id"].as_str(), Some(format!("credits/{pack}").as_str()));

    // Seen, not yet confirmed: nothing granted. Confirmed: 100 + 10, once, however often reported.
    let payment = shop.pay(&invoice, "0xa1", 0).await;
    assert_eq!(shop.total(&reader).await, "0");
    shop.pay(&invoice, "0xa1", 2).await;
    shop.pay(&invoice, "0xa1", 3).await;
    assert_eq!(shop.total(&reader).await, "110");
    assert_eq!(shop.purchase_status(&invoice_id).await, ("granted".to_owned(), "0".to_owned()));
    let balance = shop.read(&format!("/v1/customers/{reader}/balance")).await;
    let sources: Vec<&str> = balance["balances"][0]["lots"].as_array().expect("lots").iter().map(|l| l["source"].as_str().expect("source")).collect();
    assert_eq!(sources, ["purchase", "bonus"], "{balance}");
    assert!(balance["balances"][0]["next_expiry"].is_string(), "{balance}");
    assert_eq!(shop.held(&AccountCode::credits_issued(&shop.merchant_id), &asset).await, "-110");

    // 30 spent, then the payment's block leaves the chain: the 80 left are taken back, 30 owed.
    let (status, _) = shop.spend(&reader, json!({ "currency": "coins", "amount_minor": "30" }), "s1").await;
    assert_eq!(status, StatusCode::CREATED);
    let mut tx = shop.state.pool.begin().await.expect("begin");
    payrail::invoice::orphan_payment(&mut tx, &shop.state.ledger, &payment.tx_ref, shop.clock.now()).await.expect("orphan");
    tx.commit().await.expect("commit");
    assert_eq!(shop.total(&reader).await, "0");
    assert_eq!(shop.purchase_status(&invoice_id).await, ("reversed".to_owned(), "30".to_owned()));
    let history = shop.read(&format!("/v1/customers/{reader}/transactions?limit=1")).await;
    assert_eq!((history["data"][0]["kind"].as_str(), history["data"][0]["amount_minor"].as_str()), (Some("reversal"), Some("-80")), "{history}");

    // Mined again: granted again, less the 30 already spent — 110 in all for one payment.
    shop.pay(&invoice, "0xa1", 2).await;
    assert_eq!(shop.total(&reader).await, "80");
    assert_eq!(shop.purchase_status(&invoice_id).await, ("granted".to_owned(), "0".to_owned()));
    let events: Vec<String> = sqlx::query_scalar("SELECT event_type FROM outbox WHERE object_id = $1 AND event_type LIKE 'credits.%' ORDER BY id")
        .bind(&reader)
        .fetch_all(&shop.state.pool)
        .await
        .expect("outbox");
    assert_eq!(events, ["credits.granted", "credits.granted", "credits.spent", "credits.reversed", "credits.granted", "credits.granted"]);

    // An inactive pack is not sold; an unknown one is not found.
    let (status, _) = shop.send(reqwest::Method::PATCH, Some(&shop.key), &format!("/v1/credit_packs/{pack}"), Some(json!({ "active": false })), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, refused) = shop.call(&format!("/v1/customers/{reader}/purchases"), json!({ "pack": pack }), None).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("pack_inactive")), "{refused}");
    let (status, _) = shop.call(&format!("/v1/customers/{reader}/purchases"), json!({ "pack": "pack_0000000000000000" }), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// An underpaid purchase grants nothing until the merchant accepts it (`settled`); marking it
/// `invalid` afterwards takes back what is unspent.
#[sqlx::test]
async fn an_underpaid_purchase_grants_when_settled_and_is_taken_back_when_marked_invalid(pool: PgPool) {
    let shop = Shop::start(pool).await;
    shop.coins().await;
    let pack = shop.pack().await;
    let reader = shop.customer("reader").await;
    let (_, bought) = shop.call(&format!("/v1/customers/{reader}/purchases"), json!({ "pack": pack }), None).await;
    let mut invoice = bought["invoice"].clone();
    let invoice_id = invoice["id"].as_str().expect("id").to_owned();
    // Half of what is due.
    let options = invoice["payment_options"].as_array_mut().expect("options");
    for option in options.iter_mut() {
        let due: u64 = option["amount_minor"].as_str().expect("amount").parse().expect("amount");
        option["amount_minor"] = json!((due / 2).to_string());
    }
    shop.pay(&invoice, "0xb1", 2).await;
    assert_eq!(shop.total(&reader).await, "0");
    let (status, marked) = shop.call(&format!("/v1/invoices/{invoice_id}/mark"), json!({ "status": "settled" }), None).await;
    assert_eq!(status, StatusCode::OK, "{marked}");
    assert_eq!(shop.total(&reader).await, "110");
    let (status, marked) = shop.call(&format!("/v1/invoices/{invoice_id}/mark"), json!({ "status": "invalid" }), None).await;
    assert_eq!((status, marked["status"].as_str()), (StatusCode::OK, Some("invalid")), "{marked}");
    assert_eq!(shop.total(&reader).await, "0");
    assert_eq!(shop.purchase_status(&invoice_id).await, ("reversed".to_owned(), "0".to_owned()));
}

/// Promo codes: a percentage off shows on the invoice, bonus credits add to the grant, a code used
/// up or used by the customer as often as it may is refused, and 50 purchases at once with a code
/// of 10 redemptions give exactly 10.
#[sqlx::test]
async fn promo_codes_discount_add_bonus_and_are_never_redeemed_more_than_allowed(pool: PgPool) {
    let shop = Shop::start(pool).await;
    shop.coins().await;
    let pack = shop.pack().await;
    let reader = shop.customer("reader").await;
    let promo = |body: Value| shop.call("/v1/promo_codes", body, None);
    let (status, created) = promo(json!({ "code": "Spring20", "percent_off": 20, "per_customer_max": 1 })).await;
    assert_eq!((status, created["code"].as_str()), (StatusCode::CREATED, Some("spring20")), "{created}");
    let (status, _) = promo(json!({ "code": "SPRING20", "percent_off": 5 })).await;
    assert_eq!(status, StatusCode::CONFLICT, "codes are the same in any case");
    for bad in [json!({ "code": "x", "percent_off": 5 }), json!({ "code": "two", "percent_off": 5, "bonus_credits": "5" }), json!({ "code": "off", "amount_off": "1.00" })] {
        let (status, error) = promo(bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad} → {error}");
    }
    let (status, _) = promo(json!({ "code": "MOREBONUS", "bonus_credits": "25" })).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, bought) = shop.call(&format!("/v1/customers/{reader}/purchases"), json!({ "pack": pack, "promo_code": "SPRING20" }), None).await;
    assert_eq!(status, StatusCode::CREATED, "{bought}");
    assert_eq!((bought["invoice"]["amount"].as_str(), bought["purchase"]["discount_minor"].as_str()), (Some("0.80"), Some("20")), "{bought}");
    assert_eq!(bought["invoice"]["metadata"]["credit_purchase"]["promo_code"], "spring20");
    // The hosted checkout page names what is bought and the discount.
    let page = shop.request(reqwest::Method::GET, None, &format!("/pay/{}", bought["invoice"]["id"].as_str().expect("id"))).send().await.expect("page");
    let html = page.text().await.expect("html");
    assert!(html.contains("<p class=\"purchase\" id=\"purchase\">100 + 10 bonus Coins</p>"), "{html}");
    assert!(html.contains("Promo code SPRING20: $0.20 off"), "{html}");
    let (status, again) = shop.call(&format!("/v1/customers/{reader}/purchases"), json!({ "pack": pack, "promo_code": "spring20" }), None).await;
    assert_eq!((status, again["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("promo_refused")), "{again}");
    let voided: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices WHERE status = 'void'").fetch_one(&shop.state.pool).await.expect("void");
    assert_eq!(voided, 1, "the invoice of the refused purchase is void");

    let (status, bonus) = shop.call(&format!("/v1/customers/{reader}/purchases"), json!({ "pack": pack, "promo_code": "morebonus" }), None).await;
    assert_eq!(status, StatusCode::CREATED, "{bonus}");
    shop.pay(&bonus["invoice"], "0xc1", 2).await;
    assert_eq!(shop.total(&reader).await, "135", "100 + 10 bonus + 25 from the code");

    // 50 at once against 10 redemptions.
    let (status, _) = promo(json!({ "code": "LAUNCH", "amount_off": "0.50", "currency": "USD", "max_redemptions": 10 })).await;
    assert_eq!(status, StatusCode::CREATED);
    let mut customers = Vec::new();
    for i in 0..5 {
        customers.push(shop.customer(&format!("rush-{i}")).await);
    }
    let results = futures::future::join_all((0..50).map(|i| {
        let (shop, customer, pack) = (&shop, customers[i % 5].clone(), pack.clone());
        async move { shop.call(&format!("/v1/customers/{customer}/purchases"), json!({ "pack": pack, "promo_code": "launch" }), None).await.0 }
    }))
    .await;
    let won = results.iter().filter(|s| **s == StatusCode::CREATED).count();
    assert_eq!(won, 10, "{results:?}");
    assert!(results.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT), "{results:?}");
    let redeemed: i64 = sqlx::query_scalar("SELECT redeemed FROM promo_codes WHERE code = 'launch'").fetch_one(&shop.state.pool).await.expect("redeemed");
    let redemptions: i64 = sqlx::query_scalar("SELECT count(*) FROM promo_redemptions r JOIN promo_codes p ON p.id = r.promo_id WHERE p.code = 'launch'")
        .fetch_one(&shop.state.pool)
        .await
        .expect("redemptions");
    assert_eq!((redeemed, redemptions), (10, 10));
}

/// Per-customer limits in fiat value: spends racing past the daily limit are stopped at it, and
/// purchases past the daily limit are refused (their invoice void); the next day counts anew.
#[sqlx::test]
async fn limits_hold_under_concurrency_and_reset_each_day(pool: PgPool) {
    let shop = Shop::start(pool).await;
    shop.coins().await;
    let pack = shop.pack().await;
    let reader = shop.customer("reader").await;
    shop.grant(&reader, 1_000, "bonus", None).await;
    let limits = json!({ "currency": "USD", "spend_per_day": "0.25", "transfer_per_day": "0.05", "purchase_per_day": "1.50" });
    let (status, set) = shop.send(reqwest::Method::PUT, Some(&shop.key), "/v1/credit_limits", Some(limits), None).await;
    assert_eq!((status, set["spend_per_day"].as_str()), (StatusCode::OK, Some("0.25")), "{set}");

    // Ten spends of 10 coins (0.10 USD) at once: two fit in 0.25.
    let results = futures::future::join_all((0..10).map(|i| {
        let (shop, reader) = (&shop, reader.clone());
        async move { shop.spend(&reader, json!({ "currency": "coins", "amount_minor": "10" }), &format!("rush-{i}")).await }
    }))
    .await;
    let passed = results.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
    assert_eq!(passed, 2, "{results:?}");
    let refused = results.iter().find(|(s, _)| *s == StatusCode::CONFLICT).expect("a refusal");
    assert_eq!(refused.1["error"]["code"], "credit_limit_exceeded", "{refused:?}");
    assert!(refused.1["error"]["message"].as_str().is_some_and(|m| m.contains("0.05 USD remain")), "{refused:?}");
    let other = shop.customer("other").await;
    let (status, _) = shop.call("/v1/transfers", json!({ "kind": "gift", "from_customer": reader, "to_customer": other, "currency": "coins", "amount_minor": "6" }), Some("g1")).await;
    assert_eq!(status, StatusCode::CONFLICT, "6 coins are 0.06 USD, more than 0.05");

    let (status, _) = shop.call(&format!("/v1/customers/{reader}/purchases"), json!({ "pack": pack }), None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, refused) = shop.call(&format!("/v1/customers/{reader}/purchases"), json!({ "pack": pack }), None).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("credit_limit_exceeded")), "{refused}");

    // A day later the spend limit counts anew.
    shop.clock.advance(Duration::days(1));
    let (status, spent) = shop.spend(&reader, json!({ "currency": "coins", "amount_minor": "20" }), "next-day").await;
    assert_eq!(status, StatusCode::CREATED, "{spent}");
    let (status, cleared) = shop.send(reqwest::Method::PUT, Some(&shop.key), "/v1/credit_limits", Some(json!({})), None).await;
    assert_eq!((status, cleared["currency"].clone()), (StatusCode::OK, Value::Null), "{cleared}");
}

/// A customer's balance stream: the balance now, then each change as its movement commits.
/// Prints how long each change took to arrive.
#[sqlx::test]
async fn the_balance_stream_pushes_each_change(pool: PgPool) {
    let shop = Shop::start(pool).await;
    shop.coins().await;
    let reader = shop.customer("reader").await;
    let response = shop.request(reqwest::Method::GET, Some(&shop.key), &format!("/v1/customers/{reader}/stream")).send().await.expect("stream");
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = BalanceStream { response, buffer: String::new() };
    assert_eq!(stream.next().await["balances"], json!([]), "no credits yet");
    let mut waits = Vec::new();
    for (step, total) in [(0, "40"), (1, "30"), (2, "32")] {
        let started = std::time::Instant::now();
        match step {
            0 => drop(shop.grant(&reader, 40, "reward", None).await),
            1 => assert_eq!(shop.spend(&reader, json!({ "currency": "coins", "amount_minor": "10" }), "s").await.0, StatusCode::CREATED),
            _ => drop(shop.grant(&reader, 2, "promo", None).await),
        }
        let balance = stream.next().await;
        waits.push(started.elapsed());
        assert_eq!(balance["balances"][0]["total_minor"], total, "{balance}");
    }
    let (status, _) = shop.get(&shop.key, "/v1/customers/cus_0000000000000000/stream").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "credit balance stream: commit → event {waits:?}");
}

struct BalanceStream {
    response: reqwest::Response,
    buffer: String,
}

impl BalanceStream {
    /// The next `balance` event's JSON.
    async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let data: String = block.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
                if block.lines().any(|l| l == "event: balance") {
                    return serde_json::from_str(&data).expect("balance json");
                }
                continue;
            }
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), self.response.chunk()).await.expect("an event within 30 s").expect("read");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk.expect("the stream stays open")));
        }
    }
}

/// Admin adjustments: with a reason, up (a lot of their own) or down (from the lots in spending
/// order, never below zero); a merchant key cannot make them.
#[sqlx::test]
async fn admins_adjust_credits_with_a_reason(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let asset = shop.coins().await;
    let reader = shop.customer("reader").await;
    shop.grant(&reader, 10, "reward", None).await;
    let admin = payrail::merchant::create_platform_key(&shop.state.pool, payrail::merchant::Role::Admin).await.expect("admin");
    let path = format!("/v1/customers/{reader}/adjustments");
    let (status, up) = shop.post(&admin, &path, json!({ "currency": "coins", "amount_minor": "15", "reason": "support ticket 42" }), Some("adj-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{up}");
    assert_eq!((up["kind"].as_str(), up["description"].as_str()), (Some("adjustment"), Some("support ticket 42")));
    let (status, down) = shop.post(&admin, &path, json!({ "currency": "coins", "amount_minor": "-20", "reason": "duplicate grant" }), Some("adj-2")).await;
    assert_eq!((status, down["amount_minor"].as_str()), (StatusCode::CREATED, Some("-20")), "{down}");
    assert_eq!(shop.total(&reader).await, "5");
    let (status, _) = shop.post(&admin, &path, json!({ "currency": "coins", "amount_minor": "-6", "reason": "too much" }), Some("adj-3")).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let (status, _) = shop.post(&admin, &path, json!({ "currency": "coins", "amount_minor": "5", "reason": " " }), Some("adj-4")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = shop.post(&shop.key, &path, json!({ "currency": "coins", "amount_minor": "5", "reason": "mine" }), Some("adj-5")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(shop.held(&AccountCode::credits_issued(&shop.merchant_id), &asset).await, "5", "15 issued, 20 back");
}

/// An invoice may name a customer and take a promo code for invoices: its amount is the price less
/// the discount, and a code limited per customer needs the customer.
#[sqlx::test]
async fn invoices_name_a_customer_and_take_promo_codes(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let reader = shop.customer("reader").await;
    let (status, _) = shop.call("/v1/promo_codes", json!({ "code": "WELCOME", "amount_off": "5.00", "currency": "USD", "applies_to": ["invoices"], "per_customer_max": 1 }), None).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, invoice) = shop.call("/v1/invoices", json!({ "amount": "25.00", "currency": "USD", "customer": reader, "promo_code": "welcome" }), None).await;
    assert_eq!(status, StatusCode::CREATED, "{invoice}");
    assert_eq!(
        (invoice["amount"].as_str(), invoice["discount"].as_str(), invoice["promo_code"].as_str(), invoice["customer"].as_str()),
        (Some("20.00"), Some("5.00"), Some("welcome"), Some(reader.as_str()))
    );
    let (status, again) = shop.call("/v1/invoices", json!({ "amount": "25.00", "currency": "USD", "customer": reader, "promo_code": "WELCOME" }), None).await;
    assert_eq!((status, again["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("promo_refused")), "{again}");
    let (status, anonymous) = shop.call("/v1/invoices", json!({ "amount": "25.00", "currency": "USD", "promo_code": "WELCOME" }), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a code limited per customer needs one: {anonymous}");
    let (status, unknown) = shop.call("/v1/invoices", json!({ "amount": "25.00", "currency": "USD", "promo_code": "nosuchcode" }), None).await;
    assert_eq!((status, unknown["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{unknown}");
    let (status, stranger) = shop.call("/v1/invoices", json!({ "amount": "25.00", "currency": "USD", "customer": "cus_0000000000000000" }), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{stranger}");
    let (status, eur) = shop.call("/v1/invoices", json!({ "amount": "25.00", "currency": "EUR", "promo_code": "welcome" }), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "an amount off in USD does not apply to EUR: {eur}");
    let (status, plain) = shop.call("/v1/invoices", json!({ "amount": "25.00", "currency": "USD" }), None).await;
    assert_eq!((status, plain["discount"].clone(), plain["customer"].clone()), (StatusCode::CREATED, Value::Null, Value::Null));
}

/// A pack paid with USDC on Polygon, on a real anvil node watched by the EVM watcher: the credits
/// are granted when the watcher confirms the payment, once however often it passes over it.
#[sqlx::test]
async fn a_pack_paid_in_usdc_on_anvil_is_granted_once_by_the_watcher(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let chain = crate::common::evm::Chain::start("polygon").await;
    let state = &shop.state;
    let watcher = payrail::chain::evm::EvmWatcher::new(chain.spec.clone(), state.pool.clone(), state.ledger.clone(), state.rates.clone(), state.clock.clone())
        .expect("watcher");
    shop.coins().await;
    let pack = shop.pack().await;
    let reader = shop.customer("reader").await;
    let (status, bought) = shop.call(&format!("/v1/customers/{reader}/purchases"), json!({ "pack": pack }), None).await;
    assert_eq!(status, StatusCode::CREATED, "{bought}");
    let option = bought["invoice"]["payment_options"].as_array().expect("options").iter().find(|o| o["asset"] == chain.usdc()).expect("a USDC option").clone();
    let to: alloy::primitives::Address = option["address"].as_str().expect("address").parse().expect("address");
    chain.pay_usdc(to, option["amount_minor"].as_str().expect("amount").parse().expect("amount")).await;
    chain.mine(u64::from(chain.spec.confirmations.confirmations_max())).await;
    for _ in 0..50 {
        if watcher.step().await.expect("step").is_idle() {
            break;
        }
    }
    let invoice = bought["invoice"]["id"].as_str().expect("id");
    assert_eq!(shop.purchase_status(invoice).await.0, "granted");
    assert_eq!(shop.total(&reader).await, "110");
    chain.mine(3).await;
    for _ in 0..10 {
        watcher.step().await.expect("step");
    }
    assert_eq!(shop.total(&reader).await, "110", "granted once");
}
