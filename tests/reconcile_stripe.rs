//! Reconciliation of the card rail against localstripe (a fake stateful Stripe, PyPI): charges and
//! refunds re-read from the processor and compared with the ledger's `assets:stripe:*` entries.
//!
//! localstripe comes from `PAYRAIL_LOCALSTRIPE_URL`, else this binary starts its own through
//! `scripts/localstripe run`. A reconciliation lists every charge of its time range, whoever made
//! it, so the tests here take turns: each holds a lock, starts its range on a fresh second after
//! the previous test's range ended, and ends it before letting the next one in. (Other binaries
//! paying through the same localstripe at the same moment would show up in the ranges too.)

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use payrail::api::{router, AppState, HttpLimits};
use payrail::chain::health::RailHealth;
use payrail::clock::SystemClock;
use payrail::config::Config;
use payrail::ledger::{AccountCode, NewEntry};
use payrail::merchant::create_merchant;
use payrail::money::{Amount, Fiat};
use payrail::reconcile::{reconcile_stripe, Category, ItemKind, Report};
use payrail::stripe::client::NewPaymentIntent;
use payrail::stripe::StripeClient;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

const USD: &str = "iso4217:USD";

struct Localstripe {
    url: String,
    _child: Option<Mutex<Child>>,
}

fn localstripe() -> &'static str {
    static INSTANCE: OnceLock<Localstripe> = OnceLock::new();
    &INSTANCE
        .get_or_init(|| {
            if let Ok(url) = std::env::var("PAYRAIL_LOCALSTRIPE_URL") {
                return Localstripe { url: url.trim_end_matches('/').to_owned(), _child: None };
            }
            let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/localstripe");
            Command::new(&script).arg("install").status().expect("scripts/localstripe install");
            let child = Command::new(&script)
                .args(["run", &port.to_string()])
                .env("PAYRAIL_LOCALSTRIPE_EXIT_ON_EOF", "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("scripts/localstripe run");
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "localstripe did not start on {url}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Localstripe { url, _child: Some(Mutex::new(child)) }
        })
        .url
}

/// One test's range at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

fn random_suffix() -> String {
    payrail::ids::new_id("x").trim_start_matches("x_").to_owned()
}

struct Server {
    base: String,
    http: reqwest::Client,
    state: AppState,
    key: String,
    merchant_id: String,
    secret: String,
}

fn config(secret: &str) -> Config {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let env = [
        ("PAYRAIL_STRIPE_SECRET_KEY", "sk_test_payrail"),
        ("PAYRAIL_STRIPE_WEBHOOK_SECRET", secret),
        ("PAYRAIL_STRIPE__API_BASE", localstripe()),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    Config::from_str_with_env(&std::fs::read_to_string(&path).expect("config.toml"), &path, &env).expect("config loads")
}

async fn start(pool: PgPool) -> Server {
    let secret = format!("whsec_{}", random_suffix());
    let config = config(&secret);
    let mut state = payrail::app::state(&config, pool, Arc::new(SystemClock));
    state.rail_health = Arc::new(RailHealth::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = router(state.clone(), HttpLimits::default());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let merchant = create_merchant(&state.pool, "Card Shop").await.expect("merchant");
    Server {
        base,
        http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client"),
        state,
        key: merchant.api_key,
        merchant_id: merchant.merchant_id,
        secret,
    }
}

impl Server {
    fn stripe(&self) -> StripeClient {
        self.state.card.as_ref().expect("card rail configured").client.clone()
    }

    /// Has localstripe deliver its events to this server, signed with this server's secret.
    async fn subscribe(&self) {
        let url = format!("{}/v1/stripe/webhook", self.base);
        let response = reqwest::Client::new()
            .post(format!("{}/_config/webhooks/{}", localstripe(), random_suffix()))
            .basic_auth("sk_test_payrail", Some(""))
            .form(&[("url", url.as_str()), ("secret", self.secret.as_str())])
            .send()
            .await
            .expect("localstripe answers");
        assert_eq!(response.status(), StatusCode::OK);
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.key).json(&body).send().await.expect("post");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    async fn invoice(&self, amount: &str) -> String {
        let (status, invoice) = self.post("/v1/invoices", json!({ "amount": amount, "currency": "USD" })).await;
        assert_eq!(status, StatusCode::CREATED, "{invoice}");
        invoice["id"].as_str().expect("id").to_owned()
    }

    /// Pays `invoice` with a test card through the checkout page; returns the PaymentIntent.
    async fn pay_by_card(&self, invoice: &str) -> String {
        let response = self
            .http
            .post(format!("{}/pay/{invoice}/card", self.base))
            .header("accept", "application/json")
            .form(&[("payment_method", "pm_card_visa")])
            .send()
            .await
            .expect("card");
        assert_eq!(response.status(), StatusCode::CREATED);
        let attempt: Value = response.json().await.expect("json");
        assert_eq!(attempt["status"], "succeeded", "{attempt}");
        attempt["payment_intent"].as_str().expect("payment intent").to_owned()
    }

    async fn wait_status(&self, invoice: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let view: Value =
                self.http.get(format!("{}/v1/invoices/{invoice}", self.base)).bearer_auth(&self.key).send().await.expect("show").json().await.expect("json");
            if view["status"] == want {
                return;
            }
            assert!(Instant::now() < deadline, "invoice never became {want}: {view}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
    let _turn = TURN.lock().await;
    let server = start(pool).await;
    server.subscribe().await;
    let from = fresh_second().await;
    let invoice = server.invoice("25.00").await;
    let pi = server.pay_by_card(&invoice).await;
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
    let _turn = TURN.lock().await;
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
    let _turn = TURN.lock().await;
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
