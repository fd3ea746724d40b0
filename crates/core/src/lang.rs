//! The languages the payer-facing pages speak, and how one is chosen: the invoice's `locale` when
//! the merchant set it, else the payer's `Accept-Language`, else English.
//!
//! A tag is matched on its language (and, for Chinese, its script or region: only Simplified
//! Chinese is offered, so `zh-TW` and `zh-Hant` match nothing rather than a script the reader may
//! not read).

use std::fmt;
use std::str::FromStr;

/// A language of the checkout page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Lang {
    #[default]
    En,
    Es,
    Fr,
    De,
    Pt,
    ZhCn,
    Ja,
}

/// A tag that names no language the pages speak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{tag:?} is not a supported locale: expected one of en, es, fr, de, pt, zh-CN, ja")]
pub struct UnknownLang {
    pub tag: String,
}

impl Lang {
    pub const ALL: [Lang; 7] = [Lang::En, Lang::Es, Lang::Fr, Lang::De, Lang::Pt, Lang::ZhCn, Lang::Ja];

    /// The BCP 47 tag stored on invoices and written into the page's `lang` attribute.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Es => "es",
            Lang::Fr => "fr",
            Lang::De => "de",
            Lang::Pt => "pt",
            Lang::ZhCn => "zh-CN",
            Lang::Ja => "ja",
        }
    }

    /// The language of a BCP 47 tag, any case, `_` or `-` between subtags: `pt-BR` is Portuguese,
    /// `zh`, `zh-CN`, `zh-SG` and `zh-Hans` are Simplified Chinese.
    pub fn of_tag(tag: &str) -> Option<Lang> {
        let tag = tag.trim().to_ascii_lowercase().replace('_', "-");
        let mut parts = tag.split('-');
        let language = parts.next()?;
        Some(match language {
            "en" => Lang::En,
            "es" => Lang::Es,
            "fr" => Lang::Fr,
            "de" => Lang::De,
            "pt" => Lang::Pt,
            "ja" => Lang::Ja,
            "zh" => match parts.next() {
                None | Some("cn" | "sg" | "hans" | "my") => Lang::ZhCn,
                Some(_) => return None,
            },
            _ => return None,
        })
    }

    /// The best language for an `Accept-Language` header: the highest `q` among tags this page
    /// speaks (a bare language also matches its regional tags), first listed on a tie; `None`
    /// when nothing matches.
    pub fn negotiate(accept_language: &str) -> Option<Lang> {
        let mut best: Option<(u16, Lang)> = None;
        for item in accept_language.split(',') {
            let mut fields = item.split(';');
            let tag = fields.next().unwrap_or("").trim();
            let q = fields
                .find_map(|f| f.trim().strip_prefix("q=").map(parse_q))
                .unwrap_or(Some(1000));
            let (Some(q), Some(lang)) = (q, Lang::of_tag(tag)) else { continue };
            if q > 0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, lang));
            }
        }
        best.map(|(_, lang)| lang)
    }
}

/// A quality value as thousandths (`q=0.8` is 800); `None` when malformed.
fn parse_q(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u16 = match whole {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let fraction: u16 = if fraction.is_empty() { 0 } else { format!("{fraction:0<3}").parse().ok()? };
    let q = whole * 1000 + fraction;
    (q <= 1000).then_some(q)
}

impl FromStr for Lang {
    type Err = UnknownLang;

    fn from_str(tag: &str) -> Result<Self, Self::Err> {
        Lang::of_tag(tag).ok_or_else(|| UnknownLang { tag: tag.to_owned() })
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_regions_fold_into_their_language() {
        for lang in Lang::ALL {
            assert_eq!(lang.tag().parse::<Lang>(), Ok(lang));
        }
        assert_eq!(Lang::of_tag("pt-BR"), Some(Lang::Pt));
        assert_eq!(Lang::of_tag("EN_us"), Some(Lang::En));
        assert_eq!(Lang::of_tag("zh-Hans-CN"), Some(Lang::ZhCn));
        assert_eq!(Lang::of_tag("zh"), Some(Lang::ZhCn));
        assert_eq!(Lang::of_tag("zh-TW"), None);
        assert_eq!(Lang::of_tag("zh-Hant"), None);
        assert_eq!(Lang::of_tag("ar"), None);
        assert_eq!(Lang::of_tag(""), None);
        assert!("xx".parse::<Lang>().is_err());
    }

    #[test]
    fn accept_language_picks_the_best_spoken_tag() {
        assert_eq!(Lang::negotiate("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5"), Some(Lang::Fr));
        assert_eq!(Lang::negotiate("ar, de;q=0.3, ja;q=0.6"), Some(Lang::Ja));
        assert_eq!(Lang::negotiate("zh-TW, zh;q=0.9"), Some(Lang::ZhCn));
        assert_eq!(Lang::negotiate("es;q=0, en;q=0.1"), Some(Lang::En));
        assert_eq!(Lang::negotiate("pt-BR;q=1.0,es;q=1"), Some(Lang::Pt));
        assert_eq!(Lang::negotiate("ko, ar"), None);
        assert_eq!(Lang::negotiate("de;q=2, ja;q=abc, es;q=0.25"), Some(Lang::Es));
        assert_eq!(Lang::negotiate(""), None);
    }
}
