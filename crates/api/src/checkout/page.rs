//! The checkout page's HTML. Every value from outside this file passes through [`esc`] (or
//! [`query_value`] then [`esc`]) on its way in; the QR code's SVG is made here from the payment
//! URI's bits and holds no text of its own.

use std::fmt::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

use crate::invoice::PaymentOptionView;
use crate::money::Amount;

use super::{chain_name, option_label, PayerState};

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
}

pub(super) struct Model<'a> {
    pub nonce: &'a str,
    pub id: &'a str,
    pub merchant_name: &'a str,
    /// The invoice amount as a decimal string of its currency.
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
    /// One line per payment received.
    pub payments: &'a [String],
    /// What a credit pack purchase buys, and its promo discount.
    pub purchase: Option<(&'a str, Option<&'a str>)>,
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
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The QR code of `data` as an inline `<svg>` element; `None` when `data` is too long for one.
pub(super) fn qr_svg(data: &str) -> Option<String> {
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
    Some(format!(r#"<svg class="qr-code" role="img" aria-label="QR code of the payment request"{rest}"#))
}

pub(super) fn head(out: &mut String, nonce: &str, title: &str) {
    let _ = write!(
        out,
        concat!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
            "<meta name=\"robots\" content=\"noindex, nofollow\">\n",
            "<title>{title}</title>\n<link rel=\"icon\" href=\"data:,\">\n",
            "<style nonce=\"{nonce}\">\n{style}</style>\n</head>\n"
        ),
        title = esc(title),
        nonce = esc(nonce),
        style = STYLE,
    );
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub(super) fn checkout(m: &Model<'_>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    head(&mut out, m.nonce, &format!("Pay {} {} to {}", m.total, m.currency, m.merchant_name));
    let selected = m.pay.as_ref().map(|p| p.option.asset.as_str()).unwrap_or("");
    let query = if selected.is_empty() { String::new() } else { format!("?asset={}", query_value(selected)) };
    let status_url = format!("{}/status{query}", query_value(m.id));
    let events_url = format!("{}/events{query}", query_value(m.id));
    let amount_minor = m.pay.as_ref().map(|p| p.amount.to_string()).unwrap_or_default();
    let _ = write!(
        out,
        concat!(
            "<body>\n<main id=\"checkout\" class=\"checkout state-{state}\" data-state=\"{state}\" ",
            "data-status-url=\"{status_url}\" data-events-url=\"{events_url}\" data-asset=\"{asset}\" data-amount-minor=\"{amount_minor}\" ",
            "data-expires-at=\"{expires}\" data-now=\"{now}\">\n",
            "<header>\n<p class=\"merchant\" id=\"merchant\">{merchant}</p>\n",
            "<p class=\"total\" id=\"total\">{total} <span class=\"currency\">{currency}</span></p>\n",
            "{purchase}<p class=\"invoice-id\">Invoice {id}</p>\n</header>\n",
            "<section class=\"status\" id=\"status\" role=\"status\" aria-live=\"polite\">\n",
            "<h1 id=\"status-headline\">{headline}</h1>\n<p id=\"status-message\">{message}</p>\n",
            "<p class=\"countdown\" id=\"countdown\">Expires at {expires_text}</p>\n</section>\n",
        ),
        state = m.state.as_str(),
        status_url = esc(&status_url),
        events_url = esc(&events_url),
        asset = esc(selected),
        amount_minor = esc(&amount_minor),
        expires = esc(&timestamp(m.expires_at)),
        now = esc(&timestamp(m.now)),
        merchant = esc(m.merchant_name),
        total = esc(m.total),
        currency = esc(m.currency),
        purchase = m.purchase.map_or_else(String::new, |(what, off)| format!(
            "<p class=\"purchase\" id=\"purchase\">{}</p>\n{}",
            esc(what),
            off.map_or_else(String::new, |off| format!("<p class=\"discount\" id=\"discount\">{}</p>\n", esc(off)))
        )),
        id = esc(m.id),
        headline = esc(m.headline),
        message = esc(m.message),
        expires_text = esc(&m.expires_at.format("%Y-%m-%d %H:%M UTC").to_string()),
    );

    if m.takes_payment {
        out.push_str("<section class=\"pay\" id=\"pay\">\n");
        choose(&mut out, m.options, selected);
        match &m.pay {
            Some(pay) => option_panel(&mut out, pay, m.currency),
            None => out.push_str("<p class=\"unavailable\">No payment option is available for this invoice.</p>\n"),
        }
        out.push_str("</section>\n");
    }

    let _ = write!(
        out,
        "<section class=\"payments\" id=\"payments\"{hidden}>\n<h2>Payments received</h2>\n<ul id=\"payment-list\">\n",
        hidden = if m.payments.is_empty() { " hidden" } else { "" }
    );
    for line in m.payments {
        let _ = writeln!(out, "<li>{}</li>", esc(line));
    }
    out.push_str("</ul>\n</section>\n<footer>Payments processed by payrail</footer>\n</main>\n");
    let _ = write!(out, "<script nonce=\"{}\">\n{SCRIPT}</script>\n</body>\n</html>\n", esc(m.nonce));
    out
}

/// The choice of option: a GET form, so it works without script (the script submits on change).
fn choose(out: &mut String, options: &[PaymentOptionView], selected: &str) {
    if options.is_empty() {
        return;
    }
    out.push_str(concat!(
        "<form class=\"choose\" method=\"get\" id=\"choose\">\n",
        "<label for=\"asset\">Pay with</label>\n<select id=\"asset\" name=\"asset\">\n"
    ));
    for option in options {
        let unavailable = if option.address.is_none() { " (not available yet)" } else { "" };
        let _ = writeln!(
            out,
            "<option value=\"{value}\"{selected}>{label}{unavailable}</option>",
            value = esc(&option.asset),
            selected = if option.asset == selected { " selected" } else { "" },
            label = esc(&option_label(option)),
        );
    }
    out.push_str("</select>\n<button type=\"submit\" id=\"choose-submit\">Show</button>\n</form>\n");
}

fn option_panel(out: &mut String, pay: &Pay<'_>, currency: &str) {
    let option = pay.option;
    let label = option_label(option);
    let Some(address) = option.address.as_deref() else {
        let _ = writeln!(
            out,
            "<p class=\"unavailable\" id=\"unavailable\">Paying in {} is not available yet: choose another option.</p>",
            esc(&label)
        );
        return;
    };
    let amount = super::shown(option, pay.amount);
    out.push_str("<div class=\"qr\" id=\"qr\">");
    match pay.uri.as_deref().and_then(qr_svg) {
        Some(svg) => out.push_str(&svg),
        None => out.push_str("<p class=\"unavailable\">QR code not available: copy the address and amount.</p>"),
    }
    out.push_str("</div>\n<dl class=\"fields\">\n");
    let _ = write!(
        out,
        concat!(
            "<div class=\"field\"><dt>Send exactly</dt><dd><code id=\"pay-amount\">{amount}</code>",
            "<span class=\"unit\">{symbol}</span>",
            "<button type=\"button\" class=\"copy\" data-copy=\"{amount}\" hidden>Copy</button></dd></div>\n",
            "<div class=\"field\"><dt>To this address on {chain}</dt><dd><code id=\"pay-address\">{address}</code>",
            "<button type=\"button\" class=\"copy\" data-copy=\"{address}\" hidden>Copy</button></dd></div>\n",
            "</dl>\n",
            "<p class=\"note\">Send {symbol} on {chain} only: another asset or chain sent here is not counted ",
            "toward this invoice. Rate locked at 1 {symbol} = {rate} {currency}.</p>\n",
        ),
        amount = esc(&amount),
        symbol = esc(&option.symbol),
        chain = esc(chain_name(&option.chain)),
        address = esc(address),
        rate = esc(&option.rate),
        currency = esc(currency),
    );
    if let Some(uri) = pay.uri.as_deref() {
        let _ = writeln!(out, "<a class=\"wallet\" id=\"wallet-link\" href=\"{}\">Open in a wallet</a>", esc(uri));
    }
}

/// A page of its own for an error, in the checkout's style.
fn notice(nonce: &str, title: &str, text: &str) -> String {
    let mut out = String::with_capacity(4 * 1024);
    head(&mut out, nonce, title);
    let _ = write!(
        out,
        concat!(
            "<body>\n<main class=\"checkout notice\">\n<h1>{title}</h1>\n<p>{text}</p>\n",
            "<footer>Payments processed by payrail</footer>\n</main>\n</body>\n</html>\n"
        ),
        title = esc(title),
        text = esc(text),
    );
    out
}

pub(super) fn not_found(nonce: &str) -> String {
    notice(
        nonce,
        "Invoice not found",
        "There is no invoice at this address. Check the link the merchant gave you, or ask them for a new one.",
    )
}

pub(super) fn failed(nonce: &str) -> String {
    notice(nonce, "Something went wrong", "This page could not be shown just now. Please reload it in a moment.")
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
        let svg = qr_svg("ethereum:0x00000000000000000000000000000000000000AA@1?value=5").expect("fits");
        assert!(svg.starts_with("<svg class=\"qr-code\""), "{svg}");
        assert!(svg.ends_with("</svg>"));
        assert!(!svg.contains("<?xml"));
    }
}
