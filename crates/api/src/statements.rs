//! Statements over HTTP: the query a creator's statement and a merchant's balance transactions
//! share, and their two answers — JSON pages, or CSV with `Payrail-Has-More`.

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

use payrail_store::ledger::{StatementRange, STATEMENT_PAGE_LIMIT_MAX};

use super::error::ApiError;

/// Query of `GET /v1/creators/me/statement` and `GET /v1/balance_transactions`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    /// RFC 3339; postings at or after.
    pub from: Option<String>,
    /// RFC 3339; postings before.
    pub to: Option<String>,
    /// `json` (the default) or `csv`.
    pub format: Option<String>,
    /// Lines per page, 1–1000 (1000 when absent).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// An entry id (`entry_id` of a line): the page holds the lines after that entry.
    pub starting_after: Option<String>,
    /// An entry id (`entry_id` of a line): the page holds the lines before that entry.
    pub ending_before: Option<String>,
}

/// What a statement query asks for.
#[derive(Debug)]
pub struct Asked {
    pub range: StatementRange,
    pub csv: bool,
}

/// Reads the query: a malformed one, a bad time, page or format is 422.
pub fn asked(query: Result<Query<StatementQuery>, QueryRejection>) -> Result<Asked, ApiError> {
    let query = super::list_query(query)?;
    let csv = match query.format.as_deref().unwrap_or("json") {
        "json" => false,
        "csv" => true,
        _ => return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", "format must be json or csv")),
    };
    let range = StatementRange {
        from: super::time_param("from", query.from.as_deref())?,
        to: super::time_param("to", query.to.as_deref())?,
        page: super::page(
            query.limit,
            query.starting_after,
            query.ending_before,
            super::CursorKind::Entry,
            super::PageSize { default: STATEMENT_PAGE_LIMIT_MAX, max: STATEMENT_PAGE_LIMIT_MAX },
        )?,
    };
    Ok(Asked { range, csv })
}

/// A CSV page; `Payrail-Has-More: true` says another page follows.
pub fn csv_page(body: String, has_more: bool) -> Response {
    let mut response = super::csv_response(body);
    response
        .headers_mut()
        .insert(HeaderName::from_static("payrail-has-more"), HeaderValue::from_static(if has_more { "true" } else { "false" }));
    response
}
