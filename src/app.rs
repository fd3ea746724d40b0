//! Wiring: from a loaded [`Config`] and a pool to the running HTTP server and background jobs.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use thiserror::Error;
use tokio::net::TcpListener;

use crate::api::{self, AppState, HttpLimits};
use crate::clock::Clock;
use crate::chain::evm::{EvmWatcher, Sweeper};
use crate::config::{ChainKind, Config, RateFeed};
use crate::db::replicas::{Registry, Share, CLASS_SERVICE, CLASS_SWEEP, CLASS_WATCH};
use crate::invoice::{AssetCatalog, CatalogAsset, DepositScheme, InvoicePolicy};
use crate::ledger::Ledger;
use crate::rates::FixedFeed;
use crate::secrets::{SecretsAtRest, SecretsKey};

/// The hot wallet's key: `PAYRAIL_HOT_WALLET_KEY`, or the file named by `PAYRAIL_HOT_WALLET_KEY_FILE`.
/// Without it nothing is swept (deposits stay at their forwarder addresses, safe and credited).
/// Held as a [`SecretString`] so that no `Debug` of a struct holding it prints it; it is exposed
/// only where a signer is built from it.
pub fn hot_wallet_key_from_env() -> Result<Option<SecretString>, std::io::Error> {
    if let Ok(key) = std::env::var("PAYRAIL_HOT_WALLET_KEY") {
        return Ok(Some(SecretString::from(key)));
    }
    match std::env::var("PAYRAIL_HOT_WALLET_KEY_FILE") {
        Ok(path) => std::fs::read_to_string(path).map(|k| Some(SecretString::from(k.trim().to_owned()))),
        Err(_) => Ok(None),
    }
}

/// Which background jobs `serve` runs beside the API (the expiry job, the webhook dispatcher and
/// the rate refresher always run).
#[derive(Debug, Clone)]
pub struct Jobs {
    /// With a key, a sweeper per EVM chain moves confirmed deposits to the treasury. Masked in
    /// `Debug`.
    pub hot_wallet_key: Option<SecretString>,
    /// Whether to run a watcher per EVM chain.
    pub watch_chains: bool,
}

/// How often open invoices are checked for expiry.
pub const EXPIRE_INTERVAL_MS: u64 = 5_000;

#[derive(Debug, Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("http server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error(
        "no secrets key: set {} or {} (32 bytes, hex or base64) to keep webhook signing secrets \
         sealed, or allow plaintext for development with [webhooks] allow_plaintext_secrets = true",
        crate::secrets::SECRETS_KEY_ENV,
        crate::secrets::SECRETS_KEY_FILE_ENV
    )]
    SecretsKeyRequired,
    #[error(
        "{count} webhook signing secrets are sealed, but no secrets key is configured: set {} or {} \
         to the key that sealed them",
        crate::secrets::SECRETS_KEY_ENV,
        crate::secrets::SECRETS_KEY_FILE_ENV
    )]
    SealedWithoutKey { count: i64 },
    #[error("cannot bring webhook signing secrets in line with the secrets key: {0}")]
    Secrets(#[source] crate::webhook::WebhookError),
    #[error("[database] read_url {url}: {source}")]
    ReadReplica { url: String, source: crate::db::DbError },
}

/// Decides how webhook signing secrets are kept, before anything serves, and brings the stored
/// ones in line: with a key, every secret still in plaintext is sealed now (so adding a key to a
/// running installation needs nothing else); without one, plaintext is used only when
/// `allow_plaintext` (development), and never while sealed secrets exist that nothing could open.
pub async fn webhook_secrets(
    pool: &PgPool,
    key: Option<SecretsKey>,
    allow_plaintext: bool,
) -> Result<SecretsAtRest, AppError> {
    match key {
        Some(key) => {
            let sealed = crate::webhook::endpoint::seal_plaintext_secrets(pool, &key).await.map_err(AppError::Secrets)?;
            if sealed > 0 {
                tracing::info!(target: "webhook", sealed, "sealed webhook signing secrets that were stored in plaintext");
            }
            Ok(SecretsAtRest::Sealed(Arc::new(key)))
        }
        None if allow_plaintext => {
            let count = crate::webhook::endpoint::count_sealed_secrets(pool).await.map_err(AppError::Secrets)?;
            if count > 0 {
                return Err(AppError::SealedWithoutKey { count });
            }
            tracing::warn!(target: "webhook", "no secrets key: webhook signing secrets are stored in plaintext (development only)");
            Ok(SecretsAtRest::Plaintext)
        }
        None => Err(AppError::SecretsKeyRequired),
    }
}

/// Every asset of every enabled chain, in configuration order.
pub fn catalog(config: &Config) -> AssetCatalog {
    let mut assets = Vec::new();
    for chain in config.chains() {
        let deposit = match chain.kind {
            // Bitcoin addresses come from each merchant's descriptor, allocated per invoice.
            ChainKind::Bitcoin => crate::chain::bitcoin::network_of(&chain.caip2).map(|_| DepositScheme::Bitcoin),
            ChainKind::Evm => chain.forwarder_factory.map(DepositScheme::create2_forwarder),
        };
        assets.push(CatalogAsset {
            asset: chain.native_asset_id(),
            symbol: chain.native.symbol.clone(),
            decimals: chain.native.decimals,
            display_decimals: chain.native.display_decimals,
            deposit,
        });
        for token in &chain.tokens {
            assets.push(CatalogAsset {
                asset: token.asset_id(),
                symbol: token.symbol.clone(),
                decimals: token.decimals,
                display_decimals: token.display_decimals,
                deposit,
            });
        }
    }
    AssetCatalog::new(assets)
}

/// The API's state. `webhook_secrets` says how new endpoint secrets are stored ([`webhook_secrets`]
/// decides it for the daemon).
pub fn state(config: &Config, pool: PgPool, clock: Arc<dyn Clock>, webhook_secrets: SecretsAtRest) -> AppState {
    let rates = match config.rates.feed {
        RateFeed::Fixed => crate::rates::ConfiguredRates::Fixed(FixedFeed::new(
            config
                .rates
                .fixed_rates()
                .map(|(base, quote, rate)| ((base.to_owned(), quote.code().to_owned()), rate.clone())),
        )),
        RateFeed::Live | RateFeed::File => {
            crate::rates::ConfiguredRates::Aggregated(crate::rates::AggregatedRates::from_config(&config.rates, clock.clone()))
        }
    };
    let ledger = Arc::new(Ledger::new(pool.clone()));
    let rates: Arc<dyn crate::rates::RateSource> = Arc::new(rates);
    let payouts = crate::payout::PayoutService::new(config, pool.clone(), ledger.clone(), rates.clone(), clock.clone())
        .map(Arc::new);
    let reconciler = Arc::new(crate::reconcile::Reconciler::new(pool.clone(), config.chains().to_vec()));
    let live = Arc::new(crate::api::checkout::live::LiveHub::new(pool.clone()));
    let keys = crate::merchant::cache::KeyCache::new(pool.clone());
    AppState {
        keys,
        ledger,
        read_pool: pool.clone(),
        pool,
        catalog: Arc::new(catalog(config)),
        rates,
        payouts,
        reconciler,
        webhooks_allow_loopback: config.webhooks.allow_loopback,
        webhook_secrets,
        public_url: config.server.public_url.clone(),
        live,
        explorers: Arc::new(crate::api::checkout::Explorers::new(
            config.chains().iter().filter_map(|c| c.explorer_tx_url.clone().map(|url| (c.caip2.to_string(), url))),
        )),
        policy: Arc::new(InvoicePolicy {
            expires_in_s_default: config.invoices.expires_in_s_default,
            expires_in_s_max: config.invoices.expires_in_s_max,
            amount_max_major: config.invoices.amount_max_whole(),
            underpayment_tolerance_bps: config.invoices.underpayment_tolerance_bps,
        }),
        clock,
        limiter: Arc::new(crate::api::limit::RateLimiter::new(config.server.key_requests_per_s, config.server.key_burst)),
        ip_limiter: Arc::new(crate::api::limit::IpLimiter::new(
            config.server.client_ip_header.as_deref().and_then(|h| axum::http::HeaderName::from_bytes(h.as_bytes()).ok()),
        )),
        card: card_rail(config),
        rail_health: crate::chain::health::shared(),
    }
}

/// The pool on `[database] read_url`, when one is set.
pub fn read_pool(config: &Config) -> Result<Option<PgPool>, AppError> {
    let (Some(url), Some(shown)) = (&config.database.read_url, config.database.read_url_redacted()) else {
        return Ok(None);
    };
    let pool = crate::db::connect_lazy(url, config.database.read_pool_max())
        .map_err(|source| AppError::ReadReplica { url: shown.clone(), source })?;
    tracing::info!(target: "db", url = %shown, "exports and statements read from the replica");
    Ok(Some(pool))
}

/// The card rail when Stripe is configured; a rail that cannot be built is logged and left off.
pub fn card_rail(config: &Config) -> Option<Arc<crate::stripe::CardRail>> {
    match crate::stripe::CardRail::from_config(config) {
        Ok(rail) => rail.map(Arc::new),
        Err(error) => {
            tracing::error!(target: "stripe", %error, "card payments not started");
            None
        }
    }
}

pub fn limits(config: &Config) -> HttpLimits {
    HttpLimits {
        body_limit_bytes: usize::try_from(config.server.body_limit_bytes).unwrap_or(api::BODY_LIMIT_BYTES_DEFAULT),
        request_timeout_ms: config.server.request_timeout_ms,
        serve_metrics: config.server.metrics_listen.is_none(),
        serve_console: config.server.console,
    }
}

/// Binds the listening socket (port 0 picks a free port).
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|source| AppError::Listen { addr, source })
}

/// Serves on `listener` until `shutdown` resolves, with the background jobs beside: the expiry
/// job, one watcher per Bitcoin chain, and one watcher per EVM chain that has a forwarder factory
/// (no factory, no deposit addresses to watch).
///
/// With a hot wallet key, a sweeper per EVM chain moves confirmed deposits to the treasury.
/// `webhook_secrets` is how endpoint secrets are stored (see [`webhook_secrets`]).
pub async fn serve(
    config: &Config,
    pool: PgPool,
    listener: TcpListener,
    jobs: Jobs,
    webhook_secrets: SecretsAtRest,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let Jobs { hot_wallet_key, watch_chains } = jobs;
    let addr = listener.local_addr().map_err(AppError::Serve)?;
    // The daemon keeps the database's time (`db::clock`): read once before anything uses it.
    let clock = Arc::new(crate::db::clock::DatabaseClock::new());
    match clock.sync(&pool).await {
        Ok(offset) if offset.abs() > crate::db::clock::OFFSET_WARN => tracing::warn!(
            target: "clock",
            offset_ms = offset.num_milliseconds(),
            "this host's clock is off the database's; payrail keeps the database's time"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(target: "clock", %error, "database clock not read yet; starting from this host's"),
    }
    let mut state = state(config, pool.clone(), clock.clone(), webhook_secrets);
    state.read_pool = read_pool(config)?.unwrap_or_else(|| pool.clone());
    if !watch_chains {
        // No chain is followed (`payrail dev --no-chains`): nothing can be paid out, and the payout
        // and settlement endpoints say so instead of waiting on nodes that are not there.
        state.payouts = None;
    }
    let expiry = tokio::spawn(expire_loop(pool.clone(), state.ledger.clone(), state.clock.clone(), state.card.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut watchers = Vec::new();
    {
        let (pool, stop) = (pool.clone(), stop_rx.clone());
        watchers.push(tokio::spawn(async move { clock.keep_in_sync(pool, stop).await }));
    }
    if let Some(task) = crate::rates::spawn_rate_refresh(state.rates.as_ref(), stop_rx.clone()) {
        watchers.push(task);
    }
    // Every job below holds an advisory lock; the replica takes its fair share of each class of them
    // (see `db::replicas`). The jobs are counted before any starts, so none acquires against a wrong
    // total.
    let watch_share = Share::new(CLASS_WATCH, 0);
    let sweep_share = Share::new(CLASS_SWEEP, 0);
    let service_share = Share::new(CLASS_SERVICE, 0);
    let mut jobs: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> = Vec::new();
    jobs.push(Box::pin(crate::webhook::run_dispatcher(
        pool.clone(),
        state.clock.clone(),
        config.webhooks.allow_loopback,
        state.webhook_secrets.clone(),
        Some(service_share.clone()),
        stop_rx.clone(),
    )));
    service_share.add_job();
    for chain in config.chains().iter().filter(|c| watch_chains && c.kind == ChainKind::Bitcoin) {
        // One Bitcoin watcher per Bitcoin chain: addresses come from merchants' descriptors.
        match crate::chain::bitcoin::BitcoinWatcher::new(chain.clone(), pool.clone(), state.ledger.clone(), state.rates.clone(), state.clock.clone()) {
            Ok(watcher) => {
                watch_share.add_job();
                let watcher = watcher.spread(Some(watch_share.clone()));
                let stop = stop_rx.clone();
                let name = chain.name.clone();
                jobs.push(Box::pin(async move {
                    if let Err(error) = watcher.run(stop).await {
                        tracing::error!(target: "watcher::bitcoin", chain = %name, %error, "watcher stopped; payments on this chain are not being followed");
                    }
                }));
            }
            Err(error) => tracing::error!(target: "watcher::bitcoin", chain = %chain.name, %error, "watcher not started"),
        }
    }
    for chain in config.chains().iter().filter(|_| watch_chains) {
        if chain.kind != ChainKind::Evm || chain.forwarder_factory.is_none() {
            continue;
        }
        match EvmWatcher::new(chain.clone(), pool.clone(), state.ledger.clone(), state.rates.clone(), state.clock.clone()) {
            Ok(watcher) => {
                watch_share.add_job();
                let watcher = watcher.spread(Some(watch_share.clone()));
                let stop = stop_rx.clone();
                let name = chain.name.clone();
                jobs.push(Box::pin(async move {
                    if let Err(error) = watcher.run(stop).await {
                        tracing::error!(target: "watcher::evm", chain = %name, %error, "watcher stopped; payments on this chain are not being followed");
                    }
                }));
            }
            Err(error) => tracing::error!(target: "watcher::evm", chain = %chain.name, %error, "watcher not started"),
        }
        if let Some(key) = &hot_wallet_key {
            match Sweeper::new(chain.clone(), key.expose_secret(), pool.clone(), state.ledger.clone()) {
                Ok(sweeper) => {
                    sweep_share.add_job();
                    jobs.push(Box::pin(sweeper.spread(Some(sweep_share.clone())).run(stop_rx.clone())));
                }
                Err(error) => tracing::error!(target: "sweeper", chain = %chain.name, %error, "sweeper not started"),
            }
        }
    }
    // Subscriptions move through time in one replica at a time (the scheduler's lock); every step
    // is also safe run twice.
    service_share.add_job();
    jobs.push(Box::pin(crate::billing::run_scheduler(
        crate::api::subscriptions::biller(&state),
        state.clock.clone(),
        Duration::from_millis(crate::billing::SCHEDULER_INTERVAL_MS),
        Some(service_share.clone()),
        stop_rx.clone(),
    )));
    if let (Some(key), Some(service)) = (&hot_wallet_key, &state.payouts) {
        let senders: Vec<crate::payout::PayoutSender> = service
            .senders(key.expose_secret())
            .into_iter()
            .filter_map(|(chain, sender)| {
                sender.map_err(|error| tracing::error!(target: "payout", %chain, %error, "payouts not started")).ok()
            })
            .collect();
        service.set_executor_running(true);
        service_share.add_job();
        jobs.push(Box::pin(crate::payout::run_executor(service.clone(), senders, Some(service_share.clone()), stop_rx.clone())));
    }
    // Registered (and the peers counted) before the jobs start, so a replica joining a running
    // cluster does not reach past its share first.
    let shares = vec![watch_share, sweep_share, service_share];
    let mut registry = Registry::new(pool.clone(), shares.clone());
    if let Err(error) = registry.beat().await {
        tracing::warn!(target: "replicas", %error, "cannot register this replica yet; retrying");
    }
    for share in &shares {
        share.report();
        tracing::info!(target: "replicas", replica = registry.id(), class = share.class(), jobs = share.jobs(), live = share.live(), fair_share = share.fair(), "replica registered");
    }
    // The registry leaves (and frees its peers' shares) only after the jobs have released their locks.
    let (registry_stop, registry_stopped) = tokio::sync::watch::channel(false);
    let registry_task = tokio::spawn(registry.run(registry_stopped));
    for job in jobs {
        watchers.push(tokio::spawn(job));
    }
    let metrics_server = match config.server.metrics_listen {
        Some(metrics_addr) => {
            let metrics_listener = bind(metrics_addr).await?;
            tracing::info!(target: "api", %metrics_addr, "serving /metrics");
            let mut stop = stop_rx.clone();
            let metrics_app = api::metrics_router(state.clone());
            Some(tokio::spawn(async move {
                let serving = axum::serve(metrics_listener, metrics_app)
                    .with_graceful_shutdown(async move { let _ = stop.wait_for(|stopped| *stopped).await; });
                if let Err(error) = serving.await {
                    tracing::error!(target: "api", %error, "metrics listener failed");
                }
            }))
        }
        None => None,
    };
    tracing::info!(target: "api", %addr, watchers = watchers.len(), "listening");
    let app = http(state, limits(config)).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(AppError::Serve);
    if let Some(task) = metrics_server {
        watchers.push(task);
    }
    let _ = stop_tx.send(true);
    for watcher in watchers {
        let _ = watcher.await;
    }
    let _ = registry_stop.send(true);
    let _ = registry_task.await;
    expiry.abort();
    result
}

/// Everything the daemon serves over HTTP: the API, the checkout pages and (unless `[server]
/// console = false`) the console.
pub fn http(state: AppState, limits: HttpLimits) -> axum::Router {
    let console = if limits.serve_console { payrail_console::routes() } else { axum::Router::new() };
    api::router_with(state, limits, console)
}

/// Every how many expiry ticks stored idempotent responses past their window are purged.
pub const PURGE_EVERY_TICKS: u64 = 60;

async fn expire_loop(pool: PgPool, ledger: Arc<crate::ledger::Ledger>, clock: Arc<dyn Clock>, card: Option<Arc<crate::stripe::CardRail>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(EXPIRE_INTERVAL_MS));
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        if ticks % PURGE_EVERY_TICKS == 0 {
            match crate::api::idempotency::purge_expired(&pool, clock.now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(target: "api", purged = n, "expired idempotency keys purged"),
                Err(error) => tracing::warn!(target: "api", %error, "idempotency purge failed; retrying later"),
            }
            if let Err(error) = crate::console::session::purge_ended(&pool, clock.now()).await {
                tracing::warn!(target: "console", %error, "purging ended console sessions failed; retrying later");
            }
        }
        ticks = ticks.wrapping_add(1);
        match crate::invoice::expire_due(&pool, clock.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(target: "invoice", expired = n, "invoices expired"),
            Err(error) => tracing::warn!(target: "invoice", %error, "expiry pass failed; retrying next tick"),
        }
        match crate::refund::expire_due(&pool, &ledger, clock.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(target: "invoice", expired = n, "refund links expired"),
            Err(error) => tracing::warn!(target: "invoice", %error, "refund expiry failed; retrying next tick"),
        }
        match crate::credits::movement::expire_due(&pool, &ledger, clock.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(target: "credits", expired = n, "credit lots expired"),
            Err(error) => tracing::warn!(target: "credits", %error, "credit expiry failed; retrying next tick"),
        }
        if let Some(card) = card.as_deref() {
            card_unanswered(card, &pool, &ledger, clock.now()).await;
            card_settlements(card, &pool, &ledger, clock.now(), ticks % PURGE_EVERY_TICKS == 1).await;
            match crate::stripe::renewal::charge_due(card, &pool, clock.now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(target: "stripe", charged = n, "subscription renewals charged to the card on file"),
                Err(error) => tracing::warn!(target: "stripe", %error, "renewal charges failed; retrying next tick"),
            }
        }
    }
}

/// Card attempts and refunds Stripe did not answer (an outage, a killed process) are asked for again
/// under their own idempotency keys, so each charges or refunds once however often it is asked.
async fn card_unanswered(card: &crate::stripe::CardRail, pool: &PgPool, ledger: &crate::ledger::Ledger, now: chrono::DateTime<chrono::Utc>) {
    match crate::stripe::attempt::resume(card, pool, now).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(target: "stripe", asked = n, "unanswered card attempts asked for again"),
        Err(error) => tracing::warn!(target: "stripe", %error, "card attempt resume failed; retrying next tick"),
    }
    match crate::stripe::refund::resume(card, pool, ledger, now).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(target: "stripe", answered = n, "unanswered refunds asked for again"),
        Err(error) => tracing::warn!(target: "stripe", %error, "refund resume failed; retrying next tick"),
    }
}

/// Card settlements Stripe has not answered are asked for again; every `refresh`, payouts pending
/// for [`CARD_PAYOUT_REFRESH_S`] are read back from Stripe (an event may have been missed).
async fn card_settlements(card: &crate::stripe::CardRail, pool: &PgPool, ledger: &crate::ledger::Ledger, now: chrono::DateTime<chrono::Utc>, refresh: bool) {
    use crate::stripe::settlement;
    match settlement::resume(card, pool, ledger, now).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(target: "stripe::settlement", asked = n, "card settlements asked for again"),
        Err(error) => tracing::warn!(target: "stripe::settlement", %error, "card settlement resume failed; retrying next tick"),
    }
    if refresh {
        if let Err(error) = settlement::refresh(card, pool, ledger, chrono::Duration::seconds(CARD_PAYOUT_REFRESH_S), now).await {
            tracing::warn!(target: "stripe::settlement", %error, "card payout refresh failed; retrying later");
        }
    }
}

/// How long a card settlement's payout may stay pending before it is read back from Stripe.
pub const CARD_PAYOUT_REFRESH_S: i64 = 3_600;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_wallet_key_is_not_in_debug_output() {
        let key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        let jobs = Jobs { hot_wallet_key: Some(SecretString::from(key.to_owned())), watch_chains: true };
        let shown = format!("{jobs:?} {jobs:#?}");
        assert!(!shown.contains(key), "{shown}");
        assert!(!shown.contains(&key[2..12]), "{shown}");
        assert_eq!(jobs.hot_wallet_key.as_ref().map(|k| k.expose_secret()), Some(key));
    }
}
