//! `ChainId`: a CAIP-2 blockchain id, `namespace:reference` (`eip155:137`,
//! `bip122:000000000019d6689c085ae165831e93`).
//!
//! Invariants:
//! - `namespace` matches `[-a-z0-9]{3,8}` and `reference` matches `[-_a-zA-Z0-9]{1,32}`.
//! - Each chain has exactly one spelling, so equal chains compare and hash equal:
//!   - `eip155` references are the chain id in canonical decimal (no sign, no leading zero)
//!     and fit `u64`, so `evm_chain_id` is `Some` for every `eip155` chain;
//!   - `bip122` references are the first 32 lowercase hex characters of the genesis block
//!     hash, as CAIP-4 specifies.

use std::fmt;
use std::str::FromStr;

use super::serde_str::impl_serde_via_str;

pub const NAMESPACE_LEN_MIN: usize = 3;
pub const NAMESPACE_LEN_MAX: usize = 8;
pub const REFERENCE_LEN_MAX: usize = 32;
/// Longest well-formed CAIP-2 id; longer input is refused before it is inspected.
pub const CHAIN_ID_LEN_MAX: usize = NAMESPACE_LEN_MAX + 1 + REFERENCE_LEN_MAX;

const EIP155: &str = "eip155";
const BIP122: &str = "bip122";
const BIP122_REFERENCE_LEN: usize = 32;

/// Errors from parsing a CAIP-2 chain id; each carries the refused input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainIdError {
    #[error("chain id is {len} characters long, more than the maximum of {max}")]
    TooLong { len: usize, max: usize },
    #[error("chain id {input:?} is not of the form namespace:reference")]
    MissingSeparator { input: String },
    #[error("chain id {input:?} has a namespace that is not 3 to 8 characters of [-a-z0-9]")]
    InvalidNamespace { input: String },
    #[error("chain id {input:?} has a reference that is not 1 to 32 characters of [-_a-zA-Z0-9]")]
    InvalidReference { input: String },
    #[error("chain id {input:?} is eip155 but its reference is not a canonical decimal u64")]
    InvalidEip155Reference { input: String },
    #[error("chain id {input:?} is bip122 but its reference is not 32 lowercase hex characters")]
    InvalidBip122Reference { input: String },
}

/// A CAIP-2 chain id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainId {
    namespace: String,
    reference: String,
}

/// `[-a-z0-9]{3,8}`: the namespace grammar shared with CAIP-19 asset namespaces.
pub(crate) fn is_valid_namespace(s: &str) -> bool {
    (NAMESPACE_LEN_MIN..=NAMESPACE_LEN_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b == b'-' || b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_valid_reference(s: &str) -> bool {
    (1..=REFERENCE_LEN_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b == b'-' || b == b'_' || b.is_ascii_alphanumeric())
}

/// Canonical decimal u64: what `u64::to_string` produces, and nothing else.
pub(crate) fn parse_canonical_u64(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

impl ChainId {
    /// An EVM chain by its EIP-155 chain id (1 Ethereum, 137 Polygon, 56 BSC, ...).
    pub fn eip155(chain_id: u64) -> ChainId {
        ChainId {
            namespace: EIP155.to_owned(),
            reference: chain_id.to_string(),
        }
    }

    /// Bitcoin mainnet.
    pub fn bitcoin_mainnet() -> ChainId {
        Self::bip122("000000000019d6689c085ae165831e93")
    }

    /// Bitcoin testnet3.
    pub fn bitcoin_testnet() -> ChainId {
        Self::bip122("000000000933ea01ad0ee984209779ba")
    }

    /// Bitcoin testnet4 (BIP94).
    pub fn bitcoin_testnet4() -> ChainId {
        Self::bip122("00000000da84f2bafbbc53dee25a72ae")
    }

    /// Bitcoin signet (the default public signet).
    pub fn bitcoin_signet() -> ChainId {
        Self::bip122("00000008819873e925422c1ff0f99f7c")
    }

    /// Bitcoin regtest; every regtest network shares this genesis block.
    pub fn bitcoin_regtest() -> ChainId {
        Self::bip122("0f9188f13cb7b2c71f2a335e3a4fc328")
    }

    fn bip122(reference: &str) -> ChainId {
        ChainId {
            namespace: BIP122.to_owned(),
            reference: reference.to_owned(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The EIP-155 chain id, for `eip155` chains.
    pub fn evm_chain_id(&self) -> Option<u64> {
        if self.namespace == EIP155 {
            parse_canonical_u64(&self.reference)
        } else {
            None
        }
    }

    pub fn is_eip155(&self) -> bool {
        self.namespace == EIP155
    }

    pub fn is_bip122(&self) -> bool {
        self.namespace == BIP122
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.namespace, self.reference)
    }
}

impl FromStr for ChainId {
    type Err = ChainIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > CHAIN_ID_LEN_MAX {
            return Err(ChainIdError::TooLong {
                len: s.len(),
                max: CHAIN_ID_LEN_MAX,
            });
        }
        let input = || s.to_owned();
        let (namespace, reference) = s
            .split_once(':')
            .ok_or_else(|| ChainIdError::MissingSeparator { input: input() })?;
        if !is_valid_namespace(namespace) {
            return Err(ChainIdError::InvalidNamespace { input: input() });
        }
        if !is_valid_reference(reference) {
            return Err(ChainIdError::InvalidReference { input: input() });
        }
        match namespace {
            EIP155 if parse_canonical_u64(reference).is_none() => {
                return Err(ChainIdError::InvalidEip155Reference { input: input() });
            }
            BIP122
                if reference.len() != BIP122_REFERENCE_LEN
                    || !reference
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                return Err(ChainIdError::InvalidBip122Reference { input: input() });
            }
            _ => {}
        }
        Ok(ChainId {
            namespace: namespace.to_owned(),
            reference: reference.to_owned(),
        })
    }
}

impl_serde_via_str!(ChainId);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ChainId, ChainIdError> {
        s.parse()
    }

    #[test]
    fn parses_and_displays_standard_ids() {
        for id in [
            "eip155:1",
            "eip155:137",
            "eip155:0",
            "eip155:18446744073709551615",
            "bip122:000000000019d6689c085ae165831e93",
            "cosmos:cosmoshub-4",
            "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
            "abc:-_Az9",
        ] {
            let chain = parse(id);
            assert_eq!(
                chain.as_ref().map(ToString::to_string),
                Ok(id.to_owned()),
                "{id}"
            );
        }
    }

    #[test]
    fn accessors() {
        let polygon = ChainId::eip155(137);
        assert_eq!(polygon.to_string(), "eip155:137");
        assert_eq!(
            (polygon.namespace(), polygon.reference()),
            ("eip155", "137")
        );
        assert_eq!(polygon.evm_chain_id(), Some(137));
        assert!(polygon.is_eip155() && !polygon.is_bip122());

        let btc = ChainId::bitcoin_mainnet();
        assert_eq!(btc.to_string(), "bip122:000000000019d6689c085ae165831e93");
        assert!(btc.is_bip122());
        assert_eq!(btc.evm_chain_id(), None);
        assert_eq!(parse(&btc.to_string()), Ok(btc));
        for chain in [
            ChainId::bitcoin_testnet(),
            ChainId::bitcoin_signet(),
            ChainId::bitcoin_regtest(),
        ] {
            assert_eq!(parse(&chain.to_string()), Ok(chain.clone()));
        }
    }

    #[test]
    fn refuses_malformed_ids() {
        type Case = (&'static str, fn(String) -> ChainIdError);
        let cases: [Case; 14] = [
            ("eip155", |input| ChainIdError::MissingSeparator { input }),
            ("", |input| ChainIdError::MissingSeparator { input }),
            ("ei:1", |input| ChainIdError::InvalidNamespace { input }),
            ("abcdefghi:1", |input| ChainIdError::InvalidNamespace {
                input,
            }),
            ("EIP155:1", |input| ChainIdError::InvalidNamespace { input }),
            ("ab_c:1", |input| ChainIdError::InvalidNamespace { input }),
            ("eip155:", |input| ChainIdError::InvalidReference { input }),
            ("eip155:1:2", |input| ChainIdError::InvalidReference {
                input,
            }),
            ("abc:a.b", |input| ChainIdError::InvalidReference { input }),
            ("abc:012345678901234567890123456789012", |input| {
                ChainIdError::InvalidReference { input }
            }),
            ("eip155:01", |input| ChainIdError::InvalidEip155Reference {
                input,
            }),
            ("eip155:18446744073709551616", |input| {
                ChainIdError::InvalidEip155Reference { input }
            }),
            ("bip122:000000000019D6689C085AE165831E93", |input| {
                ChainIdError::InvalidBip122Reference { input }
            }),
            ("bip122:000000000019d6689c085ae165831e", |input| {
                ChainIdError::InvalidBip122Reference { input }
            }),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input), Err(expected(input.to_owned())), "{input:?}");
        }
        let long = format!("abc:{}", "a".repeat(40));
        assert_eq!(
            parse(&long),
            Err(ChainIdError::TooLong {
                len: 44,
                max: CHAIN_ID_LEN_MAX
            })
        );
    }

    #[test]
    fn serde_is_a_string() {
        let json = serde_json::to_string(&ChainId::eip155(1)).ok();
        assert_eq!(json.as_deref(), Some("\"eip155:1\""));
        assert_eq!(
            serde_json::from_str::<ChainId>("\"eip155:1\"").ok(),
            Some(ChainId::eip155(1))
        );
        assert!(serde_json::from_str::<ChainId>("\"eip155:x\"").is_err());
    }
}
