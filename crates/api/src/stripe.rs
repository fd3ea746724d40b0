//! The card rail's HTTP surface: Stripe's webhook in, a merchant's refunds, and the card choice of
//! the checkout page (`POST /pay/{id}/card` and the panel [`with_card`] adds to the page).
//!
//! Invariants:
//! - `POST /v1/stripe/webhook` answers 400 to anything it does not accept (unsigned, forged, stale,
//!   replayed, not an event), 200 to what it accepted or already had, and 500 only when a retry
//!   may succeed, so Stripe's retries do the right thing. Without a configured rail it is a 404.
//! - `POST /pay/{id}/card` is public like the page: the invoice id is the capability. It only ever
//!   charges what the invoice still owes, in its currency.
//! - Every value put into the panel is HTML-escaped.

use axum::body::Bytes;
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::invoice::{self, PaymentOptionView, CARD_RAIL};
use crate::money::{Amount, Fiat};
use payrail_stripe::webhook::ReceiveError;
use payrail_stripe::{self as stripe, CardAttemptView, Received, Refusal, RefundRequest, RefundsView, StripeError, TEST_CARDS};

use super::auth::MerchantAuth;
use super::checkout::chain_name;
use super::checkout::texts::Texts;
use super::error::ApiError;
use super::AppState;

/// Seconds a client is told to wait while Stripe does not answer. A card attempt asked again is
/// the same request under the same idempotency key: retrying never charges twice.
pub const STRIPE_RETRY_AFTER_S: u64 = 5;

impl From<StripeError> for ApiError {
    fn from(error: StripeError) -> Self {
        use StripeError::*;
        match error {
            Invoice(e) => e.into(),
            NotConfigured => Self::new(StatusCode::CONFLICT, "card_unavailable", "card payments are not configured"),
            CardUnavailable { .. } => Self::new(StatusCode::CONFLICT, "card_unavailable", error.to_string()),
            AttemptInProgress { .. } => Self::new(StatusCode::CONFLICT, "card_in_progress", error.to_string()),
            AttemptsExhausted { .. } => Self::new(StatusCode::CONFLICT, "card_attempts_exhausted", format!(
                "{error}; pay with a chain rail instead"
            )),
            AttemptCooldown { wait_s, .. } => {
                let mut api = Self::new(StatusCode::TOO_MANY_REQUESTS, "card_attempt_cooldown", error.to_string());
                api.retry_after_s = Some(wait_s.max(1));
                api
            }
            NothingToRefund { .. } => Self::new(StatusCode::CONFLICT, "refund_unavailable", format!(
                "{error}: only card payments are refunded through the API"
            )),
            RefundRefused { .. } => Self::new(StatusCode::CONFLICT, "refund_refused", error.to_string()),
            SettlementNotFound { .. } => Self::not_found("card settlement"),
            SettlementInvalid { .. } => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", error.to_string()),
            SettlementFunds { .. } => Self::new(StatusCode::CONFLICT, "insufficient_funds", error.to_string()),
            Api { status, ref message, .. } if (400..500).contains(&status) => {
                tracing::warn!(target: "stripe", %error, "stripe refused a request");
                Self::new(StatusCode::BAD_GATEWAY, "stripe_refused", format!("the card processor refused: {message}"))
            }
            Transport { .. } | Api { .. } => {
                tracing::warn!(target: "stripe", %error, "stripe unavailable");
                let mut api = Self::new(StatusCode::SERVICE_UNAVAILABLE, "stripe_unavailable", "the card processor did not answer; try again");
                api.retry_after_s = Some(STRIPE_RETRY_AFTER_S);
                api
            }
            Database(error) => Self::database(error),
            Ledger(error) => Self::ledger(error),
            Decode { .. } => Self::internal(error),
        }
    }
}

fn refusal_code(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::Unsigned | Refusal::Malformed | Refusal::Forged => "signature_invalid",
        Refusal::Stale { .. } => "signature_stale",
        Refusal::Replayed { .. } => "event_replayed",
        Refusal::NotAnEvent { .. } => "invalid_event",
    }
}

/// `POST /v1/stripe/webhook`: Stripe's events, verified by `Stripe-Signature`.
#[utoipa::path(post, path = "/v1/stripe/webhook", tag = "stripe",
    params(("Stripe-Signature" = String, Header, description = "t=<unix>,v1=<hex hmac-sha256(secret, \"t.body\")>[,v1=…]")),
    request_body(content = Object, description = "a Stripe event, as Stripe sends it"),
    responses(
        (status = 200, description = "accepted, or already received"),
        (status = 400, body = super::openapi::ErrorBody, description = "unsigned, forged, stale, replayed or not an event"),
        (status = 404, body = super::openapi::ErrorBody, description = "card payments are not configured"),
        (status = 500, body = super::openapi::ErrorBody, description = "not processed; Stripe retries")))]
pub async fn webhook(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(rail) = state.card.as_deref() else {
        return ApiError::new(StatusCode::NOT_FOUND, "card_unavailable", "card payments are not configured").into_response();
    };
    let signature = headers.get(stripe::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    match stripe::receive(rail, &state.pool, &state.ledger, signature, &body, state.clock.now()).await {
        Ok(received) => {
            let (status, event) = match &received {
                Received::Processed { event_id, .. } => ("processed", event_id),
                Received::Duplicate { event_id } => ("duplicate", event_id),
                Received::Deferred { event_id } => ("deferred", event_id),
                Received::Review { event_id, .. } => ("review", event_id),
                Received::Ignored { event_id } => ("ignored", event_id),
            };
            Json(json!({ "received": true, "event": event, "status": status })).into_response()
        }
        Err(ReceiveError::Refused(refusal)) => {
            ApiError::new(StatusCode::BAD_REQUEST, refusal_code(&refusal), refusal.to_string()).into_response()
        }
        Err(ReceiveError::Failed(error)) => ApiError::internal(format!("stripe webhook: {error}")).into_response(),
    }
}

/// `POST /v1/invoices/{id}/refunds`. Card (the default): `{"amount":"10.00"?,"reason":"requested_by_customer"?}`.
/// Crypto: `{"method":"crypto","amount":{"kind":…}?,"asset"?,"reason"?,"expires_in_s"?}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// `card` (the default) or `crypto` (a claim link the payer opens).
    pub method: Option<String>,
    /// Card: a decimal string of the invoice's currency, e.g. `"10.00"`; all that is left when
    /// absent. Crypto: `{"kind":"rate_then","amount"?:"10.00"}` (the crypto the payer sent, in
    /// proportion), `{"kind":"current_rate"}` (the value at the rate when claimed), `{"kind":"fiat",
    /// "amount":"10.00"}`, `{"kind":"overpaid"}` or `{"kind":"custom","amount_minor":"…"}`.
    #[schema(value_type = Object)]
    pub amount: Option<serde_json::Value>,
    /// Card: `duplicate`, `fraudulent` or `requested_by_customer`. Crypto: a note, at most 500 characters.
    pub reason: Option<String>,
    /// Crypto: the CAIP-19 asset refunded; needed only when the invoice was paid in several.
    pub asset: Option<String>,
    /// Crypto: how long the claim link is usable, 60 s to 90 days; 30 days when absent.
    pub expires_in_s: Option<i64>,
}

/// What `POST /v1/invoices/{id}/refunds` answers: card refunds, or a crypto refund with its claim URL.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RefundCreated {
    Card(RefundsView),
    Crypto(crate::refund::CryptoRefundView),
}

#[utoipa::path(post, path = "/v1/invoices/{id}/refunds", tag = "invoices", security(("bearer" = [])),
    params(("id" = String, Path, description = "the invoice id, inv_…")),
    request_body = RefundBody,
    responses(
        (status = 201, body = RefundCreated, description = "card: the refunds made; crypto: the refund, `open`, with its one-time `claim_url`"),
        (status = 202, body = RefundCreated, description = "card: Stripe did not answer for some refunds yet; they are `pending` and payrail asks again (same idempotency key) until it does"),
        (status = 401, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 409, body = super::openapi::ErrorBody,
            description = "nothing to refund, more than is left (refund_exceeds), insufficient_funds (with what is available), refund_unavailable"),
        (status = 422, body = super::openapi::ErrorBody),
        (status = 502, body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)))]
pub async fn refund(
    State(state): State<AppState>,
    auth: MerchantAuth,
    Path(id): Path<String>,
    body: Result<Json<RefundBody>, JsonRejection>,
) -> Result<(StatusCode, Json<RefundCreated>), ApiError> {
    let Json(body) = body?;
    if !crate::ids::is_id(&id, "inv") {
        return Err(ApiError::not_found("invoice"));
    }
    let mut conn = state.pool.acquire().await.map_err(ApiError::database)?;
    let view = invoice::load_view(&mut conn, Some(&auth.merchant_id), &id).await?;
    drop(conn);
    let fiat: Fiat = view.currency.parse().map_err(ApiError::internal)?;
    match body.method.as_deref() {
        None | Some("card") => {}
        Some("crypto") => {
            let created = super::refunds::create_crypto(&state, &auth.merchant_id, &id, fiat, &body).await?;
            return Ok((StatusCode::CREATED, Json(RefundCreated::Crypto(created))));
        }
        Some(other) => {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", format!("method: {other:?} is not card or crypto")))
        }
    }
    if body.asset.is_some() || body.expires_in_s.is_some() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", "asset and expires_in_s are for crypto refunds"));
    }
    let rail = state.card.as_deref().ok_or(StripeError::NothingToRefund { invoice_id: id.clone() })?;
    let amount = match &body.amount {
        None => None,
        Some(serde_json::Value::String(text)) => Some(Amount::parse_decimal(text, fiat.minor_units()).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "parameter_invalid",
                format!("amount: {text:?} is not an amount of {} with at most {} decimals", fiat.code(), fiat.minor_units()),
            )
        })?),
        Some(_) => return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", "amount: a decimal string for a card refund")),
    };
    let request = RefundRequest { amount, reason: body.reason };
    let refunds = stripe::refund_invoice(rail, &state.pool, &state.ledger, &auth.merchant_id, &id, &request, state.clock.now()).await?;
    // Stripe did not answer for some of them yet: they are made when it does.
    let status = if refunds.refunds.iter().any(|r| r.status == "pending") { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    Ok((status, Json(RefundCreated::Card(refunds))))
}

/// The card form: a test PaymentMethod in test mode, nothing with Checkout Sessions.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct CardForm {
    pub payment_method: Option<String>,
    /// The page's language, kept when the payer is sent back to it.
    pub locale: Option<String>,
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/json"))
}

/// `POST /pay/{id}/card`: starts a card payment for what the invoice still owes. A browser is sent
/// back to the page (or on to Stripe's page for a Checkout Session); `Accept: application/json`
/// gets the attempt.
#[utoipa::path(post, path = "/pay/{id}/card", tag = "checkout",
    params(("id" = String, Path, description = "the invoice id, inv_…")),
    request_body(content = CardForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 201, body = CardAttemptView, description = "with Accept: application/json"),
        (status = 303, description = "back to the checkout page, or on to Stripe's"),
        (status = 404, body = super::openapi::ErrorBody), (status = 409, body = super::openapi::ErrorBody),
        (status = 503, body = super::openapi::ErrorBody)))]
pub async fn pay_by_card(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Result<Form<CardForm>, FormRejection>,
) -> Response {
    let json = wants_json(&headers);
    let (Some(rail), true) = (state.card.as_deref(), crate::ids::is_id(&id, "inv")) else {
        return ApiError::not_found("invoice").into_response();
    };
    let form = form.map(|Form(f)| f).unwrap_or(CardForm { payment_method: None, locale: None });
    let payment_method = form.payment_method;
    let page = match form.locale.as_deref().and_then(crate::lang::Lang::of_tag) {
        Some(lang) => format!("/pay/{id}?locale={}", lang.tag()),
        None => format!("/pay/{id}"),
    };
    match stripe::start_card_payment(rail, &state.pool, &id, payment_method.as_deref(), state.clock.now()).await {
        Ok(attempt) if json => (StatusCode::CREATED, Json(attempt)).into_response(),
        Ok(attempt) => match attempt.checkout_url.as_deref().filter(|u| u.starts_with("https://") || u.starts_with("http://")) {
            Some(url) => Redirect::to(url).into_response(),
            None => Redirect::to(&page).into_response(),
        },
        Err(StripeError::Invoice(invoice::InvoiceError::NotFound { .. })) => ApiError::not_found("invoice").into_response(),
        Err(error) if json => ApiError::from(error).into_response(),
        // The page shows where the invoice and its last card attempt stand.
        Err(error) => {
            tracing::info!(target: "stripe", invoice = %id, %error, "card payment not started");
            Redirect::to(&page).into_response()
        }
    }
}

/// What the checkout page knows that the card panel needs.
pub(super) struct CardOffer<'a> {
    pub invoice_id: &'a str,
    pub takes_payment: bool,
    /// What is still due, e.g. "$25.00".
    pub remaining_text: String,
    pub options: &'a [PaymentOptionView],
    /// The payer's language.
    pub texts: Texts,
}

/// Why card goes first: every chain option of the invoice is unpayable or its rail unhealthy.
pub(super) fn fallback_reason(state: &AppState, options: &[PaymentOptionView], texts: Texts) -> Option<String> {
    let now = state.clock.now();
    let chains: Vec<&PaymentOptionView> = options.iter().filter(|o| o.chain != CARD_RAIL).collect();
    let payable: Vec<&PaymentOptionView> = chains.iter().copied().filter(|o| o.address.is_some()).collect();
    if payable.is_empty() {
        return Some(texts.get("card_first_no_chain").to_owned());
    }
    let mut problems: Vec<String> = Vec::new();
    for option in &payable {
        let problem = state.rail_health.problem(&option.chain, now)?;
        let line = format!("{}: {problem}", chain_name(&option.chain));
        if !problems.contains(&line) {
            problems.push(line);
        }
    }
    Some(texts.fill("card_first_unreliable", &[("problems", &problems.join("; "))]))
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn attempt_line(attempt: &CardAttemptView, texts: Texts) -> Option<String> {
    Some(match attempt.status.as_str() {
        "succeeded" => texts.get("card_succeeded").to_owned(),
        "processing" | "creating" => texts.get("card_processing").to_owned(),
        "requires_action" => texts.get("card_requires_action").to_owned(),
        "failed" | "requires_payment_method" => match attempt.failure_message.as_deref() {
            // Stripe's own words, in Stripe's language.
            Some(reason) => texts.fill("card_failed_because", &[("reason", reason)]),
            None => texts.get("card_failed").to_owned(),
        },
        "canceled" => texts.get("card_canceled").to_owned(),
        _ => return None,
    })
}

/// Adds the card panel to a rendered checkout page: first, with the reason, when the chain rails
/// cannot be relied on; else after the chain options. The page is returned unchanged when card
/// payments are not configured or the invoice takes no payment.
pub(super) async fn with_card(state: &AppState, offer: &CardOffer<'_>, page: String) -> String {
    let Some(rail) = state.card.as_deref() else { return page };
    if !offer.takes_payment {
        return page;
    }
    let latest = match stripe::attempt::latest(&state.pool, offer.invoice_id).await {
        Ok(latest) => latest,
        Err(error) => {
            tracing::warn!(target: "api", invoice = offer.invoice_id, %error, "card attempt not readable");
            None
        }
    };
    let t = offer.texts;
    let fallback = fallback_reason(state, offer.options, t);
    let mut panel = format!("<section class=\"pay card\" id=\"card\">\n<h2>{}</h2>\n", esc(t.get("pay_by_card")));
    if let Some(reason) = &fallback {
        panel.push_str(&format!("<p class=\"note\" id=\"card-fallback\">{}</p>\n", esc(reason)));
    }
    if let Some(line) = latest.as_ref().and_then(|a| attempt_line(a, t)) {
        let status = latest.as_ref().map(|a| a.status.as_str()).unwrap_or_default();
        panel.push_str(&format!("<p class=\"note\" id=\"card-last\" data-status=\"{}\">{}</p>\n", esc(status), esc(&line)));
    }
    let busy = latest.as_ref().is_some_and(|a| matches!(a.status.as_str(), "succeeded" | "processing" | "creating"));
    if !busy {
        panel.push_str(&format!(
            "<form class=\"card-form\" method=\"post\" action=\"{}/card\" id=\"card-form\">\n",
            esc(offer.invoice_id)
        ));
        if rail.uses_test_cards() {
            panel.push_str(&format!(
                "<label for=\"payment_method\">{}</label>\n<select id=\"payment_method\" name=\"payment_method\">\n",
                esc(t.get("test_card"))
            ));
            for (id, label) in TEST_CARDS {
                panel.push_str(&format!("<option value=\"{}\">{}</option>\n", esc(id), esc(label)));
            }
            panel.push_str("</select>\n");
        }
        panel.push_str(&format!(
            "<input type=\"hidden\" name=\"locale\" value=\"{}\">\n<button type=\"submit\" id=\"card-submit\">{}</button>\n</form>\n",
            t.lang.tag(),
            esc(&t.fill("pay_amount_by_card", &[("amount", &offer.remaining_text)]))
        ));
        let note = if rail.uses_test_cards() { t.get("card_test_mode") } else { t.get("card_secure_page") };
        panel.push_str(&format!("<p class=\"note\">{}</p>\n", esc(note)));
    }
    panel.push_str("</section>\n");
    let anchor = if fallback.is_some() { "<section class=\"pay\" id=\"pay\">" } else { "<section class=\"payments\"" };
    match page.find(anchor) {
        Some(at) => {
            let mut out = String::with_capacity(page.len() + panel.len());
            out.push_str(&page[..at]);
            out.push_str(&panel);
            out.push_str(&page[at..]);
            out
        }
        None => page,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_have_stable_codes() {
        assert_eq!(refusal_code(&Refusal::Forged), "signature_invalid");
        assert_eq!(refusal_code(&Refusal::Stale { timestamp: 1, tolerance_s: 300 }), "signature_stale");
        assert_eq!(refusal_code(&Refusal::Replayed { event_id: "evt_1".to_owned() }), "event_replayed");
    }

    #[test]
    fn panel_text_is_escaped() {
        assert_eq!(esc("<b>\"x\" & 'y'</b>"), "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;");
    }
}
