//! The hosted checkout page: `GET /pay/{id}` (HTML) and `GET /pay/{id}/status` (JSON).
//!
//! Invariants:
//! - Both routes are public: the invoice id (about 124 random bits) is the capability. Neither shows
//!   anything the merchant keeps private (no merchant id, order id or metadata).
//! - The page works without JavaScript for everything a payer needs to pay: the choice of option
//!   (`?asset=<CAIP-19>`), the deposit address, the exact amount and the QR code. A small inline
//!   script adds copy buttons, the countdown and the live status.
//! - Every value put into the page is HTML-escaped (`page::esc`); the Content-Security-Policy
//!   allows no external resource and only this response's nonce-tagged script and style.
//! - Amounts stay exact. What is still due in an asset comes from the invoice's locked quote,
//!   `ceil(remaining_fiat × option.amount_minor / invoice.amount_minor)`, then rounded up to the
//!   decimals a payer types (as the quote itself was, by at most 0.1 %), so a payer who sends it
//!   is never short.
//! - Every word shown to the payer comes from [`texts`], in one language per response: the page's
//!   `?locale=`, else the invoice's `locale`, else `Accept-Language`, else English (`LangHint`).

pub mod claim;
pub mod live;
mod page;
pub mod texts;

use texts::Texts;

/// `amount` of `option`'s asset as a payer reads and types it.
fn shown(option: &PaymentOptionView, amount: Amount) -> String {
    crate::money::display::display_string(amount, option.decimals, option.display_decimals)
}

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::invoice::{self, InvoiceError, InvoiceStatus, InvoiceView, PaymentOptionView, PaymentStatus, PaymentView};
use crate::lang::Lang;
use crate::money::{mul_div, Amount, Fiat, Rounding};

use super::error::ApiError;
use super::AppState;

/// `?asset=<CAIP-19>`: the payment option to show; `?locale=`: the language. Other parameters
/// (tracking tags) are ignored.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckoutQuery {
    /// The CAIP-19 asset of the payment option to show, e.g. `eip155:1/slip44:60`.
    pub asset: Option<String>,
    /// The language of the page and its messages (`en`, `es`, `fr`, `de`, `pt`, `zh-CN`, `ja`):
    /// the payer's choice, over the invoice's `locale` and the browser's `Accept-Language`.
    pub locale: Option<String>,
}

/// The payer's language wishes, settled against the invoice's own `locale` once it is read: the
/// page's language switch (`?locale=`) first, then the merchant's choice, then the browser's
/// `Accept-Language`, then English.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LangHint {
    asked: Option<Lang>,
    browser: Option<Lang>,
}

impl LangHint {
    fn of(query: Option<&str>, headers: &HeaderMap) -> Self {
        Self {
            asked: query.and_then(Lang::of_tag),
            browser: headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok())
                .and_then(Lang::negotiate),
        }
    }

    fn choose(self, invoice_locale: Option<&str>) -> Lang {
        self.asked.or_else(|| invoice_locale.and_then(Lang::of_tag)).or(self.browser).unwrap_or_default()
    }
}

/// What the query asks for, with the payer's language wishes.
fn asked_of(query: Result<Query<CheckoutQuery>, QueryRejection>, headers: &HeaderMap) -> (Option<String>, LangHint) {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    (query.asset, LangHint::of(query.locale.as_deref(), headers))
}

/// What the payer sees: the invoice's status, with `underpaid` told apart from `open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayerState {
    Open,
    /// A payment was seen and waits for its confirmations.
    Processing,
    Paid,
    Overpaid,
    Expired,
    /// Open, with confirmed value below the amount due.
    Underpaid,
    Void,
    Refunded,
    /// The merchant did not accept what arrived.
    Invalid,
}

impl PayerState {
    fn of(status: InvoiceStatus, paid: Amount) -> Self {
        match status {
            InvoiceStatus::Open if !paid.is_zero() => Self::Underpaid,
            InvoiceStatus::Open => Self::Open,
            InvoiceStatus::Processing => Self::Processing,
            InvoiceStatus::Paid => Self::Paid,
            InvoiceStatus::Overpaid => Self::Overpaid,
            InvoiceStatus::Expired => Self::Expired,
            InvoiceStatus::Void => Self::Void,
            InvoiceStatus::Refunded => Self::Refunded,
            InvoiceStatus::Invalid => Self::Invalid,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Processing => "processing",
            Self::Paid => "paid",
            Self::Overpaid => "overpaid",
            Self::Expired => "expired",
            Self::Underpaid => "underpaid",
            Self::Void => "void",
            Self::Refunded => "refunded",
            Self::Invalid => "invalid",
        }
    }

    /// Whether the payer may still send (the address and QR code are shown).
    fn takes_payment(self) -> bool {
        matches!(self, Self::Open | Self::Underpaid | Self::Processing)
    }
}

/// `GET /pay/{id}/status`: the public face of an invoice, polled by the page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckoutStatus {
    pub id: String,
    pub status: InvoiceStatus,
    /// `status`, with `underpaid` for an open invoice that received part of its amount.
    pub state: PayerState,
    /// The language of `headline`, `message` and each payment's `summary`.
    pub locale: String,
    /// A short title and a sentence for the payer, in the selected option's asset.
    pub headline: String,
    pub message: String,
    pub amount: String,
    pub currency: String,
    pub amount_paid: String,
    pub amount_remaining: String,
    pub expires_at: DateTime<Utc>,
    /// The server's clock, so a countdown does not depend on the payer's.
    pub now: DateTime<Utc>,
    pub payment_options: Vec<OptionDue>,
    pub payments: Vec<PublicPayment>,
}

/// What one payment option asks for, whole and what is left of it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OptionDue {
    pub asset: String,
    pub symbol: String,
    pub amount: String,
    pub amount_minor: String,
    /// `amount_remaining` of the invoice in this asset at the locked quote, rounded up.
    pub amount_remaining: String,
    pub amount_remaining_minor: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PublicPayment {
    pub asset: String,
    /// The asset's symbol when the invoice quoted it.
    pub symbol: Option<String>,
    pub amount: String,
    pub confirmations: u32,
    pub confirmations_required: u32,
    /// `seen` (waiting for confirmations), `confirmed`, `orphaned` or `reversed`.
    pub status: String,
    /// The payment in one line for the payer, e.g. `0.5 ETH: 1/3 confirmations`.
    pub summary: String,
    /// The transaction on the chain's block explorer, where the chain file names one.
    pub explorer_url: Option<String>,
}

#[derive(Debug)]
enum CheckoutError {
    NotFound,
    /// The database cannot be reached right now: 503 with `Retry-After`.
    Unavailable(sqlx::Error),
    Internal(String),
}

impl From<InvoiceError> for CheckoutError {
    fn from(error: InvoiceError) -> Self {
        match error {
            InvoiceError::NotFound { .. } => Self::NotFound,
            InvoiceError::Database(error) => error.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for CheckoutError {
    fn from(error: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&error) {
            Self::Unavailable(error)
        } else {
            Self::Internal(error.to_string())
        }
    }
}

fn corrupt(what: &str, value: &str) -> CheckoutError {
    CheckoutError::Internal(format!("{what} {value:?} cannot be read"))
}

/// An invoice as the checkout shows it, with its amounts parsed.
#[derive(Debug)]
struct Checkout {
    view: InvoiceView,
    merchant_name: String,
    fiat: Fiat,
    /// The invoice amount, in the currency's minor units.
    due: Amount,
    /// Confirmed value received, in the currency's minor units at the locked quote.
    paid: Amount,
    remaining: Amount,
    state: PayerState,
    now: DateTime<Utc>,
    /// What a credit pack purchase buys ("100 + 10 bonus Coins") and its promo discount, if the
    /// invoice is one.
    purchase: Option<(String, Option<String>)>,
    /// The payer's language.
    texts: Texts,
}

impl Checkout {
    /// The invoice as the status shows it; `with_purchase` also reads what a credit pack purchase
    /// buys (only the page shows it: polling skips that query).
    async fn load(state: &AppState, id: &str, with_purchase: bool, hint: LangHint) -> Result<Self, CheckoutError> {
        if !crate::ids::is_id(id, "inv") {
            return Err(CheckoutError::NotFound);
        }
        let now = state.clock.now();
        let (view, merchant_name) = invoice::load_current_view(&state.pool, None, id, now).await?;
        let fiat: Fiat = view.currency.parse().map_err(|_| corrupt("currency", &view.currency))?;
        let due: Amount = view.amount_minor.parse().map_err(|_| corrupt("amount_minor", &view.amount_minor))?;
        let paid = Amount::parse_decimal(&view.amount_paid, fiat.minor_units())
            .map_err(|_| corrupt("amount_paid", &view.amount_paid))?;
        let texts = Texts::new(hint.choose(view.locale.as_deref()));
        let purchase = if with_purchase { purchase_lines(&state.pool, id, fiat, texts).await? } else { None };
        Ok(Self {
            texts,
            purchase,
            state: PayerState::of(view.status, paid),
            remaining: due.saturating_sub(paid),
            view,
            merchant_name,
            fiat,
            due,
            paid,
            now,
        })
    }

    /// What the card panel needs (see `super::stripe::with_card`).
    fn card_offer(&self) -> super::stripe::CardOffer<'_> {
        super::stripe::CardOffer {
            invoice_id: &self.view.id,
            takes_payment: matches!(self.state, PayerState::Open | PayerState::Underpaid),
            remaining_text: self.fiat_text(self.remaining),
            options: &self.view.payment_options,
            texts: self.texts,
        }
    }

    fn fiat_text(&self, amount: Amount) -> String {
        self.texts.money(amount, self.fiat)
    }

    /// The option named by `asked`, else the first one a payer can pay (it has an address), else
    /// the first.
    fn select(&self, asked: Option<&str>) -> Option<&PaymentOptionView> {
        let options = &self.view.payment_options;
        asked
            .and_then(|asset| options.iter().find(|o| o.asset == asset))
            .or_else(|| options.iter().find(|o| o.address.is_some()))
            .or_else(|| options.first())
    }

    /// What is still due in `option`'s asset at the locked quote, rounded up.
    fn remaining_in(&self, option: &PaymentOptionView) -> Result<Amount, CheckoutError> {
        let quoted: Amount = option.amount_minor.parse().map_err(|_| corrupt("amount_minor", &option.amount_minor))?;
        let exact = mul_div(self.remaining, quoted, self.due, Rounding::Up)
            .map_err(|e| CheckoutError::Internal(format!("remaining amount of {}: {e}", option.asset)))?;
        Ok(crate::money::display::round_for_payer(exact, option.decimals, option.display_decimals).0)
    }

    /// What the payer should send in `option` now: the whole quote, or once part of the invoice
    /// is paid, what is left of it.
    fn to_send(&self, option: &PaymentOptionView) -> Result<Amount, CheckoutError> {
        if self.state == PayerState::Underpaid {
            self.remaining_in(option)
        } else {
            option.amount_minor.parse().map_err(|_| corrupt("amount_minor", &option.amount_minor))
        }
    }

    /// The newest payment that counts toward the invoice and waits for confirmations.
    fn newest_pending(&self) -> Option<&PaymentView> {
        self.view.payments.iter().rev().find(|p| p.status == "seen" && p.applied_to == "invoice")
    }

    fn symbol_of(&self, asset: &str) -> Option<&str> {
        self.view.payment_options.iter().find(|o| o.asset == asset).map(|o| o.symbol.as_str())
    }

    /// A title and a sentence that tell the payer where things stand and what to do, in their
    /// language.
    fn describe(&self, option: Option<&PaymentOptionView>) -> Result<(String, String), CheckoutError> {
        let t = self.texts;
        let pay = |key: &str, option: &PaymentOptionView, amount: Amount, extra: &[(&str, &str)]| {
            let amount = shown(option, amount);
            let mut args = vec![("amount", amount.as_str()), ("symbol", option.symbol.as_str()), ("chain", chain_name(&option.chain))];
            args.extend_from_slice(extra);
            t.fill(key, &args)
        };
        let paid = self.fiat_text(self.paid);
        let remaining = self.fiat_text(self.remaining);
        let sums = [("paid", paid.as_str()), ("remaining", remaining.as_str())];
        let (headline, message) = match self.state {
            PayerState::Open => (
                "awaiting_payment",
                match option {
                    Some(o) if o.address.is_some() => pay("send_to_address", o, self.to_send(o)?, &[]),
                    Some(o) => t.fill("option_unavailable", &[("option", &option_label(o, t))]),
                    None => t.get("no_way_to_pay").to_owned(),
                },
            ),
            PayerState::Underpaid => (
                "partly_paid",
                match option {
                    Some(o) if o.address.is_some() => pay("underpaid_send_more", o, self.remaining_in(o)?, &sums),
                    Some(o) => pay("underpaid_in", o, self.remaining_in(o)?, &sums),
                    None => t.fill("underpaid", &sums),
                },
            ),
            PayerState::Processing => (
                "payment_seen",
                match self.newest_pending() {
                    Some(p) => t.fill(
                        "confirmations_progress",
                        &[
                            ("done", &p.confirmations.min(p.confirmations_required).to_string()),
                            ("needed", &p.confirmations_required.to_string()),
                        ],
                    ),
                    None => t.get("waiting_confirmations").to_owned(),
                },
            ),
            PayerState::Paid => ("paid", t.fill("paid_message", &sums)),
            PayerState::Overpaid => (
                "overpaid",
                t.fill(
                    "overpaid_message",
                    &[
                        ("paid", &paid),
                        ("due", &self.fiat_text(self.due)),
                        ("extra", &self.fiat_text(self.paid.saturating_sub(self.due))),
                    ],
                ),
            ),
            PayerState::Expired if self.paid.is_zero() => ("expired", t.get("expired_message").to_owned()),
            PayerState::Expired => ("expired", t.fill("expired_kept", &sums)),
            PayerState::Void => ("cancelled", t.get("cancelled_message").to_owned()),
            PayerState::Refunded => ("refunded", t.get("refunded_message").to_owned()),
            PayerState::Invalid => ("invalid", t.get("invalid_message").to_owned()),
        };
        Ok((t.get(headline).to_owned(), message))
    }

    fn status(&self, asked: Option<&str>, explorers: &Explorers) -> Result<CheckoutStatus, CheckoutError> {
        let (headline, message) = self.describe(self.select(asked))?;
        let mut payment_options = Vec::with_capacity(self.view.payment_options.len());
        for o in &self.view.payment_options {
            let remaining = self.remaining_in(o)?;
            payment_options.push(OptionDue {
                asset: o.asset.clone(),
                symbol: o.symbol.clone(),
                amount: o.amount.clone(),
                amount_minor: o.amount_minor.clone(),
                amount_remaining: shown(o, remaining),
                amount_remaining_minor: remaining.to_string(),
            });
        }
        let view = &self.view;
        Ok(CheckoutStatus {
            id: view.id.clone(),
            status: view.status,
            state: self.state,
            locale: self.texts.lang.tag().to_owned(),
            headline,
            message,
            amount: view.amount.clone(),
            currency: view.currency.clone(),
            amount_paid: view.amount_paid.clone(),
            amount_remaining: view.amount_remaining.clone(),
            expires_at: view.expires_at,
            now: self.now,
            payment_options,
            payments: view
                .payments
                .iter()
                .map(|p| {
                    let symbol = self.symbol_of(&p.asset).map(str::to_owned);
                    PublicPayment {
                        summary: payment_line(p, symbol.as_deref(), self.texts),
                        explorer_url: explorers.tx_url(&p.chain, &p.tx_ref),
                        asset: p.asset.clone(),
                        symbol,
                        amount: p.amount.clone(),
                        confirmations: p.confirmations,
                        confirmations_required: p.confirmations_required,
                        status: p.status.clone(),
                    }
                })
                .collect(),
        })
    }
}

/// A chain's everyday name; the CAIP-2 id for chains without one here.
pub fn chain_name(caip2: &str) -> &str {
    match caip2 {
        "eip155:1" => "Ethereum",
        "eip155:10" => "Optimism",
        "eip155:56" => "BNB Smart Chain",
        "eip155:137" => "Polygon",
        "eip155:42161" => "Arbitrum One",
        "bip122:000000000019d6689c085ae165831e93" => "Bitcoin",
        "bip122:000000000933ea01ad0ee984209779ba" => "Bitcoin testnet",
        "bip122:0f9188f13cb7b2c71f2a335e3a4fc328" => "Bitcoin regtest",
        other => other,
    }
}

/// "USDC on Polygon", in the payer's language.
pub fn option_label(option: &PaymentOptionView, texts: Texts) -> String {
    texts.fill("option_label", &[("symbol", &option.symbol), ("chain", chain_name(&option.chain))])
}

/// A payment as one line: amount, and where it stands.
fn payment_line(payment: &PaymentView, symbol: Option<&str>, texts: Texts) -> String {
    let done = payment.confirmations.min(payment.confirmations_required).to_string();
    let needed = payment.confirmations_required.to_string();
    let key = match payment.status.parse() {
        Ok(PaymentStatus::Seen) => "payment_confirming",
        Ok(PaymentStatus::Orphaned) => "payment_orphaned",
        Ok(PaymentStatus::Confirmed) => "payment_confirmed",
        Ok(PaymentStatus::Reversed) => "payment_reversed",
        Err(_) => return format!("{} {}: {}", payment.amount, symbol.unwrap_or(&payment.asset), payment.status),
    };
    texts.fill(
        key,
        &[("amount", &payment.amount), ("symbol", symbol.unwrap_or(&payment.asset)), ("done", &done), ("needed", &needed)],
    )
}

/// Each chain's block explorer link for a transaction (`explorer_tx_url` in the chain file, with
/// `{tx}` where the transaction id goes), by CAIP-2 id.
#[derive(Debug, Clone, Default)]
pub struct Explorers {
    templates: std::collections::HashMap<String, String>,
}

impl Explorers {
    pub fn new(templates: impl IntoIterator<Item = (String, String)>) -> Self {
        Self { templates: templates.into_iter().collect() }
    }

    /// The explorer's page for the transaction of payment `tx_ref` (`{caip2}:{tx}:{index}`) on
    /// `chain`; `None` without a template, or for a card payment.
    pub fn tx_url(&self, chain: &str, tx_ref: &str) -> Option<String> {
        let template = self.templates.get(chain)?;
        let rest = tx_ref.strip_prefix(chain)?.strip_prefix(':')?;
        let tx = rest.split(':').next().filter(|tx| !tx.is_empty() && tx.bytes().all(|b| b.is_ascii_alphanumeric()))?;
        Some(template.replace("{tx}", tx))
    }
}

/// The headers every checkout response carries; `csp` is the Content-Security-Policy.
fn harden(mut response: Response, csp: &str) -> Response {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Nothing but this response's own script and style, and requests back to this origin.
fn page_csp(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src data:; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
}

const JSON_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

fn html(status: StatusCode, nonce: &str, body: String) -> Response {
    harden((status, Html(body)).into_response(), &page_csp(nonce))
}

fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// `GET /pay/{id}`: the checkout page. Unknown and ill-formed ids get a 404 page.
#[utoipa::path(get, path = "/pay/{id}", tag = "checkout",
    params(("id" = String, Path, description = "the invoice id, inv_…"), CheckoutQuery),
    responses(
        (status = 200, description = "the checkout page", content_type = "text/html", body = String),
        (status = 404, description = "no such invoice", content_type = "text/html", body = String)))]
pub async fn page(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<CheckoutQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let nonce = new_nonce();
    let (asked, hint) = asked_of(query, &headers);
    // Pages without an invoice speak the payer's language.
    let fallback = Texts::new(hint.choose(None));
    let Ok(Path(id)) = id else {
        return html(StatusCode::NOT_FOUND, &nonce, page::not_found(&nonce, fallback));
    };
    let rendered = match Checkout::load(&state, &id, true, hint).await {
        Ok(checkout) => match render(&checkout, asked.as_deref(), &nonce, &state.explorers) {
            Ok(body) => Ok(super::stripe::with_card(&state, &checkout.card_offer(), body).await),
            Err(error) => Err(error),
        },
        Err(error) => Err(error),
    };
    match rendered {
        Ok(body) => html(StatusCode::OK, &nonce, body),
        Err(CheckoutError::NotFound) => html(StatusCode::NOT_FOUND, &nonce, page::not_found(&nonce, fallback)),
        Err(CheckoutError::Unavailable(error)) => {
            tracing::warn!(target: "api", invoice = %id, %error, "checkout page: database unavailable");
            let mut response = html(StatusCode::SERVICE_UNAVAILABLE, &nonce, page::failed(&nonce, fallback));
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(super::error::DATABASE_RETRY_AFTER_S),
            );
            response
        }
        Err(CheckoutError::Internal(error)) => {
            tracing::error!(target: "api", invoice = %id, %error, "checkout page failed");
            html(StatusCode::INTERNAL_SERVER_ERROR, &nonce, page::failed(&nonce, fallback))
        }
    }
}

/// `GET /pay/{id}/status`: see [`CheckoutStatus`]. `?asset=` words the message for that option,
/// in the language `?locale=`, the invoice's `locale` or `Accept-Language` chooses.
#[utoipa::path(get, path = "/pay/{id}/status", tag = "checkout",
    params(("id" = String, Path, description = "the invoice id, inv_…"), CheckoutQuery),
    responses((status = 200, body = CheckoutStatus), (status = 404, body = super::openapi::ErrorBody),
        (status = 503, description = "the database is unavailable (`database_unavailable`, with `Retry-After`)", body = super::openapi::ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<CheckoutQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Path(id)) = id else {
        return harden(ApiError::not_found("invoice").into_response(), JSON_CSP);
    };
    let (asked, hint) = asked_of(query, &headers);
    let result = public_status(&state, &id, asked.as_deref(), hint).await;
    let response = match result {
        Ok(status) => Json(status).into_response(),
        Err(error) => status_error(error, &id),
    };
    harden(response, JSON_CSP)
}

/// The invoice's public status, worded for the option `asked` (what `/status` and the event
/// stream answer).
async fn public_status(state: &AppState, id: &str, asked: Option<&str>, hint: LangHint) -> Result<CheckoutStatus, CheckoutError> {
    Checkout::load(state, id, false, hint).await?.status(asked, &state.explorers)
}

/// A public status that could not be read, as the JSON error the API answers.
fn status_error(error: CheckoutError, id: &str) -> Response {
    match error {
        CheckoutError::NotFound => ApiError::not_found("invoice").into_response(),
        CheckoutError::Unavailable(error) => ApiError::database(error).into_response(),
        CheckoutError::Internal(error) => ApiError::internal(format!("checkout status of {id}: {error}")).into_response(),
    }
}

/// The page for `checkout` with the option `asked` for selected.
/// The lines naming what a credit pack purchase buys, read from the purchase itself (not from the
/// invoice's metadata, which the merchant writes).
async fn purchase_lines(pool: &sqlx::PgPool, invoice_id: &str, fiat: Fiat, texts: Texts) -> Result<Option<(String, Option<String>)>, CheckoutError> {
    let row: Option<(String, String, String, i16, String, Option<String>)> = sqlx::query_as(
        "SELECT p.credits::text, p.bonus_credits::text, c.name, c.decimals, p.discount_minor::text, pc.code \
         FROM credit_purchases p JOIN credit_currencies c ON c.merchant_id = p.merchant_id AND c.code = p.currency \
         LEFT JOIN promo_codes pc ON pc.id = p.promo_id WHERE p.invoice_id = $1",
    )
    .bind(invoice_id)
    .fetch_optional(pool)
    .await?;
    let Some((credits, bonus, name, decimals, discount, code)) = row else { return Ok(None) };
    let decimals = u8::try_from(decimals).unwrap_or(0);
    let shown = |text: &str| Amount::parse_decimal(text, 0).map(|a| a.to_decimal_string(decimals)).unwrap_or_else(|_| text.to_owned());
    let what = if bonus == "0" {
        texts.fill("purchase_credits", &[("credits", &shown(&credits)), ("name", &name)])
    } else {
        texts.fill("purchase_credits_bonus", &[("credits", &shown(&credits)), ("bonus", &shown(&bonus)), ("name", &name)])
    };
    let off = match (code, Amount::parse_decimal(&discount, 0)) {
        (Some(code), Ok(discount)) if !discount.is_zero() => Some(texts.fill(
            "promo_off",
            &[("code", &code.to_ascii_uppercase()), ("amount", &texts.money(discount, fiat))],
        )),
        _ => None,
    };
    Ok(Some((what, off)))
}

fn render(checkout: &Checkout, asked: Option<&str>, nonce: &str, explorers: &Explorers) -> Result<String, CheckoutError> {
    let selected = checkout.select(asked);
    let status = checkout.status(selected.map(|o| o.asset.as_str()), explorers)?;
    let pay = match selected {
        Some(option) => {
            let amount = checkout.to_send(option)?;
            let uri = match (&option.address, option.asset.parse::<crate::money::AssetId>()) {
                (Some(address), Ok(asset)) if amount.to_string() != option.amount_minor => address
                    .parse::<alloy_primitives::Address>()
                    .ok()
                    .and_then(|deposit| crate::chain::evm::payment_uri(&asset, &deposit, amount)),
                _ => option.uri.clone(),
            };
            let rate = checkout.texts.money_text(&option.rate, checkout.fiat.code());
            Some(page::Pay { option, amount, uri, rate })
        }
        None => None,
    };
    let total = checkout.fiat_text(checkout.due);
    Ok(page::checkout(&page::Model {
        nonce,
        texts: checkout.texts,
        id: &checkout.view.id,
        merchant_name: &checkout.merchant_name,
        total: &total,
        currency: checkout.fiat.code(),
        state: checkout.state,
        takes_payment: checkout.state.takes_payment(),
        headline: &status.headline,
        message: &status.message,
        expires_at: checkout.view.expires_at,
        now: checkout.now,
        options: &checkout.view.payment_options,
        pay,
        payments: &status.payments,
        purchase: checkout.purchase.as_ref().map(|(what, off)| (what.as_str(), off.as_deref())),
        redirect_url: checkout.view.redirect_url.as_deref(),
        buyer_email: checkout.view.buyer_email.as_deref(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underpaid_is_open_with_something_confirmed() {
        assert_eq!(PayerState::of(InvoiceStatus::Open, Amount::ZERO), PayerState::Open);
        assert_eq!(PayerState::of(InvoiceStatus::Open, Amount::from_u64(1)), PayerState::Underpaid);
        assert_eq!(PayerState::of(InvoiceStatus::Processing, Amount::from_u64(1)), PayerState::Processing);
        assert_eq!(PayerState::of(InvoiceStatus::Expired, Amount::from_u64(1)), PayerState::Expired);
    }

    #[test]
    fn routes_are_described_for_the_openapi_document() {
        use utoipa::OpenApi;
        #[derive(OpenApi)]
        #[openapi(paths(page, status))]
        struct Doc;
        let doc = serde_json::to_value(Doc::openapi()).expect("serializes");
        assert!(doc["paths"]["/pay/{id}"]["get"].is_object(), "{doc}");
        let ok = &doc["paths"]["/pay/{id}/status"]["get"]["responses"]["200"];
        assert!(ok["content"]["application/json"].is_object(), "{doc}");
        let params = doc["paths"]["/pay/{id}/status"]["get"]["parameters"].to_string();
        assert!(params.contains("\"asset\"") && params.contains("\"id\""), "{params}");
    }

    #[test]
    fn chains_have_names() {
        assert_eq!(chain_name("eip155:137"), "Polygon");
        assert_eq!(chain_name("eip155:999"), "eip155:999");
    }
}
