//! The HTTP API: JSON under `/v1`, bearer keys, errors as `{"error":{"code","message"}}`.

use payrail_chains as chain;
use payrail_core::{clock, ids, lang, metrics, money};
use payrail_payments::{creator, invoice, merchant, refund, webhook};
use payrail_payouts as payout;
use payrail_rates as rates;
use payrail_reconcile as reconcile;
use payrail_store::{db, secrets};

pub mod auth;
pub mod balances;
pub mod bitcoin;
pub mod checkout;
pub mod creators;
pub mod error;
pub mod health;
pub mod idempotency;
pub mod invoices;
pub mod keys;
pub mod ledger;
pub mod limit;
pub mod merchants;
pub mod openapi;
pub mod payouts;
pub mod refunds;
pub mod settlements;
pub mod card_settlements;
pub mod credits;
pub mod reconciliation;
pub mod statements;
pub mod subscriptions;
pub mod stripe;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::clock::Clock;
use crate::invoice::{AssetCatalog, InvoicePolicy};
use payrail_store::ledger::Ledger;
use crate::rates::RateSource;

pub use error::ApiError;

/// Largest request body accepted unless configured otherwise.
pub const BODY_LIMIT_BYTES_DEFAULT: usize = 64 * 1024;
/// Longest a request may take unless configured otherwise.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 15_000;

/// What every handler can reach. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// For reads that may lag the primary a moment (`[database] read_url`): ledger exports, the
    /// trial balance, merchant and creator statements. The primary's pool when no replica is set.
    pub read_pool: PgPool,
    pub ledger: Arc<Ledger>,
    pub catalog: Arc<AssetCatalog>,
    pub rates: Arc<dyn RateSource>,
    pub policy: Arc<InvoicePolicy>,
    pub clock: Arc<dyn Clock>,
    pub limiter: Arc<limit::RateLimiter>,
    /// Verified API keys, kept while key changes are heard.
    pub keys: Arc<crate::merchant::cache::KeyCache>,
    /// Per-address limits for public routes and refused keys.
    pub ip_limiter: Arc<limit::IpLimiter>,
    /// The card rail, when Stripe is configured.
    pub card: Option<Arc<payrail_stripe::CardRail>>,
    /// Each chain rail's health, as its watcher reports it.
    pub rail_health: Arc<crate::chain::health::RailHealth>,
    /// Creator payouts, when an enabled chain has a payout batcher.
    pub payouts: Option<Arc<crate::payout::PayoutService>>,
    /// Reconciliation of the configured chains against the ledger.
    pub reconciler: Arc<crate::reconcile::Reconciler>,
    /// Whether webhook endpoints may be on loopback hosts (`[webhooks] allow_loopback`).
    pub webhooks_allow_loopback: bool,
    /// How new endpoints' signing secrets are stored: sealed under the secrets key, or in
    /// plaintext where the configuration allows it.
    pub webhook_secrets: crate::secrets::SecretsAtRest,
    /// The daemon's public base URL (`[server] public_url`), for links given to payers.
    pub public_url: String,
    /// Wakes the checkout pages' event streams when their invoice changes.
    pub live: Arc<checkout::live::LiveHub>,
    /// Block explorer links for the checkout page, by chain.
    pub explorers: Arc<checkout::Explorers>,
}

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub body_limit_bytes: usize,
    pub request_timeout_ms: u64,
    /// Whether `/metrics` is served here (off when `[server] metrics_listen` gives it a listener
    /// of its own: see [`metrics_router`]).
    pub serve_metrics: bool,
    /// Whether the web console is served (`[server] console`).
    pub serve_console: bool,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self { body_limit_bytes: BODY_LIMIT_BYTES_DEFAULT, request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT, serve_metrics: true, serve_console: true }
    }
}

/// Every list route's answer: one page of `data` in the list's order, and whether more items lie
/// beyond it in the direction asked (after it, or before it with `ending_before`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct List<T> {
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
}

impl<T> List<T> {
    /// A page and whether more follow, as a store's list answers them.
    pub fn of((data, has_more): (Vec<T>, bool)) -> Self {
        Self { object: "list", data, has_more }
    }
}

/// The query of a list route with no filter of its own.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Items per page, 1–100 (20 when absent).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// An item's id (or code): the page holds the items after it (the last of the page before).
    pub starting_after: Option<String>,
    /// An item's id (or code): the page holds the items before it (the first of the page after).
    pub ending_before: Option<String>,
}

impl PageQuery {
    /// The page asked for, of a list whose ids start `prefix_`: see [`page`].
    pub(crate) fn page(self, prefix: &'static str) -> Result<payrail_store::page::Page, ApiError> {
        self.page_by(CursorKind::Id(prefix))
    }

    /// The page asked for, of a list whose cursors are of `kind`: see [`page`].
    pub(crate) fn page_by(self, kind: CursorKind) -> Result<payrail_store::page::Page, ApiError> {
        page(self.limit, self.starting_after, self.ending_before, kind, PageSize::LIST)
    }
}

/// A list query read as every list route reads it: a malformed one is 422 `parameter_invalid`.
pub(crate) fn list_query<T>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    query.map(|q| q.0).map_err(|e| ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", e.body_text()))
}

/// A list route's page size: when `limit` is absent, and the most it may ask.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageSize {
    pub default: i64,
    pub max: i64,
}

impl PageSize {
    /// Every list's unless it says otherwise: 20, up to 100.
    pub const LIST: Self = Self { default: 20, max: 100 };
}

/// What a list's cursors name: its items' ids (`prefix_…`), ledger entry ids (positive integers),
/// or codes the merchant chose (a credit currency's, a chain's name).
#[derive(Debug, Clone, Copy)]
pub(crate) enum CursorKind {
    Id(&'static str),
    Entry,
    Code,
}

impl CursorKind {
    fn admits(self, cursor: &str) -> bool {
        match self {
            Self::Id(prefix) => crate::ids::is_id(cursor, prefix),
            Self::Entry => cursor.parse::<i64>().is_ok_and(|n| n > 0),
            Self::Code => (1..=200).contains(&cursor.len()) && cursor.bytes().all(|b| b.is_ascii_graphic()),
        }
    }

    fn expected(self) -> String {
        match self {
            Self::Id(prefix) => format!("an id {prefix}_…"),
            Self::Entry => "an entry id (a positive integer)".to_owned(),
            Self::Code => "a code (1 to 200 visible ASCII characters)".to_owned(),
        }
    }
}

/// The page a list route's `limit`, `starting_after` and `ending_before` ask for, checked: a limit
/// outside `1..=max`, a cursor the list's items cannot have, or both cursors at once, are refused
/// (422 `parameter_invalid`) before any query.
pub(crate) fn page(
    limit: Option<u32>,
    starting_after: Option<String>,
    ending_before: Option<String>,
    kind: CursorKind,
    size: PageSize,
) -> Result<payrail_store::page::Page, ApiError> {
    use payrail_store::page::{Cursor, Page};
    let invalid = |message: String| ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", message);
    let limit = limit.map_or(size.default, i64::from);
    if !(1..=size.max).contains(&limit) {
        return Err(invalid(format!("limit: must be 1..={}", size.max)));
    }
    let check = |name: &str, cursor: String| {
        if kind.admits(&cursor) {
            Ok(cursor)
        } else {
            Err(invalid(format!("{name}: must be {}", kind.expected())))
        }
    };
    let cursor = match (starting_after, ending_before) {
        (Some(_), Some(_)) => return Err(invalid("starting_after and ending_before: give one of them".to_owned())),
        (Some(id), None) => Some(Cursor::After(check("starting_after", id)?)),
        (None, Some(id)) => Some(Cursor::Before(check("ending_before", id)?)),
        (None, None) => None,
    };
    Ok(Page { limit, cursor })
}

/// A CSV body (RFC 4180, UTF-8) as every `format=csv` answer sends it.
pub(crate) fn csv_response(body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}

/// An RFC 3339 time from a query parameter, refused (422 `parameter_invalid`) when it is not one.
pub(crate) fn time_param(name: &str, value: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    value
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&chrono::Utc)).map_err(|_| {
                ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "parameter_invalid",
                    format!("{name}: expected an RFC 3339 time"),
                )
            })
        })
        .transpose()
}

/// `/metrics` alone, for `[server] metrics_listen`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(metrics)).fallback(|| async { ApiError::not_found("route") }).with_state(state)
}

/// `GET /metrics`: rail health is judged at the time of the scrape, not the last report.
async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> String {
    state.rail_health.refresh_metrics(state.clock.now());
    crate::metrics::render()
}

/// The API's routes and the checkout pages, under the daemon's limits.
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    router_with(state, limits, Router::new())
}

/// [`router`] with `extra` routes (the console's) served beside the API's, behind the same
/// limits, timeouts and logging.
pub fn router_with(state: AppState, limits: HttpLimits, extra: Router<AppState>) -> Router {
    let router = extra;
    let router = if limits.serve_metrics {
        router.route("/metrics", get(metrics))
    } else {
        router
    };
    router
        .route("/v1/invoices", post(invoices::create).get(invoices::list))
        .route("/v1/invoices/{id}", get(invoices::show))
        .route("/v1/invoices/{id}/void", post(invoices::void))
        .route("/v1/invoices/{id}/mark", post(invoices::mark))
        .route("/v1/invoices/{id}/refunds", post(stripe::refund))
        .route("/v1/refunds", get(refunds::list))
        .route("/v1/refunds/{id}", get(refunds::show))
        .route("/v1/refunds/{id}/cancel", post(refunds::cancel))
        .route("/refund/{token}", get(checkout::claim::page).post(checkout::claim::claim))
        .route("/v1/stripe/webhook", post(stripe::webhook))
        .route("/pay/{id}/card", post(stripe::pay_by_card))
        .route("/v1/balances", get(balances::show))
        .route("/v1/balance_transactions", get(balances::transactions))
        .route("/v1/unapplied", get(invoices::unapplied))
        .route("/v1/unapplied/{id}/apply", post(invoices::apply_unapplied))
        .route("/v1/unapplied/{id}/refund", post(refunds::refund_unapplied))
        .route("/v1/merchants/me/bitcoin", get(bitcoin::get_descriptor).put(bitcoin::put_descriptor))
        .route("/v1/creators", post(creators::create).get(creators::list))
        .route("/v1/creators/me", get(creators::me))
        .route("/v1/creators/me/statement", get(creators::statement))
        .route("/v1/creators/me/payouts", get(payouts::mine))
        .route("/v1/creators/me/payout_addresses/{chain}", axum::routing::put(settlements::put_creator_address))
        .route("/v1/creators/me/withdrawals", post(settlements::creator_withdrawal))
        .route("/v1/payouts/run", post(payouts::run))
        .route("/v1/payouts", get(payouts::list))
        .route("/v1/payouts/{id}", get(payouts::show))
        .route("/v1/payouts/{id}/cancel", post(payouts::cancel))
        .route("/v1/merchants/me/payout_addresses", get(settlements::addresses))
        .route("/v1/merchants/me/payout_addresses/{chain}", axum::routing::put(settlements::put_address))
        .route("/v1/merchants/me/payout_addresses/{chain}/confirm", post(settlements::confirm_address))
        .route("/v1/creators/{id}/payout_addresses/{chain}/confirm", post(settlements::confirm_creator_address))
        .route("/v1/merchants/me/settlement_schedule", get(settlements::get_schedule).put(settlements::put_schedule))
        .route("/v1/settlements", post(settlements::create).get(settlements::list))
        .route("/v1/settlements/{id}", get(settlements::show))
        .route("/v1/card_settlements", post(card_settlements::create).get(card_settlements::list))
        .route("/v1/card_settlements/{id}", get(card_settlements::show))
        .route("/v1/customers", post(credits::create_customer).get(credits::list_customers))
        .route("/v1/customers/{id}", get(credits::get_customer).patch(credits::update_customer))
        .route("/v1/customers/{id}/grants", post(credits::grant))
        .route("/v1/customers/{id}/spend", post(credits::spend))
        .route("/v1/customers/{id}/balance", get(credits::balance))
        .route("/v1/customers/{id}/transactions", get(credits::transactions))
        .route("/v1/customers/{id}/stream", get(credits::stream))
        .route("/v1/customers/{id}/adjustments", post(credits::adjust))
        .route("/v1/credit_currencies", post(credits::create_currency).get(credits::list_currencies))
        .route("/v1/transfers", post(credits::transfer))
        .route("/v1/credit_packs", post(credits::create_pack).get(credits::list_packs))
        .route("/v1/credit_packs/{id}", axum::routing::patch(credits::update_pack))
        .route("/v1/customers/{id}/purchases", post(credits::purchase))
        .route("/v1/promo_codes", post(credits::create_promo).get(credits::list_promos))
        .route("/v1/credit_limits", get(credits::get_limits).put(credits::put_limits))
        .route("/v1/plans", post(subscriptions::create_plan).get(subscriptions::list_plans))
        .route("/v1/plans/{id}", get(subscriptions::get_plan).patch(subscriptions::update_plan))
        .route("/v1/customers/{id}/subscriptions", post(subscriptions::subscribe).get(subscriptions::list_subscriptions))
        .route("/v1/subscriptions/{id}", get(subscriptions::get_subscription))
        .route("/v1/subscriptions/{id}/cancel", post(subscriptions::cancel))
        .route("/v1/subscriptions/{id}/pause", post(subscriptions::pause))
        .route("/v1/subscriptions/{id}/resume", post(subscriptions::resume))
        .route("/v1/subscriptions/{id}/change", post(subscriptions::change))
        .route("/v1/access_rules", post(subscriptions::set_rule).get(subscriptions::list_rules))
        .route("/v1/customers/{id}/unlocks", post(subscriptions::unlock))
        .route("/v1/customers/{id}/unlocks/refund", post(subscriptions::refund_unlock))
        .route("/v1/customers/{id}/access", get(subscriptions::access_one))
        .route("/v1/access/check", post(subscriptions::access_check))
        .route("/v1/reports/subscriptions", get(subscriptions::subscription_report))
        .route("/v1/reports/sales", get(subscriptions::sales_report))
        .route("/v1/reconciliation", post(reconciliation::run).get(reconciliation::list))
        .route("/v1/reconciliation/{id}", get(reconciliation::show))
        .route("/v1/ledger/entries", get(ledger::entries))
        .route("/v1/ledger/trial_balance", get(ledger::trial_balance))
        .route("/v1/creators/{id}", get(creators::show))
        .route("/v1/split_rules", get(creators::get_split_rules).put(creators::put_split_rules))
        .route("/pay/{id}", get(checkout::page))
        .route("/pay/{id}/status", get(checkout::status))
        .route("/pay/{id}/events", get(checkout::live::events))
        .route("/v1/webhook_endpoints", post(webhooks::create_endpoint).get(webhooks::list_endpoints))
        .route(
            "/v1/webhook_endpoints/{id}",
            get(webhooks::get_endpoint).patch(webhooks::update_endpoint).delete(webhooks::delete_endpoint),
        )
        .route("/v1/webhook_endpoints/{id}/rotate_secret", post(webhooks::rotate_secret))
        .route("/v1/events", get(webhooks::list_events))
        .route("/v1/events/{id}", get(webhooks::show_event))
        .route("/v1/events/{id}/deliveries", get(webhooks::event_deliveries))
        .route("/v1/events/{id}/replay", post(webhooks::replay_event))
        .route("/v1/api_keys", post(keys::create).get(keys::list))
        .route("/v1/api_keys/{id}", get(keys::show).delete(keys::revoke).patch(keys::update))
        .route("/v1/api_keys/{id}/rotate", post(keys::rotate))
        .route("/v1/merchants", post(merchants::create))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(|| async { axum::Json(openapi::document()) }))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), idempotency::in_flight_max(limits.request_timeout_ms)),
            idempotency::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), limit::middleware))
        .layer(DefaultBodyLimit::max(limits.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(limits.request_timeout_ms),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
