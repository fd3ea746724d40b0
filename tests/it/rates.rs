//! Rate feeds against a real local HTTP server that replays recorded responses of the real APIs
//! (`tests/fixtures/rates/`): exact parsing, every kind of failure, the refresher with a dead
//! feed, and invoices priced (or refused) through aggregated rates in a real PostgreSQL.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration as StdDuration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, Duration, TimeZone, Utc};
use payrail::clock::{Clock, ManualClock};
use payrail::config::Config;
use payrail::invoice::{create_invoice, CreateInvoice, InvoiceError, InvoicePolicy};
use payrail::merchant::create_merchant;
use payrail::money::{Fiat, Rate};
use payrail::rates::{
    http_client, spawn_rate_refresh, AggregatedRates, AggregationPolicy, BinanceClient, CoinGeckoClient, CoinbaseClient,
    ConfiguredRates, Feed, FeedError, KrakenClient, LiveSource, Pair, RateError, RateSource, SourceQuote,
    FEED_BODY_BYTES_MAX,
};
use sqlx::PgPool;

/// Bitcoin on the dev stack: config.toml follows regtest.
const BTC: &str = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328/slip44:0";
/// The dev stack's USDC on Polygon (config.toml replaces the mainnet contract with it).
const USDC_POLYGON: &str = "eip155:137/erc20:0xe7f1725e7734ce288f8367e1bb143e90bb3f0512";

fn fixture(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rates").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The time the recorded responses were taken at (CoinGecko's `last_updated_at` is a few
/// seconds before it).
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().expect("valid time")
}

fn rate(text: &str) -> Rate {
    text.parse().expect("rate")
}

fn pairs(list: &[&str]) -> Vec<Pair> {
    list.iter().map(|p| p.parse().expect("pair")).collect()
}

// --- the replay server -------------------------------------------------------------------------

#[derive(Clone)]
struct Reply {
    status: u16,
    body: String,
    content_type: &'static str,
    delay: StdDuration,
    retry_after: Option<&'static str>,
}

impl Reply {
    fn json(body: String) -> Reply {
        Reply { status: 200, body, content_type: "application/json", delay: StdDuration::ZERO, retry_after: None }
    }

    fn status(mut self, status: u16) -> Reply {
        self.status = status;
        self
    }

    fn html(mut self) -> Reply {
        self.content_type = "text/html";
        self
    }

    fn delayed(mut self, delay: StdDuration) -> Reply {
        self.delay = delay;
        self
    }

    fn retry_after(mut self, seconds: &'static str) -> Reply {
        self.retry_after = Some(seconds);
        self
    }
}

#[derive(Clone, Default)]
struct Replies {
    /// By "path?query", else by path.
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn replay(State(replies): State<Replies>, uri: Uri) -> Response {
    let full = uri.path_and_query().map(|pq| pq.as_str().to_owned()).unwrap_or_default();
    replies.seen.lock().unwrap_or_else(PoisonError::into_inner).push(full.clone());
    let reply = {
        let routes = replies.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.get(&full).or_else(|| routes.get(uri.path())).cloned()
    };
    let Some(reply) = reply else {
        return (StatusCode::NOT_FOUND, format!("no recorded response for {full}")).into_response();
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).expect("status");
    let mut response = (status, reply.body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    if let Some(seconds) = reply.retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
    }
    response
}

/// A local HTTP server on 127.0.0.1 answering with recorded responses.
struct ReplayServer {
    base_url: String,
    replies: Replies,
}

impl ReplayServer {
    async fn start() -> ReplayServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("address"));
        let replies = Replies::default();
        let app = Router::new().fallback(replay).with_state(replies.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ReplayServer { base_url, replies }
    }

    fn route(&self, path: &str, reply: Reply) -> &Self {
        self.replies.routes.lock().unwrap_or_else(PoisonError::into_inner).insert(path.to_owned(), reply);
        self
    }

    fn seen(&self) -> Vec<String> {
        let mut seen = self.replies.seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        seen.sort();
        seen
    }
}

/// An address nothing listens on: a dead feed.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    url
}

const TIMEOUT: StdDuration = StdDuration::from_secs(5);

fn client() -> reqwest::Client {
    http_client().expect("http client")
}

async fn coinbase_server() -> ReplayServer {
    let server = ReplayServer::start().await;
    for pair in ["BTC-USD", "ETH-USD", "ETH-EUR", "BTC-EUR", "USDC-USD", "USDT-USD"] {
        server.route(&format!("/v2/prices/{pair}/spot"), Reply::json(fixture(&format!("coinbase/spot_{pair}.json"))));
    }
    server
}

async fn kraken_server() -> ReplayServer {
    let server = ReplayServer::start().await;
    server.route("/0/public/Ticker", Reply::json(fixture("kraken/ticker.json")));
    server
}

async fn binance_server() -> ReplayServer {
    let server = ReplayServer::start().await;
    for symbol in ["BTCUSDT", "ETHUSDT", "USDCUSDT", "BNBUSDT"] {
        server.route(
            &format!("/api/v3/ticker/price?symbol={symbol}"),
            Reply::json(fixture(&format!("binance/price_{symbol}.json"))),
        );
    }
    server
}

async fn coingecko_server() -> ReplayServer {
    let server = ReplayServer::start().await;
    server.route("/api/v3/simple/price", Reply::json(fixture("coingecko/simple_price.json")));
    server
}

fn summary(quotes: &[SourceQuote]) -> Vec<String> {
    quotes.iter().map(|q| format!("{}/{}={}", q.base, q.quote, q.rate)).collect()
}

// --- each client parses the recorded responses exactly ----------------------------------------

#[tokio::test]
async fn coinbase_spot_prices_are_exact() {
    let server = coinbase_server().await;
    let coinbase = CoinbaseClient::new(client(), &server.base_url, TIMEOUT);
    let quotes = coinbase.fetch(&pairs(&["BTC/USD", "ETH/EUR", "USDC/USD", "BNB/USD"]), t0()).await.expect("fetch");
    assert_eq!(summary(&quotes), ["BTC/USD=97234.515", "ETH/EUR=3468.02", "USDC/USD=1"]);
    assert!(quotes.iter().all(|q| q.source == "coinbase" && q.at == t0() && q.via.is_none()));
    // BNB is not listed on Coinbase: never asked for.
    assert_eq!(server.seen(), ["/v2/prices/BTC-USD/spot", "/v2/prices/ETH-EUR/spot", "/v2/prices/USDC-USD/spot"]);
}

#[tokio::test]
async fn kraken_ticker_is_exact_in_one_request() {
    let server = kraken_server().await;
    let kraken = KrakenClient::new(client(), &format!("{}/", server.base_url), TIMEOUT);
    let quotes =
        kraken.fetch(&pairs(&["BTC/USD", "ETH/USD", "USDT/USD", "POL/USD", "BTC/EUR", "BNB/USD"]), t0()).await.expect("fetch");
    assert_eq!(
        summary(&quotes),
        ["BTC/USD=97250.1", "ETH/USD=3621.45", "USDT/USD=1.00012", "POL/USD=0.2391", "BTC/EUR=93118.7"]
    );
    assert_eq!(server.seen(), ["/0/public/Ticker?pair=XBTUSD,ETHUSD,USDTUSD,POLUSD,XBTEUR"]);
}

#[tokio::test]
async fn binance_prices_are_exact_and_flagged_as_usdt() {
    let server = binance_server().await;
    let binance = BinanceClient::new(client(), &server.base_url, TIMEOUT);
    let quotes = binance.fetch(&pairs(&["BTC/USD", "BNB/USD", "USDC/USD", "BTC/EUR", "USDT/USD"]), t0()).await.expect("fetch");
    assert_eq!(summary(&quotes), ["BTC/USD=97215.99", "BNB/USD=689.12", "USDC/USD=0.9998"]);
    assert!(quotes.iter().all(|q| q.via.as_deref() == Some("USDT")));
    assert_eq!(
        server.seen(),
        [
            "/api/v3/ticker/price?symbol=BNBUSDT",
            "/api/v3/ticker/price?symbol=BTCUSDT",
            "/api/v3/ticker/price?symbol=USDCUSDT"
        ]
    );
}

#[tokio::test]
async fn coingecko_numbers_are_read_from_their_text() {
    let server = coingecko_server().await;
    let coingecko = CoinGeckoClient::new(client(), &server.base_url, TIMEOUT);
    let quotes = coingecko.fetch(&pairs(&["BTC/USD", "ETH/EUR", "USDC/USD", "BNB/USD"]), t0()).await.expect("fetch");
    assert_eq!(
        summary(&quotes),
        ["BTC/USD=97231.12345678901", "ETH/EUR=3468.3", "USDC/USD=0.9998420371", "BNB/USD=689.31"]
    );
    assert_eq!(quotes[0].at, t0() - Duration::seconds(12), "dated by last_updated_at");
    assert_eq!(
        server.seen(),
        ["/api/v3/simple/price?ids=binancecoin,bitcoin,ethereum,usd-coin&vs_currencies=eur,usd&include_last_updated_at=true&precision=full"]
    );
}

// --- failures are clear errors ------------------------------------------------------------------

#[tokio::test]
async fn http_errors_rate_limits_and_timeouts_are_named() {
    let server = ReplayServer::start().await;
    server
        .route("/0/public/Ticker", Reply::json(fixture("kraken/error_502.html")).status(502).html())
        .route(
            "/api/v3/ticker/price?symbol=BTCUSDT",
            Reply::json(fixture("binance/error_too_many_requests.json")).status(429).retry_after("60"),
        )
        .route("/api/v3/ticker/price?symbol=ETHUSDT", Reply::json(fixture("binance/error_invalid_symbol.json")).status(400))
        .route("/api/v3/simple/price", Reply::json(fixture("coingecko/error_rate_limit.json")).status(429))
        .route("/v2/prices/BTC-USD/spot", Reply::json(fixture("coinbase/spot_BTC-USD.json")).delayed(StdDuration::from_secs(3)))
        .route("/v2/prices/BTC-EUR/spot", Reply::json(fixture("coinbase/error_not_found.json")).status(404))
        .route("/v2/prices/ETH-USD/spot", Reply::json(fixture("coinbase/spot_ETH-USD.json")).status(500));
    let btc = pairs(&["BTC/USD"]);

    let kraken = KrakenClient::new(client(), &server.base_url, TIMEOUT);
    let error = kraken.fetch(&btc, t0()).await.expect_err("502");
    assert!(matches!(error, FeedError::Status { status: 502, .. }), "{error:?}");
    assert!(error.is_retryable());
    let message = error.to_string();
    assert!(message.starts_with(&format!("kraken: GET {}/0/public/Ticker?pair=XBTUSD answered http 502", server.base_url)), "{message}");
    assert!(message.contains("502 Bad Gateway"), "{message}");

    let binance = BinanceClient::new(client(), &server.base_url, TIMEOUT);
    let error = binance.fetch(&btc, t0()).await.expect_err("429");
    assert!(matches!(error, FeedError::RateLimited { retry_after_s: Some(60), .. }), "{error:?}");
    assert!(error.to_string().ends_with("answered http 429 (rate limited); retry after 60 s"), "{error}");
    let error = binance.fetch(&pairs(&["ETH/USD"]), t0()).await.expect_err("400");
    assert!(matches!(error, FeedError::Status { status: 400, .. }), "{error:?}");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("{\"code\":-1121,\"msg\":\"Invalid symbol.\"}"), "{error}");

    let coingecko = CoinGeckoClient::new(client(), &server.base_url, TIMEOUT);
    let error = coingecko.fetch(&btc, t0()).await.expect_err("429");
    assert!(matches!(error, FeedError::RateLimited { retry_after_s: None, .. }), "{error:?}");

    let impatient = CoinbaseClient::new(client(), &server.base_url, StdDuration::from_millis(200));
    let started = std::time::Instant::now();
    let error = impatient.fetch(&btc, t0()).await.expect_err("timeout");
    assert!(matches!(error, FeedError::Timeout { timeout_ms: 200, .. }), "{error:?}");
    assert!(started.elapsed() < StdDuration::from_secs(2), "the timeout bounds the fetch");
    assert_eq!(error.to_string(), format!("coinbase: GET {}/v2/prices/BTC-USD/spot timed out after 200 ms", server.base_url));

    let coinbase = CoinbaseClient::new(client(), &server.base_url, TIMEOUT);
    let error = coinbase.fetch(&pairs(&["BTC/EUR"]), t0()).await.expect_err("404");
    assert!(matches!(error, FeedError::Status { status: 404, .. }), "{error:?}");
    assert!(error.to_string().contains("Invalid base currency"), "{error}");
    let error = coinbase.fetch(&pairs(&["ETH/USD"]), t0()).await.expect_err("500");
    assert!(matches!(error, FeedError::Status { status: 500, .. }), "{error:?}");

    let dead = CoinbaseClient::new(client(), &dead_url().await, TIMEOUT);
    let error = dead.fetch(&btc, t0()).await.expect_err("connection refused");
    assert!(matches!(error, FeedError::Transport { .. }), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn malformed_bodies_missing_fields_and_bad_prices_are_named() {
    let server = ReplayServer::start().await;
    let truncated = fixture("coinbase/spot_BTC-USD.json").trim_end().trim_end_matches('}').to_owned();
    server
        .route("/v2/prices/BTC-USD/spot", Reply::json(truncated))
        .route("/v2/prices/ETH-USD/spot", Reply::json(r#"{"data":{"base":"ETH","currency":"USD"}}"#.to_owned()))
        .route("/v2/prices/USDC-USD/spot", Reply::json("<html>maintenance</html>".to_owned()).html())
        .route("/api/v3/ticker/price?symbol=BTCUSDT", Reply::json(r#"{"symbol":"BTCUSDT","price":"n/a"}"#.to_owned()))
        .route("/api/v3/ticker/price?symbol=ETHUSDT", Reply::json(r#"{"symbol":"ETHUSDT","price":"0.00000000"}"#.to_owned()))
        .route("/api/v3/ticker/price?symbol=BNBUSDT", Reply::json("x".repeat(FEED_BODY_BYTES_MAX + 1)))
        .route("/0/public/Ticker", Reply::json(fixture("kraken/ticker.json").replace("\"c\":[\"97250.10000\"", "\"c\":[\"0.00000\"")))
        .route("/api/v3/simple/price", Reply::json(r#"{"bitcoin":{"eur":93112.42}}"#.to_owned()));
    let coinbase = CoinbaseClient::new(client(), &server.base_url, TIMEOUT);
    let binance = BinanceClient::new(client(), &server.base_url, TIMEOUT);
    let error = |result: Result<Vec<SourceQuote>, FeedError>| result.expect_err("refused").to_string();

    let message = error(coinbase.fetch(&pairs(&["BTC/USD"]), t0()).await);
    assert!(message.starts_with("coinbase: malformed body at data: EOF while parsing an object"), "{message}");
    assert_eq!(error(coinbase.fetch(&pairs(&["ETH/USD"]), t0()).await), "coinbase: field data.amount is missing");
    assert!(error(coinbase.fetch(&pairs(&["USDC/USD"]), t0()).await).starts_with("coinbase: malformed body at body: expected value"));
    assert_eq!(
        error(binance.fetch(&pairs(&["BTC/USD"]), t0()).await),
        "binance: field price = \"n/a\" is not a valid price: rate \"n/a\" contains a character that is not a digit or a single decimal point"
    );
    assert_eq!(
        error(binance.fetch(&pairs(&["ETH/USD"]), t0()).await),
        "binance: field price = \"0.00000000\" is not a valid price: rate \"0.00000000\" is zero; a price must be positive"
    );
    assert!(error(binance.fetch(&pairs(&["BNB/USD"]), t0()).await).contains(&format!("body larger than {FEED_BODY_BYTES_MAX} bytes")));
    let kraken = KrakenClient::new(client(), &server.base_url, TIMEOUT);
    assert!(error(kraken.fetch(&pairs(&["BTC/USD"]), t0()).await).starts_with("kraken: field result.XXBTZUSD.c[0] = \"0.00000\" is not a valid price"));
    let coingecko = CoinGeckoClient::new(client(), &server.base_url, TIMEOUT);
    assert_eq!(error(coingecko.fetch(&pairs(&["BTC/USD"]), t0()).await), "coingecko: field bitcoin.usd is missing");
    server.route("/0/public/Ticker", Reply::json(fixture("kraken/error_unknown_pair.json")));
    assert_eq!(error(kraken.fetch(&pairs(&["BTC/USD"]), t0()).await), "kraken: the api reports an error: EQuery:Unknown asset pair");
}

// --- aggregation over live feeds ----------------------------------------------------------------

fn policy() -> AggregationPolicy {
    AggregationPolicy { max_age: Duration::seconds(120), quorum: 2, outlier_bps: 200, depeg_bps: 100, stable_max_age: Duration::seconds(120) }
}

#[tokio::test]
async fn one_dead_feed_leaves_the_others_quoting_and_stale_rates_expire() {
    let coinbase = coinbase_server().await;
    let coingecko = coingecko_server().await;
    let kraken = ReplayServer::start().await;
    kraken.route("/0/public/Ticker", Reply::json(fixture("kraken/error_internal.json")));
    let binance_url = dead_url().await;
    let clock = Arc::new(ManualClock::new(t0()));
    let feeds = vec![
        Feed::live(LiveSource::Coinbase, client(), Some(&coinbase.base_url), TIMEOUT),
        Feed::live(LiveSource::Kraken, client(), Some(&kraken.base_url), TIMEOUT),
        Feed::live(LiveSource::Binance, client(), Some(&binance_url), TIMEOUT),
        Feed::live(LiveSource::CoinGecko, client(), Some(&coingecko.base_url), TIMEOUT),
    ];
    let rates = AggregatedRates::new(policy(), feeds, pairs(&["BTC/USD", "USDC/USD", "USDT/USD", "BNB/USD"]), StdDuration::from_secs(30), clock.clone());
    let refresher = rates.refresher().expect("aggregated rates refresh");
    let report = refresher.refresh_once().await;
    assert_eq!(report.fetched, [("coinbase", 3), ("coingecko", 4)]);
    let failed: Vec<(&str, &str)> = report.failed.iter().map(|(source, error)| (*source, error.kind())).collect();
    assert_eq!(failed, [("kraken", "api"), ("binance", "transport")]);
    let metrics = payrail::metrics::render();
    assert!(metrics.contains("payrail_rate_feed_errors_total{source=\"kraken\",kind=\"api\"}"), "{metrics}");
    assert!(metrics.contains("payrail_rate_feed_fetches_total{source=\"coinbase\"}"), "{metrics}");

    let btc = rates.quote("BTC", Fiat::USD, clock.now()).expect("BTC priced by the two live feeds");
    assert_eq!(btc.source, "median:coinbase,coingecko");
    assert_eq!(btc.rate, rate("97232.819228394505"), "the exact mean of 97234.515 and 97231.12345678901");
    assert_eq!(btc.at, t0() - Duration::seconds(12));
    assert_eq!(btc.sources.len(), 2);
    // BNB has only CoinGecko now (Binance is down): below the quorum, refused; others unaffected.
    let bnb = rates.quote("BNB", Fiat::USD, clock.now()).expect_err("one source");
    assert!(matches!(bnb, RateError::TooFewSources { fresh: 1, quorum: 2, .. }), "{bnb}");
    assert!(rates.quote("USDC", Fiat::USD, clock.now()).is_ok());

    // Time passes without a refresh: every rate expires rather than being used stale.
    clock.advance(Duration::seconds(121));
    let stale = rates.quote("BTC", Fiat::USD, clock.now()).expect_err("stale");
    assert!(matches!(stale, RateError::TooFewSources { fresh: 0, .. }), "{stale}");
    // The next refresh brings them back; the feeds' data is dated by the new fetch.
    refresher.refresh_once().await;
    let coingecko_at = Utc.timestamp_opt(1_767_268_788, 0).single().expect("time");
    let fresh = rates.quote("BTC", Fiat::USD, clock.now());
    // CoinGecko's own update time is now too old: its quote does not count; Coinbase alone is short.
    assert!(matches!(fresh, Err(RateError::TooFewSources { fresh: 1, .. })), "{fresh:?}");
    assert!(clock.now() - coingecko_at > Duration::seconds(120));
    kraken.route("/0/public/Ticker", Reply::json(fixture("kraken/ticker.json")));
    refresher.refresh_once().await;
    let recovered = rates.quote("BTC", Fiat::USD, clock.now()).expect("kraken is back");
    assert_eq!((recovered.source.as_str(), recovered.rate), ("median:coinbase,kraken", rate("97242.3075")));
}

#[tokio::test]
async fn binance_counts_for_usd_only_while_usdt_is_pegged() {
    let coinbase = coinbase_server().await;
    let kraken = kraken_server().await;
    let binance = binance_server().await;
    let coingecko = coingecko_server().await;
    let clock = Arc::new(ManualClock::new(t0()));
    let feeds = vec![
        Feed::live(LiveSource::Binance, client(), Some(&binance.base_url), TIMEOUT),
        Feed::live(LiveSource::CoinGecko, client(), Some(&coingecko.base_url), TIMEOUT),
        Feed::live(LiveSource::Coinbase, client(), Some(&coinbase.base_url), TIMEOUT),
        Feed::live(LiveSource::Kraken, client(), Some(&kraken.base_url), TIMEOUT),
    ];
    let rates = AggregatedRates::new(policy(), feeds, pairs(&["BTC/USD", "BNB/USD", "USDT/USD"]), StdDuration::from_secs(30), clock.clone());
    let report = rates.refresher().expect("refresher").refresh_once().await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let usdt = rates.quote("USDT", Fiat::USD, clock.now()).expect("usdt");
    assert_eq!((usdt.source.as_str(), usdt.rate), ("median:coinbase,coingecko,kraken", rate("1.00012")));
    let bnb = rates.quote("BNB", Fiat::USD, clock.now()).expect("bnb");
    assert_eq!((bnb.source.as_str(), bnb.rate), ("median:binance,coingecko", rate("689.215")));
    let btc = rates.quote("BTC", Fiat::USD, clock.now()).expect("btc");
    assert_eq!(btc.source, "median:binance,coinbase,coingecko,kraken");
    // Sorted 97215.99, 97231.12345678901, 97234.515, 97250.1: the mean of the middle two.
    assert_eq!(btc.rate, rate("97232.819228394505"));
}

#[tokio::test]
async fn the_live_feed_from_config_refreshes_in_the_background() {
    let coinbase = coinbase_server().await;
    let kraken = kraken_server().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.dev.toml");
    let text = std::fs::read_to_string(&path).expect("config.dev.toml").replacen("feed = \"fixed\"", "feed = \"live\"", 1);
    let text = format!(
        "{text}\n[rates.live]\nsources = [\"coinbase\", \"kraken\"]\npairs = [\"BTC/USD\", \"USDC/USD\"]\n\
         refresh_interval_ms = 1000\nmax_age_ms = 60000\nquorum = 2\ntimeout_ms = 1000\n\
         base_url = {{ coinbase = \"{}\", kraken = \"{}\" }}\n",
        coinbase.base_url, kraken.base_url
    );
    let config = Config::from_str_with_env(&text, &path, &[]).expect("config loads");
    let clock = Arc::new(ManualClock::new(t0()));
    let rates = ConfiguredRates::from_config(&config.rates, clock.clone());
    assert!(rates.quote("BTC", Fiat::USD, clock.now()).is_err(), "nothing before the first refresh");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = spawn_rate_refresh(&rates, stop_rx).expect("the live feed has a refresher");
    let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
    let quote = loop {
        match rates.quote("BTC", Fiat::USD, clock.now()) {
            Ok(quote) => break quote,
            Err(error) if std::time::Instant::now() > deadline => panic!("no rate after 10 s: {error}"),
            Err(_) => tokio::time::sleep(StdDuration::from_millis(20)).await,
        }
    };
    assert_eq!((quote.source.as_str(), quote.rate), ("median:coinbase,kraken", rate("97242.3075")));
    let usdc = rates.quote("USDC", Fiat::USD, clock.now()).expect("usdc");
    assert_eq!(usdc.rate, rate("0.999925"));
    stop_tx.send(true).expect("stop");
    tokio::time::timeout(StdDuration::from_secs(5), task).await.expect("stops").expect("no panic");
}

#[tokio::test]
async fn the_file_feed_is_ready_at_once_and_reread_on_refresh() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("rates.json");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rates/file/rates.json"), &file).expect("copy");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.dev.toml");
    let text = std::fs::read_to_string(&path).expect("config.dev.toml").replacen("feed = \"fixed\"", "feed = \"file\"", 1);
    let text = format!("{text}\n[rates.file]\npath = {:?}\n", file.display().to_string());
    let config = Config::from_str_with_env(&text, &path, &[]).expect("config loads");
    let clock = Arc::new(ManualClock::new(t0()));
    let rates = ConfiguredRates::from_config(&config.rates, clock.clone());
    let quote = rates.quote("BTC", Fiat::USD, clock.now()).expect("read at start");
    assert_eq!((quote.source.as_str(), quote.rate), ("median:file", rate("65000")));
    std::fs::write(&file, r#"{"BTC/USD": "66000.5", "USDC/USD": "0.95"}"#).expect("rewrite");
    let report = rates.refresher().expect("file refresher").refresh_once().await;
    assert_eq!(report.fetched, [("file", 2)]);
    assert_eq!(rates.quote("BTC", Fiat::USD, clock.now()).map(|q| q.rate), Ok(rate("66000.5")));
    assert!(matches!(rates.quote("USDC", Fiat::USD, clock.now()), Err(RateError::Depegged { .. })));
    assert!(matches!(rates.quote("ETH", Fiat::USD, clock.now()), Err(RateError::Unavailable { .. })), "left the file");
}

// --- invoices priced through aggregated rates -----------------------------------------------------

fn repo_config() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.dev.toml");
    Config::from_str_with_env(&std::fs::read_to_string(&path).expect("config.dev.toml"), &path, &[]).expect("config loads")
}

fn invoice_policy(config: &Config) -> InvoicePolicy {
    InvoicePolicy {
        expires_in_s_default: config.invoices.expires_in_s_default,
        expires_in_s_max: config.invoices.expires_in_s_max,
        amount_max_major: config.invoices.amount_max_whole(),
        underpayment_tolerance_bps: config.invoices.underpayment_tolerance_bps,
    }
}

fn request(accepted: Option<&[&str]>) -> CreateInvoice {
    CreateInvoice {
        amount: "25.00".to_owned(),
        currency: "USD".to_owned(),
        accepted: accepted.map(|list| list.iter().map(|s| (*s).to_owned()).collect()),
        expires_in: Some(900),
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

fn sq(source: &str, pair: &str, value: &str, at: DateTime<Utc>) -> SourceQuote {
    let pair: Pair = pair.parse().expect("pair");
    SourceQuote { source: source.to_owned(), base: pair.base, quote: pair.quote, rate: rate(value), at, via: None }
}

#[sqlx::test]
async fn btc_without_a_quorum_refuses_invoices_while_usdc_still_works(pool: PgPool) {
    let config = repo_config();
    let catalog = payrail::app::catalog(&config);
    let limits = invoice_policy(&config);
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let clock = Arc::new(ManualClock::new(t0()));
    let rates = AggregatedRates::new(policy(), Vec::new(), Vec::new(), StdDuration::from_secs(30), clock.clone());
    let now = clock.now();
    // Kraken's BTC price is ten minutes old: only Coinbase is fresh for BTC.
    rates.record("coinbase", vec![sq("coinbase", "BTC/USD", "97234.515", now), sq("coinbase", "USDC/USD", "1", now)]);
    rates.record("kraken", vec![sq("kraken", "BTC/USD", "97250.1", now - Duration::minutes(10)), sq("kraken", "USDC/USD", "0.99985", now)]);
    let create = |accepted: Option<&'static [&'static str]>| {
        let (pool, catalog, rates, limits, merchant) = (&pool, &catalog, &rates, &limits, &merchant.merchant_id);
        async move { create_invoice(pool, catalog, rates, limits, merchant, &request(accepted), None, now).await }
    };

    let refused = create(Some(&[BTC])).await.expect_err("BTC has one fresh source");
    match &refused {
        InvoiceError::RateUnavailable { asset, reason } => {
            assert_eq!(asset, BTC);
            assert!(reason.starts_with("no rate for BTC/USD: 1 fresh source(s), the quorum is 2"), "{reason}");
            assert!(reason.contains("kraken=97250.1 600s old"), "{reason}");
        }
        other => panic!("expected RateUnavailable, got {other:?}"),
    }
    assert!(matches!(create(Some(&[USDC_POLYGON, BTC])).await, Err(InvoiceError::RateUnavailable { .. })));
    let invoices: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices").fetch_one(&pool).await.expect("count");
    assert_eq!(invoices, 0, "a refused invoice writes nothing");

    let (usdc, created) = create(Some(&[USDC_POLYGON])).await.expect("USDC still priced");
    assert!(created);
    let option = &usdc.payment_options[0];
    assert_eq!((option.rate.as_str(), option.rate_source.as_str()), ("0.999925", "median:coinbase,kraken"));
    // 25 USD at 0.999925 USD/USDC is 25.001875…: rounded up to the unit, 25.001876, and then to
    // the cents a payer types (0.03 % more).
    assert_eq!((option.amount_exact_minor.as_str(), option.amount.as_str()), ("25001876", "25.01"));
    assert_eq!(option.rate_at, now);

    // Without a list, every asset that can be priced is offered; BTC is left out, not priced at 1.
    let (open, _) = create(None).await.expect("priced assets offered");
    assert!(open.payment_options.iter().all(|o| o.asset != BTC));
    assert!(open.payment_options.iter().any(|o| o.asset == USDC_POLYGON));
}

#[sqlx::test]
async fn invoices_are_priced_through_local_feeds_with_one_dead(pool: PgPool) {
    let config = repo_config();
    let catalog = payrail::app::catalog(&config);
    let merchant = create_merchant(&pool, "Shop").await.expect("merchant");
    let coinbase = coinbase_server().await;
    let coingecko = coingecko_server().await;
    let clock = Arc::new(ManualClock::new(t0()));
    let feeds = vec![
        Feed::live(LiveSource::Coinbase, client(), Some(&coinbase.base_url), TIMEOUT),
        Feed::live(LiveSource::Kraken, client(), Some(&dead_url().await), TIMEOUT),
        Feed::live(LiveSource::CoinGecko, client(), Some(&coingecko.base_url), TIMEOUT),
    ];
    let rates = AggregatedRates::new(policy(), feeds, pairs(&["BTC/USD", "USDC/USD"]), StdDuration::from_secs(30), clock.clone());
    let report = rates.refresher().expect("refresher").refresh_once().await;
    assert_eq!(report.failed.len(), 1);
    let (invoice, _) = create_invoice(
        &pool,
        &catalog,
        &rates,
        &invoice_policy(&config),
        &merchant.merchant_id,
        &request(Some(&[BTC, USDC_POLYGON])),
        None,
        clock.now(),
    )
    .await
    .expect("invoice");
    let btc = &invoice.payment_options[0];
    assert_eq!((btc.rate.as_str(), btc.rate_source.as_str()), ("97232.819228394505", "median:coinbase,coingecko"));
    // 25 USD / 97232.819228394505 = 0.000257118… BTC, rounded up to the satoshi.
    assert_eq!(btc.amount_minor, "25712");
    assert_eq!(btc.rate_at, t0() - Duration::seconds(12));
    let usdc = &invoice.payment_options[1];
    assert_eq!((usdc.rate.as_str(), usdc.rate_source.as_str()), ("0.99992101855", "median:coinbase,coingecko"));
}
