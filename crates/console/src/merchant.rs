//! A merchant's pages: the overview with its charts, invoices (filtered, paged, each with its
//! payments, ledger entries and webhook events), balances, settlements and refunds, webhook
//! endpoints and failing deliveries, and API keys. Every query is filtered by the session's
//! merchant: another merchant's invoice is not found, by link or by URL.

use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDate, Utc};
use maud::html;
use payrail_api::AppState;
use payrail_core::ids::is_id;
use payrail_payments::{invoice, refund, webhook};
use payrail_store::page::{Cursor, Page};

use crate::chart::{Chart, Series};
use crate::error::{ConsoleError, Result};
use crate::page::{with_param, Cell, CsvQuery, Section, Table, View};
use crate::session::{CsrfForm, Viewer};
use crate::{daily, days, show};

/// Rows per page of the invoice list.
pub const INVOICES_PER_PAGE: i64 = 50;
/// Rows of the shorter lists (settlements, refunds, endpoints, keys, failures).
const LIST_ROWS: i64 = 100;

pub async fn overview(state: &AppState, viewer: &Viewer, query: &CsvQuery) -> Result<Response> {
    let merchant = viewer.merchant()?;
    let now = state.clock.now();
    let (categories, since) = days(now);
    let balances = payrail_api::balances::load(state, merchant).await?;
    let mut figures: Vec<(String, String)> =
        balances.available.iter().map(|b| (format!("Available {}", show::asset(state, &b.asset)), show::amount(state, &b.asset, &b.amount_minor))).collect();
    let (open,): (i64,) = sqlx::query_as("SELECT count(*) FROM invoices WHERE merchant_id = $1 AND status IN ('open', 'processing')")
        .bind(merchant)
        .fetch_one(&state.read_pool)
        .await?;
    let totals = daily::totals(&state.read_pool, merchant, since, now).await?;
    let paid_30d: i64 = totals.created.iter().filter(|c| outcome(&c.status) == "paid").map(|c| c.invoices).sum();
    figures.insert(0, ("Open invoices".to_owned(), open.to_string()));
    figures.insert(1, ("Paid, last 30 days".to_owned(), paid_30d.to_string()));

    let mut sections = vec![Section::Figures(figures)];
    let mut currencies: Vec<&str> = totals.volume.iter().map(|v| v.currency.as_str()).collect();
    currencies.sort_unstable();
    currencies.dedup();
    for currency in currencies {
        let rows = totals
            .volume
            .iter()
            .filter(|v| v.currency == currency)
            .map(|v| (v.day.as_str(), format!("{} · {}", show::rail(&v.chain), show::symbol(state, &v.asset)), v.value.as_str()));
        let decimals = currency.parse::<payrail_core::money::Fiat>().map_or(0, |f| f.minor_units());
        sections.push(Section::Chart(stacked(format!("volume-{}", currency.to_lowercase()), format!("Volume per day in {currency}, by rail and asset"), currency, decimals, &categories, rows)));
    }
    if totals.volume.is_empty() {
        sections.push(Section::Markup(html! { p.panel { "No payments in the last 30 days: the volume chart appears with the first." } }));
    }
    let counts: Vec<(&str, String, String)> = totals.created.iter().map(|c| (c.day.as_str(), outcome(&c.status).to_owned(), c.invoices.to_string())).collect();
    sections.push(Section::Chart(stacked(
        "conversion".to_owned(),
        "Invoices created per day, by outcome".to_owned(),
        "invoices",
        0,
        &categories,
        counts.iter().map(|(d, s, n)| (*d, s.clone(), n.as_str())),
    )));
    View::new("Overview", sections).at("/console").respond(viewer, query)
}

/// Where an invoice ended up, for the conversion chart.
fn outcome(status: &str) -> &'static str {
    match status {
        "paid" | "overpaid" => "paid",
        "expired" => "expired",
        "open" | "processing" => "open",
        _ => "void, invalid or refunded",
    }
}

/// A stacked bar chart over `categories` from `(category, series, value)` rows; series in the
/// order they first appear.
pub(crate) fn stacked<'a>(
    name: String,
    title: String,
    unit: &str,
    decimals: u8,
    categories: &[String],
    rows: impl Iterator<Item = (&'a str, String, &'a str)>,
) -> Chart {
    let mut series: Vec<Series> = Vec::new();
    for (category, name, value) in rows {
        let Some(i) = categories.iter().position(|c| c == category) else { continue };
        let value: u128 = value.parse().unwrap_or(0);
        let index = match series.iter().position(|s| s.name == name) {
            Some(k) => k,
            None => {
                series.push(Series { name, values: vec![0; categories.len()] });
                series.len() - 1
            }
        };
        if let Some(slot) = series.get_mut(index).and_then(|s| s.values.get_mut(i)) {
            *slot = slot.saturating_add(value);
        }
    }
    Chart { name, title, unit: unit.to_owned(), decimals, category_label: "Day", categories: categories.to_vec(), series }
}

/// The invoice list's filters, as its form and its links carry them.
#[derive(Debug, Default, serde::Deserialize)]
pub struct InvoiceFilters {
    #[serde(default)]
    status: String,
    /// A chain's CAIP-2 id, or `stripe` for cards.
    #[serde(default)]
    rail: String,
    /// `YYYY-MM-DD`, created on or after (UTC).
    #[serde(default)]
    from: String,
    /// `YYYY-MM-DD`, created on or before (UTC).
    #[serde(default)]
    to: String,
    #[serde(default)]
    order_id: String,
    /// The last invoice of the page before.
    #[serde(default)]
    after: String,
    csv: Option<String>,
}

fn date(name: &str, value: &str, end_of_day: bool) -> Result<Option<DateTime<Utc>>> {
    if value.is_empty() {
        return Ok(None);
    }
    let day = NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| ConsoleError::Invalid(format!("{name}: expected a date YYYY-MM-DD")))?;
    let day = if end_of_day { day.succ_opt().unwrap_or(day) } else { day };
    Ok(day.and_hms_opt(0, 0, 0).map(|t| t.and_utc()))
}

const STATUSES: [&str; 8] = ["open", "processing", "paid", "overpaid", "expired", "refunded", "void", "invalid"];

#[derive(sqlx::FromRow)]
struct InvoiceRow {
    id: String,
    created_at: DateTime<Utc>,
    order_id: Option<String>,
    currency: String,
    amount_minor: String,
    status: String,
    paid_minor: String,
    rails: Option<String>,
}

/// `GET /console/invoices`: newest first, filtered by status, rail, dates and order id.
pub async fn invoices(State(state): State<AppState>, viewer: Viewer, Query(filters): Query<InvoiceFilters>) -> Result<Response> {
    let merchant = viewer.merchant()?;
    if !filters.status.is_empty() && !STATUSES.contains(&filters.status.as_str()) {
        return Err(ConsoleError::Invalid("status: not an invoice status".to_owned()));
    }
    if filters.order_id.chars().any(char::is_control) || filters.rail.chars().any(char::is_control) {
        return Err(ConsoleError::Invalid("order id and rail must not contain control characters".to_owned()));
    }
    if !filters.after.is_empty() && !is_id(&filters.after, "inv") {
        return Err(ConsoleError::Invalid("after: expected an invoice id".to_owned()));
    }
    let from = date("from", &filters.from, false)?;
    let to = date("to", &filters.to, true)?;
    let page = Page { limit: INVOICES_PER_PAGE, cursor: (!filters.after.is_empty()).then(|| Cursor::After(filters.after.clone())) };
    const ORDER: payrail_store::page::Order = payrail_store::page::Order("created_at DESC, id DESC");
    // The page is cut from `invoices` alone (its index serves the order and the cursor); the
    // paid value and the rails are read for those rows only.
    let sql = format!(
        "SELECT i.id, i.created_at, i.order_id, i.currency, i.amount_minor::text AS amount_minor, i.status, \
                coalesce((SELECT sum(p.value_minor) FROM payments p WHERE p.invoice_id = i.id AND p.status = 'confirmed' AND p.applied_to = 'invoice'), 0)::text AS paid_minor, \
                (SELECT string_agg(DISTINCT p.chain, ' ') FROM payments p WHERE p.invoice_id = i.id) AS rails \
           FROM (SELECT * FROM invoices \
                  WHERE merchant_id = $1 \
                    AND ($2::text IS NULL OR status = $2) \
                    AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM payments p WHERE p.invoice_id = invoices.id AND p.chain = $3)) \
                    AND ($4::timestamptz IS NULL OR created_at >= $4) \
                    AND ($5::timestamptz IS NULL OR created_at < $5) \
                    AND ($6::text IS NULL OR order_id = $6) \
                    AND {} ORDER BY {} LIMIT $8) i \
          ORDER BY i.created_at DESC, i.id DESC",
        page.condition(ORDER, "SELECT created_at, id FROM invoices WHERE id = $7 AND merchant_id = $1"),
        page.order_by(ORDER),
    );
    let none = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let rows: Vec<InvoiceRow> = sqlx::query_as(&sql)
        .bind(merchant)
        .bind(none(&filters.status))
        .bind(none(&filters.rail))
        .bind(from)
        .bind(to)
        .bind(none(&filters.order_id))
        .bind(none(&filters.after))
        .bind(page.fetch())
        .fetch_all(&state.read_pool)
        .await?;
    let (rows, has_more) = page.finish(rows);

    let mut table = Table::new("invoices", "Invoices", &["Created", "Invoice", "Order", "Amount", "Paid", "Status", "Rails"])
        .empty("No invoice matches these filters.");
    for row in &rows {
        let rails = row.rails.as_deref().unwrap_or("").split(' ').filter(|r| !r.is_empty()).map(show::rail).collect::<Vec<_>>().join(", ");
        table.push(vec![
            Cell::time(row.created_at),
            Cell::link(format!("/console/invoices/{}", row.id), row.id.clone()),
            Cell::text(row.order_id.clone().unwrap_or_default()),
            Cell::number(show::fiat(&row.currency, &row.amount_minor)),
            Cell::number(show::fiat(&row.currency, &row.paid_minor)),
            Cell::text(row.status.clone()),
            Cell::text(rails),
        ]);
    }
    let filtered = filter_query(&filters);
    if has_more {
        table.more = rows.last().map(|last| with_param(&filtered, "after", &last.id));
    }
    // This page's own address (its cursor too), for its CSV link.
    let here = if filters.after.is_empty() { filtered } else { with_param(&filtered, "after", &filters.after) };
    // The rails this daemon takes: its configured chains, and cards when Stripe is configured.
    let mut rails: Vec<String> = state.catalog.all().iter().map(|a| a.chain().to_string()).collect();
    rails.sort_unstable();
    rails.dedup();
    if state.card.is_some() {
        rails.push(payrail_core::payment::plan::CARD_RAIL.to_owned());
    }
    let form = html! {
        form.filters.panel method="get" action="/console/invoices" {
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES { option value=(s) selected[filters.status == s] { (s) } }
                }
            }
            label { "Rail"
                select name="rail" {
                    option value="" { "any" }
                    @for chain in &rails { option value=(chain) selected[&filters.rail == chain] { (show::rail(chain)) } }
                }
            }
            label { "Created from" input type="date" name="from" value=(filters.from); }
            label { "to" input type="date" name="to" value=(filters.to); }
            label { "Order id" input type="text" name="order_id" value=(filters.order_id); }
            button type="submit" { "Filter" }
            a href="/console/invoices" { "Clear" }
        }
    };
    let csv = CsvQuery { csv: filters.csv.clone() };
    View::new("Invoices", vec![Section::Markup(form), Section::Table(table)]).at(here).respond(&viewer, &csv)
}

/// The list's path with its filters (not its page or download).
fn filter_query(f: &InvoiceFilters) -> String {
    let mut out = "/console/invoices".to_owned();
    for (name, value) in [("status", &f.status), ("rail", &f.rail), ("from", &f.from), ("to", &f.to), ("order_id", &f.order_id)] {
        if !value.is_empty() {
            out = with_param(&out, name, value);
        }
    }
    out
}

/// `GET /console/invoices/{id}`: the invoice, its payments and confirmations, the ledger entries
/// its payments made, and its webhook events with their deliveries (each can be sent again).
pub async fn invoice(State(state): State<AppState>, viewer: Viewer, Path(id): Path<String>, Query(query): Query<CsvQuery>) -> Result<Response> {
    let merchant = viewer.merchant()?;
    if !is_id(&id, "inv") {
        return Err(ConsoleError::NotFound("invoice"));
    }
    let now = state.clock.now();
    let view = match invoice::load_current_view(&state.pool, Some(merchant), &id, now).await {
        Ok((view, _)) => view,
        Err(invoice::InvoiceError::NotFound { .. }) => return Err(ConsoleError::NotFound("invoice")),
        Err(error) => return Err(payrail_api::ApiError::from(error).into()),
    };
    let mut figures = vec![
        ("Status".to_owned(), view.status.as_str().to_owned()),
        ("Amount".to_owned(), format!("{} {}", view.amount, view.currency)),
        ("Paid".to_owned(), format!("{} {}", view.amount_paid, view.currency)),
        ("Remaining".to_owned(), format!("{} {}", view.amount_remaining, view.currency)),
        ("Created".to_owned(), crate::page::short_time(view.created_at)),
        ("Expires".to_owned(), crate::page::short_time(view.expires_at)),
    ];
    if let Some(order) = &view.order_id {
        figures.insert(1, ("Order".to_owned(), order.clone()));
    }
    let mut payments = Table::new(
        "payments",
        "Payments",
        &["Seen", "Rail", "Amount", "Value", "Confirmations", "Status", "Counts toward", "Transaction"],
    )
    .empty("No payment has been seen for this invoice.");
    for p in &view.payments {
        let mark = match p.status.as_str() {
            "orphaned" | "reversed" => Some("bad"),
            _ if p.applied_to == "unapplied" => Some("warn"),
            _ => None,
        };
        payments.push_marked(
            vec![
                Cell::time(p.seen_at),
                Cell::text(show::rail(&p.chain)),
                Cell::number(show::amount(&state, &p.asset, &p.amount_minor)),
                Cell::number(show::fiat(&view.currency, &p.value_minor)),
                Cell::number(format!("{} / {}", p.confirmations, p.confirmations_required)),
                Cell::text(p.status.clone()),
                Cell::text(match (&p.applied_to[..], &p.unapplied_reason) {
                    ("unapplied", Some(reason)) => format!("unapplied: {reason}"),
                    (applied, _) => applied.to_owned(),
                }),
                Cell::text(p.tx_ref.clone()),
            ],
            mark,
        );
    }
    let entries: Vec<PostingRow> = sqlx::query_as(
        "WITH mine AS (SELECT ledger_entry_id AS id FROM payments WHERE invoice_id = $1 AND merchant_id = $2 AND ledger_entry_id IS NOT NULL), \
              related AS (SELECT id FROM mine UNION SELECT e.id FROM journal_entries e JOIN mine ON e.reverses_entry_id = mine.id) \
         SELECT e.id, e.created_at, e.kind, a.code AS account, p.asset, p.amount::text AS amount \
           FROM related r JOIN journal_entries e ON e.id = r.id JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id \
          ORDER BY e.id, p.id",
    )
    .bind(&id)
    .bind(merchant)
    .fetch_all(&state.pool)
    .await?;
    let mut ledger = Table::new("ledger", "Ledger entries", &["Entry", "Booked", "Kind", "Account", "Debit", "Credit"])
        .empty("No ledger entry yet: a payment is booked once it counts.");
    for p in entries {
        let (debit, credit) = match p.amount.strip_prefix('-') {
            Some(magnitude) => (String::new(), show::amount(&state, &p.asset, magnitude)),
            None => (show::amount(&state, &p.asset, &p.amount), String::new()),
        };
        ledger.push(vec![Cell::number(p.id.to_string()), Cell::time(p.created_at), Cell::text(p.kind), Cell::text(p.account), Cell::number(debit), Cell::number(credit)]);
    }
    let events: Vec<EventRow> = sqlx::query_as(
        "SELECT o.event_id, o.event_type, o.created_at, \
                count(d.id) FILTER (WHERE d.status = 'delivered') AS delivered, \
                count(d.id) FILTER (WHERE d.status = 'pending') AS pending, \
                count(d.id) FILTER (WHERE d.status IN ('failed', 'abandoned')) AS failed, \
                (SELECT d2.last_status_code FROM webhook_deliveries d2 WHERE d2.outbox_id = o.id AND d2.last_attempt_at IS NOT NULL \
                  ORDER BY d2.last_attempt_at DESC LIMIT 1) AS last_status_code \
           FROM outbox o LEFT JOIN webhook_deliveries d ON d.outbox_id = o.id \
          WHERE o.merchant_id = $2 AND o.object_id = $1 \
          GROUP BY o.id ORDER BY o.id",
    )
    .bind(&id)
    .bind(merchant)
    .fetch_all(&state.pool)
    .await?;
    let mut deliveries = Table::new("events", "Webhook events", &["Event", "Type", "Created", "Delivered", "Pending", "Failed", "Last HTTP status", ""])
        .empty("No event about this invoice yet.");
    for e in events {
        deliveries.push_marked(
            vec![
                Cell::text(e.event_id.clone()),
                Cell::text(e.event_type),
                Cell::time(e.created_at),
                Cell::number(e.delivered.to_string()),
                Cell::number(e.pending.to_string()),
                Cell::number(e.failed.to_string()),
                Cell::number(e.last_status_code.map(|c| c.to_string()).unwrap_or_default()),
                Cell::action(format!("/console/events/{}/replay?back=/console/invoices/{id}", e.event_id), "Send again"),
            ],
            (e.failed > 0).then_some("bad"),
        );
    }
    let sections = vec![Section::Figures(figures), Section::Table(payments), Section::Table(ledger), Section::Table(deliveries)];
    View::new(format!("Invoice {id}"), sections).at(format!("/console/invoices/{id}")).respond(&viewer, &query)
}

#[derive(Debug, serde::Deserialize)]
pub struct Back {
    back: Option<String>,
}

/// `POST /console/events/{id}/replay`: queues the event again to every endpoint that takes it
/// (as `POST /v1/events/{id}/replay` does), then goes back to the page the button was on.
pub async fn replay(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(back): Query<Back>,
    Form(form): Form<CsrfForm>,
) -> Result<Response> {
    let merchant = viewer.merchant()?;
    viewer.may_submit(&form.csrf)?;
    if !is_id(&id, "evt") {
        return Err(ConsoleError::NotFound("event"));
    }
    let queued = webhook::replay(&state.pool, merchant, &id, state.clock.now()).await.map_err(payrail_api::ApiError::from)?;
    tracing::info!(target: "console", event = %id, deliveries = queued.len(), "webhook event replayed from the console");
    let back = back
        .back
        .filter(|b| b.starts_with("/console/") && !b.contains("//") && !b.contains('\\') && !b.chars().any(char::is_control))
        .unwrap_or_else(|| "/console/webhooks".to_owned());
    Ok(Redirect::to(&back).into_response())
}

/// `GET /console/balances`: per asset, who holds the money and whose it is.
pub async fn balances(State(state): State<AppState>, viewer: Viewer, Query(query): Query<CsvQuery>) -> Result<Response> {
    let merchant = viewer.merchant()?;
    let balances = payrail_api::balances::load(&state, merchant).await?;
    let mut table = Table::new("balances", "Balances by asset and custody", &["Asset", "Custody", "Available", "Unapplied", "Owed to creators", "Held by you", "Owed by you"])
        .empty("No money has moved yet.");
    for h in &balances.holdings {
        let a = |minor: &str| Cell::number(show::amount(&state, &h.asset, minor));
        let custody = serde_plain(&h.custody);
        table.push(vec![
            Cell::text(show::asset(&state, &h.asset)),
            Cell::text(custody),
            a(&h.available_minor),
            a(&h.unapplied_minor),
            a(&h.owed_to_creators_minor),
            a(&h.held_by_you_minor),
            a(&h.owed_by_you_minor),
        ]);
    }
    let note = html! {
        p.panel { "Platform custody: payrail holds the money and a settlement pays it out. Your custody: your own wallet received it (Bitcoin to your descriptor). Processor: Stripe holds it and pays your bank." }
    };
    View::new("Balances", vec![Section::Table(table), Section::Markup(note)]).at("/console/balances").respond(&viewer, &query)
}

/// A unit enum's serde name (`platform`).
fn serde_plain<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// `GET /console/money_out`: settlements to the merchant's wallets and refunds to payers.
pub async fn money_out(State(state): State<AppState>, viewer: Viewer, Query(query): Query<CsvQuery>) -> Result<Response> {
    let merchant = viewer.merchant()?;
    let page = Page::first(LIST_ROWS);
    let (settlements, _) = payrail_payouts::settlement::settlements(&state.pool, merchant, &page).await.map_err(payrail_api::ApiError::from)?;
    let mut table = Table::new("settlements", "Settlements", &["Created", "Settlement", "Rail", "Amount", "Status", "Transaction", "Block"])
        .empty("No settlement yet.");
    for s in &settlements {
        table.push_marked(
            vec![
                Cell::time(s.created_at),
                Cell::text(s.id.clone()),
                Cell::text(show::rail(&s.chain)),
                Cell::number(show::amount(&state, &s.asset, &s.total_minor)),
                Cell::text(s.status.clone()),
                Cell::text(s.tx_hash.clone().unwrap_or_default()),
                Cell::number(s.block_number.map(|b| b.to_string()).unwrap_or_default()),
            ],
            (s.status == "failed").then_some("bad"),
        );
    }
    let (refunds, _) = refund::list(&state.pool, merchant, None, &page).await.map_err(payrail_api::ApiError::from)?;
    let mut refund_table = Table::new("refunds", "Refunds", &["Created", "Refund", "Invoice", "Method", "Value", "Amount", "Status", "Transaction"])
        .empty("No refund yet.");
    for r in &refunds {
        refund_table.push(vec![
            Cell::time(r.created_at),
            Cell::text(r.id.clone()),
            Cell::link(format!("/console/invoices/{}", r.invoice_id), r.invoice_id.clone()),
            Cell::text(r.method),
            Cell::number(show::fiat(&r.currency, &r.value_minor)),
            Cell::number(r.amount_minor.as_deref().map(|m| show::amount(&state, &r.asset, m)).unwrap_or_default()),
            Cell::text(r.status.clone()),
            Cell::text(r.tx_hash.clone().unwrap_or_default()),
        ]);
    }
    View::new("Settlements & refunds", vec![Section::Table(table), Section::Table(refund_table)]).at("/console/money_out").respond(&viewer, &query)
}

/// `GET /console/webhooks`: the endpoints, and the deliveries that failed lately.
pub async fn webhooks(State(state): State<AppState>, viewer: Viewer, Query(query): Query<CsvQuery>) -> Result<Response> {
    let merchant = viewer.merchant()?;
    let (endpoints, _) = webhook::list_endpoints(&state.pool, merchant, &Page::first(LIST_ROWS)).await.map_err(payrail_api::ApiError::from)?;
    let mut table = Table::new("endpoints", "Webhook endpoints", &["Endpoint", "URL", "Events", "State", "Failing since", "Created"])
        .empty("No webhook endpoint: add one with POST /v1/webhook_endpoints.");
    for e in &endpoints {
        let state_text = match (&e.disabled, &e.disabled_reason) {
            (true, Some(reason)) => format!("disabled: {reason}"),
            (true, None) => "disabled".to_owned(),
            (false, _) => "enabled".to_owned(),
        };
        table.push_marked(
            vec![
                Cell::text(e.id.clone()),
                Cell::text(e.url.clone()),
                Cell::text(e.events.join(", ")),
                Cell::text(state_text),
                Cell::time_opt(e.failing_since),
                Cell::time(e.created_at),
            ],
            (e.disabled || e.failing_since.is_some()).then_some("bad"),
        );
    }
    let failures: Vec<FailureRow> = sqlx::query_as(
        "SELECT o.event_id, o.event_type, o.object_id, d.status, d.attempts, d.last_status_code, d.last_attempt_at \
           FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id JOIN outbox o ON o.id = d.outbox_id \
          WHERE e.merchant_id = $1 AND (d.status IN ('failed', 'abandoned') OR (d.status = 'pending' AND d.attempts > 0)) \
          ORDER BY d.id DESC LIMIT $2",
    )
    .bind(merchant)
    .bind(LIST_ROWS)
    .fetch_all(&state.pool)
    .await?;
    let mut failed = Table::new("failures", "Recent failed deliveries", &["Event", "Type", "Object", "Status", "Attempts", "Last HTTP status", "Last attempt", ""])
        .empty("No failed delivery.");
    for f in failures {
        let object = if is_id(&f.object_id, "inv") { Cell::link(format!("/console/invoices/{}", f.object_id), f.object_id.clone()) } else { Cell::text(f.object_id) };
        failed.push_marked(
            vec![
                Cell::text(f.event_id.clone()),
                Cell::text(f.event_type),
                object,
                Cell::text(f.status.clone()),
                Cell::number(f.attempts.to_string()),
                Cell::number(f.last_status_code.map(|c| c.to_string()).unwrap_or_default()),
                Cell::time_opt(f.last_attempt_at),
                Cell::action(format!("/console/events/{}/replay?back=/console/webhooks", f.event_id), "Send again"),
            ],
            (f.status != "pending").then_some("bad"),
        );
    }
    View::new("Webhooks", vec![Section::Table(table), Section::Table(failed)]).at("/console/webhooks").respond(&viewer, &query)
}

/// `GET /console/keys`: the merchant's API keys (creating, rotating and revoking stay in the API,
/// where the new secret is shown once).
pub async fn keys(State(state): State<AppState>, viewer: Viewer, Query(query): Query<CsvQuery>) -> Result<Response> {
    let merchant = viewer.merchant()?;
    let (keys, _) = payrail_payments::merchant::keys::list(&state.pool, merchant, &Page::first(LIST_ROWS)).await.map_err(payrail_api::ApiError::from)?;
    let now = state.clock.now();
    let mut table = Table::new("keys", "API keys", &["Key", "Name", "Role", "Scope", "Created", "Last used", "Expires", "Revoked"]);
    for k in &keys {
        let ended = k.revoked_at.is_some() || k.expires_at.is_some_and(|at| at <= now);
        table.push_marked(
            vec![
                Cell::text(k.id.clone()),
                Cell::text(k.name.clone().unwrap_or_default()),
                Cell::text(k.creator_id.as_ref().map_or(k.role.clone(), |c| format!("{} ({c})", k.role))),
                Cell::text(if k.read_only { "read-only" } else { "read and write" }),
                Cell::time(k.created_at),
                Cell::time_opt(k.last_used_at),
                Cell::time_opt(k.expires_at),
                Cell::time_opt(k.revoked_at),
            ],
            ended.then_some("warn"),
        );
    }
    let note = html! { p.panel { "Revoking a key ends every console session opened with it." } };
    View::new("API keys", vec![Section::Table(table), Section::Markup(note)]).at("/console/keys").respond(&viewer, &query)
}

/// One posting of an entry an invoice's payments made.
#[derive(sqlx::FromRow)]
struct PostingRow {
    id: i64,
    created_at: DateTime<Utc>,
    kind: String,
    account: String,
    asset: String,
    amount: String,
}

/// An event about an invoice and how its deliveries went.
#[derive(sqlx::FromRow)]
struct EventRow {
    event_id: String,
    event_type: String,
    created_at: DateTime<Utc>,
    delivered: i64,
    pending: i64,
    failed: i64,
    last_status_code: Option<i32>,
}

/// A delivery that failed, or is retrying after failing.
#[derive(sqlx::FromRow)]
struct FailureRow {
    event_id: String,
    event_type: String,
    object_id: String,
    status: String,
    attempts: i32,
    last_status_code: Option<i32>,
    last_attempt_at: Option<DateTime<Utc>>,
}
