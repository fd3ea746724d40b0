//! The card rail against localstripe (a fake stateful Stripe, PyPI): the daemon under test with the
//! shipped configuration and its card rail pointed at localstripe.
//!
//! localstripe comes from `PAYRAIL_LOCALSTRIPE_URL` (scripts/test starts one); without it, each test
//! binary starts its own through `scripts/localstripe run`, which exits with this process.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use payrail::api::AppState;
use payrail::chain::health::RailHealth;
use payrail::clock::SystemClock;
use payrail::config::Config;
use payrail::merchant::create_merchant;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

struct Localstripe {
    url: String,
    _child: Option<Mutex<Child>>,
}

/// localstripe's charges are one history shared by every test: a test that reads all charges of a
/// time range (reconciliation) holds this for writing, so no other test creates charges meanwhile;
/// every other test's [`Server`] holds it for reading.
pub static HISTORY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The base URL of localstripe, started on first use unless `PAYRAIL_LOCALSTRIPE_URL` names one.
pub fn localstripe() -> &'static str {
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

/// A `POST` to localstripe with a form body, answered as JSON (errors included).
pub async fn ls_post(path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", localstripe()))
        .basic_auth("sk_test_payrail", Some(""))
        .form(form)
        .send()
        .await
        .expect("localstripe answers");
    let status = response.status();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A `GET` from localstripe, answered as JSON.
pub async fn ls_get(path: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", localstripe()))
        .basic_auth("sk_test_payrail", Some(""))
        .send()
        .await
        .expect("localstripe answers");
    let status = response.status();
    (status, response.json().await.expect("json"))
}

pub fn random_suffix() -> String {
    payrail::ids::new_id("x").trim_start_matches("x_").to_owned()
}

/// The daemon under test, with a merchant of its own.
pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub key: String,
    pub merchant_id: String,
    pub secret: String,
    _history: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
}

/// The shipped configuration with the card rail pointed at localstripe and `secret` as the webhook
/// secret.
pub fn config(secret: &str) -> Config {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.dev.toml");
    let env = [
        ("PAYRAIL_STRIPE_SECRET_KEY", "sk_test_payrail"),
        ("PAYRAIL_STRIPE_WEBHOOK_SECRET", secret),
        ("PAYRAIL_STRIPE__API_BASE", localstripe()),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    Config::from_str_with_env(&std::fs::read_to_string(&path).expect("config.dev.toml"), &path, &env).expect("config loads")
}

/// The daemon under test, sharing localstripe's history with other tests (see [`HISTORY`]).
pub async fn start(pool: PgPool) -> Server {
    let history = HISTORY.read().await;
    let mut server = start_exclusive(pool).await;
    server._history = Some(history);
    server
}

/// The daemon under test, for a caller that already holds [`HISTORY`] for writing.
pub async fn start_exclusive(pool: PgPool) -> Server {
    let secret = format!("whsec_{}", random_suffix());
    let config = config(&secret);
    let mut state = payrail::app::state(&config, pool, Arc::new(SystemClock), super::test_secrets());
    // A health map of this test's own, so other tests' rails cannot move its checkout page.
    state.rail_health = Arc::new(RailHealth::new());
    let base = super::serve(&state).await;
    let merchant = create_merchant(&state.pool, "Card Shop").await.expect("merchant");
    Server {
        base,
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client"),
        state,
        key: merchant.api_key,
        merchant_id: merchant.merchant_id,
        secret,
        _history: None,
    }
}

impl Server {
    /// Delivers `body` to the webhook with `header` as its `Stripe-Signature`.
    pub async fn deliver(&self, body: &str, header: Option<&str>) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!("{}/v1/stripe/webhook", self.base))
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_owned());
        if let Some(header) = header {
            request = request.header("Stripe-Signature", header);
        }
        let response = request.send().await.expect("deliver");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    /// Signs `body` as Stripe does, with this server's secret, at `t`.
    pub fn sign(&self, body: &str, t: i64) -> String {
        payrail::webhook::sign(&payrail::webhook::EndpointSecret::from_stored(self.secret.clone()), t, body.as_bytes())
    }

    pub async fn deliver_signed(&self, body: &str) -> (StatusCode, Value) {
        let header = self.sign(body, payrail::clock::Clock::now(&SystemClock).timestamp());
        self.deliver(body, Some(&header)).await
    }

    /// Has localstripe deliver its events to this server, signed with this server's secret.
    pub async fn subscribe(&self) {
        let url = format!("{}/v1/stripe/webhook", self.base);
        let id = format!("/_config/webhooks/{}", random_suffix());
        let (status, body) = ls_post(&id, &[("url", &url), ("secret", &self.secret)]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// An invoice of `amount` USD created over the API; its id.
    pub async fn invoice(&self, amount: &str) -> String {
        let response = self
            .client
            .post(format!("{}/v1/invoices", self.base))
            .bearer_auth(&self.key)
            .json(&json!({ "amount": amount, "currency": "USD" }))
            .send()
            .await
            .expect("create");
        let status = response.status();
        let invoice: Value = response.json().await.expect("json");
        assert_eq!(status, StatusCode::CREATED, "{invoice}");
        invoice["id"].as_str().expect("id").to_owned()
    }

    pub async fn show(&self, id: &str) -> Value {
        self.client
            .get(format!("{}/v1/invoices/{id}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("show")
            .json()
            .await
            .expect("json")
    }

    /// `POST /pay/{id}/card` as a script would (JSON answer).
    pub async fn pay_by_card(&self, id: &str, payment_method: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/pay/{id}/card", self.base))
            .header("accept", "application/json")
            .form(&[("payment_method", payment_method)])
            .send()
            .await
            .expect("card");
        let status = response.status();
        (status, response.json().await.expect("json"))
    }

    pub async fn wait_status(&self, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let invoice = self.show(id).await;
            if invoice["status"] == want {
                return invoice;
            }
            assert!(Instant::now() < deadline, "invoice never became {want}: {invoice}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
