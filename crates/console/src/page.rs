//! How every console page is put together: a [`View`] is a title and sections (tables, charts,
//! forms, notes), rendered into the one layout with the viewer's navigation. Tables are data, not
//! markup, so each one is also a CSV download (`?csv=<table>`) of exactly what the page shows.
//! Every value reaches the HTML through maud, which escapes it.

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use payrail_payments::merchant::Role;

use crate::chart::Chart;
use crate::error::{ConsoleError, Result};
use crate::session::Viewer;

pub const STYLE_PATH: &str = "/console/style.css";
const STYLE: &str = include_str!("console.css");

/// The query every page takes: `csv` names one of its tables to download instead of the page.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CsvQuery {
    pub csv: Option<String>,
}

/// One cell of a table.
#[derive(Debug, Clone)]
pub enum Cell {
    Text(String),
    /// Right-aligned: amounts and counts.
    Number(String),
    Link { href: String, text: String },
    Time(DateTime<Utc>),
    /// A button that POSTs to `url` with the session's CSRF token; not part of the CSV.
    Action { url: String, label: &'static str },
    Empty,
}

impl Cell {
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }
    pub fn number(text: impl Into<String>) -> Self {
        Self::Number(text.into())
    }
    pub fn link(href: impl Into<String>, text: impl Into<String>) -> Self {
        Self::Link { href: href.into(), text: text.into() }
    }
    pub fn time(at: DateTime<Utc>) -> Self {
        Self::Time(at)
    }
    pub fn time_opt(at: Option<DateTime<Utc>>) -> Self {
        at.map_or(Self::Empty, Self::Time)
    }
    pub fn action(url: impl Into<String>, label: &'static str) -> Self {
        Self::Action { url: url.into(), label }
    }

    /// The cell as the CSV holds it: times in RFC 3339, links as their text.
    fn csv(&self) -> String {
        match self {
            Self::Text(t) | Self::Number(t) | Self::Link { text: t, .. } => t.clone(),
            Self::Time(at) => at.to_rfc3339_opts(SecondsFormat::Secs, true),
            Self::Action { .. } | Self::Empty => String::new(),
        }
    }

    fn render(&self, csrf: &str) -> Markup {
        match self {
            Self::Text(t) => html! { td { (t) } },
            Self::Number(t) => html! { td.num { (t) } },
            Self::Link { href, text } => html! { td { a href=(href) { (text) } } },
            Self::Time(at) => html! { td { time datetime=(at.to_rfc3339_opts(SecondsFormat::Secs, true)) { (short_time(*at)) } } },
            Self::Action { url, label } => html! {
                td { form.inline method="post" action=(url) { input type="hidden" name="csrf" value=(csrf); button type="submit" { (label) } } }
            },
            Self::Empty => html! { td {} },
        }
    }
}

/// A time as a table shows it: to the second, in UTC.
pub fn short_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A table of a page; `name` is its CSV download's name.
#[derive(Debug, Clone)]
pub struct Table {
    /// Its id on the page and its CSV download's name (letters, digits and `-`).
    pub name: String,
    pub caption: String,
    /// Column headings; an empty one marks an action column (left out of the CSV).
    pub head: Vec<String>,
    pub rows: Vec<(Vec<Cell>, Option<&'static str>)>,
    /// Shown instead of an empty table.
    pub empty: &'static str,
    /// The link to the next page, when the table is one page of more.
    pub more: Option<String>,
}

impl Table {
    pub fn new(name: impl Into<String>, caption: impl Into<String>, head: &[&'static str]) -> Self {
        Self { name: name.into(), caption: caption.into(), head: head.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new(), empty: "Nothing here yet.", more: None }
    }

    pub fn push(&mut self, cells: Vec<Cell>) {
        self.rows.push((cells, None));
    }

    /// A row drawn to the eye (`class` in the stylesheet: `bad`, `warn`).
    pub fn push_marked(&mut self, cells: Vec<Cell>, class: Option<&'static str>) {
        self.rows.push((cells, class));
    }

    pub fn empty(mut self, text: &'static str) -> Self {
        self.empty = text;
        self
    }

    /// RFC 4180, the header first; action columns are left out.
    pub fn csv(&self) -> String {
        let keep: Vec<usize> = (0..self.head.len()).filter(|&i| !self.head[i].is_empty()).collect();
        let mut out = String::new();
        payrail_core::csv::push_record(&mut out, keep.iter().map(|&i| self.head[i].as_str()));
        for (cells, _) in &self.rows {
            let fields: Vec<String> = keep.iter().map(|&i| cells.get(i).map(Cell::csv).unwrap_or_default()).collect();
            payrail_core::csv::push_record(&mut out, fields.iter().map(String::as_str));
        }
        out
    }

    fn render(&self, csrf: &str, path_query: &str) -> Markup {
        html! {
            section.table id=(self.name) {
                div.table-head {
                    h2 { (self.caption) }
                    a.csv href=(with_param(path_query, "csv", &self.name)) download { "Download CSV" }
                }
                @if self.rows.is_empty() {
                    p.empty { (self.empty) }
                } @else {
                    div.scroll {
                        table {
                            thead { tr { @for h in &self.head { th scope="col" { (h) } } } }
                            tbody {
                                @for (cells, class) in &self.rows {
                                    tr class=[class] { @for cell in cells { (cell.render(csrf)) } }
                                }
                            }
                        }
                    }
                }
                @if let Some(more) = &self.more { p.more { a href=(more) { "Older →" } } }
            }
        }
    }
}

/// A part of a page.
#[derive(Debug, Clone)]
pub enum Section {
    Table(Table),
    Chart(Chart),
    /// Labelled figures in a row (balances, chain health at a glance).
    Figures(Vec<(String, String)>),
    /// A form or note written by the page itself (forms take the token from [`csrf_field`]).
    Markup(Markup),
}

/// A console page: its title and sections.
#[derive(Debug, Clone)]
pub struct View {
    pub title: String,
    pub sections: Vec<Section>,
    /// Reload every so many seconds (a reconciliation run in progress).
    pub refresh_s: Option<u32>,
    /// The page's own path and query, for its CSV links.
    pub path_query: String,
}

impl View {
    pub fn new(title: impl Into<String>, sections: Vec<Section>) -> Self {
        Self { title: title.into(), sections, refresh_s: None, path_query: String::new() }
    }

    pub fn at(mut self, path_query: impl Into<String>) -> Self {
        self.path_query = path_query.into();
        self
    }

    /// The page, or the CSV of the table `query.csv` names.
    pub fn respond(self, viewer: &Viewer, query: &CsvQuery) -> Result<Response> {
        if let Some(name) = &query.csv {
            let table = self
                .sections
                .iter()
                .find_map(|s| match s {
                    Section::Table(t) if &t.name == name => Some(t.clone()),
                    Section::Chart(c) if &c.name == name => Some(c.table()),
                    _ => None,
                })
                .ok_or(ConsoleError::NotFound("table"))?;
            let mut response = table.csv().into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
            let disposition = format!("attachment; filename=\"payrail-{}.csv\"", table.name);
            if let Ok(value) = HeaderValue::from_str(&disposition) {
                headers.insert(header::CONTENT_DISPOSITION, value);
            }
            secure_headers(headers);
            return Ok(response);
        }
        let csrf = viewer.csrf.as_str();
        let path_query = if self.path_query.is_empty() { "?".to_owned() } else { self.path_query.clone() };
        let main = html! {
            h1 { (self.title) }
            @for section in &self.sections {
                @match section {
                    Section::Table(t) => (t.render(csrf, &path_query)),
                    Section::Chart(c) => (c.render(&path_query)),
                    Section::Figures(figures) => {
                        dl.figures { @for (label, value) in figures { div { dt { (label) } dd { (value) } } } }
                    }
                    Section::Markup(m) => (m),
                }
            }
        };
        let body = layout(viewer, &self.title, self.refresh_s, main);
        let mut response = axum::response::Html(body.into_string()).into_response();
        secure_headers(response.headers_mut());
        Ok(response)
    }
}

/// The session's CSRF token as a form field.
pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// The pages a role may open, in the navigation's order.
fn navigation(role: Role) -> &'static [(&'static str, &'static str)] {
    match role {
        Role::Merchant => &[
            ("/console", "Overview"),
            ("/console/invoices", "Invoices"),
            ("/console/balances", "Balances"),
            ("/console/money_out", "Settlements & refunds"),
            ("/console/customers", "Customers"),
            ("/console/webhooks", "Webhooks"),
            ("/console/keys", "API keys"),
            ("/console/sessions", "Sessions"),
        ],
        Role::Finance | Role::Admin => &[
            ("/console", "Overview"),
            ("/console/chains", "Chains"),
            ("/console/reconciliation", "Reconciliation"),
            ("/console/trial_balance", "Trial balance"),
            ("/console/payouts", "Payouts"),
            ("/console/unapplied", "Unapplied funds"),
            ("/console/sessions", "Sessions"),
        ],
        Role::Creator => &[("/console", "Overview"), ("/console/sessions", "Sessions")],
    }
}

fn layout(viewer: &Viewer, title: &str, refresh_s: Option<u32>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, refresh_s))
            body {
                header {
                    a.brand href="/console" { "payrail" }
                    nav aria-label="Console" {
                        ul { @for (href, label) in navigation(viewer.role) { li { a href=(href) { (label) } } } }
                    }
                    div.who {
                        span.role { (viewer.role_name()) }
                        @if let Some(m) = &viewer.merchant_id { " " span.merchant { (m) } }
                        @if viewer.read_only { " " span.ro { "read-only" } }
                        form.inline method="post" action="/console/logout" { (csrf_field(viewer)) button type="submit" { "Sign out" } }
                    }
                }
                main { (main) }
            }
        }
    }
}

/// A page outside the session (sign-in).
pub fn bare(title: &str, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, None))
            body { (main) }
        }
    }
}

/// Every page's head: its title, the console's stylesheet, no favicon request.
fn head(title: &str, refresh_s: Option<u32>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            @if let Some(s) = refresh_s { meta http-equiv="refresh" content=(s); }
            title { (title) " — payrail console" }
            link rel="stylesheet" href=(STYLE_PATH);
            link rel="icon" href="data:,";
        }
    }
}

/// Headers on every console answer: no framing, no caching of tenant data, no scripts at all,
/// styles from the console's own sheet only, forms to this origin only.
pub fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// `GET /console/style.css`.
pub async fn style() -> Response {
    let mut response = STYLE.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn query_escape(value: &str) -> String {
    payrail_core::uri::percent_encode(value)
}

/// `path_query` with `name=value` set (replacing an earlier `name`).
pub fn with_param(path_query: &str, name: &str, value: &str) -> String {
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let mut pairs: Vec<String> =
        query.split('&').filter(|p| !p.is_empty() && p.split('=').next() != Some(name)).map(str::to_owned).collect();
    pairs.push(format!("{name}={}", query_escape(value)));
    format!("{path}?{}", pairs.join("&"))
}

/// Whole units of a smallest-unit amount (`"1234500"`, 2 → `"12345.00"`); the amount as it is
/// when the decimals are unknown.
pub fn units(minor: &str, decimals: Option<u8>) -> String {
    let (sign, digits) = minor.strip_prefix('-').map_or(("", minor), |d| ("-", d));
    match (decimals, digits.parse::<payrail_core::money::Amount>()) {
        (Some(d), Ok(amount)) => format!("{sign}{}", amount.to_decimal_string(d)),
        _ => minor.to_owned(),
    }
}

/// Raw HTML the page itself wrote (an SVG chart); never anything from outside.
pub fn trusted(markup: String) -> PreEscaped<String> {
    PreEscaped(markup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_its_csv() {
        let mut table = Table::new("t", "T", &["When", "Amount", "Note", ""]);
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").map(|t| t.with_timezone(&Utc)).expect("time");
        table.push(vec![Cell::time(at), Cell::number("1.50"), Cell::text("a, \"b\""), Cell::action("/x", "Go")]);
        assert_eq!(table.csv(), "When,Amount,Note\r\n2026-01-02T03:04:05Z,1.50,\"a, \"\"b\"\"\"\r\n");
    }

    #[test]
    fn parameters_replace_their_earlier_value() {
        assert_eq!(with_param("/console/invoices?status=paid&csv=x", "csv", "invoices"), "/console/invoices?status=paid&csv=invoices");
        assert_eq!(with_param("/console/invoices", "status", "a b&c"), "/console/invoices?status=a%20b%26c");
    }

    #[test]
    fn amounts_in_whole_units() {
        assert_eq!(units("1234500", Some(2)), "12345.00");
        assert_eq!(units("-5", Some(2)), "-0.05");
        assert_eq!(units("7", None), "7");
    }
}
