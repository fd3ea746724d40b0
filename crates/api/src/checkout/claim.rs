//! The payer's side of a crypto refund: `GET /refund/{token}` shows what is owed and asks for an
//! address; `POST /refund/{token}` (a form: `address`) claims it. The token (256 random bits) is
//! the capability; once claimed the same link shows the refund's progress. A payment request a
//! wallet shows as a QR code (`bitcoin:…?amount=`, `ethereum:…`, or an EIP-681 token transfer
//! with `address=`) is accepted in place of a bare address.

use std::fmt::Write;

use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::invoice::InvoiceError;
use crate::money::{Amount, ChainId};
use crate::refund::{self, CryptoRefundView};

use super::page::{esc, head};
use super::{chain_name, harden, html, new_nonce, JSON_CSP};
use crate::error::ApiError;
use crate::AppState;

/// The claim form.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ClaimForm {
    /// The payer's address on the refund's chain, or a payment request (BIP21, EIP-681) naming it.
    pub address: String,
}

/// The address inside `text`: a bare address, `bitcoin:ADDR?…`, `ethereum:ADDR@CHAIN…`, or an
/// EIP-681 token transfer (`ethereum:TOKEN@CHAIN/transfer?address=ADDR&…`).
pub fn address_in(text: &str) -> String {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let rest = if let Some(i) = ["bitcoin:", "ethereum:"].iter().find_map(|s| lower.starts_with(s).then_some(s.len())) { &text[i..] } else { text };
    if let Some((_, query)) = rest.split_once('?') {
        if rest.contains("/transfer") {
            if let Some(to) = query.split('&').find_map(|kv| kv.strip_prefix("address=")) {
                return to.to_owned();
            }
        }
    }
    let end = rest.find(['?', '@', '/']).unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// Checks `text` as an address of `chain`; the form it is paid to.
fn checked_address(chain: &str, text: &str) -> Result<String, String> {
    let address = address_in(text);
    if address.is_empty() || address.len() > 128 || address.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("Enter the address you want the refund sent to.".to_owned());
    }
    let chain_id: ChainId = chain.parse().map_err(|_| "This refund's chain is not known.".to_owned())?;
    if chain.starts_with("bip122:") {
        let network = payrail_core::chain::bitcoin::network_of(&chain_id).ok_or_else(|| "This refund's network is not known.".to_owned())?;
        payrail_core::chain::bitcoin::descriptor::parse_address(&address, network)
            .map(|a| a.to_string())
            .ok_or_else(|| format!("{address} is not a {} address.", chain_name(chain)))
    } else {
        crate::creator::normalize_payout_address(chain, &address).map_err(|e| match e {
            crate::creator::CreatorError::Invalid { reason, .. } => {
                format!("That is not an address on {}: {}", chain_name(chain), reason.split_once(": ").map_or(reason.as_str(), |(_, r)| r))
            }
            other => other.to_string(),
        })
    }
}

/// `GET /refund/{token}`: the claim page.
#[utoipa::path(get, path = "/refund/{token}", tag = "checkout",
    params(("token" = String, Path, description = "the claim token from the refund's claim_url")),
    responses((status = 200, description = "the claim page", content_type = "text/html", body = String),
        (status = 404, description = "no such refund", content_type = "text/html", body = String)))]
pub async fn page(State(state): State<AppState>, token: Result<Path<String>, PathRejection>) -> Response {
    let nonce = new_nonce();
    let Ok(Path(token)) = token else { return html(StatusCode::NOT_FOUND, &nonce, not_found(&nonce)) };
    render(&state, &token, &nonce, None, StatusCode::OK).await
}

/// `POST /refund/{token}`: claims the refund for `address`. A browser is sent back to the page
/// (or gets it with what was wrong); `Accept: application/json` gets the refund.
#[utoipa::path(post, path = "/refund/{token}", tag = "checkout",
    params(("token" = String, Path, description = "the claim token from the refund's claim_url")),
    request_body(content = ClaimForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = CryptoRefundView, description = "claimed (`Accept: application/json`)"),
        (status = 303, description = "claimed: a browser is sent back to the page, which shows the refund's progress"),
        (status = 404, body = super::super::openapi::ErrorBody),
        (status = 409, body = super::super::openapi::ErrorBody, description = "refund_state (claimed, closed or expired), insufficient_funds, batcher_funds_short, refund_unavailable"),
        (status = 422, body = super::super::openapi::ErrorBody, description = "not an address of the refund's chain"),
        (status = 503, body = super::super::openapi::ErrorBody)))]
pub async fn claim(
    State(state): State<AppState>,
    headers: HeaderMap,
    token: Result<Path<String>, PathRejection>,
    form: Result<Form<ClaimForm>, FormRejection>,
) -> Response {
    let nonce = new_nonce();
    let json = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/json"));
    let Ok(Path(token)) = token else { return html(StatusCode::NOT_FOUND, &nonce, not_found(&nonce)) };
    let result = match form {
        Ok(Form(form)) => claim_for(&state, &token, &form.address).await,
        Err(rejection) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", rejection.body_text())),
    };
    match (result, json) {
        (Ok(view), true) => harden(Json(view).into_response(), JSON_CSP),
        (Err(error), true) => harden(error.into_response(), JSON_CSP),
        // Post/Redirect/Get: reloading the page then does not send the claim again.
        (Ok(_), false) => harden(axum::response::Redirect::to(&format!("/refund/{token}")).into_response(), JSON_CSP),
        (Err(error), false) => {
            render(&state, &token, &nonce, Some(error.message), error.status).await
        }
    }
}

async fn claim_for(state: &AppState, token: &str, address: &str) -> Result<CryptoRefundView, ApiError> {
    let now = state.clock.now();
    let (view, _) = refund::by_token(&state.pool, token, now).await?.ok_or_else(|| ApiError::not_found("refund"))?;
    let address = checked_address(&view.chain, address).map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", m))?;
    if view.chain.starts_with("bip122:") {
        return Ok(refund::claim_merchant_paid(&state.pool, &state.ledger, state.rates.as_ref(), token, &address, now).await?);
    }
    let payouts = state.payouts.as_ref().filter(|p| p.pays_refunds_of(&view.chain, &view.asset)).ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "refund_unavailable", "this refund cannot be sent right now; try again later")
    })?;
    let to = address.parse().map_err(|_| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "parameter_invalid", "not an address"))?;
    Ok(payouts.claim_refund(token, to).await?)
}

async fn render(state: &AppState, token: &str, nonce: &str, error: Option<String>, status: StatusCode) -> Response {
    match refund::by_token(&state.pool, token, state.clock.now()).await {
        Ok(Some((view, merchant))) => {
            let estimate = if view.amount_minor.is_none() { estimate(state, &view) } else { None };
            html(status, nonce, claim_page(nonce, &view, &merchant, estimate.as_deref(), error.as_deref()))
        }
        Ok(None) => html(StatusCode::NOT_FOUND, nonce, not_found(nonce)),
        Err(InvoiceError::Database(error)) => {
            tracing::warn!(target: "api", %error, "refund page: database unavailable");
            html(StatusCode::SERVICE_UNAVAILABLE, nonce, super::page::failed(nonce, super::Texts::default()))
        }
        Err(error) => {
            tracing::error!(target: "api", %error, "refund page failed");
            html(StatusCode::INTERNAL_SERVER_ERROR, nonce, super::page::failed(nonce, super::Texts::default()))
        }
    }
}

/// What a current-rate refund would pay now, as text.
fn estimate(state: &AppState, view: &CryptoRefundView) -> Option<String> {
    let fiat = view.currency.parse().ok()?;
    let quote = state.rates.quote(&view.symbol, fiat, state.clock.now()).ok()?;
    let value = Amount::parse_decimal(&view.value_minor, 0).ok()?;
    let decimals = u8::try_from(view.decimals).ok()?;
    let amount = crate::money::fiat_to_asset(value, fiat, &quote.rate, decimals, crate::money::Rounding::Down).ok()?;
    Some(refund::trim_zeros(&amount.to_decimal_string(decimals)))
}

fn not_found(nonce: &str) -> String {
    let mut out = String::new();
    head(&mut out, nonce, "Refund not found", super::Texts::default());
    out.push_str(concat!(
        "<body>\n<main class=\"checkout notice\">\n<h1>Refund not found</h1>\n",
        "<p>There is no refund at this address. Check the link the merchant gave you.</p>\n",
        "<footer>Payments processed by payrail</footer>\n</main>\n</body>\n</html>\n"
    ));
    out
}

fn claim_page(nonce: &str, view: &CryptoRefundView, merchant: &str, estimate: Option<&str>, error: Option<&str>) -> String {
    let mut out = String::with_capacity(8 * 1024);
    head(&mut out, nonce, &format!("Refund from {merchant}"), super::Texts::default());
    let fiat_value = view
        .currency
        .parse::<crate::money::Fiat>()
        .ok()
        .and_then(|f| Amount::parse_decimal(&view.value_minor, 0).ok().map(|v| format!("{} {}", v.to_decimal_string(f.minor_units()), f.code())));
    let owed = match (view.amount_text(), estimate) {
        (Some(amount), _) => format!("{amount} {}", view.symbol),
        (None, Some(estimate)) => format!("about {estimate} {} (at the rate when you claim)", view.symbol),
        (None, None) => format!("{} in {}", fiat_value.clone().unwrap_or_default(), view.symbol),
    };
    let (headline, message) = match view.status.as_str() {
        "open" => ("Claim your refund".to_owned(), format!("{merchant} is refunding {owed} on {}.", chain_name(&view.chain))),
        "claimed" if view.chain.starts_with("bip122:") => (
            "Refund claimed".to_owned(),
            format!("{merchant} will send {owed} to {}. This page shows when it arrives.", view.address.as_deref().unwrap_or_default()),
        ),
        "claimed" => ("Refund on its way".to_owned(), format!("{owed} is being sent to {}.", view.address.as_deref().unwrap_or_default())),
        "paid" => (
            "Refund paid".to_owned(),
            format!("{owed} was sent to {} in transaction {}.", view.address.as_deref().unwrap_or_default(), view.tx_hash.as_deref().unwrap_or_default()),
        ),
        "failed" => ("Refund delayed".to_owned(), format!("Sending the refund failed; {merchant} has been told.")),
        _ => ("Refund link no longer valid".to_owned(), format!("This refund link has {}. Ask {merchant} for a new one.", if view.status == "expired" { "expired" } else { "been cancelled" })),
    };
    let _ = write!(
        out,
        concat!(
            "<body>\n<main id=\"refund\" class=\"checkout refund state-{state}\" data-state=\"{state}\">\n",
            "<header>\n<p class=\"merchant\" id=\"merchant\">{merchant}</p>\n",
            "<p class=\"total\" id=\"total\">{value}</p>\n<p class=\"invoice-id\">Refund {id} of invoice {invoice}</p>\n</header>\n",
            "<section class=\"status\" id=\"status\" role=\"status\" aria-live=\"polite\">\n",
            "<h1 id=\"status-headline\">{headline}</h1>\n<p id=\"status-message\">{message}</p>\n</section>\n"
        ),
        state = esc(&view.status),
        merchant = esc(merchant),
        value = esc(&fiat_value.unwrap_or_default()),
        id = esc(&view.id),
        invoice = esc(&view.invoice_id),
        headline = esc(&headline),
        message = esc(&message),
    );
    if let Some(error) = error {
        let _ = writeln!(out, "<p class=\"error\" id=\"error\" role=\"alert\">{}</p>", esc(error));
    }
    if view.status == "open" {
        let _ = write!(
            out,
            concat!(
                "<section class=\"claim\" id=\"claim\">\n<form method=\"post\">\n",
                "<label for=\"address\">Your {symbol} address on {chain}</label>\n",
                "<input id=\"address\" name=\"address\" type=\"text\" required autocomplete=\"off\" spellcheck=\"false\" maxlength=\"300\">\n",
                "<p class=\"hint\">A payment request from your wallet (a scanned QR code) works too.</p>\n",
                "<button id=\"claim-button\" type=\"submit\">Send my refund here</button>\n</form>\n</section>\n"
            ),
            symbol = esc(&view.symbol),
            chain = esc(chain_name(&view.chain)),
        );
    }
    out.push_str("<footer>Payments processed by payrail</footer>\n</main>\n</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_found_in_payment_requests() {
        assert_eq!(address_in(" bcrt1qxyz "), "bcrt1qxyz");
        assert_eq!(address_in("bitcoin:bcrt1qxyz?amount=0.1&label=x"), "bcrt1qxyz");
        assert_eq!(address_in("BITCOIN:BCRT1QXYZ"), "BCRT1QXYZ");
        assert_eq!(address_in("ethereum:0xAbC@137?value=1e18"), "0xAbC");
        assert_eq!(address_in("ethereum:0xToken@137/transfer?address=0xPayer&uint256=5"), "0xPayer");
    }
}
