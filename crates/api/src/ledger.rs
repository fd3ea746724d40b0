//! Ledger exports for finance and admin keys: `GET /v1/ledger/entries` and
//! `GET /v1/ledger/trial_balance`, as JSON or CSV. Read-only; see [`payrail_store::ledger::export`] for the
//! sign convention and what each export reads.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use payrail_store::ledger::export::{self, AccountFilter, EntryExport, EntryFilter, ExportError, TrialBalance};

use super::auth::FinanceAuth;
use super::error::ApiError;
use super::AppState;


impl From<ExportError> for ApiError {
    fn from(error: ExportError) -> Self {
        match error {
            ExportError::Invalid { field, reason } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", format!("{field}: {reason}"))
            }
            ExportError::Database(error) => Self::database(error),
            ExportError::CorruptAmount { .. } | ExportError::CorruptAccount { .. } => Self::internal(error),
        }
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", message)
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "parameter_invalid", rejection.body_text())
}


#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

fn format_param(value: Option<&str>) -> Result<Format, ApiError> {
    match value.unwrap_or("json") {
        "json" => Ok(Format::Json),
        "csv" => Ok(Format::Csv),
        _ => Err(invalid("format must be json or csv")),
    }
}

/// Query of `GET /v1/ledger/entries`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    /// RFC 3339; entries created at or after.
    pub from: Option<String>,
    /// RFC 3339; entries created before.
    pub to: Option<String>,
    /// An account code (`liabilities:creator:cr_…`), or a prefix ending in `:` (`liabilities:creator:`):
    /// entries with a posting to it.
    pub account: Option<String>,
    /// A CAIP-19 asset: entries with a posting in it (with `account`, the same posting).
    pub asset: Option<String>,
    /// The entry kind: `payment`, `payout`, `reversal`, …
    pub kind: Option<String>,
    /// Entries per page, 1–500 (100 when absent).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// A journal entry id: the page holds the entries after it (older).
    pub starting_after: Option<String>,
    /// A journal entry id: the page holds the entries before it (newer).
    pub ending_before: Option<String>,
    /// `json` (the default) or `csv`.
    pub format: Option<String>,
}

#[utoipa::path(get, path = "/v1/ledger/entries", tag = "ledger", security(("bearer" = [])),
    params(EntriesQuery),
    responses((status = 200, body = super::List<EntryExport>,
            description = "entries newest first; with format=csv, text/csv with one record per posting \
                (entry_id, created_at, idempotency_key, kind, account, asset, amount_minor, memo), \
                `Payrail-Has-More: true` when another page follows",
            headers(("Payrail-Has-More" = bool, description = "with format=csv: whether another page follows"))),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn entries(
    State(state): State<AppState>,
    _auth: FinanceAuth,
    query: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = super::list_query(query)?;
    let format = format_param(query.format.as_deref())?;
    let filter = EntryFilter {
        from: super::time_param("from", query.from.as_deref())?,
        to: super::time_param("to", query.to.as_deref())?,
        account: query.account.as_deref().map(AccountFilter::parse).transpose()?,
        asset: plain_text("asset", query.asset)?,
        kind: plain_text("kind", query.kind)?,
        page: super::page(
            query.limit,
            query.starting_after,
            query.ending_before,
            super::CursorKind::Entry,
            super::PageSize { default: export::ENTRIES_LIMIT_DEFAULT, max: export::ENTRIES_LIMIT_MAX },
        )?,
    };
    let (data, has_more) = export::entries(&state.read_pool, &filter).await?;
    match format {
        Format::Json => Ok(Json(super::List::of((data, has_more))).into_response()),
        Format::Csv => Ok(super::statements::csv_page(export::entries_csv(&data), has_more)),
    }
}

/// Query of `GET /v1/ledger/trial_balance`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TrialBalanceQuery {
    /// RFC 3339; entries created at or before. Every entry when absent.
    pub at: Option<String>,
    /// `json` (the default) or `csv`.
    pub format: Option<String>,
}

#[utoipa::path(get, path = "/v1/ledger/trial_balance", tag = "ledger", security(("bearer" = [])),
    params(TrialBalanceQuery),
    responses((status = 200, body = TrialBalance,
            description = "JSON with the per-asset check; with format=csv, text/csv with one record per \
                account and asset (account, account_type, asset, debit_minor, credit_minor, balance_minor)"),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub async fn trial_balance(
    State(state): State<AppState>,
    _auth: FinanceAuth,
    query: Result<Query<TrialBalanceQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let format = format_param(query.format.as_deref())?;
    let at = super::time_param("at", query.at.as_deref())?;
    let balance = export::trial_balance(&state.read_pool, at).await?;
    if !balance.balanced() {
        // The database refuses unbalanced entries, so this is a broken invariant, not a client error.
        tracing::error!(target: "api::ledger", ?at, "trial balance does not balance");
    }
    match format {
        Format::Json => Ok(Json(balance).into_response()),
        Format::Csv => {
            Ok(super::csv_response(export::trial_balance_csv(&balance)))
        }
    }
}

/// A free-text filter: anything without control characters (PostgreSQL refuses a NUL in text, and
/// no asset or kind holds one).
fn plain_text(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(text) if text.chars().any(char::is_control) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "parameter_invalid",
            format!("{name}: must not contain control characters"),
        )),
        other => Ok(other),
    }
}
