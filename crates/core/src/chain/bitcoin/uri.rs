//! BIP21 payment requests: `bitcoin:<address>?amount=<BTC>&label=<merchant>&message=<invoice>`.
//!
//! The amount is exact: the quoted satoshis written as a BTC decimal, trailing zeros trimmed; a
//! wallet that reads it pays exactly the quote. Texts are percent-encoded (RFC 3986 unreserved
//! characters stay as they are).

use crate::money::Amount;
use crate::uri::percent_encode;

/// Decimals of one bitcoin in satoshis.
pub const BTC_DECIMALS: u8 = 8;

/// The BIP21 URI for paying `amount_sats` to `address`.
pub fn payment_uri(address: &str, amount_sats: Amount, label: Option<&str>, message: Option<&str>) -> String {
    let mut uri = format!("bitcoin:{address}?amount={}", btc_decimal(amount_sats));
    for (key, value) in [("label", label), ("message", message)] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            uri.push_str(&format!("&{key}={}", percent_encode(value)));
        }
    }
    uri
}

/// Satoshis as a BTC decimal without trailing zeros: 38462 → `0.00038462`, 150000000 → `1.5`.
pub fn btc_decimal(amount_sats: Amount) -> String {
    let text = amount_sats.to_decimal_string(BTC_DECIMALS);
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_and_trimmed() {
        assert_eq!(btc_decimal(Amount::from_u64(38_462)), "0.00038462");
        assert_eq!(btc_decimal(Amount::from_u64(150_000_000)), "1.5");
        assert_eq!(btc_decimal(Amount::from_u64(100_000_000)), "1");
        assert_eq!(btc_decimal(Amount::from_u64(1)), "0.00000001");
        assert_eq!(btc_decimal(Amount::from_u64(2_100_000_000_000_000)), "21000000");
    }

    #[test]
    fn labels_are_percent_encoded() {
        let uri = payment_uri(
            "bcrt1qexample",
            Amount::from_u64(120_000),
            Some("Café & Sons"),
            Some("Invoice inv_1"),
        );
        assert_eq!(uri, "bitcoin:bcrt1qexample?amount=0.0012&label=Caf%C3%A9%20%26%20Sons&message=Invoice%20inv_1");
        assert_eq!(payment_uri("bc1qx", Amount::from_u64(5), None, Some("")), "bitcoin:bc1qx?amount=0.00000005");
    }
}
