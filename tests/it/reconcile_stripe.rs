//! Reconciliation of the card rail against localstripe (a fake stateful Stripe, PyPI): charges and
//! refunds re-read from the processor and compared with the ledger's `assets:stripe:*` entries.
//!
//! localstripe comes from `PAYRAIL_LOCALSTRIPE_URL`, else this binary starts its own through
//! `scripts/localstripe run`. A reconciliation lists every charge of its time range, whoever made
//! it, so the tests here take turns: each holds `HISTORY` for writing (no other test of this binary
//! creates charges meanwhile), starts its range on a fresh second after the previous test's range
//! ended, and ends it before letting the next one in. (Another process paying through the same
//! localstripe at the same moment would show up in the ranges too.)


use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use crate::common::stripe::{ls_get, ls_post, random_suffix, start_exclusive as start, Server, HISTORY};
use crate::common::USD;
use payrail::ledger::{AccountCode, NewEntry};
use payrail::money::{Amount, Fiat};
use payrail::reconcile::{reconcile_stripe, Category, ItemKind, Report};
use payrail::stripe::client::NewPaymentIntent;
use payrail::stripe::StripeClient;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Waits for the next whole second and returns it: nothing of an earlier test is created in it.
async fn fresh_second() -> DateTime<Utc> {
    let now = Utc::now();
    let wait_ms = 1_000u64.saturating_sub(u64::from(now.timestamp_subsec_millis())) + 20;
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    Utc.timestamp_opt(Utc::now().timestamp(), 0).single().expect("valid time")
}

/// The end of a range that holds everything done so far; waits until it has passed.
async fn range_end() -> DateTime<Utc> {
    let end = fresh_second().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    end
}

impl Server {
    fn stripe(&self) -> StripeClient {
        self.state.card.as_ref().expect("card rail configured").client.clone()
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self.client.post(format!("{}{path}", self.base)).bearer_auth(&self.key).json(&body).send().await.expect("post");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    /// Pays `invoice` with a test card through the checkout page; returns the PaymentIntent.
    async fn pay_with_test_card(&self, invoice: &str) -> String {
        let (status, attempt) = self.pay_by_card(invoice, "pm_card_visa").await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(attempt["status"], "succeeded", "{attempt}");
        attempt["payment_intent"].as_str().expect("payment intent").to_owned()
    }

    async fn reconcile(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Report {
        reconcile_stripe(&self.state.pool, &self.stripe(), from, to).await.expect("reconciliation")
    }
}

fn usd_totals(report: &Report) -> [String; 4] {
    let t = report.totals.iter().find(|t| t.asset == USD).expect("USD totals");
    [t.chain_in_minor.clone(), t.ledger_in_minor.clone(), t.chain_out_minor.clone(), t.ledger_out_minor.clone()]
}

#[sqlx::test]
async fn a_card_payment_and_a_partial_refund_reconcile_clean(pool: PgPool) {
    let _turn = HISTORY.write().await;
    let server = start(pool).await;
    server.subscribe().await;
    let from = fresh_second().await;
    let invoice = server.invoice("25.00").await;
    let pi = server.pay_with_test_card(&invoice).await;
    server.wait_status(&invoice, "paid").await;
    let (status, refund) = server.post(&format!("/v1/invoices/{invoice}/refunds"), json!({ "amount": "10.00" })).await;
    assert_eq!(status, StatusCode::CREATED, "{refund}");
    let to = range_end().await;

    let report = server.reconcile(from, to).await;
    assert!(report.ok, "{report:#?}");
    assert_eq!((report.chain.as_str(), report.from_block, report.to_block), ("stripe", u64::try_from(from.timestamp()).expect("after 1970"), u64::try_from(to.timestamp()).expect("after 1970")));
    let items: Vec<(Category, ItemKind, &str, Option<&str>)> =
        report.items.iter().map(|i| (i.category, i.kind, i.reference.as_str(), i.chain_amount_minor.as_deref())).collect();
    assert_eq!(items, vec![(Category::Matched, ItemKind::Charge, pi.as_str(), Some("2500")), (Category::Matched, ItemKind::Refund, pi.as_str(), Some("1000"))]);
    assert!(report.items[0].tx_hash.as_deref().is_some_and(|c| c.starts_with("ch_")), "{:?}", report.items[0]);
    assert_eq!(usd_totals(&report), ["2500", "2500", "1000", "1000"].map(str::to_owned));
    let stored = payrail::reconcile::store::report(&server.state.pool, &report.run_id).await.expect("stored");
    assert_eq!(stored, report);

    // A later range holds nothing of it.
    let later = fresh_second().await;
    let empty = server.reconcile(later, range_end().await).await;
    assert!(empty.ok && empty.items.is_empty(), "{empty:#?}");
}

#[sqlx::test]
async fn a_ledger_card_credit_with_no_charge_is_missing_at_the_processor(pool: PgPool) {
    let _turn = HISTORY.write().await;
    let server = start(pool).await;
    let from = fresh_second().await;
    let stripe_usd = AccountCode::stripe(Fiat::USD);
    let merchant = AccountCode::merchant(&server.merchant_id);
    let credit = NewEntry::new("payment:stripe:pi_neverattheprocessor", "payment")
        .debit(stripe_usd.clone(), USD, Amount::from_u64(4200))
        .credit(merchant.clone(), USD, Amount::from_u64(4200));
    let posted = server.state.ledger.post_now(&credit).await.expect("credit");
    let manual = NewEntry::new("adjustment:stripe-1", "adjustment")
        .debit(stripe_usd, USD, Amount::from_u64(100))
        .credit(merchant, USD, Amount::from_u64(100));
    server.state.ledger.post_now(&manual).await.expect("manual");
    let to = range_end().await;

    let report = server.reconcile(from, to).await;
    assert!(!report.ok);
    assert_eq!(report.differences, 2, "{report:#?}");
    let charge = report.items.iter().find(|i| i.kind == ItemKind::Charge).expect("the credit");
    assert_eq!((charge.category, charge.reference.as_str()), (Category::MissingOnChain, "pi_neverattheprocessor"));
    assert_eq!((charge.entry_id, charge.ledger_amount_minor.as_deref()), (Some(posted.entry_id), Some("4200")));
    assert!(charge.detail.as_deref().is_some_and(|d| d.contains("missing at the processor")), "{charge:?}");
    let other = report.items.iter().find(|i| i.kind == ItemKind::Manual).expect("the manual entry");
    assert_eq!((other.category, other.reference.as_str()), (Category::MissingOnChain, "adjustment:stripe-1"));
    assert!(other.detail.as_deref().is_some_and(|d| d.contains("missing at the processor")), "{other:?}");
    assert_eq!(usd_totals(&report), ["0", "4300", "0", "0"].map(str::to_owned));
}

#[sqlx::test]
async fn a_charge_the_ledger_never_credited_is_missing_in_the_ledger(pool: PgPool) {
    let _turn = HISTORY.write().await;
    let server = start(pool).await;
    // Not subscribed: the webhook never arrives, so nothing is credited.
    let from = fresh_second().await;
    let invoice = server.invoice("7.00").await;
    let intent = server
        .stripe()
        .create_payment_intent(
            &NewPaymentIntent {
                amount: 700,
                currency: "usd".to_owned(),
                metadata: [("invoice_id".to_owned(), invoice.clone())].into(),
                payment_method: Some("pm_card_visa".to_owned()),
                customer: None,
                off_session: false,
                receipt_email: None,
            },
            &format!("reconcile-{}", random_suffix()),
        )
        .await
        .expect("confirmed");
    assert_eq!(intent.status, "succeeded");
    let to = range_end().await;

    let report = server.reconcile(from, to).await;
    assert!(!report.ok);
    assert_eq!(report.items.len(), 1, "{report:#?}");
    let item = &report.items[0];
    assert_eq!((item.category, item.kind, item.reference.as_str()), (Category::MissingInLedger, ItemKind::Charge, intent.id.as_str()));
    assert_eq!((item.chain_amount_minor.as_deref(), item.ledger_amount_minor.as_deref()), (Some("700"), None));
    assert_eq!(usd_totals(&report), ["700", "0", "0", "0"].map(str::to_owned));
    let run: (String, i64, i64, Option<bool>) =
        sqlx::query_as("SELECT source, from_block, to_block, ok FROM reconciliation_runs WHERE id = $1")
            .bind(&report.run_id)
            .fetch_one(&server.state.pool)
            .await
            .expect("run");
    assert_eq!(run, ("stripe".to_owned(), from.timestamp(), to.timestamp(), Some(false)), "blocks hold unix seconds");
}

#[sqlx::test]
async fn a_range_must_be_forward_and_bounded(pool: PgPool) {
    let server = start(pool).await;
    let now = Utc::now();
    for (from, to) in [(now, now), (now, now - chrono::Duration::seconds(1)), (now - chrono::Duration::days(500), now)] {
        let error = reconcile_stripe(&server.state.pool, &server.stripe(), from, to).await.expect_err("refused");
        assert!(matches!(error, payrail::reconcile::ReconcileError::Range { .. }), "{error}");
    }
}

impl Server {
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.key).send().await.expect("get");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    async fn eur_balance(&self, account: &AccountCode) -> String {
        let mut conn = self.state.pool.acquire().await.expect("conn");
        self.state.ledger.balance(&mut conn, account, &Fiat::EUR.ledger_asset()).await.expect("balance").to_string()
    }

    /// Waits until card settlement `id` is `want`.
    async fn wait_settlement(&self, id: &str, want: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (status, settlement) = self.get(&format!("/v1/card_settlements/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{settlement}");
            if settlement["status"] == want {
                return settlement;
            }
            assert!(std::time::Instant::now() < deadline, "settlement never became {want}: {settlement}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[sqlx::test]
async fn a_card_balance_leaves_by_stripe_payout_exactly_once_and_reconciles(pool: PgPool) {
    let _turn = HISTORY.write().await;
    let server = start(pool).await;
    server.subscribe().await;
    let from = fresh_second().await;
    let (status, invoice) = server.post("/v1/invoices", json!({ "amount": "40.00", "currency": "EUR" })).await;
    assert_eq!(status, StatusCode::CREATED, "{invoice}");
    let invoice = invoice["id"].as_str().expect("id").to_owned();
    let pi = server.pay_with_test_card(&invoice).await;
    server.wait_status(&invoice, "paid").await;
    let merchant = AccountCode::merchant(&server.merchant_id);
    let at_stripe = AccountCode::stripe(Fiat::EUR);
    assert_eq!(server.eur_balance(&merchant).await, "4000");

    // Refused: more than the balance (with what is available), a currency that is not one, no body.
    let (status, error) = server.post("/v1/card_settlements", json!({ "currency": "EUR", "amount_minor": "4001" })).await;
    assert_eq!((status, error["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("insufficient_funds")), "{error}");
    assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains("4000 available")), "{error}");
    for body in [json!({ "currency": "EURO" }), json!({ "currency": "EUR", "amount_minor": "-5" }), json!({ "currency": "EUR", "amount_minor": "0" })] {
        let (status, error) = server.post("/v1/card_settlements", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {error}");
    }

    // Two settlements: Stripe makes a payout of each at once.
    let (status, first) = server.post("/v1/card_settlements", json!({ "currency": "EUR", "amount_minor": "1500" })).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!((first["status"].as_str(), first["amount_minor"].as_str()), (Some("pending"), Some("1500")), "{first}");
    let first_po = first["stripe_payout"].as_str().expect("payout").to_owned();
    let (status, error) = server.post("/v1/card_settlements", json!({ "currency": "EUR", "amount_minor": "3000" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains("2500 available")), "{error}");
    let (status, second) = server.post("/v1/card_settlements", json!({ "currency": "EUR" })).await;
    assert_eq!((status, second["amount_minor"].as_str()), (StatusCode::CREATED, Some("2500")), "{second}");
    let second_po = second["stripe_payout"].as_str().expect("payout").to_owned();
    let (_, at_ls) = ls_get(&format!("/v1/payouts/{first_po}")).await;
    assert_eq!((at_ls["amount"].as_u64(), at_ls["currency"].as_str()), (Some(1500), Some("eur")), "{at_ls}");
    assert_eq!(at_ls["metadata"]["payrail_card_settlement"], first["id"], "{at_ls}");
    assert_eq!(server.eur_balance(&merchant).await, "0");
    assert_eq!(server.eur_balance(&AccountCode::payouts_in_flight()).await, "4000");

    // The first is paid to the bank: the money leaves Stripe's account in the ledger; the second
    // is canceled at Stripe: its amount is the merchant's again.
    let (status, paid) = ls_post(&format!("/v1/payouts/{first_po}"), &[("status", "paid")]).await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    let (status, canceled) = ls_post(&format!("/v1/payouts/{second_po}/cancel"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    let first = server.wait_settlement(first["id"].as_str().expect("id"), "paid").await;
    assert!(first["finished_at"].is_string(), "{first}");
    let second = server.wait_settlement(second["id"].as_str().expect("id"), "canceled").await;
    assert_eq!(server.eur_balance(&merchant).await, "2500");
    assert_eq!(server.eur_balance(&at_stripe).await, "2500");
    assert_eq!(server.eur_balance(&AccountCode::payouts_in_flight()).await, "0");

    // The same event again (Stripe reads the payout back the same) changes nothing.
    let payout = server.stripe().payout(&first_po).await.expect("payout");
    let mut tx = server.state.pool.begin().await.expect("tx");
    let again = payrail::stripe::settlement::apply(&mut tx, &server.state.ledger, &payout, Utc::now()).await.expect("apply");
    tx.commit().await.expect("commit");
    assert!(matches!(again, payrail::stripe::settlement::PayoutOutcome::Applied(ref note) if note.contains("is paid")), "{again:?}");
    assert_eq!(server.eur_balance(&at_stripe).await, "2500");

    // A payout payrail did not ask for is kept for review, not booked.
    let (status, foreign) = ls_post("/v1/payouts", &[("amount", "100"), ("currency", "eur"), ("status", "paid")]).await;
    assert_eq!(status, StatusCode::OK, "{foreign}");
    let foreign_po = foreign["id"].as_str().expect("id").to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let note: Option<String> = sqlx::query_scalar("SELECT note FROM stripe_events WHERE event_type = 'payout.paid' AND payload->'data'->'object'->>'id' = $1 AND status = 'review'")
            .bind(&foreign_po)
            .fetch_optional(&server.state.pool)
            .await
            .expect("event");
        if let Some(note) = note {
            assert!(note.contains("not asked for by payrail"), "{note}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the foreign payout was never kept for review");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.eur_balance(&at_stripe).await, "2500");

    // Listed newest first, a page at a time.
    let (status, page) = server.get("/v1/card_settlements?limit=1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!((page["data"][0]["id"].clone(), page["has_more"].as_bool()), (second["id"].clone(), Some(true)), "{page}");
    let (_, rest) = server.get(&format!("/v1/card_settlements?limit=1&starting_after={}", second["id"].as_str().expect("id"))).await;
    assert_eq!((rest["data"][0]["id"].clone(), rest["has_more"].as_bool()), (first["id"].clone(), Some(false)), "{rest}");
    // (The paid and the canceled payout's events arrive in either order.)
    let events: Vec<String> = sqlx::query_scalar("SELECT event_type FROM outbox WHERE object_id LIKE 'cst\\_%' ORDER BY event_type")
        .fetch_all(&server.state.pool)
        .await
        .expect("outbox");
    assert_eq!(events, ["card_settlement.created", "card_settlement.created", "card_settlement.failed", "card_settlement.paid"]);

    // Reconciliation: the charge and the paid payout match; the foreign payout is missing in the ledger.
    let to = range_end().await;
    let report = server.reconcile(from, to).await;
    let mut items: Vec<(Category, ItemKind, &str, Option<&str>)> =
        report.items.iter().map(|i| (i.category, i.kind, i.reference.as_str(), i.chain_amount_minor.as_deref())).collect();
    items.sort();
    let mut want = vec![
        (Category::Matched, ItemKind::Charge, pi.as_str(), Some("4000")),
        (Category::Matched, ItemKind::Payout, first_po.as_str(), Some("1500")),
        (Category::MissingInLedger, ItemKind::Payout, foreign_po.as_str(), Some("100")),
    ];
    want.sort();
    assert_eq!(
        items,
        want,
        "{report:#?}"
    );
    assert_eq!(report.differences, 1);
}
