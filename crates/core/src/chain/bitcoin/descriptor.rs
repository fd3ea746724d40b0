//! Watch-only output descriptors: parsing, checking and deriving deposit addresses.
//!
//! Invariants of every [`WatchDescriptor`]:
//! - It holds public keys only (xpub/tpub, with or without origin info `[fingerprint/path]`);
//!   a descriptor with a private key is refused and its text is never echoed back.
//! - Its checksum (`#xxxxxxxx`), when given, matched the text.
//! - It is ranged (`/*`, unhardened), single-path, and of a segwit type (`wpkh`, `wsh`, `tr`):
//!   its addresses are bech32/bech32m, lower-case, so they key `deposit_addresses` as they are.
//! - Every extended key belongs to the chain's network kind (xpub on mainnet, tpub elsewhere).
//! - Index 0 derives: a descriptor that cannot give an address is refused when set, not when an
//!   invoice needs one.

use std::str::FromStr;

use bitcoin::{Address, Network, NetworkKind, ScriptBuf};
use miniscript::descriptor::{checksum::desc_checksum, Descriptor, DescriptorPublicKey, DescriptorType, Wildcard};
use miniscript::ForEachKey;
use thiserror::Error;

use crate::money::ChainId;

/// Longest descriptor text accepted.
pub const DESCRIPTOR_LEN_MAX: usize = 2_048;
/// Largest child index: unhardened indexes are below 2^31.
pub const CHILD_INDEX_MAX: u32 = (1 << 31) - 1;
/// Longest error reason kept from the descriptor parser.
const REASON_LEN_MAX: usize = 200;

pub type Result<T, E = DescriptorError> = std::result::Result<T, E>;

/// Why a descriptor is refused. None of these goes away by retrying.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DescriptorError {
    #[error("descriptor must be 1 to {DESCRIPTOR_LEN_MAX} bytes, got {len}")]
    Length { len: usize },
    #[error("descriptor checksum #{given} does not match: the text is damaged or the checksum belongs to another descriptor (expected #{expected})")]
    Checksum { given: String, expected: String },
    #[error("descriptor contains a private key: give the watch-only descriptor (xpub/tpub); payrail never holds Bitcoin private keys")]
    PrivateKey,
    #[error("descriptor has no wildcard: end the key path with /* so each invoice gets a fresh address")]
    NoWildcard,
    #[error("descriptor has a hardened wildcard (*h): addresses cannot be derived from a public key")]
    HardenedWildcard,
    #[error("descriptor is multipath (<0;1>): give the receive branch only, e.g. .../0/*")]
    Multipath,
    #[error("descriptor type {kind} is not supported: use wpkh(...), wsh(...) or tr(...)")]
    Unsupported { kind: String },
    #[error("descriptor key is a {key} key, the chain is {chain}: use an xpub on mainnet and a tpub on test networks")]
    WrongNetwork { key: &'static str, chain: Network },
    #[error("descriptor is not valid: {reason}")]
    Invalid { reason: String },
    #[error("descriptor cannot derive child index {index}: {reason}")]
    Derive { index: u32, reason: String },
}

impl DescriptorError {
    /// The API's stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Checksum { .. } => "descriptor_checksum",
            Self::PrivateKey => "descriptor_private_key",
            Self::NoWildcard | Self::HardenedWildcard | Self::Multipath => "descriptor_not_ranged",
            Self::Unsupported { .. } => "descriptor_unsupported",
            Self::WrongNetwork { .. } => "descriptor_network",
            Self::Length { .. } | Self::Invalid { .. } | Self::Derive { .. } => "descriptor_invalid",
        }
    }

    /// A refused descriptor stays refused.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// The Bitcoin network of a `bip122` chain id: the one whose genesis block hash starts with the
/// chain id's reference. `None` for other chains and unknown networks.
pub fn network_of(chain: &ChainId) -> Option<Network> {
    if !chain.is_bip122() {
        return None;
    }
    [Network::Bitcoin, Network::Testnet, Network::Testnet4, Network::Signet, Network::Regtest]
        .into_iter()
        .find(|network| genesis_reference(*network) == chain.reference())
}

/// The CAIP-2 reference of `network`: the first 32 hex characters of its genesis block hash.
pub fn genesis_reference(network: Network) -> String {
    let hash = bitcoin::constants::genesis_block(network).block_hash().to_string();
    hash.chars().take(32).collect()
}

/// A checked, public-only, ranged descriptor for one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchDescriptor {
    descriptor: Descriptor<DescriptorPublicKey>,
    network: Network,
}

/// Private key prefixes in descriptor text: extended (xprv, tprv and their SLIP-132 cousins).
const PRIVATE_PREFIXES: [&str; 6] = ["xprv", "tprv", "yprv", "zprv", "uprv", "vprv"];

impl WatchDescriptor {
    /// Parses and checks `text` for `network`; see the module docs.
    pub fn parse(text: &str, network: Network) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() || text.len() > DESCRIPTOR_LEN_MAX {
            return Err(DescriptorError::Length { len: text.len() });
        }
        // Refused before parsing, so that no parser message can quote a secret.
        if PRIVATE_PREFIXES.iter().any(|p| text.contains(p)) {
            return Err(DescriptorError::PrivateKey);
        }
        let body = match text.split_once('#') {
            Some((body, given)) => {
                let expected = desc_checksum(body).map_err(|e| invalid(&e))?;
                if given != expected {
                    return Err(DescriptorError::Checksum { given: given.chars().take(8).collect(), expected });
                }
                body
            }
            None => text,
        };
        let secp = bitcoin::secp256k1::Secp256k1::signing_only();
        let (descriptor, secrets) = Descriptor::<DescriptorPublicKey>::parse_descriptor(&secp, body).map_err(|e| invalid(&e))?;
        if !secrets.is_empty() {
            return Err(DescriptorError::PrivateKey);
        }
        match descriptor.desc_type() {
            DescriptorType::Wpkh | DescriptorType::Wsh | DescriptorType::WshSortedMulti | DescriptorType::Tr => {}
            other => return Err(DescriptorError::Unsupported { kind: format!("{other:?}").to_lowercase() }),
        }
        if descriptor.is_multipath() {
            return Err(DescriptorError::Multipath);
        }
        if !descriptor.has_wildcard() {
            return Err(DescriptorError::NoWildcard);
        }
        let expected = NetworkKind::from(network);
        let mut problem = None;
        descriptor.for_each_key(|key| {
            let (kind, wildcard) = match key {
                DescriptorPublicKey::XPub(x) => (Some(x.xkey.network), x.wildcard),
                DescriptorPublicKey::MultiXPub(x) => (Some(x.xkey.network), x.wildcard),
                DescriptorPublicKey::Single(_) => (None, Wildcard::None),
            };
            if wildcard == Wildcard::Hardened {
                problem.get_or_insert(DescriptorError::HardenedWildcard);
            }
            if let Some(kind) = kind.filter(|k| *k != expected) {
                let key = if kind.is_mainnet() { "mainnet (xpub)" } else { "test network (tpub)" };
                problem.get_or_insert(DescriptorError::WrongNetwork { key, chain: network });
            }
            true
        });
        if let Some(problem) = problem {
            return Err(problem);
        }
        let checked = Self { descriptor, network };
        checked.address_at(0)?;
        Ok(checked)
    }

    /// The descriptor as stored and shown: canonical text with its checksum.
    pub fn canonical(&self) -> String {
        self.descriptor.to_string()
    }

    pub fn network(&self) -> Network {
        self.network
    }

    /// The address at child `index` of the wildcard.
    pub fn address_at(&self, index: u32) -> Result<Address> {
        if index > CHILD_INDEX_MAX {
            return Err(DescriptorError::Derive { index, reason: format!("above the largest unhardened index {CHILD_INDEX_MAX}") });
        }
        let derive = |reason: String| DescriptorError::Derive { index, reason: truncate(reason) };
        let definite = self.descriptor.at_derivation_index(index).map_err(|e| derive(e.to_string()))?;
        definite.address(self.network).map_err(|e| derive(e.to_string()))
    }

    /// The output script at child `index`.
    pub fn script_at(&self, index: u32) -> Result<ScriptBuf> {
        Ok(self.address_at(index)?.script_pubkey())
    }
}

impl FromStr for WatchDescriptor {
    type Err = DescriptorError;

    /// Parses for mainnet; use [`WatchDescriptor::parse`] for other networks.
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s, Network::Bitcoin)
    }
}

fn truncate(mut reason: String) -> String {
    if reason.len() > REASON_LEN_MAX {
        let mut end = REASON_LEN_MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

fn invalid(error: &miniscript::Error) -> DescriptorError {
    DescriptorError::Invalid { reason: truncate(error.to_string()) }
}

/// Parses an address of `network` as stored in `deposit_addresses`.
pub fn parse_address(text: &str, network: Network) -> Option<Address> {
    text.parse::<Address<bitcoin::address::NetworkUnchecked>>().ok()?.require_network(network).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
    use bitcoin::base58;

    /// SLIP-132 `zpub`/`zprv` → BIP32 `xpub`/`xprv`: the same key under the standard version bytes.
    fn slip132_to_bip32(text: &str) -> String {
        let mut data = base58::decode_check(text).expect("base58check");
        let version: [u8; 4] = if text.starts_with("zprv") { [0x04, 0x88, 0xad, 0xe4] } else { [0x04, 0x88, 0xb2, 0x1e] };
        data[..4].copy_from_slice(&version);
        base58::encode_check(&data)
    }

    fn account_xpub(root: &str, path: &str) -> (String, String) {
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let root: Xpriv = root.parse().expect("root key");
        let path: DerivationPath = path.parse().expect("path");
        let account = root.derive_priv(&secp, &path).expect("derive");
        (root.fingerprint(&secp).to_string(), Xpub::from_priv(&secp, &account).to_string())
    }

    // BIP84 test vectors (mnemonic "abandon ×11 about").
    const BIP84_ROOT: &str = "zprvAWgYBBk7JR8Gjrh4UJQ2uJdG1r3WNRRfURiABBE3RvMXYSrRJL62XuezvGdPvG6GFBZduosCc1YP5wixPox7zhZLfiUm8aunE96BBa4Kei5";
    const BIP84_ACCOUNT_ZPRV: &str = "zprvAdG4iTXWBoARxkkzNpNh8r6Qag3irQB8PzEMkAFeTRXxHpbF9z4QgEvBRmfvqWvGp42t42nvgGpNgYSJA9iefm1yYNZKEm7z6qUWCroSQnE";
    const BIP84_ACCOUNT_ZPUB: &str = "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs";
    // BIP86 test vectors (same mnemonic).
    const BIP86_ROOT: &str = "xprv9s21ZrQH143K3GJpoapnV8SFfukcVBSfeCficPSGfubmSFDxo1kuHnLisriDvSnRRuL2Qrg5ggqHKNVpxR86QEC8w35uxmGoggxtQTPvfUu";
    const BIP86_ACCOUNT_XPUB: &str = "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ";

    #[test]
    fn bip84_vectors_derive_exactly() {
        let xpub = slip132_to_bip32(BIP84_ACCOUNT_ZPUB);
        let (fingerprint, derived) = account_xpub(&slip132_to_bip32(BIP84_ROOT), "m/84'/0'/0'");
        assert_eq!(derived, xpub, "the account key of the vector");
        let account_xprv: Xpriv = slip132_to_bip32(BIP84_ACCOUNT_ZPRV).parse().expect("xprv");
        let secp = bitcoin::secp256k1::Secp256k1::new();
        assert_eq!(Xpub::from_priv(&secp, &account_xprv).to_string(), xpub);
        assert_eq!(fingerprint, "73c5da0a");
        let receive = WatchDescriptor::parse(&format!("wpkh([{fingerprint}/84h/0h/0h]{xpub}/0/*)"), Network::Bitcoin).expect("receive");
        assert_eq!(receive.address_at(0).expect("0").to_string(), "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu");
        assert_eq!(receive.address_at(1).expect("1").to_string(), "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g");
        let change = WatchDescriptor::parse(&format!("wpkh({xpub}/1/*)"), Network::Bitcoin).expect("change");
        assert_eq!(change.address_at(0).expect("0").to_string(), "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el");
    }

    #[test]
    fn bip86_vectors_derive_exactly() {
        let (fingerprint, derived) = account_xpub(BIP86_ROOT, "m/86'/0'/0'");
        assert_eq!(derived, BIP86_ACCOUNT_XPUB);
        let receive =
            WatchDescriptor::parse(&format!("tr([{fingerprint}/86h/0h/0h]{BIP86_ACCOUNT_XPUB}/0/*)"), Network::Bitcoin).expect("receive");
        assert_eq!(receive.address_at(0).expect("0").to_string(), "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr");
        assert_eq!(receive.address_at(1).expect("1").to_string(), "bc1p4qhjn9zdvkux4e44uhx8tc55attvtyu358kutcqkudyccelu0was9fqzwh");
        assert_eq!(
            receive.script_at(0).expect("script").to_hex_string(),
            "5120a60869f0dbcf1dc659c9cecbaf8050135ea9e8cdc487053f1dc6880949dc684c"
        );
        let change = WatchDescriptor::parse(&format!("tr({BIP86_ACCOUNT_XPUB}/1/*)"), Network::Bitcoin).expect("change");
        assert_eq!(change.address_at(0).expect("0").to_string(), "bc1p3qkhfews2uk44qtvauqyr2ttdsw7svhkl9nkm9s9c3x4ax5h60wqwruhk7");
    }

    #[test]
    fn checksums_are_verified_and_canonical_text_carries_one() {
        let text = format!("tr({BIP86_ACCOUNT_XPUB}/0/*)");
        let canonical = WatchDescriptor::parse(&text, Network::Bitcoin).expect("parse").canonical();
        let (body, checksum) = canonical.split_once('#').expect("canonical text has a checksum");
        assert_eq!(checksum.len(), 8);
        assert_eq!(WatchDescriptor::parse(&canonical, Network::Bitcoin).expect("with checksum").canonical(), canonical);
        let mut wrong: Vec<char> = checksum.chars().collect();
        wrong[0] = if wrong[0] == 'q' { 'p' } else { 'q' };
        let damaged = format!("{body}#{}", wrong.iter().collect::<String>());
        let error = WatchDescriptor::parse(&damaged, Network::Bitcoin).expect_err("bad checksum");
        assert!(matches!(error, DescriptorError::Checksum { .. }), "{error}");
        assert_eq!(error.code(), "descriptor_checksum");
    }

    #[test]
    fn private_keys_unranged_multipath_legacy_and_wrong_networks_are_refused() {
        let refuse = |text: &str, network: Network| WatchDescriptor::parse(text, network).expect_err(text);
        let private = refuse(&format!("tr({BIP86_ROOT}/86h/0h/0h/0/*)"), Network::Bitcoin);
        assert_eq!(private, DescriptorError::PrivateKey);
        assert!(!private.to_string().contains("xprv9s21"), "the secret is not echoed");
        let wif = refuse("wpkh(KyZpNDKnfs94vbrwhJneDi77V6jF64PWPF8x5cdJb8ifgg2DUc9d)", Network::Bitcoin);
        assert_eq!(wif, DescriptorError::PrivateKey);
        assert_eq!(refuse(&format!("tr({BIP86_ACCOUNT_XPUB}/0/0)"), Network::Bitcoin), DescriptorError::NoWildcard);
        assert_eq!(refuse(&format!("tr({BIP86_ACCOUNT_XPUB}/<0;1>/*)"), Network::Bitcoin), DescriptorError::Multipath);
        assert_eq!(refuse(&format!("tr({BIP86_ACCOUNT_XPUB}/0/*h)"), Network::Bitcoin), DescriptorError::HardenedWildcard);
        assert!(matches!(refuse(&format!("pkh({BIP86_ACCOUNT_XPUB}/0/*)"), Network::Bitcoin), DescriptorError::Unsupported { .. }));
        assert!(matches!(refuse(&format!("sh(wpkh({BIP86_ACCOUNT_XPUB}/0/*))"), Network::Bitcoin), DescriptorError::Unsupported { .. }));
        let network = refuse(&format!("tr({BIP86_ACCOUNT_XPUB}/0/*)"), Network::Regtest);
        assert!(matches!(network, DescriptorError::WrongNetwork { .. }), "{network}");
        assert_eq!(network.code(), "descriptor_network");
        assert!(matches!(refuse("wpkh(nonsense/0/*)", Network::Bitcoin), DescriptorError::Invalid { .. }));
        assert!(matches!(refuse("", Network::Bitcoin), DescriptorError::Length { len: 0 }));
    }

    #[test]
    fn test_network_keys_derive_regtest_addresses() {
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let root = Xpriv::new_master(NetworkKind::Test, &[7u8; 32]).expect("root");
        let path: DerivationPath = "m/84'/1'/0'".parse().expect("path");
        let tpub = Xpub::from_priv(&secp, &root.derive_priv(&secp, &path).expect("derive"));
        let text = format!("wpkh([{}/84h/1h/0h]{tpub}/0/*)", root.fingerprint(&secp));
        let regtest = WatchDescriptor::parse(&text, Network::Regtest).expect("regtest");
        assert!(regtest.address_at(5).expect("5").to_string().starts_with("bcrt1q"));
        assert!(matches!(WatchDescriptor::parse(&text, Network::Bitcoin), Err(DescriptorError::WrongNetwork { .. })));
        assert!(regtest.address_at(CHILD_INDEX_MAX + 1).is_err());
    }

    #[test]
    fn chain_ids_map_to_networks_by_genesis_block() {
        assert_eq!(network_of(&ChainId::bitcoin_mainnet()), Some(Network::Bitcoin));
        assert_eq!(network_of(&ChainId::bitcoin_testnet()), Some(Network::Testnet));
        assert_eq!(network_of(&ChainId::bitcoin_testnet4()), Some(Network::Testnet4));
        assert_eq!(network_of(&ChainId::bitcoin_signet()), Some(Network::Signet));
        assert_eq!(network_of(&ChainId::bitcoin_regtest()), Some(Network::Regtest));
        assert_eq!(network_of(&ChainId::eip155(1)), None);
        assert_eq!(genesis_reference(Network::Regtest), "0f9188f13cb7b2c71f2a335e3a4fc328");
    }
}
