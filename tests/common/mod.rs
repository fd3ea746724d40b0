//! Shared setup for integration tests. Each `#[sqlx::test]` gets a fresh database with the
//! migrations applied, on the PostgreSQL named by `DATABASE_URL`.
#![allow(dead_code)]

pub mod bitcoin;
pub mod browser;
pub mod evm;
pub mod stripe;

use payrail::ledger::{AccountCode, NewEntry};
use payrail::money::Amount;

pub const USD: &str = "iso4217:USD";

/// `payrail dev` runs its chains on the fixed ports of `config.dev.toml` (anvil on 18545–18549,
/// the regtest node on 50001): tests that start it take turns.
pub static DEV_STACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn amount(v: u64) -> Amount {
    Amount::from_u64(v)
}

/// An entry moving `value` of `asset` from `from` (debited) to `to` (credited).
pub fn transfer(key: &str, from: AccountCode, to: AccountCode, asset: &str, value: u64) -> NewEntry {
    NewEntry::new(key, "test").debit(from, asset, amount(value)).credit(to, asset, amount(value))
}

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use payrail::api::{AppState, HttpLimits};
use payrail::clock::ManualClock;
use payrail::config::Config;
use payrail::invoice::{create_invoice, CreateInvoice, InvoiceView};
use sqlx::PgPool;

/// The shipped configuration (`config.dev.toml` and `chains/`), as the daemon loads it.
pub fn repo_config() -> Config {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.dev.toml");
    Config::from_str_with_env(&std::fs::read_to_string(&path).expect("config.dev.toml"), &path, &[]).expect("config loads")
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().expect("valid time")
}

/// Application state over `pool` with a clock that only moves when the test says so. Webhook
/// secrets are sealed, as in production, under a key made for the test.
pub fn state_with_clock(pool: PgPool) -> (AppState, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    (payrail::app::state(&repo_config(), pool, clock.clone(), test_secrets()), clock)
}

/// Webhook secrets sealed under a fresh random key.
pub fn test_secrets() -> payrail::secrets::SecretsAtRest {
    payrail::secrets::SecretsAtRest::Sealed(Arc::new(payrail::secrets::SecretsKey::generate()))
}

/// The secrets key `payrail` processes in tests are given (`PAYRAIL_SECRETS_KEY`), as `payrail serve`
/// requires one.
pub const TEST_SECRETS_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The dev stack's test tokens (config.dev.toml replaces the mainnet contracts with them).
pub const USDC_POLYGON: &str = "eip155:137/erc20:0xe7f1725e7734ce288f8367e1bb143e90bb3f0512";
pub const USDT_POLYGON: &str = "eip155:137/erc20:0x9fe46736679d2d9a65f0992f2272de9f3c7fa6e0";
/// Bitcoin on the dev stack: config.dev.toml follows regtest.
pub const BTC: &str = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328/slip44:0";

/// A request for `amount` USD payable in `accepted` (the merchant's defaults when `None`), open for
/// an hour.
pub fn invoice_request(amount: &str, accepted: Option<&[&str]>) -> CreateInvoice {
    CreateInvoice {
        amount: amount.to_owned(),
        currency: "USD".to_owned(),
        accepted: accepted.map(|list| list.iter().map(|a| (*a).to_owned()).collect()),
        expires_in: Some(3600),
        order_id: None,
        metadata: None,
        customer: None,
        promo_code: None,
        redirect_url: None,
        buyer_email: None,
        locale: None,
        underpayment_tolerance_bps: None,
        speed_policy: None,
    }
}

/// Creates `request` for `merchant_id` as of `now`.
pub async fn create_invoice_at(state: &AppState, merchant_id: &str, request: &CreateInvoice, now: DateTime<Utc>) -> InvoiceView {
    let (view, _) =
        create_invoice(&state.pool, &state.catalog, state.rates.as_ref(), &state.policy, merchant_id, request, None, now)
            .await
            .expect("invoice");
    view
}

/// An invoice of `amount` USD payable in `accepted`, created as of `now`.
pub async fn invoice_at(state: &AppState, merchant_id: &str, amount: &str, accepted: &[&str], now: DateTime<Utc>) -> InvoiceView {
    create_invoice_at(state, merchant_id, &invoice_request(amount, Some(accepted)), now).await
}

/// An invoice of `amount` USD payable in `accepted`, created at the state's clock.
pub async fn invoice(state: &AppState, merchant_id: &str, amount: &str, accepted: &[&str]) -> InvoiceView {
    invoice_at(state, merchant_id, amount, accepted, state.clock.now()).await
}

/// Serves payrail's API over `state` on a free local port; returns its base URL.
pub async fn serve(state: &AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = payrail::app::http(state.clone(), HttpLimits::default());
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await });
    base
}

/// payrail's API served over a real socket on the test's database, with a clock the test moves.
/// Test files wrap it (and deref to it) when they need a merchant or a key of their own.
pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
}

impl Server {
    pub async fn start(pool: PgPool) -> Self {
        Self::start_with(pool, |_| {}).await
    }

    /// Starts after `adjust` changed the state (a limit, a rail).
    pub async fn start_with(pool: PgPool, adjust: impl FnOnce(&mut AppState)) -> Self {
        let (mut state, clock) = state_with_clock(pool);
        adjust(&mut state);
        let base = serve(&state).await;
        Server { base, client: reqwest::Client::new(), state, clock }
    }

    /// A request to `path`, with `key` as the bearer token when given.
    pub fn request(&self, method: reqwest::Method, key: Option<&str>, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends a request and reads the answer: its status, and its body as JSON (a body that is not
    /// JSON comes back as a JSON string).
    pub async fn send(
        &self,
        method: reqwest::Method,
        key: Option<&str>,
        path: &str,
        body: Option<serde_json::Value>,
        idempotency_key: Option<&str>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut request = self.request(method, key, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(idempotency_key) = idempotency_key {
            request = request.header("idempotency-key", idempotency_key);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    pub async fn get(&self, key: &str, path: &str) -> (reqwest::StatusCode, serde_json::Value) {
        self.send(reqwest::Method::GET, Some(key), path, None, None).await
    }

    pub async fn post(&self, key: &str, path: &str, body: serde_json::Value, idempotency_key: Option<&str>) -> (reqwest::StatusCode, serde_json::Value) {
        self.send(reqwest::Method::POST, Some(key), path, Some(body), idempotency_key).await
    }

    /// The invoice as the API shows it, read from the database.
    pub async fn invoice_view(&self, id: &str) -> InvoiceView {
        let mut conn = self.state.pool.acquire().await.expect("conn");
        payrail::invoice::load_view(&mut conn, None, id).await.expect("view")
    }

    pub async fn balance(&self, account: &AccountCode, asset: &str) -> payrail::ledger::SignedAmount {
        let mut conn = self.state.pool.acquire().await.expect("conn");
        self.state.ledger.balance(&mut conn, account, asset).await.expect("balance")
    }
}

/// The URL of the test database behind `pool`, for a `payrail` process.
pub fn database_url(pool: &PgPool) -> String {
    let options = pool.connect_options();
    let admin = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (base, _) = admin.rsplit_once('/').expect("url with a database");
    format!("{base}/{}", options.get_database().expect("test database"))
}

/// `payrail <args>` from the repository root against `database`, logging warnings only.
pub fn payrail(database: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_payrail"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .env("PAYRAIL_CONFIG", "config.dev.toml")
        .env("DATABASE_URL", database)
        .env("RUST_LOG", "warn")
        .env(payrail::secrets::SECRETS_KEY_ENV, TEST_SECRETS_KEY_HEX)
        .env_remove(payrail::secrets::SECRETS_KEY_FILE_ENV);
    command
}

/// The configured chains, by the names their environment overrides use.
const CHAINS: [&str; 6] = ["BITCOIN", "ETHEREUM", "POLYGON", "BSC", "ARBITRUM", "OPTIMISM"];

/// `payrail <args>` as a background process following only `chain` (its name in environment
/// overrides, e.g. `POLYGON`) at `rpc`: the other chains disabled, stdout quiet, killed on drop.
pub fn payrail_on(database: &str, args: &[&str], chain: &str, rpc: &str) -> tokio::process::Command {
    let mut command = payrail(database, args);
    command
        .env(format!("PAYRAIL_CHAINS__{chain}__RPC"), format!("[\"{rpc}\"]"))
        // An EVM node's heads pushed from the same port (anvil serves both); none for Electrum.
        .env(format!("PAYRAIL_CHAINS__{chain}__WS"), if rpc.starts_with("http://") { rpc.replacen("http://", "ws://", 1) } else { String::new() })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    for other in CHAINS.into_iter().filter(|other| *other != chain) {
        command.env(format!("PAYRAIL_CHAINS__{other}__ENABLED"), "false");
    }
    command
}

/// `payrail serve` with the dev stack's configuration on a free port, following only `chain` at
/// `rpc`.
pub fn daemon(database: &str, chain: &str, rpc: &str) -> tokio::process::Child {
    payrail_on(database, &["serve", "--allow-dev-settings"], chain, rpc)
        .env("PAYRAIL_SERVER__LISTEN", "127.0.0.1:0")
        .spawn()
        .expect("start payrail serve")
}
