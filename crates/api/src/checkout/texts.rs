//! The checkout page's words in each of its languages, and its money formatted the way each
//! language writes it.
//!
//! The words live in `crates/api/locales/<tag>.toml`, one flat table per language with `{name}`
//! placeholders, compiled into the binary as they are (no build step): a translator edits a text
//! file. `en.toml` is the reference: every other file has its keys and, in each text, its
//! placeholders (a unit test holds them to it). A text missing from a file at run time falls back
//! to English rather than failing the page.
//!
//! Fiat amounts go through ICU4X's currency formatter with CLDR's data for the language (`$25.00`,
//! `25,00 €`, `25,00 US$`, `US$25.00`); crypto amounts are written as wallets, payment links and
//! block explorers write them (`0.008334`), never with a decimal comma, so what the payer reads is
//! what they type.

use std::collections::HashMap;
use std::sync::LazyLock;

use fixed_decimal::Decimal;
use icu_experimental::dimension::currency::formatter::CurrencyFormatter;
use icu_experimental::dimension::currency::CurrencyCode;
use icu_locale_core::Locale;
use writeable::Writeable;

use crate::lang::Lang;
use crate::money::{Amount, Fiat};

/// Each language's file, as compiled in.
const SOURCES: [(Lang, &str); 7] = [
    (Lang::En, include_str!("../../locales/en.toml")),
    (Lang::Es, include_str!("../../locales/es.toml")),
    (Lang::Fr, include_str!("../../locales/fr.toml")),
    (Lang::De, include_str!("../../locales/de.toml")),
    (Lang::Pt, include_str!("../../locales/pt.toml")),
    (Lang::ZhCn, include_str!("../../locales/zh-CN.toml")),
    (Lang::Ja, include_str!("../../locales/ja.toml")),
];

/// One language's texts and money formatter.
struct Catalog {
    texts: HashMap<String, String>,
    money: Option<CurrencyFormatter>,
}

/// Every language, parsed once. A file that does not parse leaves its language empty (every text
/// then falls back to English); the unit tests make sure none ships that way.
static CATALOGS: LazyLock<HashMap<Lang, Catalog>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .map(|&(lang, source)| {
            let texts = parse(source).unwrap_or_else(|error| {
                tracing::error!(target: "api", locale = lang.tag(), %error, "checkout texts do not parse");
                HashMap::new()
            });
            let money = lang
                .tag()
                .parse::<Locale>()
                .ok()
                .and_then(|locale| CurrencyFormatter::try_new(locale.into(), Default::default()).ok());
            (lang, Catalog { texts, money })
        })
        .collect()
});

fn parse(source: &str) -> Result<HashMap<String, String>, toml::de::Error> {
    toml::from_str(source)
}

/// The checkout page's words and money in one language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Texts {
    pub lang: Lang,
}

impl Texts {
    pub fn new(lang: Lang) -> Self {
        Self { lang }
    }

    /// The text `key`, else its English, else the key itself.
    pub fn get(self, key: &str) -> &str {
        let catalogs = &*CATALOGS;
        let found = [self.lang, Lang::En].iter().find_map(|lang| catalogs.get(lang).and_then(|c| c.texts.get(key)));
        match found {
            Some(text) => text,
            // A programming slip shows on the page as its key instead of failing the page.
            None => {
                tracing::error!(target: "api", key, "checkout text missing from every locale");
                key
            }
        }
    }

    /// The text `key` with each `{name}` replaced by its value from `args`.
    pub fn fill(self, key: &str, args: &[(&str, &str)]) -> String {
        fill(self.get(key), args)
    }

    /// The reading direction, `ltr` or `rtl`, for the page's `dir` attribute.
    pub fn direction(self) -> &'static str {
        if self.get("direction") == "rtl" {
            "rtl"
        } else {
            "ltr"
        }
    }

    /// `amount` minor units of `fiat` as this language writes money: `$25.00`, `25,00 €`.
    pub fn money(self, amount: Amount, fiat: Fiat) -> String {
        let text = amount.to_decimal_string(fiat.minor_units());
        self.money_text(&text, fiat.code())
    }

    /// A decimal string of currency `code` as this language writes money; `{text} {code}` when
    /// the formatter has nothing for it.
    pub fn money_text(self, text: &str, code: &str) -> String {
        let formatted = CATALOGS.get(&self.lang).and_then(|c| c.money.as_ref()).and_then(|formatter| {
            let value: Decimal = text.parse().ok()?;
            let code = CurrencyCode(tinystr::TinyAsciiStr::try_from_str(code).ok()?);
            let formatted = formatter.format_fixed_decimal(&value, &code).write_to_string().into_owned();
            Some(formatted)
        });
        formatted.unwrap_or_else(|| format!("{text} {code}"))
    }
}

/// `template` with each `{name}` of `args` replaced; other braces are kept as written.
fn fill(template: &str, args: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let named = after.find('}').and_then(|close| {
            let name = &after[..close];
            args.iter().find(|(n, _)| *n == name).map(|(_, value)| (*value, close))
        });
        match named {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The `{name}` placeholders of `template`, sorted.
#[cfg(test)]
fn placeholders(template: &str) -> Vec<&str> {
    let mut names: Vec<&str> = template
        .match_indices('{')
        .filter_map(|(at, _)| template[at + 1..].find('}').map(|close| &template[at + 1..at + 1 + close]))
        .collect();
    names.sort_unstable();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_locale_has_every_text_with_the_same_placeholders() {
        let reference = parse(SOURCES[0].1).expect("en.toml parses");
        for (lang, source) in SOURCES {
            let texts = parse(source).unwrap_or_else(|e| panic!("{} does not parse: {e}", lang.tag()));
            for (key, english) in &reference {
                let text = texts.get(key).unwrap_or_else(|| panic!("{} lacks {key}", lang.tag()));
                assert_eq!(placeholders(text), placeholders(english), "{} {key}: {text:?}", lang.tag());
                assert!(!text.trim().is_empty(), "{} {key} is empty", lang.tag());
            }
            let extra: Vec<&String> = texts.keys().filter(|k| !reference.contains_key(*k)).collect();
            assert!(extra.is_empty(), "{} has keys English lacks: {extra:?}", lang.tag());
            assert!(matches!(texts.get("direction").map(String::as_str), Some("ltr" | "rtl")), "{}", lang.tag());
        }
    }

    #[test]
    fn placeholders_are_filled_and_other_braces_kept() {
        assert_eq!(fill("Pay {total} to {merchant}", &[("total", "$1.00"), ("merchant", "Shop")]), "Pay $1.00 to Shop");
        assert_eq!(fill("{a}{b} {unknown} {", &[("a", "1"), ("b", "{a}")]), "1{a} {unknown} {");
        assert_eq!(Texts::new(Lang::Fr).fill("return_to_merchant", &[("merchant", "Boutique")]), "Retour à Boutique");
    }

    #[test]
    fn money_is_written_as_each_language_writes_it() {
        let usd = |lang, minor| Texts::new(lang).money(Amount::from_u64(minor), Fiat::USD);
        assert_eq!(usd(Lang::En, 2_500), "$25.00");
        assert_eq!(usd(Lang::En, 123_456_789), "$1,234,567.89");
        assert_eq!(usd(Lang::Fr, 123_456_789).replace(['\u{202f}', '\u{a0}'], " "), "1 234 567,89 $US");
        assert_eq!(usd(Lang::De, 2_500).replace('\u{a0}', " "), "25,00 $");
        assert_eq!(usd(Lang::Ja, 2_500), "$25.00");
        for lang in Lang::ALL {
            for code in ["USD", "EUR", "NGN", "CNY"] {
                let text = Texts::new(lang).money_text("1234.50", code);
                assert!(text.contains("234"), "{} {code}: {text}", lang.tag());
                assert!(!text.contains("1234.50 "), "{} {code} was not formatted: {text}", lang.tag());
            }
        }
    }

    #[test]
    fn a_missing_text_falls_back_to_english_then_to_its_key() {
        assert_eq!(Texts::new(Lang::De).get("paid"), "Bezahlt");
        assert_eq!(Texts::new(Lang::De).get("no_such_text"), "no_such_text");
    }
}
