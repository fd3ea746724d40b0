//! `AssetId`: a CAIP-19 asset type, `{chain}/{asset_namespace}:{asset_reference}`
//! (`eip155:137/erc20:0x3c49…3359`, `eip155:1/slip44:60`, `bip122:…/slip44:0`).
//!
//! Invariants:
//! - `chain` is a valid CAIP-2 `ChainId`; `namespace` matches `[-a-z0-9]{3,8}`;
//!   `reference` matches `[-.%a-zA-Z0-9]{1,128}`.
//! - Each asset has exactly one spelling, so equal assets compare and hash equal (they key
//!   ledger accounts and balances):
//!   - an `erc20` (or `bep20`) reference is `0x` plus 40 hex digits and is stored lowercase,
//!     so a checksummed and a lowercase address name the same token;
//!   - a `slip44` reference is a coin type in canonical decimal that fits `u32`.

use std::fmt;
use std::str::FromStr;

use alloy_primitives::Address;

use super::chain::{
    is_valid_namespace, parse_canonical_u64, ChainId, ChainIdError, CHAIN_ID_LEN_MAX,
};
use super::serde_str::impl_serde_via_str;

pub const ASSET_REFERENCE_LEN_MAX: usize = 128;
/// Longest well-formed CAIP-19 asset type; longer input is refused before it is inspected.
pub const ASSET_ID_LEN_MAX: usize =
    CHAIN_ID_LEN_MAX + 1 + super::chain::NAMESPACE_LEN_MAX + 1 + ASSET_REFERENCE_LEN_MAX;

const ERC20: &str = "erc20";
const BEP20: &str = "bep20";
const SLIP44: &str = "slip44";

/// Errors from parsing a CAIP-19 asset id; each carries the refused input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssetIdError {
    #[error("asset id is {len} characters long, more than the maximum of {max}")]
    TooLong { len: usize, max: usize },
    #[error("asset id {input:?} is not of the form chain/namespace:reference")]
    MissingSeparator { input: String },
    #[error("asset id {input:?} has an invalid chain: {source}")]
    InvalidChain {
        input: String,
        #[source]
        source: ChainIdError,
    },
    #[error("asset id {input:?} has a namespace that is not 3 to 8 characters of [-a-z0-9]")]
    InvalidNamespace { input: String },
    #[error(
        "asset id {input:?} has a reference that is not 1 to 128 characters of [-.%a-zA-Z0-9]"
    )]
    InvalidReference { input: String },
    #[error("asset id {input:?} is a token but its reference is not 0x and 40 hex digits")]
    InvalidTokenAddress { input: String },
    #[error("asset id {input:?} is slip44 but its reference is not a canonical decimal u32")]
    InvalidSlip44Reference { input: String },
}

/// A CAIP-19 asset type.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssetId {
    chain: ChainId,
    namespace: String,
    reference: String,
}

fn is_valid_reference(s: &str) -> bool {
    (1..=ASSET_REFERENCE_LEN_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b == b'-' || b == b'.' || b == b'%' || b.is_ascii_alphanumeric())
}

/// `0x` + 40 hex digits of any case, returned lowercase.
fn normalize_token_address(s: &str) -> Option<String> {
    let hex = s.strip_prefix("0x")?;
    (hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("0x{}", hex.to_ascii_lowercase()))
}

fn address_reference(address: Address) -> String {
    format!("0x{}", hex::encode(address.as_slice()))
}

impl AssetId {
    /// The chain's native coin by its SLIP-44 coin type (`slip44:60` ether, `slip44:0`
    /// bitcoin; EVM chains whose coin is not ether still use their own registered type).
    pub fn native(chain: ChainId, slip44: u32) -> AssetId {
        AssetId {
            chain,
            namespace: SLIP44.to_owned(),
            reference: slip44.to_string(),
        }
    }

    /// An ERC-20 token by its contract address.
    pub fn erc20(chain: ChainId, address: Address) -> AssetId {
        AssetId {
            chain,
            namespace: ERC20.to_owned(),
            reference: address_reference(address),
        }
    }

    pub fn chain(&self) -> &ChainId {
        &self.chain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The token contract, for `erc20` and `bep20` assets.
    pub fn erc20_address(&self) -> Option<Address> {
        if self.namespace == ERC20 || self.namespace == BEP20 {
            self.reference.parse().ok()
        } else {
            None
        }
    }

    /// The SLIP-44 coin type, for native assets.
    pub fn slip44_coin_type(&self) -> Option<u32> {
        if self.is_native() {
            parse_canonical_u64(&self.reference).and_then(|v| u32::try_from(v).ok())
        } else {
            None
        }
    }

    /// Whether this is the chain's native coin (namespace `slip44`).
    pub fn is_native(&self) -> bool {
        self.namespace == SLIP44
    }
}

impl fmt::Display for AssetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.chain, self.namespace, self.reference)
    }
}

impl FromStr for AssetId {
    type Err = AssetIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > ASSET_ID_LEN_MAX {
            return Err(AssetIdError::TooLong {
                len: s.len(),
                max: ASSET_ID_LEN_MAX,
            });
        }
        let input = || s.to_owned();
        let (chain, asset) = s
            .split_once('/')
            .ok_or_else(|| AssetIdError::MissingSeparator { input: input() })?;
        let (namespace, reference) = asset
            .split_once(':')
            .ok_or_else(|| AssetIdError::MissingSeparator { input: input() })?;
        let chain: ChainId = chain.parse().map_err(|source| AssetIdError::InvalidChain {
            input: input(),
            source,
        })?;
        if !is_valid_namespace(namespace) {
            return Err(AssetIdError::InvalidNamespace { input: input() });
        }
        if !is_valid_reference(reference) {
            return Err(AssetIdError::InvalidReference { input: input() });
        }
        let reference = match namespace {
            ERC20 | BEP20 => normalize_token_address(reference)
                .ok_or_else(|| AssetIdError::InvalidTokenAddress { input: input() })?,
            SLIP44 => parse_canonical_u64(reference)
                .and_then(|v| u32::try_from(v).ok())
                .map(|v| v.to_string())
                .ok_or_else(|| AssetIdError::InvalidSlip44Reference { input: input() })?,
            _ => reference.to_owned(),
        };
        Ok(AssetId {
            chain,
            namespace: namespace.to_owned(),
            reference,
        })
    }
}

impl_serde_via_str!(AssetId);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const USDC_POLYGON: &str = "eip155:137/erc20:0x3c499c542cef5e3811e1192ce70d8cc03d5c3359";

    fn parse(s: &str) -> Result<AssetId, AssetIdError> {
        s.parse()
    }

    #[test]
    fn parses_standard_ids() {
        let usdc = parse(USDC_POLYGON);
        assert_eq!(
            usdc.as_ref().map(ToString::to_string),
            Ok(USDC_POLYGON.to_owned())
        );
        let usdc = usdc.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(usdc.chain(), &ChainId::eip155(137));
        assert_eq!(usdc.namespace(), "erc20");
        assert!(!usdc.is_native());
        assert_eq!(
            usdc.erc20_address().map(address_reference).as_deref(),
            Some(&USDC_POLYGON[17..])
        );

        let ether = parse("eip155:1/slip44:60");
        assert_eq!(ether, Ok(AssetId::native(ChainId::eip155(1), 60)));
        let btc = parse("bip122:000000000019d6689c085ae165831e93/slip44:0");
        assert_eq!(btc.as_ref().map(AssetId::is_native), Ok(true));
        assert_eq!(btc.as_ref().map(AssetId::slip44_coin_type), Ok(Some(0)));
        assert_eq!(btc.as_ref().map(AssetId::erc20_address), Ok(None));

        let nft = "eip155:1/erc721:0x06012c8cf97BEaD5deAe237070F9587f8E7A266d";
        assert_eq!(parse(nft).map(|a| a.to_string()), Ok(nft.to_owned()));
    }

    #[test]
    fn token_addresses_are_lowercased() {
        let checksummed = "eip155:137/erc20:0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359";
        assert_eq!(parse(checksummed), parse(USDC_POLYGON));
        let bep20 = parse("eip155:56/bep20:0x55D398326F99059FF775485246999027B3197955");
        assert_eq!(
            bep20.map(|a| a.to_string()),
            Ok("eip155:56/bep20:0x55d398326f99059ff775485246999027b3197955".to_owned())
        );
    }

    #[test]
    fn constructors_match_parsing() {
        let address = Address::repeat_byte(0xab);
        let asset = AssetId::erc20(ChainId::eip155(10), address);
        assert_eq!(
            asset.to_string(),
            format!("eip155:10/erc20:0x{}", "ab".repeat(20))
        );
        assert_eq!(asset.erc20_address(), Some(address));
        assert_eq!(parse(&asset.to_string()), Ok(asset));
    }

    #[test]
    fn refuses_malformed_ids() {
        type Case = (&'static str, fn(String) -> AssetIdError);
        let cases: [Case; 10] = [
            ("eip155:1", |input| AssetIdError::MissingSeparator { input }),
            ("eip155:1/slip44", |input| AssetIdError::MissingSeparator {
                input,
            }),
            ("eip155:1/sl:60", |input| AssetIdError::InvalidNamespace {
                input,
            }),
            ("eip155:1/SLIP44:60", |input| {
                AssetIdError::InvalidNamespace { input }
            }),
            ("eip155:1/token:", |input| AssetIdError::InvalidReference {
                input,
            }),
            ("eip155:1/token:a_b", |input| {
                AssetIdError::InvalidReference { input }
            }),
            ("eip155:1/erc20:0x1234", |input| {
                AssetIdError::InvalidTokenAddress { input }
            }),
            (
                "eip155:1/erc20:3c499c542cef5e3811e1192ce70d8cc03d5c3359ab",
                |input| AssetIdError::InvalidTokenAddress { input },
            ),
            ("eip155:1/slip44:060", |input| {
                AssetIdError::InvalidSlip44Reference { input }
            }),
            ("eip155:1/slip44:4294967296", |input| {
                AssetIdError::InvalidSlip44Reference { input }
            }),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input), Err(expected(input.to_owned())), "{input:?}");
        }
        assert!(matches!(
            parse("eip155:01/slip44:60"),
            Err(AssetIdError::InvalidChain { .. })
        ));
        let long = format!("eip155:1/token:{}", "a".repeat(200));
        assert_eq!(
            parse(&long),
            Err(AssetIdError::TooLong {
                len: long.len(),
                max: ASSET_ID_LEN_MAX
            })
        );
    }

    #[test]
    fn serde_is_a_string() {
        let asset = AssetId::native(ChainId::eip155(1), 60);
        let json = serde_json::to_string(&asset).ok();
        assert_eq!(json.as_deref(), Some("\"eip155:1/slip44:60\""));
        assert_eq!(
            serde_json::from_str::<AssetId>("\"eip155:1/slip44:60\"").ok(),
            Some(asset)
        );
        assert!(serde_json::from_str::<AssetId>("\"eip155:1/slip44:x\"").is_err());
    }

    /// Namespaces without extra rules, so any grammatical reference keeps its spelling.
    fn plain_namespace() -> impl Strategy<Value = String> {
        "[-a-z0-9]{3,8}".prop_filter("namespace with its own rules", |ns| {
            ![ERC20, BEP20, SLIP44, "eip155", "bip122"].contains(&ns.as_str())
        })
    }

    proptest! {
        #[test]
        fn display_from_str_round_trip(
            chain_ns in plain_namespace(),
            chain_ref in "[-_a-zA-Z0-9]{1,32}",
            asset_ns in plain_namespace(),
            asset_ref in "[-.%a-zA-Z0-9]{1,128}",
        ) {
            let text = format!("{chain_ns}:{chain_ref}/{asset_ns}:{asset_ref}");
            let asset = parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(asset.to_string(), text.clone());
            prop_assert_eq!(asset.namespace(), asset_ns.as_str());
            prop_assert_eq!(asset.reference(), asset_ref.as_str());
            prop_assert_eq!(asset.chain().to_string(), format!("{chain_ns}:{chain_ref}"));
        }

        #[test]
        fn erc20_round_trip(chain_id in any::<u64>(), bytes in any::<[u8; 20]>(), upper in any::<bool>()) {
            let address = Address::from(bytes);
            let asset = AssetId::erc20(ChainId::eip155(chain_id), address);
            let mut text = asset.to_string();
            if upper {
                let hex = text.split_off(text.len() - 40).to_ascii_uppercase();
                text.push_str(&hex);
            }
            let parsed = parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.erc20_address(), Some(address));
            prop_assert_eq!(parsed.chain().evm_chain_id(), Some(chain_id));
            prop_assert_eq!(parsed, asset);
        }

        #[test]
        fn native_round_trip(chain_id in any::<u64>(), coin in any::<u32>()) {
            let asset = AssetId::native(ChainId::eip155(chain_id), coin);
            prop_assert_eq!(parse(&asset.to_string()), Ok(asset.clone()));
            prop_assert_eq!(asset.slip44_coin_type(), Some(coin));
        }
    }
}
