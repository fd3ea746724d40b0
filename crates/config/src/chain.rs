//! `ChainSpec`: one chain as described by its file in `chains/`: CAIP-2 id, native coin,
//! tokens, confirmation policy, finality tags, reorg window and default RPC endpoints.
//!
//! Invariants of every `ChainSpec` built here:
//! - `name` is the file's stem, `[a-z0-9_-]`, so `chains/polygon.toml` is always `polygon`.
//! - `caip2` agrees with `kind`: `bip122:` for Bitcoin, `eip155:` for EVM chains.
//! - Symbols are upper-case `[A-Z0-9]`, unique within the chain (native coin included);
//!   token addresses are unique, non-zero, and when written in mixed case they carry a valid
//!   EIP-55 checksum, which catches a mistyped digit.
//! - Bitcoin chains have no tokens and no finality tags; EVM chains may have both.
//! - `reorg_depth_max` is at least the deepest confirmation requirement: a reorg that can
//!   still undo an accepted payment must be inside the window of stored block hashes.
//! - `rpc` endpoints use the chain kind's schemes (`http`/`https` for EVM JSON-RPC,
//!   `tcp`/`ssl` with a port for Electrum).

use std::fmt;
use std::path::Path;

use alloy_primitives::Address;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::money::{Amount, AssetId, ChainId};

use super::de::{from_text, invalid, parse_document};
use super::error::{ConfigError, InvalidKey, Result};
use super::policy::{ConfirmationPolicy, ConfirmationTier, USD_MINOR_UNITS};
use super::url;

/// Most chain files read from one directory.
pub const CHAIN_FILES_MAX: usize = 64;
/// Largest chain or configuration file read.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Most tokens per chain; each one is a watched contract.
pub const TOKENS_MAX: usize = 256;
/// Most RPC endpoints per chain.
pub const RPC_ENDPOINTS_MAX: usize = 16;
/// Largest `reorg_depth_max` accepted: deeper reorgs stop the watcher instead.
pub const REORG_DEPTH_MAX_LIMIT: u32 = 10_000;
/// Longest block interval accepted: an hour.
pub const BLOCK_TIME_MS_MAX: u64 = 3_600_000;
/// Most decimals an asset may have: one whole unit must fit in 256 bits (10^77 < 2^256).
pub const DECIMALS_MAX: u8 = 77;
/// Longest asset symbol.
pub const SYMBOL_LEN_MAX: usize = 11;
/// Longest chain name.
pub const CHAIN_NAME_LEN_MAX: usize = 32;

/// How the chain is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainKind {
    /// Bitcoin through the Electrum protocol.
    Bitcoin,
    /// An EVM chain through JSON-RPC.
    Evm,
}

impl ChainKind {
    /// The CAIP-2 namespace of chains of this kind.
    pub fn caip2_namespace(self) -> &'static str {
        match self {
            ChainKind::Bitcoin => "bip122",
            ChainKind::Evm => "eip155",
        }
    }

    /// The kind as chain files spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainKind::Bitcoin => "bitcoin",
            ChainKind::Evm => "evm",
        }
    }

    /// URL schemes of this kind's endpoints, and whether a port must be written.
    fn rpc_schemes(self) -> (&'static [&'static str], bool) {
        match self {
            ChainKind::Bitcoin => (&["tcp", "ssl"], true),
            ChainKind::Evm => (&["http", "https"], false),
        }
    }
}

/// A block tag the chain's JSON-RPC understands besides `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalityTag {
    Safe,
    Finalized,
}

impl FinalityTag {
    /// The tag as JSON-RPC spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinalityTag::Safe => "safe",
            FinalityTag::Finalized => "finalized",
        }
    }
}

/// How an EVM watcher finds native coin that reaches a deposit address from inside a contract
/// call (a payout contract, a smart wallet), which no transaction's `value` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InternalTransfers {
    /// `traces` where the node answers `trace_block`, else `balance_check`.
    #[default]
    Auto,
    /// The value calls in `trace_block` of every block with transactions: each one is seen in its
    /// block, at a cost that grows with blocks, not with watched addresses.
    Traces,
    /// When caught up, a bounded number of watched addresses' balances are compared with the
    /// payments recorded for them, in turn: with many open invoices an address's turn comes late.
    BalanceCheck,
}

/// An RPC endpoint. Its `Debug` and `Display` show only scheme, host and port, because
/// providers put API keys in the rest; [`RpcUrl::as_str`] gives the full URL to connect.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RpcUrl(String);

impl RpcUrl {
    /// An endpoint given outside the configuration files (the dev stack, tests).
    pub fn new(text: &str) -> std::result::Result<Self, String> {
        match text.split_once("://") {
            Some((scheme, rest)) if !rest.is_empty() && matches!(scheme, "http" | "https" | "ws" | "wss" | "tcp" | "ssl") => {
                Ok(Self(text.to_owned()))
            }
            _ => Err(format!("{} is not an endpoint URL", url::redact_endpoint(text))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RpcUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RpcUrl({:?})", url::redact_endpoint(&self.0))
    }
}

impl fmt::Display for RpcUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&url::redact_endpoint(&self.0))
    }
}

/// The chain's native coin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeAsset {
    pub chain: ChainId,
    pub symbol: String,
    pub decimals: u8,
    /// Decimals a payer is asked to send (quotes are rounded up to them).
    pub display_decimals: u8,
    /// SLIP-44 coin type (0 BTC, 60 ETH, 966 POL, 714 BNB).
    pub slip44: u32,
}

impl NativeAsset {
    pub fn asset_id(&self) -> AssetId {
        AssetId::native(self.chain.clone(), self.slip44)
    }
}

/// An ERC-20 token on a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub chain: ChainId,
    pub symbol: String,
    pub address: Address,
    pub decimals: u8,
    /// Decimals a payer is asked to send (quotes are rounded up to them).
    pub display_decimals: u8,
}

impl TokenSpec {
    pub fn asset_id(&self) -> AssetId {
        AssetId::erc20(self.chain.clone(), self.address)
    }
}

/// One configured chain; see the module docs for the invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub name: String,
    pub caip2: ChainId,
    pub kind: ChainKind,
    pub native: NativeAsset,
    pub block_time_ms: u64,
    pub confirmations: ConfirmationPolicy,
    /// Tags the watcher may use instead of counting confirmations; empty on Bitcoin.
    pub finality_tags: Vec<FinalityTag>,
    /// Depth of the window of stored block hashes; a deeper reorg stops the watcher.
    pub reorg_depth_max: u32,
    pub tokens: Vec<TokenSpec>,
    /// Effective endpoints: the configuration's override if any, else the chain file's.
    pub rpc: Vec<RpcUrl>,
    /// EVM: a WebSocket endpoint (`ws://`, `wss://`) that pushes new heads, so the follower wakes
    /// on a block instead of at its next poll; polling stays as the safety net.
    pub ws: Option<RpcUrl>,
    /// EVM: the `ForwarderFactory` that owns the invoices' deposit addresses on this chain.
    pub forwarder_factory: Option<Address>,
    /// EVM: the `PayoutBatcher` that pays creators on this chain.
    pub payout_batcher: Option<Address>,
    /// First block a new watcher scans; without it, a new watcher starts at the tip.
    pub start_block: Option<u64>,
    /// EVM: how native coin sent by contracts is found.
    pub internal_transfers: InternalTransfers,
    /// A block explorer's page of a transaction, `{tx}` where its id goes: the checkout page
    /// links each payment to it.
    pub explorer_tx_url: Option<String>,
    /// Payments worth at most this many US cents count unconfirmed on an invoice whose speed
    /// policy is `fast` (none: never unconfirmed on this chain).
    pub zero_conf_up_to_usd_minor: Option<Amount>,
}

impl ChainSpec {
    pub fn native_asset_id(&self) -> AssetId {
        self.native.asset_id()
    }

    pub fn token(&self, symbol: &str) -> Option<&TokenSpec> {
        self.tokens.iter().find(|t| t.symbol == symbol)
    }

    pub fn token_by_address(&self, address: &Address) -> Option<&TokenSpec> {
        self.tokens.iter().find(|t| t.address == *address)
    }

    pub fn has_finality_tag(&self, tag: FinalityTag) -> bool {
        self.finality_tags.contains(&tag)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainFile {
    name: String,
    caip2: ChainId,
    kind: ChainKind,
    native: NativeFile,
    block_time_ms: u64,
    reorg_depth_max: u32,
    #[serde(default)]
    finality_tags: Vec<FinalityTag>,
    confirmations: Vec<TierFile>,
    #[serde(default)]
    tokens: Vec<TokenFile>,
    #[serde(default)]
    rpc: Vec<String>,
    #[serde(default)]
    internal_transfers: Option<InternalTransfers>,
    #[serde(default)]
    explorer_tx_url: Option<String>,
    #[serde(default)]
    ws: Option<String>,
    #[serde(default, deserialize_with = "usd_minor")]
    zero_conf_up_to_usd: Option<Amount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeFile {
    symbol: String,
    decimals: u8,
    slip44: u32,
    /// Default: `money::display::default_display_decimals`.
    #[serde(default)]
    display_decimals: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierFile {
    #[serde(default, deserialize_with = "usd_minor")]
    up_to_usd: Option<Amount>,
    confirmations: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    symbol: String,
    #[serde(deserialize_with = "token_address")]
    address: Address,
    decimals: u8,
    /// Default: `money::display::default_display_decimals`.
    #[serde(default)]
    display_decimals: Option<u8>,
}

/// A USD decimal string ("1000", "2500.50") as cents.
fn usd_minor<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<Amount>, D::Error> {
    let text = String::deserialize(deserializer)?;
    Amount::parse_decimal(&text, USD_MINOR_UNITS)
        .map(Some)
        .map_err(de::Error::custom)
}

fn token_address<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Address, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_token_address(&text).map_err(de::Error::custom)
}

/// `0x` + 40 hex digits; a mixed-case address must pass its EIP-55 checksum.
pub(crate) fn parse_token_address(text: &str) -> std::result::Result<Address, String> {
    let malformed = || format!("{text:?} is not an address: expected 0x followed by 40 hex digits");
    let hex = text.strip_prefix("0x").ok_or_else(malformed)?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed());
    }
    let mixed_case =
        hex.bytes().any(|b| b.is_ascii_lowercase()) && hex.bytes().any(|b| b.is_ascii_uppercase());
    let address = if mixed_case {
        Address::parse_checksummed(text, None).map_err(|_| {
            format!("{text:?} fails its EIP-55 checksum: a digit is probably mistyped")
        })?
    } else {
        text.parse::<Address>().map_err(|_| malformed())?
    };
    if address.is_zero() {
        return Err(format!("{text:?} is the zero address"));
    }
    Ok(address)
}

pub(crate) fn is_valid_symbol(symbol: &str) -> bool {
    (1..=SYMBOL_LEN_MAX).contains(&symbol.len())
        && symbol
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn is_valid_chain_name(name: &str) -> bool {
    (1..=CHAIN_NAME_LEN_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks RPC endpoints for `kind`; keys are `[index]` relative to the list.
pub(crate) fn check_rpc(
    kind: ChainKind,
    rpc: &[String],
) -> std::result::Result<Vec<RpcUrl>, InvalidKey> {
    if rpc.len() > RPC_ENDPOINTS_MAX {
        return Err(InvalidKey::new(
            "",
            format!("{} endpoints, more than {RPC_ENDPOINTS_MAX}", rpc.len()),
        ));
    }
    let (schemes, port_required) = kind.rpc_schemes();
    rpc.iter()
        .enumerate()
        .map(|(index, endpoint)| {
            url::check(endpoint, schemes, port_required)
                .map(|()| RpcUrl(endpoint.clone()))
                .map_err(|message| InvalidKey::new(format!("[{index}]"), message))
        })
        .collect()
}

/// A chain's WebSocket endpoint for new heads: EVM only, `ws://` or `wss://`.
pub(crate) fn check_ws(kind: ChainKind, ws: &str) -> std::result::Result<RpcUrl, String> {
    if kind != ChainKind::Evm {
        return Err("only EVM chains push new heads over WebSocket".to_owned());
    }
    url::check(ws, &["ws", "wss"], false).map(|()| RpcUrl(ws.to_owned()))
}

fn check_display(key: &str, decimals: u8, display: Option<u8>) -> std::result::Result<(), InvalidKey> {
    match display {
        Some(display) if display > decimals => {
            Err(InvalidKey::new(key, format!("{display} is more than the asset's {decimals} decimals")))
        }
        _ => Ok(()),
    }
}

/// The configured display decimals (at most the asset's decimals: checked), else the default.
fn display_decimals(symbol: &str, decimals: u8, configured: Option<u8>) -> u8 {
    configured.unwrap_or_else(|| crate::money::display::default_display_decimals(symbol, decimals)).min(decimals)
}

fn check_decimals(key: &str, decimals: u8) -> std::result::Result<(), InvalidKey> {
    if decimals > DECIMALS_MAX {
        return Err(InvalidKey::new(
            key,
            format!("{decimals} is more than {DECIMALS_MAX} decimals"),
        ));
    }
    Ok(())
}

fn check_symbol(key: &str, symbol: &str) -> std::result::Result<(), InvalidKey> {
    if !is_valid_symbol(symbol) {
        return Err(InvalidKey::new(
            key,
            format!(
                "{symbol:?} is not a symbol: expected 1 to {SYMBOL_LEN_MAX} characters of [A-Z0-9]"
            ),
        ));
    }
    Ok(())
}

impl ChainFile {
    fn into_spec(self, stem: &str) -> std::result::Result<ChainSpec, InvalidKey> {
        if !is_valid_chain_name(&self.name) {
            return Err(InvalidKey::new(
                "name",
                format!("{:?} is not a chain name: expected 1 to {CHAIN_NAME_LEN_MAX} characters of [a-z0-9_-]", self.name),
            ));
        }
        if self.name != stem {
            return Err(InvalidKey::new(
                "name",
                format!(
                    "{:?} differs from the file name {stem:?}: the file must be {}.toml",
                    self.name, self.name
                ),
            ));
        }
        let namespace = self.kind.caip2_namespace();
        if self.caip2.namespace() != namespace {
            return Err(InvalidKey::new(
                "caip2",
                format!(
                    "{} does not match kind {:?}: expected a chain id in the {namespace} namespace",
                    self.caip2,
                    self.kind.as_str()
                ),
            ));
        }
        check_symbol("native.symbol", &self.native.symbol)?;
        check_decimals("native.decimals", self.native.decimals)?;
        check_display("native.display_decimals", self.native.decimals, self.native.display_decimals)?;
        if !(1..=BLOCK_TIME_MS_MAX).contains(&self.block_time_ms) {
            return Err(InvalidKey::new(
                "block_time_ms",
                format!(
                    "{} is out of range: expected 1 to {BLOCK_TIME_MS_MAX}",
                    self.block_time_ms
                ),
            ));
        }

        let tiers: Vec<ConfirmationTier> = self
            .confirmations
            .iter()
            .map(|t| ConfirmationTier {
                up_to_usd_minor: t.up_to_usd,
                confirmations: t.confirmations,
            })
            .collect();
        let confirmations =
            ConfirmationPolicy::new(&tiers).map_err(|e| e.under("confirmations"))?;
        if self.reorg_depth_max < confirmations.confirmations_max()
            || self.reorg_depth_max > REORG_DEPTH_MAX_LIMIT
        {
            return Err(InvalidKey::new(
                "reorg_depth_max",
                format!(
                    "{} is out of range: expected at least the deepest confirmation count ({}) and at most {REORG_DEPTH_MAX_LIMIT}",
                    self.reorg_depth_max,
                    confirmations.confirmations_max()
                ),
            ));
        }

        for (index, tag) in self.finality_tags.iter().enumerate() {
            if self.kind == ChainKind::Bitcoin {
                return Err(InvalidKey::new(
                    format!("finality_tags[{index}]"),
                    "bitcoin has no finality tags",
                ));
            }
            if self.finality_tags[..index].contains(tag) {
                return Err(InvalidKey::new(
                    format!("finality_tags[{index}]"),
                    format!("duplicate tag {:?}", tag.as_str()),
                ));
            }
        }

        if self.kind == ChainKind::Bitcoin && self.internal_transfers.is_some() {
            return Err(InvalidKey::new("internal_transfers", "bitcoin has no contract calls"));
        }
        let tokens = self.check_tokens()?;
        let rpc = check_rpc(self.kind, &self.rpc).map_err(|e| e.under("rpc"))?;
        let ws = self.ws.as_deref().map(|ws| check_ws(self.kind, ws)).transpose().map_err(|e| InvalidKey::new("ws", e))?;
        if let Some(template) = &self.explorer_tx_url {
            check_explorer_url(template).map_err(|e| InvalidKey::new("explorer_tx_url", e))?;
        }
        Ok(ChainSpec {
            native: NativeAsset {
                chain: self.caip2.clone(),
                display_decimals: display_decimals(&self.native.symbol, self.native.decimals, self.native.display_decimals),
                symbol: self.native.symbol,
                decimals: self.native.decimals,
                slip44: self.native.slip44,
            },
            name: self.name,
            caip2: self.caip2,
            kind: self.kind,
            block_time_ms: self.block_time_ms,
            confirmations,
            finality_tags: self.finality_tags,
            reorg_depth_max: self.reorg_depth_max,
            tokens,
            rpc,
            ws,
            forwarder_factory: None,
            payout_batcher: None,
            start_block: None,
            internal_transfers: self.internal_transfers.unwrap_or_default(),
            explorer_tx_url: self.explorer_tx_url,
            zero_conf_up_to_usd_minor: self.zero_conf_up_to_usd,
        })
    }

    fn check_tokens(&self) -> std::result::Result<Vec<TokenSpec>, InvalidKey> {
        if self.kind == ChainKind::Bitcoin && !self.tokens.is_empty() {
            return Err(InvalidKey::new("tokens", "bitcoin has no tokens"));
        }
        if self.tokens.len() > TOKENS_MAX {
            return Err(InvalidKey::new(
                "tokens",
                format!("{} tokens, more than {TOKENS_MAX}", self.tokens.len()),
            ));
        }
        let mut tokens: Vec<TokenSpec> = Vec::with_capacity(self.tokens.len());
        for (index, token) in self.tokens.iter().enumerate() {
            let key = |field: &str| format!("tokens[{index}].{field}");
            check_symbol(&key("symbol"), &token.symbol)?;
            check_decimals(&key("decimals"), token.decimals)?;
            check_display(&key("display_decimals"), token.decimals, token.display_decimals)?;
            if token.symbol == self.native.symbol || tokens.iter().any(|t| t.symbol == token.symbol)
            {
                return Err(InvalidKey::new(
                    key("symbol"),
                    format!("duplicate symbol {:?}", token.symbol),
                ));
            }
            if tokens.iter().any(|t| t.address == token.address) {
                return Err(InvalidKey::new(
                    key("address"),
                    format!("duplicate address {}", token.address),
                ));
            }
            tokens.push(TokenSpec {
                chain: self.caip2.clone(),
                symbol: token.symbol.clone(),
                address: token.address,
                decimals: token.decimals,
                display_decimals: display_decimals(&token.symbol, token.decimals, token.display_decimals),
            });
        }
        Ok(tokens)
    }
}

/// Reads a file of at most [`CONFIG_FILE_BYTES_MAX`] bytes.
pub(crate) fn read_file(path: &Path) -> Result<String> {
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let length = std::fs::metadata(path).map_err(read_error)?.len();
    if length > CONFIG_FILE_BYTES_MAX {
        return Err(ConfigError::File {
            file: path.display().to_string(),
            message: format!("{length} bytes, more than {CONFIG_FILE_BYTES_MAX}"),
        });
    }
    std::fs::read_to_string(path).map_err(read_error)
}

/// Parses and checks one chain file; `file` names it in errors, `stem` is its expected name.
pub(crate) fn parse_chain(text: &str, file: &str, stem: &str) -> Result<ChainSpec> {
    parse_document(text, file)?;
    let raw: ChainFile = from_text(text, file)?;
    raw.into_spec(stem)
        .map_err(|problem| invalid(file, problem, None))
}

/// Loads every `*.toml` in `dir`, sorted by file name. Two files may not share a CAIP-2 id.
pub(crate) fn load_dir(dir: &Path) -> Result<Vec<ChainSpec>> {
    let read_error = |source| ConfigError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
            paths.push(path);
        }
        if paths.len() > CHAIN_FILES_MAX {
            return Err(ConfigError::File {
                file: dir.display().to_string(),
                message: format!("more than {CHAIN_FILES_MAX} chain files"),
            });
        }
    }
    if paths.is_empty() {
        return Err(ConfigError::File {
            file: dir.display().to_string(),
            message: "no chain files (*.toml) found".to_owned(),
        });
    }
    paths.sort();

    let mut chains: Vec<ChainSpec> = Vec::with_capacity(paths.len());
    for path in paths {
        let file = path.display().to_string();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let chain = parse_chain(&read_file(&path)?, &file, stem)?;
        if let Some(other) = chains.iter().find(|c| c.caip2 == chain.caip2) {
            return Err(invalid(
                &file,
                InvalidKey::new(
                    "caip2",
                    format!("{} is also the chain id of {:?}", chain.caip2, other.name),
                ),
                None,
            ));
        }
        chains.push(chain);
    }
    Ok(chains)
}

/// An `explorer_tx_url`: an http(s) URL with exactly one `{tx}`, nothing that could break out of
/// the attribute it is written into.
pub(crate) fn check_explorer_url(template: &str) -> Result<(), String> {
    let well_formed = (template.starts_with("https://") || template.starts_with("http://"))
        && template.matches("{tx}").count() == 1
        && !template.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '<' | '>' | '\''));
    if well_formed {
        Ok(())
    } else {
        Err(format!("{template:?} must be an http(s) URL with one {{tx}} where the transaction id goes"))
    }
}
