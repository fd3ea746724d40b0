//! The daemon's configuration: `config.toml`, environment overrides, and one file per chain
//! in `chains/`.
//!
//! Loading is: read the TOML → apply environment overrides ([`env`]) → type it with every
//! key path tracked → check each section → load `chains/*.toml` from `chains.dir` (relative
//! to the configuration file's directory) → apply the `[chains.<name>]` overrides.
//!
//! Invariants of a [`Config`]:
//! - Unknown keys are errors everywhere (`deny_unknown_fields`): a misspelt limit is never
//!   silently replaced by nothing.
//! - No value is a float: amounts and rates are decimal strings parsed into exact types.
//! - Every error names the file and the key path, and the environment variable when one set
//!   the value ([`ConfigError`]).
//! - [`Config::chains`] holds exactly the enabled chains: those with a `[chains.<name>]`
//!   table whose `enabled` is not false. Each has at least one RPC endpoint: the table's
//!   `rpc` when given, else the chain file's.
//! - An override for a chain without a chain file is an error, not ignored.
//! - Secrets (the database password, RPC keys) never appear in `Debug` output.

use payrail_core::{markets, money};

mod chain;
mod de;
mod env;
mod error;
mod payouts;
mod policy;
mod sections;
mod url;
mod webhooks;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use alloy_primitives::Address;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::money::{AssetId, ChainId, Rate};

pub use chain::{
    ChainKind, ChainSpec, FinalityTag, InternalTransfers, NativeAsset, RpcUrl, TokenSpec, BLOCK_TIME_MS_MAX,
    CHAIN_FILES_MAX, CONFIG_FILE_BYTES_MAX, DECIMALS_MAX, REORG_DEPTH_MAX_LIMIT, RPC_ENDPOINTS_MAX,
    TOKENS_MAX,
};
pub use env::{ENV_CONFIG_PATH, ENV_DATABASE_URL, ENV_PREFIX, ENV_SEPARATOR};
pub use error::{ConfigError, InvalidKey, Result};
pub use policy::{ConfirmationPolicy, ConfirmationTier, CONFIRMATIONS_MAX};
pub use webhooks::WebhooksConfig;
pub use payouts::{FeeCaps, PayoutsConfig, FEE_BUMP_BPS_MIN, RECIPIENTS_PER_BATCH_LIMIT};
pub use sections::{
    CardCheckout, DatabaseConfig, InvoicesConfig, LogConfig, LogFormat, RateFeed, RatesConfig, SecretString,
    ServerConfig, StripeConfig, ENV_STRIPE_SECRET_KEY, ENV_STRIPE_WEBHOOK_SECRET,
};

/// Where chain files are looked for when `[chains] dir` is not given.
pub const CHAINS_DIR_DEFAULT: &str = "chains";

/// The loaded configuration; see the module docs for its invariants.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub invoices: InvoicesConfig,
    pub rates: RatesConfig,
    pub log: LogConfig,
    /// The card rail; disabled unless the environment holds its secrets.
    pub stripe: StripeConfig,
    /// Creator payouts: schedule, threshold and transaction limits.
    pub payouts: PayoutsConfig,
    /// Outbound webhooks.
    pub webhooks: WebhooksConfig,
    chains_dir: PathBuf,
    chains: Vec<ChainSpec>,
}

/// A setting meant for the local dev stack only: its key as written, and why production must not
/// run with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSetting {
    pub key: String,
    pub why: &'static str,
}

impl std::fmt::Display for DevSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.key, self.why)
    }
}

/// What the configuration knows about one asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetInfo {
    /// Name of the chain it lives on ("polygon").
    pub chain: String,
    pub symbol: String,
    pub decimals: u8,
    /// The token contract; `None` for the chain's native coin.
    pub token_address: Option<Address>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: ServerConfig,
    database: DatabaseConfig,
    invoices: InvoicesConfig,
    rates: sections::RatesFile,
    #[serde(default)]
    chains: ChainsFile,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    stripe: sections::StripeFile,
    #[serde(default)]
    payouts: PayoutsConfig,
    #[serde(default)]
    webhooks: WebhooksConfig,
}

/// `[chains]`: `dir` plus one `[chains.<name>]` table per chain to enable.
#[derive(Default)]
struct ChainsFile {
    dir: Option<String>,
    overrides: BTreeMap<String, ChainOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainOverride {
    enabled: Option<bool>,
    rpc: Option<Vec<String>>,
    /// Token contracts by symbol, replacing the chain file's addresses (a dev chain's test tokens).
    tokens: Option<BTreeMap<String, String>>,
    forwarder_factory: Option<String>,
    payout_batcher: Option<String>,
    start_block: Option<u64>,
    /// Bitcoin only: the network to follow instead of the chain file's (`regtest` for the dev
    /// stack); it replaces the chain's CAIP-2 id with that network's.
    network: Option<String>,
    /// The chain file's block explorer replaced; `""` for none (a local chain).
    explorer_tx_url: Option<String>,
    /// The chain file's WebSocket endpoint replaced; `""` for none (poll only).
    ws: Option<String>,
}

// By hand because `dir` sits beside the per-chain tables, and `#[serde(flatten)]` would
// lose both `deny_unknown_fields` and the key paths of errors inside the tables.
impl<'de> Deserialize<'de> for ChainsFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ChainsVisitor;

        impl<'de> Visitor<'de> for ChainsVisitor {
            type Value = ChainsFile;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table with `dir` and one table per chain")
            }

            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<ChainsFile, A::Error> {
                let mut chains = ChainsFile::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "dir" {
                        chains.dir = Some(map.next_value()?);
                    } else {
                        let table = map.next_value()?;
                        chains.overrides.insert(key, table);
                    }
                }
                Ok(chains)
            }
        }

        deserializer.deserialize_map(ChainsVisitor)
    }
}

impl Config {
    /// Loads `path` with the process environment's overrides, then the chain files.
    pub fn load(path: &Path) -> Result<Config> {
        let text = chain::read_file(path)?;
        let mut env = env::from_process()?;
        // The card rail's secrets live in the environment only, under names that are not overrides.
        for var in [ENV_STRIPE_SECRET_KEY, ENV_STRIPE_WEBHOOK_SECRET] {
            if let Ok(value) = std::env::var(var) {
                env.push((var.to_owned(), value));
            }
        }
        Self::from_str_with_env(&text, path, &env)
    }

    /// Loads configuration `text` as if read from `file_name` (which names it in errors and
    /// locates `chains.dir`), with `env` as the environment. Never reads the process
    /// environment, so tests can run in parallel.
    pub fn from_str_with_env(
        text: &str,
        file_name: &Path,
        env: &[(String, String)],
    ) -> Result<Config> {
        let file = file_name.display().to_string();
        let mut document = de::parse_document(text, &file)?;
        let overrides = env::apply(&mut document, env)?;
        // Without overrides the text is the document, and typing the text keeps positions.
        let raw: ConfigFile = if overrides.is_empty() {
            de::from_text(text, &file)?
        } else {
            de::from_document(document, &file, &overrides)?
        };
        let fail = |section| in_section(&file, &overrides, section);

        let server = raw.server.check().map_err(fail("server"))?;
        let database = raw.database.check().map_err(fail("database"))?;
        let invoices = raw.invoices.check().map_err(fail("invoices"))?;
        let rates = raw.rates.check().map_err(fail("rates"))?;
        let log = raw.log.check().map_err(fail("log"))?;
        let secret = |name: &str| env.iter().find(|(var, _)| var == name).map(|(_, value)| value.as_str());
        let stripe = raw
            .stripe
            .check(secret(ENV_STRIPE_SECRET_KEY), secret(ENV_STRIPE_WEBHOOK_SECRET))
            .map_err(fail("stripe"))?;
        let payouts = raw.payouts.check().map_err(fail("payouts"))?;

        let base = file_name.parent().unwrap_or_else(|| Path::new(""));
        let chains_dir = base.join(raw.chains.dir.as_deref().unwrap_or(CHAINS_DIR_DEFAULT));
        let known = chain::load_dir(&chains_dir)?;
        let chains = select_chains(known, raw.chains.overrides).map_err(fail("chains"))?;

        Ok(Config {
            server,
            database,
            invoices,
            rates,
            log,
            stripe,
            payouts,
            webhooks: raw.webhooks,
            chains_dir,
            chains,
        })
    }

    /// Settings that belong to the local dev stack and would be unsafe in production, each named
    /// by its key with the reason. `payrail serve` refuses to start with any of them unless told
    /// `--allow-dev-settings`.
    pub fn dev_only_settings(&self) -> Vec<DevSetting> {
        let mut found = Vec::new();
        if self.webhooks.allow_loopback {
            found.push(DevSetting {
                key: "webhooks.allow_loopback = true".to_owned(),
                why: "merchants could make the daemon call services on its own host",
            });
        }
        if self.webhooks.allow_plaintext_secrets {
            found.push(DevSetting {
                key: "webhooks.allow_plaintext_secrets = true".to_owned(),
                why: "endpoint signing secrets would be stored unsealed",
            });
        }
        if self.rates.feed == RateFeed::Fixed {
            found.push(DevSetting { key: "rates.feed = \"fixed\"".to_owned(), why: "invoices would be priced from a fixed table" });
        }
        if self.rates.feed == RateFeed::File {
            found.push(DevSetting { key: "rates.feed = \"file\"".to_owned(), why: "invoices would be priced from a local file" });
        }
        for chain in self.chains.iter().filter(|c| c.caip2 == ChainId::bitcoin_regtest()) {
            found.push(DevSetting {
                key: format!("chains.{}.network = \"regtest\"", chain.name),
                why: "regtest coins have no value",
            });
        }
        if !self.stripe.api_base.starts_with("https://") {
            found.push(DevSetting {
                key: "stripe.api_base (not https)".to_owned(),
                why: "card payments would go to a server that is not Stripe's",
            });
        }
        found
    }

    /// The enabled chains, sorted by name, each with its effective RPC endpoints.
    pub fn chains(&self) -> &[ChainSpec] {
        &self.chains
    }

    /// An enabled chain by name ("polygon").
    pub fn chain(&self, name: &str) -> Option<&ChainSpec> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// An enabled chain by CAIP-2 id.
    pub fn chain_by_id(&self, id: &ChainId) -> Option<&ChainSpec> {
        self.chains.iter().find(|c| c.caip2 == *id)
    }

    /// Symbol and decimals of a native coin or token of an enabled chain.
    pub fn asset(&self, id: &AssetId) -> Option<AssetInfo> {
        let chain = self.chain_by_id(id.chain())?;
        if chain.native_asset_id() == *id {
            return Some(AssetInfo {
                chain: chain.name.clone(),
                symbol: chain.native.symbol.clone(),
                decimals: chain.native.decimals,
                token_address: None,
            });
        }
        chain
            .tokens
            .iter()
            .find(|t| t.asset_id() == *id)
            .map(|token| AssetInfo {
                chain: chain.name.clone(),
                symbol: token.symbol.clone(),
                decimals: token.decimals,
                token_address: Some(token.address),
            })
    }

    /// The fixed price of one `base_symbol` in `quote_code` ("BTC", "USD").
    pub fn fixed_rate(&self, base_symbol: &str, quote_code: &str) -> Option<Rate> {
        self.rates.fixed_rate(base_symbol, quote_code)
    }

    /// The directory the chain files were read from.
    pub fn chains_dir(&self) -> &Path {
        &self.chains_dir
    }
}

/// Turns a section's check error into a `ConfigError` naming the file and the variable.
fn in_section<'a>(
    file: &'a str,
    overrides: &'a env::Overrides,
    section: &'a str,
) -> impl FnOnce(InvalidKey) -> ConfigError + 'a {
    move |problem| de::invalid(file, problem.under(section), Some(overrides))
}

/// The CAIP-2 id of a Bitcoin network by the name `network = "…"` gives it.
fn bitcoin_network_id(name: &str) -> Option<ChainId> {
    Some(match name {
        "mainnet" => ChainId::bitcoin_mainnet(),
        "testnet" => ChainId::bitcoin_testnet(),
        "testnet4" => ChainId::bitcoin_testnet4(),
        "signet" => ChainId::bitcoin_signet(),
        "regtest" => ChainId::bitcoin_regtest(),
        _ => return None,
    })
}

/// Keeps the chains that have an enabled override, with the override's endpoints.
/// Error keys are relative to `[chains]`.
fn select_chains(
    known: Vec<ChainSpec>,
    overrides: BTreeMap<String, ChainOverride>,
) -> std::result::Result<Vec<ChainSpec>, InvalidKey> {
    if let Some(name) = overrides
        .keys()
        .find(|name| !known.iter().any(|c| c.name == **name))
    {
        let names: Vec<&str> = known.iter().map(|c| c.name.as_str()).collect();
        return Err(InvalidKey::new(
            name.as_str(),
            format!(
                "unknown chain {name:?}: no chain file {name}.toml; known chains: {}",
                names.join(", ")
            ),
        ));
    }
    let mut enabled = Vec::new();
    for mut spec in known {
        let Some(table) = overrides.get(&spec.name) else {
            continue;
        };
        if let Some(rpc) = &table.rpc {
            spec.rpc = chain::check_rpc(spec.kind, rpc)
                .map_err(|e| e.under(&format!("{}.rpc", spec.name)))?;
        }
        if let Some(tokens) = &table.tokens {
            for (symbol, address) in tokens {
                let key = format!("{}.tokens.{symbol}", spec.name);
                let address = chain::parse_token_address(address).map_err(|e| InvalidKey::new(key.clone(), e))?;
                let chain_id = spec.caip2.clone();
                let token = spec
                    .tokens
                    .iter_mut()
                    .find(|t| t.symbol == *symbol)
                    .ok_or_else(|| InvalidKey::new(key.clone(), format!("no token {symbol:?} in the chain file")))?;
                token.address = address;
                token.chain = chain_id;
            }
        }
        for (field, value, slot) in [
            ("forwarder_factory", &table.forwarder_factory, &mut spec.forwarder_factory),
            ("payout_batcher", &table.payout_batcher, &mut spec.payout_batcher),
        ] {
            if let Some(text) = value {
                let key = format!("{}.{field}", spec.name);
                *slot = Some(chain::parse_token_address(text).map_err(|e| InvalidKey::new(key, e))?);
            }
        }
        spec.start_block = table.start_block;
        if let Some(network) = &table.network {
            let key = format!("{}.network", spec.name);
            if spec.kind != ChainKind::Bitcoin {
                return Err(InvalidKey::new(key, "only bitcoin chains have a network to choose"));
            }
            let caip2 = bitcoin_network_id(network)
                .ok_or_else(|| InvalidKey::new(key, format!("{network:?} is not one of mainnet, testnet, testnet4, signet, regtest")))?;
            spec.native.chain = caip2.clone();
            if caip2 != spec.caip2 {
                // The chain file's explorer shows mainnet.
                spec.explorer_tx_url = None;
            }
            spec.caip2 = caip2;
        }
        match table.ws.as_deref() {
            None => {}
            Some("") => spec.ws = None,
            Some(ws) => spec.ws = Some(chain::check_ws(spec.kind, ws).map_err(|e| InvalidKey::new(format!("{}.ws", spec.name), e))?),
        }
        match table.explorer_tx_url.as_deref() {
            None => {}
            Some("") => spec.explorer_tx_url = None,
            Some(template) => {
                chain::check_explorer_url(template).map_err(|e| InvalidKey::new(format!("{}.explorer_tx_url", spec.name), e))?;
                spec.explorer_tx_url = Some(template.to_owned());
            }
        }
        if table.enabled == Some(false) {
            continue;
        }
        if spec.rpc.is_empty() {
            return Err(InvalidKey::new(
                format!("{}.rpc", spec.name),
                "an enabled chain needs at least one endpoint, here or in its chain file",
            ));
        }
        enabled.push(spec);
    }
    Ok(enabled)
}
