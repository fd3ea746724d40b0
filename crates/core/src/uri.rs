//! Percent-encoding (RFC 3986): every byte but the unreserved characters (letters, digits,
//! `-._~`) written as `%XX`. What payment URIs, checkout links and console links put in a query.

/// `text` percent-encoded for a URI component.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_unreserved_characters_stay() {
        assert_eq!(super::percent_encode("eip155:1/slip44:60"), "eip155%3A1%2Fslip44%3A60");
        assert_eq!(super::percent_encode("a b&c~-._é"), "a%20b%26c~-._%C3%A9");
    }
}
