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
use crate::common::stripe::{random_suffix, start_exclusive as start, Server, HISTORY};
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
