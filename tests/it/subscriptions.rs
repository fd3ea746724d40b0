//! Plans, subscriptions and access over HTTP against PostgreSQL, with a clock the tests move: a
//! trial, renewals paid on two chains and by card, past due, grace and cancellation; credits per
//! period; plan versions and changes; the scheduler twice at once; unlocks; and the bulk access
//! check against a brute-force oracle.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::common;
use payrail::clock::Clock;
use payrail::ledger::AccountCode;

const ETH: &str = "eip155:1/slip44:60";

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

fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0).single().expect("time")
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc)).unwrap_or_else(|| panic!("a time: {v}"))
}

impl Shop {
    async fn start(pool: PgPool) -> Self {
        let server = common::Server::start(pool).await;
        let merchant = payrail::merchant::create_merchant(&server.state.pool, "Stories").await.expect("merchant");
        let shop = Shop { server, key: merchant.api_key, merchant_id: merchant.merchant_id };
        let (status, body) = shop.call("/v1/credit_currencies", json!({ "code": "coins", "name": "Coins", "peg": "0.01", "peg_currency": "USD" }), None).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        shop
    }

    async fn call(&self, path: &str, body: Value, key: Option<&str>) -> (StatusCode, Value) {
        self.server.post(&self.key, path, body, key).await
    }

    async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.call(path, body, None).await;
        assert!(status == StatusCode::OK || status == StatusCode::CREATED, "{path}: {status} {answer}");
        answer
    }

    async fn read(&self, path: &str) -> Value {
        let (status, body) = self.server.get(&self.key, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn customer(&self, external_id: &str) -> String {
        self.ok("/v1/customers", json!({ "external_id": external_id })).await["id"].as_str().expect("id").to_owned()
    }

    async fn plan(&self, body: Value) -> String {
        self.ok("/v1/plans", body).await["id"].as_str().expect("id").to_owned()
    }

    async fn subscription(&self, id: &str) -> Value {
        self.read(&format!("/v1/subscriptions/{id}")).await
    }

    async fn invoice(&self, id: &str) -> Value {
        self.read(&format!("/v1/invoices/{id}")).await
    }

    /// What the daemon's jobs do at the clock's time: invoices past their time expired, the
    /// scheduler's pass, credit lots past their time expired.
    async fn tick(&self) {
        let now = self.clock.now();
        payrail::invoice::expire_due(&self.state.pool, now).await.expect("invoice expiry");
        payrail::api::subscriptions::biller(&self.state).pass(now).await.expect("scheduler pass");
        payrail::credits::movement::expire_due(&self.state.pool, &self.state.ledger, now).await.expect("credit expiry");
    }

    async fn set_clock(&self, to: DateTime<Utc>) {
        let now = self.clock.now();
        assert!(to >= now, "the clock only moves forward");
        self.clock.advance(to - now);
        self.tick().await;
    }

    /// Pays `invoice` in full in `asset` on `chain`, as a watcher reports a confirmed payment.
    async fn pay(&self, invoice: &str, asset: &str, chain: &str, tx: &str) {
        let view = self.invoice(invoice).await;
        let option = view["payment_options"].as_array().expect("options").iter().find(|o| o["asset"] == asset).unwrap_or_else(|| panic!("an option in {asset}: {view}"));
        let native = asset.contains("slip44");
        let payment = payrail::invoice::ObservedPayment {
            invoice_id: invoice.to_owned(),
            chain: chain.parse().expect("chain"),
            asset: asset.parse().expect("asset"),
            tx_ref: format!("{chain}:{tx}:{}", if native { "native".to_owned() } else { "0".to_owned() }),
            address: None,
            amount: payrail::money::Amount::parse_decimal(option["amount_minor"].as_str().expect("amount"), 0).expect("amount"),
            confirmations: 2,
            confirmations_required: 2,
            block: None,
        };
        let mut db = self.state.pool.begin().await.expect("begin");
        payrail::invoice::apply_payment(&mut db, &self.state.ledger, &payment, self.clock.now()).await.expect("apply");
        db.commit().await.expect("commit");
    }

    /// Pays `invoice` by card, as the card rail records a succeeded PaymentIntent.
    async fn pay_by_card(&self, invoice: &str, cents: u64) {
        let payment = payrail::invoice::CardPayment {
            invoice_id: invoice.to_owned(),
            payment_intent_id: format!("pi_{}", invoice.trim_start_matches("inv_")),
            currency: "USD".parse().expect("fiat"),
            amount: payrail::money::Amount::from_u64(cents),
        };
        let mut db = self.state.pool.begin().await.expect("begin");
        payrail::invoice::apply_card_payment(&mut db, &self.state.ledger, &payment, self.clock.now()).await.expect("apply card");
        db.commit().await.expect("commit");
    }

    async fn coins(&self, customer: &str) -> u64 {
        let balance = self.read(&format!("/v1/customers/{customer}/balance")).await;
        balance["balances"].as_array().and_then(|b| b.first()).map_or(0, |b| b["total_minor"].as_str().expect("total").parse().expect("number"))
    }

    async fn access(&self, customer: &str, resource: &str) -> Value {
        self.read(&format!("/v1/customers/{customer}/access?resource={resource}")).await
    }

    async fn events(&self, sub: &str) -> Vec<String> {
        sqlx::query_scalar("SELECT event_type FROM outbox WHERE object_id = $1 AND event_type LIKE 'subscription.%' ORDER BY id")
            .bind(sub)
            .fetch_all(&self.state.pool)
            .await
            .expect("outbox")
    }

    async fn subscription_grants(&self, customer: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM credit_transactions WHERE customer_id = $1 AND source = 'subscription'")
            .bind(customer)
            .fetch_one(&self.state.pool)
            .await
            .expect("count")
    }
}

/// Trial, three renewals — USDC on Polygon paid early, ETH on Ethereum paid late (past due, the
/// lapsed invoice billed again), a card — then no payment: past due, grace, canceled. Periods
/// follow each other from the trial's end, credits come once per paid period and expire with it.
#[sqlx::test]
async fn a_subscription_lives_from_trial_through_renewals_on_every_rail_to_cancellation(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let reader = shop.customer("reader-1").await;
    let premium = shop
        .plan(json!({ "name": "Premium", "price": "9.99", "currency": "USD", "interval": "month", "trial_days": 7,
                      "credits_per_period": { "currency": "coins", "amount_minor": "50", "expire_at_period_end": true },
                      "entitlements": ["tier:premium"] }))
        .await;
    let (status, created) = shop.call(&format!("/v1/customers/{reader}/subscriptions"), json!({ "plan": premium }), Some("sub-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let sub = created["subscription"]["id"].as_str().expect("id").to_owned();
    assert_eq!(created["subscription"]["status"], "trialing");
    assert!(created["invoice"].is_null(), "a trial asks for nothing: {created}");
    let trial_end = at(2026, 1, 8, 12);
    assert_eq!(time(&created["subscription"]["trial_end"]), trial_end);
    assert_eq!(shop.access(&reader, "tier:premium").await["reason"], "tier:premium");
    let (again, replay) = shop.call(&format!("/v1/customers/{reader}/subscriptions"), json!({ "plan": premium }), Some("sub-1")).await;
    assert_eq!((again, replay["subscription"]["id"].as_str()), (StatusCode::CREATED, Some(sub.as_str())), "the same answer again");

    // Three days before the trial ends the first paid period is invoiced; paid early in USDC, it
    // begins when the trial ends, with its credits.
    shop.set_clock(at(2026, 1, 5, 13)).await;
    let first = shop.subscription(&sub).await["latest_invoice"].as_str().expect("renewal invoice").to_owned();
    assert_eq!(shop.invoice(&first).await["amount"], "9.99");
    shop.pay(&first, common::USDC_POLYGON, "eip155:137", "0xaa01").await;
    let view = shop.subscription(&sub).await;
    assert_eq!((view["status"].as_str(), shop.coins(&reader).await), (Some("trialing"), 0), "{view}");
    shop.set_clock(trial_end).await;
    let view = shop.subscription(&sub).await;
    assert_eq!(view["status"], "active");
    assert_eq!((time(&view["current_period_start"]), time(&view["current_period_end"])), (trial_end, at(2026, 2, 8, 12)));
    assert_eq!(shop.coins(&reader).await, 50);

    // The second renewal's invoice lapses unpaid: at the period end the subscription is past due
    // (entitlements kept through the grace), the period is billed again, and ETH paid late begins
    // it where the last one ended. The last period's coins expired with it.
    shop.set_clock(at(2026, 2, 5, 13)).await;
    let lapsed = shop.subscription(&sub).await["latest_invoice"].as_str().expect("invoice").to_owned();
    shop.set_clock(at(2026, 2, 8, 13)).await;
    assert_eq!(shop.invoice(&lapsed).await["status"], "expired");
    let view = shop.subscription(&sub).await;
    assert_eq!(view["status"], "past_due", "{view}");
    assert_eq!(time(&view["past_due_since"]), at(2026, 2, 8, 12));
    let access = shop.access(&reader, "tier:premium").await;
    assert_eq!((access["access"].as_bool(), time(&access["expires_at"])), (Some(true), at(2026, 2, 11, 12)), "{access}");
    assert_eq!(shop.coins(&reader).await, 0, "the first period's coins expired with it");
    let second = view["latest_invoice"].as_str().expect("billed again").to_owned();
    assert_ne!(second, lapsed);
    shop.pay(&second, ETH, "eip155:1", "0xbb02").await;
    let view = shop.subscription(&sub).await;
    assert_eq!(view["status"], "active", "{view}");
    assert_eq!((time(&view["current_period_start"]), time(&view["current_period_end"])), (at(2026, 2, 8, 12), at(2026, 3, 8, 12)));
    assert_eq!(shop.coins(&reader).await, 50);

    // The third renewal by card.
    shop.set_clock(at(2026, 3, 5, 13)).await;
    let third = shop.subscription(&sub).await["latest_invoice"].as_str().expect("invoice").to_owned();
    shop.pay_by_card(&third, 999).await;
    shop.set_clock(at(2026, 3, 8, 12)).await;
    let view = shop.subscription(&sub).await;
    assert_eq!((view["status"].as_str(), view["period"].as_i64()), (Some("active"), Some(4)), "{view}");

    // The reports over the first quarter: one subscriber paying 9.99 a month, three periods sold.
    let range = "from=2026-01-01T00:00:00Z&to=2026-03-20T00:00:00Z";
    let report = shop.read(&format!("/v1/reports/subscriptions?{range}")).await;
    let line = &report["data"][0];
    assert_eq!(
        (line["plan_id"].as_str(), line["mrr_minor"].as_str(), line["active"].as_i64(), line["new"].as_i64(), line["churned"].as_i64(), line["revenue_minor"].as_str()),
        (Some(premium.as_str()), Some("999"), Some(1), Some(1), Some(0), Some("2997")),
        "{report}"
    );
    let sales = shop.read(&format!("/v1/reports/sales?{range}")).await;
    assert_eq!(sales["data"], json!([{ "kind": "plans", "currency": "USD", "gross_minor": "2997", "discounts_minor": "0", "refunds_minor": "0", "net_minor": "2997" }]));
    let (status, csv) = shop.get(&shop.key, &format!("/v1/reports/sales?{range}&format=csv")).await;
    assert_eq!((status, csv.as_str()), (StatusCode::OK, Some("kind,currency,gross_minor,discounts_minor,refunds_minor,net_minor\r\nplans,USD,2997,0,0,2997\r\n")), "RFC 4180 lines");

    // Then nothing is paid: past due at the end, canceled when the three days of grace are over.
    shop.set_clock(at(2026, 4, 5, 13)).await;
    shop.set_clock(at(2026, 4, 8, 13)).await;
    assert_eq!(shop.subscription(&sub).await["status"], "past_due");
    shop.set_clock(at(2026, 4, 11, 12) + Duration::minutes(1)).await;
    let view = shop.subscription(&sub).await;
    assert_eq!(view["status"], "canceled", "{view}");
    assert_eq!(shop.access(&reader, "tier:premium").await["reason"], "none");
    shop.tick().await;
    shop.tick().await;
    assert_eq!(shop.subscription_grants(&reader).await, 3, "one grant per paid period");
    assert_eq!(
        shop.events(&sub).await,
        [
            "subscription.created",
            "subscription.renewal_due",
            "subscription.renewed",
            "subscription.renewal_due",
            "subscription.past_due",
            "subscription.renewal_due",
            "subscription.renewed",
            "subscription.renewal_due",
            "subscription.renewed",
            "subscription.renewal_due",
            "subscription.past_due",
            "subscription.renewal_due",
            "subscription.canceled",
        ]
    );
}

/// Plan versions stay with their subscribers; a change at the period end re-bills an unpaid
/// renewal under the new plan; a change now is prorated on the next invoice; cancelling at the
/// period end voids the renewal and ends the subscription then; pausing stops the clock.
#[sqlx::test]
async fn plans_change_versions_prorate_pause_and_cancel_at_period_end(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let basic = shop.plan(json!({ "name": "Basic", "price": "5.00", "currency": "USD", "interval": "month", "entitlements": ["tier:basic"] })).await;
    let pro = shop.plan(json!({ "name": "Pro", "price": "20.00", "currency": "USD", "interval": "month", "entitlements": ["tier:premium"] })).await;
    let ada = shop.customer("ada").await;
    let created = shop.ok(&format!("/v1/customers/{ada}/subscriptions"), json!({ "plan": basic })).await;
    let sub = created["subscription"]["id"].as_str().expect("id").to_owned();
    assert_eq!((created["subscription"]["status"].as_str(), created["invoice"]["amount"].as_str()), (Some("incomplete"), Some("5.00")), "{created}");
    assert_eq!(shop.access(&ada, "tier:basic").await["access"], false, "nothing before the first payment");
    shop.pay(created["invoice"]["id"].as_str().expect("invoice"), common::USDC_POLYGON, "eip155:137", "0xcc01").await;
    assert_eq!(shop.subscription(&sub).await["status"], "active");
    assert_eq!(shop.access(&ada, "tier:basic").await["access"], true);

    // A new price is a new version: new subscribers get it, Ada keeps hers.
    let (status, patched) = shop.send(reqwest::Method::PATCH, Some(&shop.key), &format!("/v1/plans/{basic}"), Some(json!({ "price": "6.00" })), None).await;
    assert_eq!((status, patched["terms"]["version"].as_i64()), (StatusCode::OK, Some(2)), "{patched}");
    shop.set_clock(at(2026, 1, 29, 13)).await;
    let renewal = shop.subscription(&sub).await["latest_invoice"].as_str().expect("renewal").to_owned();
    assert_eq!(shop.invoice(&renewal).await["amount"], "5.00");

    // Moving to Pro at the period end re-bills the unpaid renewal at Pro's price.
    let changed = shop.ok(&format!("/v1/subscriptions/{sub}/change"), json!({ "plan": pro })).await;
    assert_eq!(changed["entitlements"], json!(["tier:basic"]), "a change at the period end keeps today's plan");
    assert_eq!(shop.invoice(&renewal).await["status"], "void");
    shop.tick().await;
    let rebilled = shop.subscription(&sub).await["latest_invoice"].as_str().expect("re-billed").to_owned();
    assert_eq!(shop.invoice(&rebilled).await["amount"], "20.00");

    // Cancelling at the period end voids it; the subscription lasts until then.
    let cancelled = shop.ok(&format!("/v1/subscriptions/{sub}/cancel"), json!({ "at_period_end": true })).await;
    assert_eq!((cancelled["cancel_at_period_end"].as_bool(), cancelled["status"].as_str()), (Some(true), Some("active")));
    assert_eq!(shop.invoice(&rebilled).await["status"], "void");
    shop.set_clock(at(2026, 2, 1, 11)).await;
    assert_eq!(shop.access(&ada, "tier:basic").await["access"], true);
    shop.set_clock(at(2026, 2, 1, 12)).await;
    let view = shop.subscription(&sub).await;
    assert_eq!((view["status"].as_str(), view["ended_at"].as_str().map(|_| time(&view["ended_at"]))), (Some("canceled"), Some(at(2026, 2, 1, 12))), "{view}");
    assert_eq!(shop.access(&ada, "tier:basic").await["access"], false);
    let (refused, body) = shop.call(&format!("/v1/subscriptions/{sub}/cancel"), json!({}), None).await;
    assert_eq!((refused, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("subscription_state")));

    // Bob takes Basic at its new price and moves to Pro halfway through: Pro's entitlements at
    // once, and the next invoice asks Pro's price plus Pro for the rest of the period less Basic
    // for it (charge rounded down, credit up).
    let bob = shop.customer("bob").await;
    let created = shop.ok(&format!("/v1/customers/{bob}/subscriptions"), json!({ "plan": basic })).await;
    assert_eq!(created["invoice"]["amount"], "6.00");
    let bob_sub = created["subscription"]["id"].as_str().expect("id").to_owned();
    shop.pay(created["invoice"]["id"].as_str().expect("invoice"), common::USDC_POLYGON, "eip155:137", "0xcc02").await;
    let view = shop.subscription(&bob_sub).await;
    let (start, end) = (time(&view["current_period_start"]), time(&view["current_period_end"]));
    shop.set_clock(start + Duration::days(10)).await;
    let changed = shop.ok(&format!("/v1/subscriptions/{bob_sub}/change"), json!({ "plan": pro, "at": "now" })).await;
    assert_eq!(changed["entitlements"], json!(["tier:premium"]));
    let p = payrail_core::subscription::prorate(payrail::money::Amount::from_u64(600), payrail::money::Amount::from_u64(2000), start, end, shop.clock.now());
    let expected = payrail::money::Amount::from_u64(2000).checked_add(p.charge).expect("sum").saturating_sub(p.credit);

    // Paused for ten days, its period ends ten days later.
    shop.ok(&format!("/v1/subscriptions/{bob_sub}/pause"), json!({})).await;
    assert_eq!(shop.access(&bob, "tier:premium").await["access"], false, "no entitlements while paused");
    shop.set_clock(shop.clock.now() + Duration::days(10)).await;
    let resumed = shop.ok(&format!("/v1/subscriptions/{bob_sub}/resume"), json!({})).await;
    let moved_end = end + Duration::days(10);
    assert_eq!((resumed["status"].as_str(), time(&resumed["current_period_end"])), (Some("active"), moved_end), "{resumed}");
    shop.set_clock(moved_end - Duration::days(3)).await;
    let next = shop.subscription(&bob_sub).await["latest_invoice"].as_str().expect("renewal").to_owned();
    let next = shop.invoice(&next).await;
    assert_eq!(next["amount_minor"].as_str(), Some(expected.to_string().as_str()), "{next}");
    let stopped = shop.ok(&format!("/v1/subscriptions/{bob_sub}/cancel"), json!({})).await;
    assert_eq!(stopped["status"], "canceled");
    assert_eq!(shop.invoice(next["id"].as_str().expect("id")).await["status"], "void");
}

/// Two schedulers hold for the lock while the clock passes the renewal time, one is stopped and
/// started again, and four passes run at once besides: the period is invoiced once.
#[sqlx::test]
async fn a_renewal_is_invoiced_once_with_two_schedulers_and_restarts(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let plan = shop.plan(json!({ "name": "Daily", "price": "1.00", "currency": "USD", "interval": "day", "trial_days": 1, "renewal_lead_s": 3600 })).await;
    let mut subs = Vec::new();
    for n in 0..5 {
        let customer = shop.customer(&format!("c{n}")).await;
        subs.push(shop.ok(&format!("/v1/customers/{customer}/subscriptions"), json!({ "plan": plan })).await["subscription"]["id"].as_str().expect("id").to_owned());
    }
    let clock: Arc<dyn Clock> = shop.clock.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scheduler = |stopped| {
        tokio::spawn(payrail::billing::run_scheduler(payrail::api::subscriptions::biller(&shop.state), clock.clone(), std::time::Duration::from_millis(20), None, stopped))
    };
    let first = scheduler(stopped.clone());
    let second = scheduler(stopped.clone());
    shop.clock.advance(Duration::hours(23) + Duration::minutes(1));
    let biller = payrail::api::subscriptions::biller(&shop.state);
    let now = shop.clock.now();
    let passes = futures::future::join_all((0..4).map(|_| biller.pass(now))).await;
    assert!(passes.iter().all(Result::is_ok), "{passes:?}");
    first.abort();
    let third = scheduler(stopped.clone());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let _ = stop.send(true);
    let _ = tokio::join!(second, third);
    for sub in &subs {
        let (periods, invoices): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM subscription_periods WHERE subscription_id = $1 AND period = 2), \
                    (SELECT count(*) FROM subscription_invoices WHERE subscription_id = $1)",
        )
        .bind(sub)
        .fetch_one(&shop.state.pool)
        .await
        .expect("counts");
        assert_eq!((periods, invoices), (1, 1), "{sub}");
        let made: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices WHERE metadata -> 'subscription' ->> 'id' = $1").bind(sub).fetch_one(&shop.state.pool).await.expect("n");
        assert_eq!(made, 1, "{sub}");
        assert_eq!(shop.events(sub).await.iter().filter(|e| *e == "subscription.renewal_due").count(), 1);
    }
}

/// Unlocking charges once per resource, even when asked five times at once; the creator gets 70%.
#[sqlx::test]
async fn unlocks_charge_once_and_pay_the_creator_its_share(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let reader = shop.customer("reader").await;
    let (status, _) = shop.call(&format!("/v1/customers/{reader}/grants"), json!({ "currency": "coins", "amount_minor": "100" }), Some("g1")).await;
    assert_eq!(status, StatusCode::CREATED);
    let creator = payrail::creator::create_creator(&shop.state.pool, &shop.merchant_id, &payrail::creator::CreateCreator { name: "Writer".to_owned(), payout_addresses: Default::default() })
        .await
        .expect("creator")
        .creator
        .id;
    let path = format!("/v1/customers/{reader}/unlocks");
    let body = json!({ "resource": "chapter/1", "price_credits": "30", "creator": creator });
    let (first, unlocked) = shop.call(&path, body.clone(), None).await;
    assert_eq!(first, StatusCode::CREATED, "{unlocked}");
    let (second, again) = shop.call(&path, body, None).await;
    assert_eq!((second, &again), (StatusCode::OK, &unlocked));
    let racing = futures::future::join_all((0..5).map(|_| shop.call(&path, json!({ "resource": "chapter/2", "price_credits": "30" }), None))).await;
    assert_eq!(racing.iter().filter(|(s, _)| *s == StatusCode::CREATED).count(), 1, "{racing:?}");
    assert!(racing.iter().all(|(s, _)| *s == StatusCode::CREATED || *s == StatusCode::OK), "{racing:?}");
    assert_eq!(shop.coins(&reader).await, 40);
    let (short, refused) = shop.call(&path, json!({ "resource": "chapter/3", "price_credits": "41" }), None).await;
    assert_eq!((short, refused["error"]["code"].as_str()), (StatusCode::PAYMENT_REQUIRED, Some("insufficient_credits")));
    let asset: String = sqlx::query_scalar("SELECT 'credit:' || merchant_id || '/coins' FROM credit_currencies WHERE merchant_id = $1").bind(&shop.merchant_id).fetch_one(&shop.state.pool).await.expect("asset");
    assert_eq!(shop.balance(&AccountCode::creator(&creator), &asset).await.to_string(), "21");
    let answer = shop.access(&reader, "chapter/1").await;
    assert_eq!((answer["access"].as_bool(), answer["reason"].as_str(), answer["expires_at"].is_null()), (Some(true), Some("unlock"), true));
    assert_eq!(shop.access(&reader, "chapter/3").await["reason"], "none");

    // Refunded, the unlock gives no access and its 30 coins are back (the creator keeps its 21);
    // asked again, the refund changes nothing; unlocked again, it is charged again.
    let refund = format!("/v1/customers/{reader}/unlocks/refund");
    let refunded = shop.ok(&refund, json!({ "resource": "chapter/1" })).await;
    assert!(refunded["refunded_at"].is_string(), "{refunded}");
    assert_eq!(shop.ok(&refund, json!({ "resource": "chapter/1" })).await, refunded);
    assert_eq!((shop.coins(&reader).await, shop.access(&reader, "chapter/1").await["reason"].as_str()), (70, Some("none")));
    assert_eq!(shop.balance(&AccountCode::creator(&creator), &asset).await.to_string(), "21");
    let (again, relocked) = shop.call(&path, json!({ "resource": "chapter/1", "price_credits": "30" }), None).await;
    assert_eq!((again, relocked["generation"].as_i64()), (StatusCode::CREATED, Some(2)), "{relocked}");
    assert_eq!(shop.coins(&reader).await, 40);
    let (missing, _) = shop.call(&refund, json!({ "resource": "chapter/9" }), None).await;
    assert_eq!(missing, StatusCode::NOT_FOUND);
}

/// A random world of rules, plans and unlocks, checked in bulk against the rule as written.
#[derive(Debug, Clone)]
struct World {
    /// prefix → entitlements
    rules: BTreeMap<String, Vec<String>>,
    /// Each plan's entitlements, and whether the customer holds it.
    plans: Vec<(Vec<String>, bool)>,
    unlocked: BTreeSet<String>,
    asked: Vec<String>,
}

fn oracle(world: &World, resource: &str) -> (bool, String) {
    if world.unlocked.contains(resource) {
        return (true, "unlock".to_owned());
    }
    let held: BTreeSet<&String> = world.plans.iter().filter(|(_, held)| *held).flat_map(|(e, _)| e).collect();
    let best = world.rules.iter().filter(|(prefix, _)| resource.starts_with(prefix.as_str())).max_by_key(|(prefix, _)| prefix.len());
    let granted = match best {
        Some((_, entitlements)) => entitlements.iter().filter(|e| held.contains(e)).min().cloned(),
        None => held.iter().find(|e| e.as_str() == resource).map(|e| (*e).clone()),
    };
    granted.map_or((false, "none".to_owned()), |e| (true, e))
}

fn world() -> impl proptest::strategy::Strategy<Value = World> {
    use proptest::prelude::*;
    let entitlement = prop::sample::select(vec!["tier:basic", "tier:premium", "tier:gold", "story/1", "addon:audio"]).prop_map(str::to_owned);
    let resource = prop::sample::select(vec!["story/1", "story/1/ch/1", "story/12", "story/2/ch/9", "chapter/5", "tier:gold", "tier:basic", "audio/7", "s"]).prop_map(str::to_owned);
    let prefix = prop::sample::select(vec!["story/", "story/1", "story/1/", "chapter/", "audio/", "s", "tier:"]).prop_map(str::to_owned);
    (
        prop::collection::btree_map(prefix, prop::collection::vec(entitlement.clone(), 1..3), 0..5),
        prop::collection::vec((prop::collection::vec(entitlement, 0..3), any::<bool>()), 1..4),
        prop::collection::btree_set(resource.clone(), 0..4),
        prop::collection::vec(resource, 1..12),
    )
        .prop_map(|(rules, plans, unlocked, asked)| World { rules, plans, unlocked, asked })
}

/// The bulk check answers each resource as the rule says (a brute-force oracle over random worlds).
#[sqlx::test]
async fn the_bulk_access_check_agrees_with_a_brute_force_oracle(pool: PgPool) {
    let server = common::Server::start(pool).await;
    let handle = tokio::runtime::Handle::current();
    let state = server.state.clone();
    let base = server.base.clone();
    tokio::task::spawn_blocking(move || {
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config { cases: 24, ..Default::default() });
        runner
            .run(&world(), |world| {
                handle.block_on(check_world(&state, &base, &world));
                Ok(())
            })
            .expect("the check agrees with the oracle");
    })
    .await
    .expect("runner");
}

async fn check_world(state: &payrail::api::AppState, base: &str, world: &World) {
    let merchant = payrail::merchant::create_merchant(&state.pool, "Oracle").await.expect("merchant");
    let client = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let request = client.post(format!("{base}{path}")).bearer_auth(&merchant.api_key).json(&body);
        async move {
            let response = request.send().await.expect("send");
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            assert!(status.is_success(), "{status} {body}");
            body
        }
    };
    for (prefix, entitlements) in &world.rules {
        post("/v1/access_rules".to_owned(), json!({ "prefix": prefix, "entitlements": entitlements })).await;
    }
    let customer = post("/v1/customers".to_owned(), json!({ "external_id": "oracle" })).await["id"].as_str().expect("id").to_owned();
    for (n, (entitlements, held)) in world.plans.iter().enumerate() {
        let plan = post("/v1/plans".to_owned(), json!({ "name": format!("P{n}"), "price": "1.00", "currency": "USD", "interval": "month", "trial_days": 5, "entitlements": entitlements })).await;
        if *held {
            post(format!("/v1/customers/{customer}/subscriptions"), json!({ "plan": plan["id"] })).await;
        }
    }
    for resource in &world.unlocked {
        sqlx::query("INSERT INTO unlocks (customer_id, resource, merchant_id, currency, price_minor, txn_id, created_at) VALUES ($1, $2, $3, 'coins', 1, 'ctx_oracle', now())")
            .bind(&customer)
            .bind(resource)
            .bind(&merchant.merchant_id)
            .execute(&state.pool)
            .await
            .expect("unlock");
    }
    let answer = post("/v1/access/check".to_owned(), json!({ "customer": customer, "resources": world.asked })).await;
    let data = answer["data"].as_array().expect("data");
    assert_eq!(data.len(), world.asked.len());
    for (resource, got) in world.asked.iter().zip(data) {
        let (access, reason) = oracle(world, resource);
        assert_eq!(got["resource"].as_str(), Some(resource.as_str()));
        assert_eq!((got["access"].as_bool(), got["reason"].as_str()), (Some(access), Some(reason.as_str())), "{resource} in {world:?}");
    }
}

/// A card subscription against localstripe: the first payment by test card keeps the card on a
/// Stripe Customer; the renewal is charged to it off-session and credited by the verified webhook;
/// a card on file that stops working is declined — past due at once, `subscription.payment_failed`,
/// the invoice still payable, and no second charge attempted by itself.
#[sqlx::test]
async fn a_card_subscription_renews_off_session_and_a_decline_falls_past_due(pool: PgPool) {
    let server = common::stripe::start(pool).await;
    server.subscribe().await;
    let call = |path: &str, body: Value| {
        let request = server.client.post(format!("{}{path}", server.base)).bearer_auth(&server.key).json(&body);
        async move {
            let response = request.send().await.expect("send");
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            assert!(status.is_success(), "{status} {body}");
            body
        }
    };
    let plan = call("/v1/plans", json!({ "name": "Premium", "price": "9.99", "currency": "USD", "interval": "month", "entitlements": ["tier:premium"] })).await;
    let customer = call("/v1/customers", json!({ "external_id": "card-reader" })).await["id"].as_str().expect("id").to_owned();
    let created = call(&format!("/v1/customers/{customer}/subscriptions"), json!({ "plan": plan["id"], "payment": "card" })).await;
    let sub = created["subscription"]["id"].as_str().expect("id").to_owned();
    let first = created["invoice"]["id"].as_str().expect("invoice").to_owned();
    let (status, attempt) = server.pay_by_card(&first, "pm_card_visa").await;
    assert_eq!((status, attempt["status"].as_str()), (StatusCode::CREATED, Some("succeeded")), "{attempt}");
    server.wait_status(&first, "paid").await;
    let on_file = || async {
        sqlx::query_as::<_, (String, Option<String>, DateTime<Utc>)>("SELECT status, card_payment_method, period_end FROM subscriptions WHERE id = $1")
            .bind(&sub)
            .fetch_one(&server.state.pool)
            .await
            .expect("subscription")
    };
    let (status, card, end) = on_file().await;
    assert_eq!((status.as_str(), card.as_deref()), ("active", Some("pm_card_visa")));
    let stripe_customer: String = sqlx::query_scalar("SELECT stripe_customer_id FROM card_customers WHERE customer_id = $1").bind(&customer).fetch_one(&server.state.pool).await.expect("customer");
    let (found, _) = common::stripe::ls_get(&format!("/v1/customers/{stripe_customer}")).await;
    assert_eq!(found, StatusCode::OK);

    // The renewal, charged off-session three days before the period ends.
    let biller = payrail::api::subscriptions::biller(&server.state);
    let rail = server.state.card.clone().expect("card rail");
    let due = end - Duration::days(2);
    biller.pass(due).await.expect("pass");
    let renewal: String = sqlx::query_scalar("SELECT invoice_id FROM subscription_invoices WHERE subscription_id = $1 AND period = 2").bind(&sub).fetch_one(&server.state.pool).await.expect("renewal");
    assert_eq!(payrail::stripe::renewal::charge_due(&rail, &server.state.pool, due).await.expect("charge"), 1);
    server.wait_status(&renewal, "paid").await;
    let pi: String = sqlx::query_scalar("SELECT payment_intent_id FROM card_attempts WHERE invoice_id = $1").bind(&renewal).fetch_one(&server.state.pool).await.expect("attempt");
    let (_, intent) = common::stripe::ls_get(&format!("/v1/payment_intents/{pi}")).await;
    assert_eq!((intent["customer"].as_str(), intent["status"].as_str()), (Some(stripe_customer.as_str()), Some("succeeded")), "{intent}");
    biller.pass(end + Duration::minutes(1)).await.expect("pass");
    let (status, _, next_end) = on_file().await;
    assert_eq!(status, "active");
    assert!(next_end > end);

    // The card on file stops working (Stripe's test card that attaches but cannot be charged).
    sqlx::query("UPDATE subscriptions SET card_payment_method = 'pm_card_chargeCustomerFail' WHERE id = $1").bind(&sub).execute(&server.state.pool).await.expect("card");
    let due = next_end - Duration::days(2);
    biller.pass(due).await.expect("pass");
    let third: String = sqlx::query_scalar("SELECT invoice_id FROM subscription_invoices WHERE subscription_id = $1 AND period = 3").bind(&sub).fetch_one(&server.state.pool).await.expect("renewal");
    assert_eq!(payrail::stripe::renewal::charge_due(&rail, &server.state.pool, due).await.expect("charge"), 1);
    let (status, _, _) = on_file().await;
    assert_eq!(status, "past_due");
    // What `subscription.payment_failed` events said, oldest first.
    let failures = || async {
        sqlx::query_scalar::<_, Value>("SELECT payload -> 'data' FROM outbox WHERE object_id = $1 AND event_type = 'subscription.payment_failed' ORDER BY id")
            .bind(&sub)
            .fetch_all(&server.state.pool)
            .await
            .expect("events")
    };
    let failed = failures().await;
    assert_eq!(failed.len(), 1);
    let data = &failed[0];
    assert_eq!((data["invoice_id"].as_str(), data["failure_code"].as_str()), (Some(third.as_str()), Some("card_declined")), "{data}");
    assert_eq!(server.show(&third).await["status"], "open", "still payable on every rail");
    assert_eq!(payrail::stripe::renewal::charge_due(&rail, &server.state.pool, due).await.expect("charge"), 0, "one attempt per invoice");
    // localstripe's own `payment_intent.payment_failed` for that decline changes nothing more.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE event_type = 'payment_intent.payment_failed' AND invoice_id = $1 AND status = 'processed'")
            .bind(&third)
            .fetch_one(&server.state.pool)
            .await
            .expect("events");
        if seen > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "localstripe's payment_failed never arrived");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(failures().await.len(), 1, "one decline, one event");

    // The customer pays that invoice on the checkout page with another card, which becomes the card
    // on file; the next renewal's decline comes only as Stripe's signed event (an asynchronous
    // decline, as a bank can answer later): past due, announced once with the bank's reason.
    let (status, paid) = server.pay_by_card(&third, "pm_card_visa").await;
    assert_eq!((status, paid["status"].as_str()), (StatusCode::CREATED, Some("succeeded")), "{paid}");
    server.wait_status(&third, "paid").await;
    biller.pass(next_end + Duration::minutes(1)).await.expect("pass");
    let (status, card, third_end) = on_file().await;
    assert_eq!((status.as_str(), card.as_deref()), ("active", Some("pm_card_visa")));
    biller.pass(third_end - Duration::days(2)).await.expect("pass");
    let fourth: String = sqlx::query_scalar("SELECT invoice_id FROM subscription_invoices WHERE subscription_id = $1 AND period = 4").bind(&sub).fetch_one(&server.state.pool).await.expect("renewal");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stripe/payment_intent.payment_failed.json");
    let event = std::fs::read_to_string(path)
        .expect("fixture")
        .replace("{{event_id}}", &format!("evt_{}", common::stripe::random_suffix()))
        .replace("{{payment_intent}}", &format!("pi_{}", common::stripe::random_suffix()))
        .replace("{{invoice_id}}", &fourth)
        .replace("{{customer}}", &stripe_customer)
        .replace("{{payment_method}}", "pm_card_visa");
    // Delivered twice, as Stripe retries (signed anew each time).
    let t = Utc::now().timestamp();
    for signed_at in [t, t + 1] {
        let (status, answer) = server.deliver(&event, Some(&server.sign(&event, signed_at))).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (status, _, _) = on_file().await;
    assert_eq!(status, "past_due");
    let failed = failures().await;
    assert_eq!(failed.len(), 2);
    assert_eq!((failed[1]["invoice_id"].as_str(), failed[1]["failure_code"].as_str()), (Some(fourth.as_str()), Some("insufficient_funds")), "{}", failed[1]);
}

/// Promo codes for plans take a percentage off the first paid period or add trial days (a code
/// for packs is refused); subscription revenue goes to the creator pool by the merchant's rule for
/// `subscriptions/`, period by period as each is paid.
#[sqlx::test]
async fn promo_codes_and_the_creator_pool_apply_to_subscriptions(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let creator_pool = payrail::creator::create_creator(&shop.state.pool, &shop.merchant_id, &payrail::creator::CreateCreator { name: "Pool".to_owned(), payout_addresses: Default::default() })
        .await
        .expect("creator")
        .creator
        .id;
    let rules = json!({ "prefixes": [{ "order_id_prefix": "subscriptions/", "splits": [{ "creator": creator_pool, "bps": 6500 }] }] });
    let (status, body) = shop.send(reqwest::Method::PUT, Some(&shop.key), "/v1/split_rules", Some(rules), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let plan = shop.plan(json!({ "name": "Club", "price": "10.00", "currency": "USD", "interval": "month" })).await;
    shop.ok("/v1/promo_codes", json!({ "code": "HALF", "percent_off": 50, "applies_to": ["plans"] })).await;
    shop.ok("/v1/promo_codes", json!({ "code": "TRIAL14", "trial_days": 14, "applies_to": ["plans"] })).await;
    shop.ok("/v1/promo_codes", json!({ "code": "PACKS10", "percent_off": 10 })).await;

    let carol = shop.customer("carol").await;
    let created = shop.ok(&format!("/v1/customers/{carol}/subscriptions"), json!({ "plan": plan, "promo_code": "half" })).await;
    let invoice = &created["invoice"];
    assert_eq!((invoice["amount"].as_str(), invoice["split"]["splits"][0]["bps"].as_u64()), (Some("5.00"), Some(6500)), "{invoice}");
    let paid = invoice["payment_options"].as_array().expect("options").iter().find(|o| o["asset"] == common::USDC_POLYGON).expect("usdc")["amount_minor"]
        .as_str()
        .expect("amount")
        .parse::<u64>()
        .expect("number");
    shop.pay(invoice["id"].as_str().expect("id"), common::USDC_POLYGON, "eip155:137", "0xdd01").await;
    assert_eq!(shop.balance(&AccountCode::creator(&creator_pool), common::USDC_POLYGON).await.to_string(), (paid * 65 / 100).to_string());
    let sub = created["subscription"]["id"].as_str().expect("id").to_owned();
    let end = time(&shop.subscription(&sub).await["current_period_end"]);
    shop.set_clock(end - Duration::days(2)).await;
    let renewal = shop.subscription(&sub).await["latest_invoice"].as_str().expect("renewal").to_owned();
    assert_eq!(shop.invoice(&renewal).await["amount"], "10.00", "the discount is the first period's");

    let dave = shop.customer("dave").await;
    let trial = shop.ok(&format!("/v1/customers/{dave}/subscriptions"), json!({ "plan": plan, "promo_code": "TRIAL14" })).await;
    assert_eq!(trial["subscription"]["status"], "trialing");
    assert_eq!(time(&trial["subscription"]["trial_end"]), shop.clock.now() + Duration::days(14));
    let erin = shop.customer("erin").await;
    let (refused, body) = shop.call(&format!("/v1/customers/{erin}/subscriptions"), json!({ "plan": plan, "promo_code": "PACKS10" }), None).await;
    assert_eq!((refused, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("promo_refused")), "{body}");
    assert_eq!(shop.read(&format!("/v1/customers/{erin}/subscriptions")).await["data"], json!([]), "nothing was started");
}

/// A daily plan paid a day late: the late period begins where the last ended and is nearly over,
/// so the next one is billed at once, even while the subscription is past due again.
#[sqlx::test]
async fn a_period_paid_late_has_the_next_one_billed_at_once(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let plan = shop.plan(json!({ "name": "Day pass", "price": "1.00", "currency": "USD", "interval": "day", "renewal_lead_s": 3600 })).await;
    let customer = shop.customer("late").await;
    let created = shop.ok(&format!("/v1/customers/{customer}/subscriptions"), json!({ "plan": plan })).await;
    let sub = created["subscription"]["id"].as_str().expect("id").to_owned();
    shop.pay(created["invoice"]["id"].as_str().expect("invoice"), common::USDC_POLYGON, "eip155:137", "0xee01").await;
    let end = time(&shop.subscription(&sub).await["current_period_end"]);
    shop.set_clock(end + Duration::hours(2)).await;
    let view = shop.subscription(&sub).await;
    assert_eq!(view["status"], "past_due");
    let second = view["latest_invoice"].as_str().expect("renewal").to_owned();
    shop.set_clock(end + Duration::hours(20)).await;
    shop.pay(&second, common::USDC_POLYGON, "eip155:137", "0xee02").await;
    let view = shop.subscription(&sub).await;
    assert_eq!((view["status"].as_str(), time(&view["current_period_start"])), (Some("active"), end), "{view}");
    shop.set_clock(end + Duration::hours(25)).await;
    let view = shop.subscription(&sub).await;
    assert_eq!(view["status"], "past_due");
    let third = view["latest_invoice"].as_str().expect("the next period billed").to_owned();
    assert_ne!(third, second);
    shop.pay(&third, common::USDC_POLYGON, "eip155:137", "0xee03").await;
    let view = shop.subscription(&sub).await;
    assert_eq!((view["status"].as_str(), view["period"].as_i64(), time(&view["current_period_start"])), (Some("active"), Some(3), end + Duration::days(1)), "{view}");
}

/// `payrail serve` twice on one database, one killed and another started: the renewals due are
/// invoiced once each (the scheduler's lock, and each period's idempotency key underneath it).
#[sqlx::test]
async fn two_daemons_and_a_kill_invoice_each_renewal_once(pool: PgPool) {
    const SUBSCRIPTIONS: usize = 20;
    let merchant = payrail::merchant::create_merchant(&pool, "Daemons").await.expect("merchant");
    let now = Utc::now();
    let request = payrail::subscriptions::plan::CreatePlan {
        name: "Daily".to_owned(),
        price: "1.00".to_owned(),
        currency: "USD".to_owned(),
        interval: "day".to_owned(),
        interval_count: None,
        credits_per_period: None,
        trial_days: Some(1),
        entitlements: None,
        grace_days: None,
        entitlements_in_grace: None,
        // The first paid period is due at once.
        renewal_lead_s: Some(2 * 86_400),
        active: None,
    };
    let plan = payrail::subscriptions::plan::create(&pool, &merchant.merchant_id, &request, now).await.expect("plan").id;
    let mut subs = Vec::new();
    for n in 0..SUBSCRIPTIONS {
        let customer = payrail::credits::customer::CreateCustomer { external_id: format!("d{n}"), email: None, name: None, metadata: Default::default() };
        let customer = payrail::credits::customer::create(&pool, &merchant.merchant_id, &customer, now).await.expect("customer").id;
        let subscribe = payrail::subscriptions::subscription::Subscribe { plan: plan.clone(), promo_code: None, payment: None };
        subs.push(payrail::subscriptions::subscription::subscribe(&pool, &merchant.merchant_id, &customer, &subscribe, None, now).await.expect("subscribe").0.id);
    }
    let database = common::database_url(&pool);
    let serve = || {
        let mut command = common::payrail(&database, &["serve", "--allow-dev-settings"]);
        command.env("PAYRAIL_SERVER__LISTEN", "127.0.0.1:0").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).kill_on_drop(true);
        // The chains stay configured (their assets are what invoices offer) with nodes nobody runs.
        command.env("PAYRAIL_CHAINS__BITCOIN__RPC", r#"["tcp://127.0.0.1:9"]"#);
        for chain in ["ETHEREUM", "POLYGON", "BSC", "ARBITRUM", "OPTIMISM"] {
            command.env(format!("PAYRAIL_CHAINS__{chain}__RPC"), r#"["http://127.0.0.1:9"]"#);
        }
        command.spawn().expect("payrail serve")
    };
    let invoiced = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(DISTINCT subscription_id) FROM subscription_invoices").fetch_one(&pool).await.expect("count");
        usize::try_from(n).expect("count")
    };
    let mut first = serve();
    let second = serve();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while invoiced().await < SUBSCRIPTIONS / 2 {
        assert!(std::time::Instant::now() < deadline, "the daemons invoiced nothing");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    first.start_kill().expect("kill");
    first.wait().await.expect("killed");
    let third = serve();
    while invoiced().await < SUBSCRIPTIONS {
        assert!(std::time::Instant::now() < deadline, "the renewals were not all invoiced");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    drop((second, third));
    for sub in &subs {
        let (links, invoices, due): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM subscription_invoices WHERE subscription_id = $1), \
                    (SELECT count(*) FROM invoices WHERE metadata -> 'subscription' ->> 'id' = $1), \
                    (SELECT count(*) FROM outbox WHERE object_id = $1 AND event_type = 'subscription.renewal_due')",
        )
        .bind(sub)
        .fetch_one(&pool)
        .await
        .expect("counts");
        assert_eq!((links, invoices, due), (1, 1, 1), "{sub}");
    }
}

/// More past-due subscriptions waiting out their grace than a pass takes do not hide a
/// subscription whose paid period has just begun: the pass skips those with nothing to do.
#[sqlx::test]
async fn a_crowd_in_grace_does_not_hold_up_a_renewal(pool: PgPool) {
    let shop = Shop::start(pool).await;
    let plan = shop.plan(json!({ "name": "Daily", "price": "1.00", "currency": "USD", "interval": "day", "trial_days": 1, "renewal_lead_s": 3600 })).await;
    let crowd = usize::try_from(payrail::subscriptions::schedule::BATCH).expect("batch") + 1;
    for n in 0..crowd {
        let request = payrail::credits::customer::CreateCustomer { external_id: format!("c{n}"), email: None, name: None, metadata: Default::default() };
        let customer = payrail::credits::customer::create(&shop.state.pool, &shop.merchant_id, &request, shop.clock.now()).await.expect("customer").id;
        let subscribe = payrail::subscriptions::subscription::Subscribe { plan: plan.clone(), promo_code: None, payment: None };
        payrail::subscriptions::subscription::subscribe(&shop.state.pool, &shop.merchant_id, &customer, &subscribe, None, shop.clock.now()).await.expect("subscribe");
    }
    shop.set_clock(shop.clock.now() + Duration::hours(1)).await;
    let reader = shop.customer("reader").await;
    let sub = shop.ok(&format!("/v1/customers/{reader}/subscriptions"), json!({ "plan": plan })).await["subscription"]["id"].as_str().expect("id").to_owned();
    // The crowd's trials end unpaid; the reader's renewal is billed and paid before its trial ends.
    shop.set_clock(shop.clock.now() + Duration::minutes(23 * 60 + 30)).await;
    shop.tick().await;
    let past_due: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions WHERE status = 'past_due'").fetch_one(&shop.state.pool).await.expect("count");
    assert_eq!(usize::try_from(past_due).expect("count"), crowd);
    let renewal = shop.subscription(&sub).await["latest_invoice"].as_str().expect("renewal").to_owned();
    shop.pay(&renewal, common::USDC_POLYGON, "eip155:137", "0xff01").await;
    shop.set_clock(shop.clock.now() + Duration::hours(1)).await;
    let view = shop.subscription(&sub).await;
    assert_eq!((view["status"].as_str(), view["period"].as_i64()), (Some("active"), Some(2)), "{view}");
}
