//! Finance's pages (finance and admin keys): the chains as the watchers see them, reconciliation
//! runs (started here and followed while they scan), the trial balance, payouts with their
//! transactions, and the money held unapplied across merchants.

use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::html;
use payrail_api::{ApiError, AppState};
use payrail_core::ids::is_id;
use payrail_store::page::Page;

use crate::error::{ConsoleError, Result};
use crate::merchant::stacked;
use crate::page::{csrf_field, Cell, CsvQuery, Section, Table, View};
use crate::session::Viewer;
use crate::{days, show};

/// Rows of the finance lists.
const LIST_ROWS: i64 = 100;
/// Most blocks one run started from the console may cover (longer ranges: `payrail reconcile`).
pub const RUN_BLOCKS_MAX: u64 = 100_000;
/// How often a page showing a running reconciliation reloads itself.
const RUN_REFRESH_S: u32 = 2;

pub async fn overview(state: &AppState, viewer: &Viewer, query: &CsvQuery) -> Result<Response> {
    viewer.finance()?;
    let now = state.clock.now();
    let (categories, since) = days(now);
    let chains = chain_rows(state).await?;
    let behind = chains.iter().filter(|c| c.problem.is_some()).count();
    let (unapplied,): (i64,) = sqlx::query_as(&format!(
        "SELECT count(*) FROM payments p WHERE p.applied_to = 'unapplied' AND p.status IN ('seen', 'confirmed') AND NOT {}",
        payrail_payments::refund::STANDING_REFUND_OF_P
    ))
    .fetch_one(&state.read_pool)
    .await?;
    let (open_runs, failed_runs): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'running'), count(*) FILTER (WHERE status = 'finished' AND NOT ok AND created_at >= $1) FROM reconciliation_runs",
    )
    .bind(since)
    .fetch_one(&state.read_pool)
    .await?;
    let figures = vec![
        ("Chains followed".to_owned(), chains.len().to_string()),
        ("Chains with a problem".to_owned(), behind.to_string()),
        ("Unapplied payments".to_owned(), unapplied.to_string()),
        ("Reconciliations running".to_owned(), open_runs.to_string()),
        ("Runs with differences, 30 days".to_owned(), failed_runs.to_string()),
    ];
    let mut sections = vec![Section::Figures(figures)];
    let payouts: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT to_char(coalesce(finished_at, created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD'), asset, sum(total_minor)::text \
           FROM payout_batches WHERE status = 'confirmed' AND created_at >= $1 GROUP BY 1, 2 ORDER BY 2",
    )
    .bind(since)
    .fetch_all(&state.read_pool)
    .await?;
    let mut assets: Vec<&str> = payouts.iter().map(|p| p.1.as_str()).collect();
    assets.dedup();
    for asset in assets {
        let decimals = payrail_api::balances::decimals_of(state, asset).unwrap_or(0);
        let rows = payouts.iter().filter(|p| p.1 == asset).map(|(day, _, total)| (day.as_str(), "paid out".to_owned(), total.as_str()));
        sections.push(Section::Chart(stacked(format!("payouts-{}", slug(asset)), format!("Payouts per day in {}", show::asset(state, asset)), &show::symbol(state, asset), decimals, &categories, rows)));
    }
    if payouts.is_empty() {
        sections.push(Section::Markup(html! { p.panel { "No payout confirmed in the last 30 days: the payout chart appears with the first." } }));
    }
    let differences: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), source, sum(differences)::bigint \
           FROM reconciliation_runs WHERE status = 'finished' AND created_at >= $1 GROUP BY 1, 2 ORDER BY 2",
    )
    .bind(since)
    .fetch_all(&state.read_pool)
    .await?;
    let counts: Vec<(&str, String, String)> = differences.iter().map(|(d, source, n)| (d.as_str(), show::rail(source), n.to_string())).collect();
    sections.push(Section::Chart(stacked(
        "differences".to_owned(),
        "Reconciliation differences per day, by chain".to_owned(),
        "differences",
        0,
        &categories,
        counts.iter().map(|(d, s, n)| (*d, s.clone(), n.as_str())),
    )));
    View::new("Finance overview", sections).at("/console").respond(viewer, query)
}

/// An asset id as a page id: letters and digits, the rest `-`.
fn slug(asset: &str) -> String {
    asset.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// One chain as the console shows it.
struct ChainRow {
    chain: String,
    tip: Option<u64>,
    followed_to: Option<i64>,
    followed_hash: Option<String>,
    followed_at: Option<DateTime<Utc>>,
    head_lag: Option<u64>,
    failed_ticks: Option<u32>,
    reorgs: i64,
    problem: Option<&'static str>,
    watched_here: bool,
}

/// Every chain with a cursor in the database or a watcher in this daemon. The watcher's figures
/// (tip, lag, failed polls, reorgs) are this daemon's, the ones `/metrics` exports; the cursor is
/// the database's, whichever replica follows the chain.
async fn chain_rows(state: &AppState) -> Result<Vec<ChainRow>> {
    let now = state.clock.now();
    let cursors: Vec<(String, i64, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT chain, height, block_hash, updated_at FROM chain_cursors ORDER BY chain").fetch_all(&state.read_pool).await?;
    let health = state.rail_health.snapshot(now);
    let mut chains: Vec<String> = cursors.iter().map(|c| c.0.clone()).chain(health.iter().map(|h| h.0.clone())).collect();
    chains.sort();
    chains.dedup();
    Ok(chains
        .into_iter()
        .map(|chain| {
            let cursor = cursors.iter().find(|c| c.0 == chain);
            let watched = health.iter().find(|h| h.0 == chain);
            let reorgs = payrail_core::metrics::value("payrail_chain_reorgs_total", &[("chain", &chain)]).unwrap_or(0);
            ChainRow {
                tip: watched.and_then(|w| w.1.tip),
                followed_to: cursor.map(|c| c.1),
                followed_hash: cursor.map(|c| c.2.clone()),
                followed_at: cursor.map(|c| c.3),
                head_lag: watched.map(|w| w.1.head_lag_blocks),
                failed_ticks: watched.map(|w| w.1.failed_ticks),
                reorgs,
                problem: watched.and_then(|w| w.2),
                watched_here: watched.is_some(),
                chain,
            }
        })
        .collect())
}

/// `GET /console/chains`.
pub async fn chains(State(state): State<AppState>, viewer: Viewer, Query(query): Query<CsvQuery>) -> Result<Response> {
    viewer.finance()?;
    let rows = chain_rows(&state).await?;
    let mut table = Table::new(
        "chains",
        "Chains",
        &["Chain", "Id", "RPC health", "Node tip", "Followed to", "Head lag (blocks)", "Last block hash", "Cursor moved", "Failed polls", "Reorgs"],
    )
    .empty("No chain is followed.");
    for c in &rows {
        let health = match (c.watched_here, c.problem) {
            (false, _) => "followed by another replica".to_owned(),
            (true, Some(problem)) => problem.to_owned(),
            (true, None) => "ok".to_owned(),
        };
        let opt = |v: Option<String>| v.unwrap_or_default();
        table.push_marked(
            vec![
                Cell::text(show::rail(&c.chain)),
                Cell::text(c.chain.clone()),
                Cell::text(health),
                Cell::number(opt(c.tip.map(|t| t.to_string()))),
                Cell::number(opt(c.followed_to.map(|t| t.to_string()))),
                Cell::number(opt(c.head_lag.map(|t| t.to_string()))),
                Cell::text(opt(c.followed_hash.clone())),
                Cell::time_opt(c.followed_at),
                Cell::number(opt(c.failed_ticks.map(|t| t.to_string()))),
                Cell::number(c.reorgs.to_string()),
            ],
            c.problem.map(|_| "bad"),
        );
    }
    let mut view = View::new("Chains", vec![Section::Table(table)]).at("/console/chains");
    view.refresh_s = Some(10);
    view.respond(&viewer, &query)
}

/// `GET /console/reconciliation`: the runs, newest first, and the form that starts one.
pub async fn runs(State(state): State<AppState>, viewer: Viewer, Query(query): Query<CsvQuery>) -> Result<Response> {
    viewer.finance()?;
    let (runs, _) = payrail_reconcile::store::list(&state.pool, &Page::first(LIST_ROWS)).await.map_err(ApiError::from)?;
    let mut table = Table::new("runs", "Reconciliation runs", &["Started", "Run", "Chain", "Blocks", "Scanned to", "Status", "Differences", "Finished"])
        .empty("No reconciliation has been run.");
    for r in &runs {
        let mark = match (r.status.as_str(), r.ok) {
            ("finished", Some(false)) => Some("bad"),
            ("running", _) => Some("warn"),
            _ => None,
        };
        table.push_marked(
            vec![
                Cell::time(r.created_at),
                Cell::link(format!("/console/reconciliation/{}", r.id), r.id.clone()),
                Cell::text(show::rail(&r.source)),
                Cell::text(format!("{}–{}", r.from_block, r.to_block)),
                Cell::number(r.scanned_to.map(|s| s.to_string()).unwrap_or_default()),
                Cell::text(r.status.clone()),
                Cell::number(r.differences.map(|d| d.to_string()).unwrap_or_default()),
                Cell::time_opt(r.finished_at),
            ],
            mark,
        );
    }
    let chains: Vec<(String,)> = sqlx::query_as("SELECT chain FROM chain_cursors ORDER BY chain").fetch_all(&state.read_pool).await?;
    let form = html! {
        form.filters.panel method="post" action="/console/reconciliation" {
            (csrf_field(&viewer))
            label { "Chain"
                select name="chain" required {
                    @for (chain,) in &chains { option value=(chain) { (show::rail(chain)) " (" (chain) ")" } }
                }
            }
            label { "From block" input type="number" name="from_block" min="0" required; }
            label { "To block (empty: the tip)" input type="number" name="to_block" min="0"; }
            button type="submit" disabled[viewer.read_only] { "Start a run" }
        }
    };
    let mut view = View::new("Reconciliation", vec![Section::Markup(form), Section::Table(table)]).at("/console/reconciliation");
    if runs.iter().any(|r| r.status == "running") {
        view.refresh_s = Some(RUN_REFRESH_S);
    }
    view.respond(&viewer, &query)
}

#[derive(Debug, serde::Deserialize)]
pub struct RunForm {
    csrf: String,
    chain: String,
    from_block: String,
    #[serde(default)]
    to_block: String,
}

fn block(name: &str, value: &str) -> Result<Option<u64>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| ConsoleError::Invalid(format!("{name}: expected a block number")))
}

/// `POST /console/reconciliation`: starts a run over the range and scans it in the background;
/// its page follows the scan and shows the report when it is done.
pub async fn start_run(State(state): State<AppState>, viewer: Viewer, Form(form): Form<RunForm>) -> Result<Response> {
    viewer.finance()?;
    viewer.may_submit(&form.csrf)?;
    let from_block = block("from_block", &form.from_block)?.ok_or_else(|| ConsoleError::Invalid("from_block: required".to_owned()))?;
    let to_block = block("to_block", &form.to_block)?;
    if let Some(to) = to_block {
        if to < from_block {
            return Err(ConsoleError::Invalid("to_block: must not be before from_block".to_owned()));
        }
        if to - from_block >= RUN_BLOCKS_MAX {
            return Err(ConsoleError::Invalid(format!("at most {RUN_BLOCKS_MAX} blocks per run here; use `payrail reconcile` for longer ranges")));
        }
    }
    let id = state.reconciler.start(&form.chain, from_block, to_block).await.map_err(ApiError::from)?;
    tracing::info!(target: "console", run = %id, chain = %form.chain, from_block, "reconciliation started from the console");
    let reconciler = state.reconciler.clone();
    let run = id.clone();
    tokio::spawn(async move {
        if let Err(error) = reconciler.complete(&run, &|_| {}).await {
            tracing::warn!(target: "console", %run, %error, "reconciliation run failed; `payrail reconcile --resume` can finish it");
        }
    });
    Ok(Redirect::to(&format!("/console/reconciliation/{id}")).into_response())
}

/// `GET /console/reconciliation/{id}`: a running run's progress, or a finished run's totals and
/// every item that is not matched (differences first).
pub async fn run(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>, Query(query): Query<CsvQuery>) -> Result<Response> {
    viewer.finance()?;
    if !is_id(&id, "rec") {
        return Err(ConsoleError::NotFound("reconciliation run"));
    }
    let run: Option<payrail_reconcile::store::RunSummary> = sqlx::query_as(
        "SELECT id, source, from_block, to_block, scanned_to, status, ok, differences, created_at, finished_at FROM reconciliation_runs WHERE id = $1",
    )
    .bind(&id)
    .fetch_optional(&state.pool)
    .await?;
    let payrail_reconcile::store::RunSummary { source, from_block: from, to_block: to, scanned_to: scanned, status, ok, differences, .. } =
        run.ok_or(ConsoleError::NotFound("reconciliation run"))?;
    let title = format!("Reconciliation {id}");
    let mut figures = vec![
        ("Chain".to_owned(), show::rail(&source)),
        ("Blocks".to_owned(), format!("{from}–{to}")),
        ("Status".to_owned(), status.clone()),
    ];
    if status == "running" {
        let done = scanned.map_or(0, |s| s - from + 1);
        let total = (to - from + 1).max(1);
        figures.push(("Scanned".to_owned(), format!("{done} of {total} blocks ({}%)", done * 100 / total)));
        let progress = html! { p.panel role="status" { "Scanning… this page reloads every " (RUN_REFRESH_S) " seconds." progress max=(total) value=(done) {} } };
        let mut view = View::new(title, vec![Section::Figures(figures), Section::Markup(progress)]).at(format!("/console/reconciliation/{id}"));
        view.refresh_s = Some(RUN_REFRESH_S);
        return view.respond(&viewer, &query);
    }
    figures.push(("Result".to_owned(), if ok == Some(true) { "everything matches".to_owned() } else { "differences found".to_owned() }));
    figures.push(("Differences".to_owned(), differences.unwrap_or(0).to_string()));
    let report = payrail_reconcile::store::report(&state.pool, &id).await.map_err(ApiError::from)?;
    let mut totals = Table::new("totals", "Totals per asset", &["Asset", "Chain in", "Ledger in", "In difference", "Chain out", "Ledger out", "Out difference"]);
    for t in &report.totals {
        let a = |minor: &str| Cell::number(show::amount(&state, &t.asset, minor));
        let off = t.in_difference_minor != "0" || t.out_difference_minor != "0";
        totals.push_marked(
            vec![Cell::text(show::asset(&state, &t.asset)), a(&t.chain_in_minor), a(&t.ledger_in_minor), a(&t.in_difference_minor), a(&t.chain_out_minor), a(&t.ledger_out_minor), a(&t.out_difference_minor)],
            off.then_some("bad"),
        );
    }
    let mut items = Table::new("items", "Items not matched", &["Category", "Kind", "Reference", "Asset", "Chain says", "Ledger says", "Block", "Transaction", "Entry", "Detail"])
        .empty("Every item matched.");
    let mut unmatched: Vec<_> = report.items.iter().filter(|i| i.category.as_str() != "matched").collect();
    unmatched.sort_by_key(|i| !i.category.is_difference());
    for i in unmatched {
        let a = |minor: &Option<String>| Cell::number(minor.as_deref().map(|m| show::amount(&state, &i.asset, m)).unwrap_or_default());
        items.push_marked(
            vec![
                Cell::text(i.category.as_str()),
                Cell::text(i.kind.as_str()),
                Cell::text(i.reference.clone()),
                Cell::text(show::asset(&state, &i.asset)),
                a(&i.chain_amount_minor),
                a(&i.ledger_amount_minor),
                Cell::number(i.block_number.map(|b| b.to_string()).unwrap_or_default()),
                Cell::text(i.tx_hash.clone().unwrap_or_default()),
                Cell::number(i.entry_id.map(|e| e.to_string()).unwrap_or_default()),
                Cell::text(i.detail.clone().unwrap_or_default()),
            ],
            Some(if i.category.is_difference() { "bad" } else { "warn" }),
        );
    }
    View::new(title, vec![Section::Figures(figures), Section::Table(totals), Section::Table(items)])
        .at(format!("/console/reconciliation/{id}"))
        .respond(&viewer, &query)
}

/// `GET /console/trial_balance`: every account's balance now, in the debit or the credit column
/// as its sign says, and per asset whether debits equal credits. Read from the balance rows the
/// ledger keeps with every entry, so it costs the number of accounts, not of postings; the API's
/// `/v1/ledger/trial_balance` gives each account's turnover (and any past moment).
pub async fn trial_balance(State(state): State<AppState>, viewer: Viewer, Query(query): Query<CsvQuery>) -> Result<Response> {
    viewer.finance()?;
    // A balance row grows on its account's normal side: a debit-normal account's positive balance
    // is a debit, a credit-normal one's a credit (and a negative one the other way).
    let rows: Vec<BalanceRow> = sqlx::query_as(
        "SELECT a.code, a.normal_side, b.asset, sum(b.balance)::text AS balance \
           FROM balances b JOIN accounts a ON a.id = b.account_id \
          GROUP BY a.code, a.normal_side, b.asset HAVING sum(b.balance) <> 0 ORDER BY a.code, b.asset",
    )
    .fetch_all(&state.read_pool)
    .await?;
    let credits = show::Credits::load(&state.read_pool).await?;
    let mut lines = Table::new("accounts", "Accounts", &["Account", "Asset", "Debit", "Credit"]).empty("The ledger is empty.");
    let mut sums: Vec<(String, u128, u128)> = Vec::new();
    for r in &rows {
        let (magnitude, negative) = r.balance.strip_prefix('-').map_or((r.balance.as_str(), false), |m| (m, true));
        let (debit, credit) = if (r.normal_side == "debit") != negative { (magnitude, "0") } else { ("0", magnitude) };
        let parse = |v: &str| v.parse::<u128>().unwrap_or(u128::MAX);
        match sums.iter_mut().find(|s| s.0 == r.asset) {
            Some(sum) => {
                sum.1 = sum.1.saturating_add(parse(debit));
                sum.2 = sum.2.saturating_add(parse(credit));
            }
            None => sums.push((r.asset.clone(), parse(debit), parse(credit))),
        }
        let a = |minor: &str| Cell::number(if minor == "0" { String::new() } else { credits.amount(&state, &r.asset, minor) });
        lines.push(vec![Cell::text(r.code.clone()), Cell::text(credits.asset(&state, &r.asset)), a(debit), a(credit)]);
    }
    let mut totals = Table::new("totals", "Totals per asset", &["Asset", "Debits", "Credits", "Balanced"]);
    sums.sort();
    for (asset, debit, credit) in &sums {
        let a = |minor: &u128| Cell::number(credits.amount(&state, asset, &minor.to_string()));
        totals.push_marked(
            vec![Cell::text(credits.asset(&state, asset)), a(debit), a(credit), Cell::text(if debit == credit { "yes" } else { "NO" })],
            (debit != credit).then_some("bad"),
        );
    }
    View::new("Trial balance", vec![Section::Table(totals), Section::Table(lines)]).at("/console/trial_balance").respond(&viewer, &query)
}

#[derive(sqlx::FromRow)]
struct BalanceRow {
    code: String,
    normal_side: String,
    asset: String,
    /// On the account's normal side, in the asset's smallest unit.
    balance: String,
}

/// `GET /console/payouts`: creator payouts and settlements, with their transactions.
pub async fn payouts(State(state): State<AppState>, viewer: Viewer, Query(query): Query<CsvQuery>) -> Result<Response> {
    viewer.finance()?;
    let (payouts, _) = payrail_payouts::store::list(&state.pool, &Page::first(LIST_ROWS), None).await.map_err(ApiError::from)?;
    let mut table = Table::new("payouts", "Payouts", &["Created", "Payout", "Chain", "Amount", "Recipients", "Status", "Transaction", "Block", "Gas", "Error"])
        .empty("No payout yet.");
    for p in &payouts {
        let native = native_of(&p.chain);
        table.push_marked(
            vec![
                Cell::time(p.created_at),
                Cell::text(p.id.clone()),
                Cell::text(show::rail(&p.chain)),
                Cell::number(show::amount(&state, &p.asset, &p.total_minor)),
                Cell::number(p.recipients.to_string()),
                Cell::text(p.status.clone()),
                Cell::text(p.tx_hash.clone().unwrap_or_default()),
                Cell::number(p.block_number.map(|b| b.to_string()).unwrap_or_default()),
                Cell::number(p.gas_fee_minor.as_deref().map(|g| show::amount(&state, &native, g)).unwrap_or_default()),
                Cell::text(p.error.clone().unwrap_or_default()),
            ],
            match p.status.as_str() {
                "failed" => Some("bad"),
                "created" | "sent" => Some("warn"),
                _ => None,
            },
        );
    }
    View::new("Payouts", vec![Section::Table(table)]).at("/console/payouts").respond(&viewer, &query)
}

/// The native coin of an EVM chain (its gas), as a CAIP-19 id.
fn native_of(chain: &str) -> String {
    format!("{chain}/slip44:60")
}

/// `GET /console/unapplied`: payments held for review across merchants, oldest first.
pub async fn unapplied(State(state): State<AppState>, viewer: Viewer, Query(query): Query<CsvQuery>) -> Result<Response> {
    viewer.finance()?;
    // As each merchant's `/v1/unapplied` lists them: seen or confirmed, not being refunded.
    let rows: Vec<UnappliedRow> = sqlx::query_as(&format!(
        "SELECT p.id, p.merchant_id, p.invoice_id, p.chain, p.asset, p.amount_minor::text AS amount_minor, \
                coalesce(p.unapplied_reason, '') AS reason, p.seen_at \
           FROM payments p WHERE p.applied_to = 'unapplied' AND p.status IN ('seen', 'confirmed') AND NOT {} \
          ORDER BY p.seen_at, p.id LIMIT $1",
        payrail_payments::refund::STANDING_REFUND_OF_P
    ))
    .bind(LIST_ROWS * 5)
    .fetch_all(&state.read_pool)
    .await?;
    let mut table = Table::new("unapplied", "Unapplied payments", &["Seen", "Payment", "Merchant", "Invoice", "Rail", "Amount", "Reason"])
        .empty("No payment is waiting to be applied.");
    for r in rows {
        table.push(vec![
            Cell::time(r.seen_at),
            Cell::text(r.id),
            Cell::text(r.merchant_id),
            Cell::text(r.invoice_id),
            Cell::text(show::rail(&r.chain)),
            Cell::number(show::amount(&state, &r.asset, &r.amount_minor)),
            Cell::text(r.reason),
        ]);
    }
    View::new("Unapplied funds", vec![Section::Table(table)]).at("/console/unapplied").respond(&viewer, &query)
}

#[derive(sqlx::FromRow)]
struct UnappliedRow {
    id: String,
    merchant_id: String,
    invoice_id: String,
    chain: String,
    asset: String,
    amount_minor: String,
    reason: String,
    seen_at: DateTime<Utc>,
}
