//! A creator's page (creator key): what it has earned, per asset, and its payouts.

use axum::response::Response;
use payrail_api::{ApiError, AppState};
use payrail_store::page::Page;

use crate::error::Result;
use crate::page::{Cell, CsvQuery, Section, Table, View};
use crate::session::Viewer;
use crate::show;

/// Payouts shown.
const PAYOUTS_SHOWN: i64 = 100;

pub async fn overview(state: &AppState, viewer: &Viewer, query: &CsvQuery) -> Result<Response> {
    let (_, creator) = viewer.creator()?;
    let account = payrail_payments::creator::creator_account(&state.pool, &state.ledger, creator).await.map_err(ApiError::from)?;
    let mut balances = Table::new("balances", "Earnings", &["Asset", "Available", "Pending"]).empty("Nothing earned yet.");
    for b in &account.balances {
        balances.push(vec![
            Cell::text(show::asset(state, &b.asset)),
            Cell::number(show::amount(state, &b.asset, &b.available_minor)),
            Cell::number(show::amount(state, &b.asset, &b.pending_minor)),
        ]);
    }
    let (payouts, _) =
        payrail_payouts::store::creator_payouts(&state.pool, creator, &Page::first(PAYOUTS_SHOWN)).await.map_err(ApiError::from)?;
    let mut table = Table::new("payouts", "Payouts", &["Created", "Payout", "Chain", "Amount", "To", "Status", "Transaction", "Finished"])
        .empty("No payout yet.");
    for p in &payouts {
        table.push_marked(
            vec![
                Cell::time(p.created_at),
                Cell::text(p.payout_id.clone()),
                Cell::text(show::rail(&p.chain)),
                Cell::number(show::amount(state, &p.asset, &p.amount_minor)),
                Cell::text(p.address.clone()),
                Cell::text(p.status.clone()),
                Cell::text(p.tx_hash.clone().unwrap_or_default()),
                Cell::time_opt(p.finished_at),
            ],
            (p.status == "failed").then_some("bad"),
        );
    }
    View::new(format!("{} — earnings", account.name), vec![Section::Table(balances), Section::Table(table)]).at("/console").respond(viewer, query)
}
