//! `GET /v1/balances`: what the platform owes the merchant, per asset, and what it holds for review;
//! `GET /v1/balance_transactions`: every posting that moved those balances.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use payrail_store::ledger::{AccountCode, StatementLine};
use crate::money::{AssetId, Fiat};

use super::auth::MerchantAuth;
use super::error::ApiError;
use super::statements::{self, StatementQuery};
use super::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BalanceLine {
    pub asset: String,
    /// Decimal string in whole units, when the asset's decimals are known.
    pub amount: String,
    pub amount_minor: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Balances {
    #[schema(value_type = String, example = "balances")]
    pub object: &'static str,
    pub merchant_id: String,
    /// Credited from paid invoices.
    pub available: Vec<BalanceLine>,
    /// Late payments, payments to expired invoices or in unquoted assets, held for review.
    pub unapplied: Vec<BalanceLine>,
    /// Per asset, who holds the money and whose it is (smallest units).
    pub holdings: Vec<Holding>,
}

/// One asset's money: who holds it, and whose it is.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Holding {
    pub asset: String,
    /// `platform` (payrail holds it: EVM deposits swept to the treasury), `merchant` (your own
    /// wallet holds it: Bitcoin to your descriptor's addresses) or `processor` (Stripe holds it and
    /// pays your bank).
    pub custody: payrail_core::payment::plan::Custody,
    /// Yours (`available`): withdrawable with a settlement where payrail holds it.
    pub available_minor: String,
    /// Held for your review (`unapplied`).
    pub unapplied_minor: String,
    /// Owed to your creators from your invoices' splits, not paid out yet.
    pub owed_to_creators_minor: String,
    /// Merchant custody only: what your wallet received through payrail (less refunds you paid).
    pub held_by_you_minor: String,
    /// Merchant custody only: of that, what is not yours — creators' shares and the platform's
    /// fee — which you owe.
    pub owed_by_you_minor: String,
}

#[utoipa::path(get, path = "/v1/balances", tag = "balances", security(("bearer" = [])),
    responses((status = 200, body = Balances), (status = 401, body = super::openapi::ErrorBody)))]
pub async fn show(State(state): State<AppState>, auth: MerchantAuth) -> Result<Json<Balances>, ApiError> {
    Ok(Json(load(&state, &auth.merchant_id).await?))
}

/// The merchant's balances as `GET /v1/balances` shows them (the console shows the same).
pub async fn load(state: &AppState, merchant_id: &str) -> Result<Balances, ApiError> {
    let mut conn = state.pool.acquire().await.map_err(ApiError::database)?;
    let lines = |rows: Vec<(String, payrail_store::ledger::SignedAmount)>| -> Vec<BalanceLine> {
        rows.into_iter()
            .map(|(asset, balance)| {
                let decimals = decimals_of(state, &asset);
                let magnitude = balance.magnitude();
                let sign = if balance.is_negative() { "-" } else { "" };
                BalanceLine {
                    amount: match decimals {
                        Some(d) => format!("{sign}{}", magnitude.to_decimal_string(d)),
                        None => balance.to_string(),
                    },
                    amount_minor: balance.to_string(),
                    asset,
                }
            })
            .collect()
    };
    let available = state
        .ledger
        .balances(&mut conn, &AccountCode::merchant(merchant_id))
        .await
        .map_err(ApiError::ledger)?;
    let unapplied = state
        .ledger
        .balances(&mut conn, &AccountCode::unapplied(merchant_id))
        .await
        .map_err(ApiError::ledger)?;
    let held = state
        .ledger
        .balances(&mut conn, &AccountCode::held_by_merchant(merchant_id))
        .await
        .map_err(ApiError::ledger)?;
    let creators: Vec<(String, String)> = sqlx::query_as(
        "SELECT b.asset, sum(b.balance)::text FROM creators c \
         JOIN accounts a ON a.code = 'liabilities:creator:' || c.id JOIN balances b ON b.account_id = a.id \
         WHERE c.merchant_id = $1 GROUP BY b.asset",
    )
    .bind(merchant_id)
    .fetch_all(&mut *conn)
    .await
    .map_err(ApiError::database)?;
    let holdings = holdings(&available, &unapplied, &held, &creators);
    Ok(Balances { object: "balances", merchant_id: merchant_id.to_owned(), available: lines(available), unapplied: lines(unapplied), holdings })
}

type Signed = payrail_store::ledger::SignedAmount;

/// One line per asset any of the balances names.
fn holdings(available: &[(String, Signed)], unapplied: &[(String, Signed)], held: &[(String, Signed)], creators: &[(String, String)]) -> Vec<Holding> {
    use payrail_core::payment::plan::Custody;
    let mut assets: Vec<&str> = available
        .iter()
        .chain(unapplied)
        .chain(held)
        .map(|(a, _)| a.as_str())
        .chain(creators.iter().map(|(a, _)| a.as_str()))
        .collect();
    assets.sort_unstable();
    assets.dedup();
    let of = |rows: &[(String, Signed)], asset: &str| rows.iter().find(|(a, _)| a == asset).map(|(_, b)| *b).unwrap_or(Signed::ZERO);
    assets
        .into_iter()
        .map(|asset| {
            let custody = Custody::of_asset(asset);
            let available = of(available, asset);
            let unapplied = of(unapplied, asset);
            let creators = creators
                .iter()
                .find(|(a, _)| a == asset)
                .and_then(|(_, b)| b.parse::<Signed>().ok())
                .unwrap_or(Signed::ZERO);
            let held = of(held, asset);
            // What the merchant holds that is not its own: the creators' and the platform's.
            let owed = held
                .checked_add(available.negated())
                .and_then(|x| x.checked_add(unapplied.negated()))
                .unwrap_or(Signed::ZERO);
            let merchant_held = custody == Custody::Merchant;
            Holding {
                asset: asset.to_owned(),
                custody,
                available_minor: available.to_string(),
                unapplied_minor: unapplied.to_string(),
                owed_to_creators_minor: creators.to_string(),
                held_by_you_minor: if merchant_held { held.to_string() } else { "0".to_owned() },
                owed_by_you_minor: if merchant_held { owed.to_string() } else { "0".to_owned() },
            }
        })
        .collect()
}

/// The decimals of a ledger asset: a fiat currency's minor units, or a configured asset's.
pub fn decimals_of(state: &AppState, asset: &str) -> Option<u8> {
    if let Some(code) = asset.strip_prefix("iso4217:") {
        return code.parse::<Fiat>().ok().map(|f| f.minor_units());
    }
    let id: AssetId = asset.parse().ok()?;
    state.catalog.get(&id).map(|a| a.decimals)
}

/// `GET /v1/balance_transactions` as JSON.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BalanceTransactions {
    #[schema(value_type = String, example = "list")]
    pub object: &'static str,
    pub merchant_id: String,
    /// Oldest first. `account` is the merchant's available balance
    /// (`liabilities:merchant:{id}`) or its unapplied balance (`liabilities:unapplied:{id}`).
    pub data: Vec<StatementLine>,
    /// More lines follow in the direction asked: ask again with `starting_after` = the last
    /// line's `entry_id` (or `ending_before` = the first's). In CSV, the `Payrail-Has-More` header.
    pub has_more: bool,
}

#[utoipa::path(get, path = "/v1/balance_transactions", tag = "balances", security(("bearer" = [])),
    params(StatementQuery),
    responses((status = 200, body = BalanceTransactions,
            description = "JSON, or with format=csv text/csv: entry_id,at,kind,account,asset,amount_minor,invoice_id"),
        (status = 400, body = super::openapi::ErrorBody, description = "parameter_invalid: the query is malformed"),
        (status = 401, body = super::openapi::ErrorBody, description = "unauthorized: no valid API key"),
        (status = 403, body = super::openapi::ErrorBody, description = "forbidden: not a merchant key"),
        (status = 422, body = super::openapi::ErrorBody, description = "parameter_invalid: a time, limit or format is invalid")))]
pub async fn transactions(
    State(state): State<AppState>,
    auth: MerchantAuth,
    query: Result<Query<StatementQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let asked = statements::asked(query)?;
    let accounts = [AccountCode::merchant(&auth.merchant_id), AccountCode::unapplied(&auth.merchant_id)];
    let (lines, has_more) =
        payrail_store::ledger::statement(&state.read_pool, &accounts, &asked.range).await.map_err(ApiError::ledger)?;
    if asked.csv {
        return Ok(statements::csv_page(payrail_store::ledger::statement_csv(&lines, true), has_more));
    }
    Ok(Json(BalanceTransactions { object: "list", merchant_id: auth.merchant_id, data: lines, has_more }).into_response())
}
