//! The web console at `/console`: server-rendered pages over the same data as the API, for the
//! people who would rather look than read JSON. Merchants see their invoices, balances, money out,
//! customers and their credits, webhooks and keys; creators their earnings and payouts; finance (finance and admin keys) the
//! chains, reconciliation, the trial balance, payouts and unapplied funds.
//!
//! Read-mostly: the only things a page changes are sessions, webhook replays and reconciliation
//! runs, each through the same library call as its API route. No script runs on any page
//! (the Content-Security-Policy forbids it); charts are inline SVG drawn on the server.
//!
//! - [`session`]: signing in with an API key, the session cookie, CSRF.
//! - [`page`]: the layout, tables (each one a CSV download), figures.
//! - [`chart`]: stacked bar charts; [`daily`]: the day totals behind a merchant's charts.
//! - `merchant`, `customers`, `finance`, `creator`: the pages of each role.

pub mod chart;
mod creator;
mod customers;
pub mod daily;
pub mod error;
mod finance;
mod merchant;
pub mod page;
pub mod session;
mod show;

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Duration, Utc};
use payrail_api::AppState;
use payrail_payments::merchant::Role;

pub use error::ConsoleError;
use page::CsvQuery;
use session::Viewer;

/// Days the overview charts cover, today included.
pub const CHART_DAYS: i64 = 30;

/// The console's routes, to serve beside the API's.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/style.css", get(page::style))
        .route("/console/login", get(session::login_page).post(session::login))
        .route("/console/logout", post(session::logout))
        .route("/console/sessions", get(session::sessions))
        .route("/console/sessions/{id}/revoke", post(session::revoke_session))
        .route("/console/invoices", get(merchant::invoices))
        .route("/console/invoices/{id}", get(merchant::invoice))
        .route("/console/events/{id}/replay", post(merchant::replay))
        .route("/console/balances", get(merchant::balances))
        .route("/console/money_out", get(merchant::money_out))
        .route("/console/webhooks", get(merchant::webhooks))
        .route("/console/keys", get(merchant::keys))
        .route("/console/customers", get(customers::customers))
        .route("/console/chains", get(finance::chains))
        .route("/console/reconciliation", get(finance::runs).post(finance::start_run))
        .route("/console/reconciliation/{id}", get(finance::run))
        .route("/console/trial_balance", get(finance::trial_balance))
        .route("/console/payouts", get(finance::payouts))
        .route("/console/unapplied", get(finance::unapplied))
}

/// `GET /console`: the overview of the viewer's role.
async fn overview(State(state): State<AppState>, viewer: Viewer, Query(query): Query<CsvQuery>) -> error::Result<Response> {
    match viewer.role {
        Role::Merchant => merchant::overview(&state, &viewer, &query).await,
        Role::Finance | Role::Admin => finance::overview(&state, &viewer, &query).await,
        Role::Creator => creator::overview(&state, &viewer, &query).await,
    }
}

/// The overview charts' days (`YYYY-MM-DD`, oldest first, ending today in UTC) and the start of
/// the first.
pub(crate) fn days(now: DateTime<Utc>) -> (Vec<String>, DateTime<Utc>) {
    let today = now.date_naive();
    let first = today - Duration::days(CHART_DAYS - 1);
    let categories = first.iter_days().take_while(|d| *d <= today).map(|d| d.format("%Y-%m-%d").to_string()).collect();
    let since = first.and_hms_opt(0, 0, 0).map_or(now, |t| t.and_utc());
    (categories, since)
}
