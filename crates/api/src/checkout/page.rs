//! The checkout page's HTML. Every value from outside this file passes through [`esc`] (or
//! [`query_value`] then [`esc`]) on its way in; the QR code's SVG is made here from the payment
//! URI's bits and holds no text of its own.

use std::fmt::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

use crate::invoice::PaymentOptionView;
use crate::money::Amount;

use super::texts::Texts;
use super::{chain_name, option_label, PayerState, PublicPayment};

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// Side of the QR code in CSS pixels: large enough for a phone camera at arm's length.
const QR_SIDE_PX: u32 = 232;

/// The option being paid and what to send in it now.
pub(super) struct Pay<'a> {
    pub option: &'a PaymentOptionView,
    /// In the asset's smallest unit.
    pub amount: Amount,
    /// The payment request for `amount` (EIP-681), when the option has an address.
    pub uri: Option<String>,
    /// The locked rate, `1 symbol = rate`, written as the payer's language writes money.
    pub rate: String,
}

pub(super) struct Model<'a> {
    pub nonce: &'a str,
    pub texts: Texts,
    pub id: &'a str,
    pub merchant_name: &'a str,
    /// The invoice amount, written as the payer's language writes money.
    pub total: &'a str,
    pub currency: &'a str,
    pub state: PayerState,
    pub takes_payment: bool,
    pub headline: &'a str,
    pub message: &'a str,
    pub expires_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
    pub options: &'a [PaymentOptionView],
    pub pay: Option<Pay<'a>>,
    /// Each payment received, with its line for the payer and explorer link.
    pub payments: &'a [PublicPayment],
    /// What a credit pack purchase buys, and its promo discount.
    pub purchase: Option<(&'a str, Option<&'a str>)>,
    /// Where the "Return to merchant" link leads once the invoice is settled.
    pub redirect_url: Option<&'a str>,
    pub buyer_email: Option<&'a str>,
}

/// States after which the payer has nothing left to do here: the page offers the way back to the
/// merchant. `page.js` keeps the same list.
fn settled(state: PayerState) -> bool {
    matches!(
        state,
        PayerState::Paid | PayerState::Overpaid | PayerState::Expired | PayerState::Void | PayerState::Refunded | PayerState::Invalid
    )
}

/// Escapes text for HTML element content and quoted attribute values.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query parameter value (everything but RFC 3986 unreserved characters).
fn query_value(text: &str) -> String {
    payrail_core::uri::percent_encode(text)
}

/// The QR code of `data` as an inline `<svg>` element; `None` when `data` is too long for one.
pub(super) fn qr_svg(data: &str, label: &str) -> Option<String> {
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M).ok()?;
    let image = code
        .render::<svg::Color>()
        .min_dimensions(QR_SIDE_PX, QR_SIDE_PX)
        .dark_color(svg::Color("#111"))
        .light_color(svg::Color("#fff"))
        .build();
    // The renderer writes a standalone document; inline SVG starts at the element.
    let element = &image[image.find("<svg")?..];
    let rest = element.strip_prefix("<svg")?;
    Some(format!(r#"<svg class="qr-code" role="img" aria-label="{}"{rest}"#, esc(label)))
}

pub(super) fn head(out: &mut String, nonce: &str, title: &str, texts: Texts) {
    let _ = write!(
        out,
        concat!(
            "<!doctype html>\n<html lang=\"{lang}\" dir=\"{dir}\">\n<head>\n<meta charset=\"utf-8\">\n",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
            "<meta name=\"robots\" content=\"noindex, nofollow\">\n",
            "<title>{title}</title>\n<link rel=\"icon\" href=\"data:,\">\n",
            "<style nonce=\"{nonce}\">\n{style}</style>\n</head>\n"
        ),
        lang = texts.lang.tag(),
        dir = texts.direction(),
        title = esc(title),
        nonce = esc(nonce),
        style = STYLE,
    );
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub(super) fn checkout(m: &Model<'_>) -> String {
    let t = m.texts;
    let mut out = String::with_capacity(16 * 1024);
    head(&mut out, m.nonce, &t.fill("title", &[("total", m.total), ("merchant", m.merchant_name)]), t);
    let selected = m.pay.as_ref().map(|p| p.option.asset.as_str()).unwrap_or("");
    let mut query = format!("?locale={}", query_value(t.lang.tag()));
    if !selected.is_empty() {
        let _ = write!(query, "&asset={}", query_value(selected));
    }
    let status_url = format!("{}/status{query}", query_value(m.id));
    let events_url = format!("{}/events{query}", query_value(m.id));
    let amount_minor = m.pay.as_ref().map(|p| p.amount.to_string()).unwrap_or_default();
    let _ = write!(
        out,
        concat!(
            "<body>\n<main id=\"checkout\" class=\"checkout state-{state}\" data-state=\"{state}\" ",
            "data-status-url=\"{status_url}\" data-events-url=\"{events_url}\" data-asset=\"{asset}\" data-amount-minor=\"{amount_minor}\" ",
            "data-expires-at=\"{expires}\" data-now=\"{now}\" data-text-copied=\"{copied}\" ",
            "data-text-select-and-copy=\"{select_and_copy}\" data-text-expires-in=\"{expires_in}\" data-text-time-is-up=\"{time_is_up}\">\n",
            "<header>\n<p class=\"merchant\" id=\"merchant\">{merchant}</p>\n",
            "<p class=\"total\" id=\"total\" data-currency=\"{currency}\">{total}</p>\n",
            "{purchase}<p class=\"invoice-id\">{invoice_number}</p>\n{buyer}</header>\n",
            "<section class=\"status\" id=\"status\" role=\"status\" aria-live=\"polite\">\n",
            "<h1 id=\"status-headline\">{headline}</h1>\n<p id=\"status-message\">{message}</p>\n",
            "<p class=\"countdown\" id=\"countdown\">{expires_text}</p>\n{back}</section>\n",
        ),
        state = m.state.as_str(),
        status_url = esc(&status_url),
        events_url = esc(&events_url),
        asset = esc(selected),
        amount_minor = esc(&amount_minor),
        expires = esc(&timestamp(m.expires_at)),
        now = esc(&timestamp(m.now)),
        copied = esc(t.get("copied")),
        select_and_copy = esc(t.get("select_and_copy")),
        expires_in = esc(t.get("expires_in")),
        time_is_up = esc(t.get("time_is_up")),
        merchant = esc(m.merchant_name),
        total = esc(m.total),
        currency = esc(m.currency),
        purchase = m.purchase.map_or_else(String::new, |(what, off)| format!(
            "<p class=\"purchase\" id=\"purchase\">{}</p>\n{}",
            esc(what),
            off.map_or_else(String::new, |off| format!("<p class=\"discount\" id=\"discount\">{}</p>\n", esc(off)))
        )),
        invoice_number = esc(&t.fill("invoice_number", &[("id", m.id)])),
        buyer = m.buyer_email.map_or_else(String::new, |email| format!(
            "<p class=\"buyer\" id=\"buyer-email\">{}</p>\n",
            esc(&t.fill("receipt_to", &[("email", email)]))
        )),
        headline = esc(m.headline),
        message = esc(m.message),
        expires_text = esc(&t.fill("expires_at", &[("time", &m.expires_at.format("%Y-%m-%d %H:%M UTC").to_string())])),
        // Rendered for every invoice with a redirect, shown once it is settled (by the server, or
        // by the script when the state changes under the payer's eyes).
        back = m.redirect_url.map_or_else(String::new, |url| format!(
            "<a class=\"return\" id=\"return\" href=\"{}\" rel=\"noreferrer\"{}>{}</a>\n",
            esc(url),
            if settled(m.state) { "" } else { " hidden" },
            esc(&t.fill("return_to_merchant", &[("merchant", m.merchant_name)]))
        )),
    );

    if m.takes_payment {
        out.push_str("<section class=\"pay\" id=\"pay\">\n");
        choose(&mut out, m.options, selected, t);
        match &m.pay {
            Some(pay) => option_panel(&mut out, pay, t),
            None => {
                let _ = writeln!(out, "<p class=\"unavailable\">{}</p>", esc(t.get("no_option")));
            }
        }
        out.push_str("</section>\n");
    }

    let _ = write!(
        out,
        "<section class=\"payments\" id=\"payments\"{hidden}>\n<h2>{title}</h2>\n<ul id=\"payment-list\" data-text-view-transaction=\"{view}\">\n",
        hidden = if m.payments.is_empty() { " hidden" } else { "" },
        title = esc(t.get("payments_received")),
        view = esc(t.get("view_transaction")),
    );
    for payment in m.payments {
        payment_item(&mut out, payment, t);
    }
    out.push_str("</ul>\n</section>\n");
    languages(&mut out, selected, t);
    let _ = write!(
        out,
        "<footer>{}</footer>\n</main>\n<script nonce=\"{}\">\n{SCRIPT}</script>\n</body>\n</html>\n",
        esc(t.get("processed_by")),
        esc(m.nonce)
    );
    out
}

/// A payment's line, linked to the chain's block explorer where there is one.
fn payment_item(out: &mut String, payment: &PublicPayment, t: Texts) {
    match &payment.explorer_url {
        Some(url) => {
            let _ = writeln!(
                out,
                "<li>{} <a class=\"explorer\" href=\"{}\" rel=\"noreferrer\" target=\"_blank\">{}</a></li>",
                esc(&payment.summary),
                esc(url),
                esc(t.get("view_transaction"))
            );
        }
        None => {
            let _ = writeln!(out, "<li>{}</li>", esc(&payment.summary));
        }
    }
}

/// The language switch: a GET form like the option choice, each language named in itself.
fn languages(out: &mut String, selected: &str, t: Texts) {
    let _ = write!(
        out,
        "<form class=\"languages\" method=\"get\" id=\"languages\">\n<label for=\"locale\">{}</label>\n<select id=\"locale\" name=\"locale\">\n",
        esc(t.get("language"))
    );
    for lang in crate::lang::Lang::ALL {
        let _ = writeln!(
            out,
            "<option value=\"{tag}\" lang=\"{tag}\"{chosen}>{name}</option>",
            tag = lang.tag(),
            chosen = if lang == t.lang { " selected" } else { "" },
            name = esc(Texts::new(lang).get("name")),
        );
    }
    out.push_str("</select>\n");
    if !selected.is_empty() {
        let _ = writeln!(out, "<input type=\"hidden\" name=\"asset\" value=\"{}\">", esc(selected));
    }
    let _ = write!(out, "<button type=\"submit\" id=\"locale-submit\">{}</button>\n</form>\n", esc(t.get("show")));
}

/// The choice of option: a GET form, so it works without script (the script submits on change).
fn choose(out: &mut String, options: &[PaymentOptionView], selected: &str, t: Texts) {
    if options.is_empty() {
        return;
    }
    let _ = write!(
        out,
        concat!(
            "<form class=\"choose\" method=\"get\" id=\"choose\">\n",
            "<label for=\"asset\">{pay_with}</label>\n<select id=\"asset\" name=\"asset\">\n"
        ),
        pay_with = esc(t.get("pay_with"))
    );
    for option in options {
        let label = option_label(option, t);
        let label = if option.address.is_none() { t.fill("not_available_yet", &[("option", &label)]) } else { label };
        let _ = writeln!(
            out,
            "<option value=\"{value}\"{selected}>{label}</option>",
            value = esc(&option.asset),
            selected = if option.asset == selected { " selected" } else { "" },
            label = esc(&label),
        );
    }
    let _ = write!(
        out,
        "</select>\n<input type=\"hidden\" name=\"locale\" value=\"{}\">\n<button type=\"submit\" id=\"choose-submit\">{}</button>\n</form>\n",
        t.lang.tag(),
        esc(t.get("show"))
    );
}

fn option_panel(out: &mut String, pay: &Pay<'_>, t: Texts) {
    let option = pay.option;
    let label = option_label(option, t);
    let Some(address) = option.address.as_deref() else {
        let _ = writeln!(
            out,
            "<p class=\"unavailable\" id=\"unavailable\">{}</p>",
            esc(&t.fill("option_unavailable", &[("option", &label)]))
        );
        return;
    };
    let amount = super::shown(option, pay.amount);
    let chain = chain_name(&option.chain);
    out.push_str("<div class=\"qr\" id=\"qr\">");
    match pay.uri.as_deref().and_then(|uri| qr_svg(uri, t.get("qr_label"))) {
        Some(svg) => out.push_str(&svg),
        None => {
            let _ = write!(out, "<p class=\"unavailable\">{}</p>", esc(t.get("qr_unavailable")));
        }
    }
    out.push_str("</div>\n<dl class=\"fields\">\n");
    let _ = write!(
        out,
        concat!(
            "<div class=\"field\"><dt>{send_exactly}</dt><dd><code id=\"pay-amount\">{amount}</code>",
            "<span class=\"unit\">{symbol}</span>",
            "<button type=\"button\" class=\"copy\" data-copy=\"{amount}\" hidden>{copy}</button></dd></div>\n",
            "<div class=\"field\"><dt>{to_address}</dt><dd><code id=\"pay-address\">{address}</code>",
            "<button type=\"button\" class=\"copy\" data-copy=\"{address}\" hidden>{copy}</button></dd></div>\n",
            "</dl>\n<p class=\"note\">{note}</p>\n",
        ),
        send_exactly = esc(t.get("send_exactly")),
        amount = esc(&amount),
        symbol = esc(&option.symbol),
        copy = esc(t.get("copy")),
        to_address = esc(&t.fill("to_address_on", &[("chain", chain)])),
        address = esc(address),
        note = esc(&t.fill("send_only", &[("symbol", &option.symbol), ("chain", chain), ("rate", &pay.rate)])),
    );
    if let Some(uri) = pay.uri.as_deref() {
        let _ = writeln!(out, "<a class=\"wallet\" id=\"wallet-link\" href=\"{}\">{}</a>", esc(uri), esc(t.get("open_wallet")));
    }
}

/// A page of its own for an error, in the checkout's style.
fn notice(nonce: &str, title: &str, text: &str, t: Texts) -> String {
    let mut out = String::with_capacity(4 * 1024);
    head(&mut out, nonce, title, t);
    let _ = write!(
        out,
        concat!(
            "<body>\n<main class=\"checkout notice\">\n<h1>{title}</h1>\n<p>{text}</p>\n",
            "<footer>{footer}</footer>\n</main>\n</body>\n</html>\n"
        ),
        title = esc(title),
        text = esc(text),
        footer = esc(t.get("processed_by")),
    );
    out
}

pub(super) fn not_found(nonce: &str, t: Texts) -> String {
    notice(nonce, t.get("not_found_title"), t.get("not_found_text"), t)
}

pub(super) fn failed(nonce: &str, t: Texts) -> String {
    notice(nonce, t.get("failed_title"), t.get("failed_text"), t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(esc(r#"<script>alert("x&'y")</script>"#), "&lt;script&gt;alert(&quot;x&amp;&#39;y&quot;)&lt;/script&gt;");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("eip155:1/slip44:60"), "eip155%3A1%2Fslip44%3A60");
        assert_eq!(query_value("a b&c"), "a%20b%26c");
    }

    #[test]
    fn qr_code_is_an_inline_svg_element() {
        let svg = qr_svg("ethereum:0x00000000000000000000000000000000000000AA@1?value=5", "QR \"code\"").expect("fits");
        assert!(svg.contains("aria-label=\"QR &quot;code&quot;\""), "{svg}");
        assert!(svg.starts_with("<svg class=\"qr-code\""), "{svg}");
        assert!(svg.ends_with("</svg>"));
        assert!(!svg.contains("<?xml"));
    }
}
