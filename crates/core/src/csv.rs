//! The CSV the API serves (creator statements, ledger exports), written as RFC 4180 says: a field
//! holding a comma, a double quote, CR or LF is enclosed in double quotes, with each quote inside
//! doubled; every record, the header too, ends with CRLF. Any other field is written as it is, so a
//! plain amount, id or timestamp stays unquoted.

use std::borrow::Cow;

/// What ends every record.
pub const RECORD_END: &str = "\r\n";

/// One field, quoted when it must be.
pub fn field(value: &str) -> Cow<'_, str> {
    if value.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", value.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(value)
    }
}

/// Appends one record to `out`: the fields, each quoted when it must be, joined by commas.
pub fn push_record<'a>(out: &mut String, fields: impl IntoIterator<Item = &'a str>) {
    for (i, value) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&field(value));
    }
    out.push_str(RECORD_END);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_fields_stay_unquoted() {
        for plain in ["", "42", "-1500", "2026-01-01T12:00:00+00:00", "eip155:137/erc20:0xabc", "a b\tc"] {
            assert_eq!(field(plain), plain);
        }
    }

    #[test]
    fn commas_quotes_and_line_breaks_are_quoted() {
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("\""), "\"\"\"\"");
        assert_eq!(field("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(field("cr\rhere"), "\"cr\rhere\"");
        assert_eq!(field("a,\"b\"\r\n"), "\"a,\"\"b\"\"\r\n\"");
    }

    #[test]
    fn records_join_fields_and_end_with_crlf() {
        let mut out = String::new();
        push_record(&mut out, ["id", "memo"]);
        push_record(&mut out, ["7", "refund, \"late\""]);
        push_record(&mut out, ["8", ""]);
        assert_eq!(out, "id,memo\r\n7,\"refund, \"\"late\"\"\"\r\n8,\r\n");
    }

    /// A reader that follows RFC 4180 gets every field back exactly.
    #[test]
    fn quoted_fields_parse_back() {
        let values = ["plain", "a,b", "q\"uote", "multi\r\nline", "", ",\",\""];
        let mut out = String::new();
        push_record(&mut out, values);
        assert_eq!(parse_record(&out), values);
    }

    /// A minimal RFC 4180 reader for one record, for the test above.
    fn parse_record(text: &str) -> Vec<String> {
        let text = text.strip_suffix(RECORD_END).expect("record ends with CRLF");
        let mut fields = vec![String::new()];
        let mut chars = text.chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            let current = fields.last_mut().expect("one field at least");
            match (quoted, c) {
                (false, '"') if current.is_empty() => quoted = true,
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    current.push('"');
                }
                (true, '"') => quoted = false,
                (false, ',') => fields.push(String::new()),
                (_, c) => current.push(c),
            }
        }
        fields
    }
}
