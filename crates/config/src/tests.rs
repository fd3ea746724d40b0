//! Tests against the shipped `config.dev.toml`, `config.toml` and `chains/`, and against broken copies of them
//! in temporary directories.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use alloy_primitives::Address;

use super::*;
use crate::money::{Amount, Fiat};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn repo_config_path() -> PathBuf {
    Path::new(REPO).join("config.dev.toml")
}

fn repo_config_text() -> String {
    std::fs::read_to_string(repo_config_path()).expect("config.dev.toml is readable")
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn shipped() -> Config {
    Config::from_str_with_env(&repo_config_text(), &repo_config_path(), &[])
        .unwrap_or_else(|e| panic!("shipped configuration loads: {e}"))
}

/// A copy of the shipped configuration and chain files, to break one of them.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir(dir.path().join("chains")).expect("chains directory");
        std::fs::copy(repo_config_path(), dir.path().join("config.toml"))
            .expect("copy config.toml");
        for entry in std::fs::read_dir(Path::new(REPO).join("chains")).expect("chains/ is readable")
        {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().expect("file name");
            std::fs::copy(&path, dir.path().join("chains").join(name)).expect("copy chain file");
        }
        Fixture { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Replaces `from` by `to` in one file; the text must be there.
    fn edit(&self, relative: &str, from: &str, to: &str) {
        let path = self.path(relative);
        let text = std::fs::read_to_string(&path).expect("fixture file");
        assert!(text.contains(from), "{relative} has no {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write fixture file");
    }

    fn write(&self, relative: &str, text: &str) {
        std::fs::write(self.path(relative), text).expect("write fixture file");
    }

    /// 1-based line of the first occurrence of `needle` in a fixture file.
    fn line_of(&self, relative: &str, needle: &str) -> usize {
        let text = std::fs::read_to_string(self.path(relative)).expect("fixture file");
        let offset = text.find(needle).expect("needle in fixture file");
        text[..offset].matches('\n').count() + 1
    }

    fn load(&self) -> Result<Config> {
        self.load_with(&[])
    }

    fn load_with(&self, env: &[(&str, &str)]) -> Result<Config> {
        let path = self.path("config.toml");
        let text = std::fs::read_to_string(&path).expect("fixture config");
        Config::from_str_with_env(&text, &path, &vars(env))
    }

    /// The error message of a load that must fail.
    fn error(&self) -> String {
        self.error_with(&[])
    }

    fn error_with(&self, env: &[(&str, &str)]) -> String {
        match self.load_with(env) {
            Ok(_) => panic!("the configuration loaded although it is broken"),
            Err(e) => e.to_string(),
        }
    }
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} does not contain {part:?}"
        );
    }
}

// --- the shipped files ---------------------------------------------------------------------

#[test]
fn shipped_configuration_loads_from_disk() {
    // `load` reads the process environment; the other tests never do.
    let config = Config::load(&repo_config_path());
    assert!(config.is_ok(), "{:?}", config.err());
}

#[test]
fn shipped_configuration_is_the_loopback_dev_stack() {
    let config = shipped();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.public_url, "http://127.0.0.1:8080");
    assert_eq!(
        config.database.url,
        "postgres://postgres@127.0.0.1:5432/payrail"
    );
    assert_eq!(config.invoices.expires_in_s_default, 900);
    assert_eq!(
        config.invoices.amount_max_minor(Fiat::USD),
        Amount::from_u64(100_000_000)
    );
    assert_eq!(config.invoices.underpayment_tolerance_bps, 0);
    assert_eq!(config.rates.feed, RateFeed::Fixed);
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.filter, "info,electrum_client=warn");
    // The dev stack's webhook receivers are on loopback; production leaves this off.
    assert!(config.webhooks.allow_loopback);
    assert!(!super::WebhooksConfig::default().allow_loopback);
    // Plaintext signing secrets are never the default, not even in the shipped configuration.
    assert!(!config.webhooks.allow_plaintext_secrets);
    assert!(!super::WebhooksConfig::default().allow_plaintext_secrets);
    assert_eq!(config.chains_dir(), Path::new(REPO).join("chains"));
    // Every dev-only setting of the dev stack is named, so `serve` can refuse it.
    let dev: Vec<String> = config.dev_only_settings().into_iter().map(|s| s.key).collect();
    assert_eq!(
        dev,
        ["webhooks.allow_loopback = true", "rates.feed = \"fixed\"", "chains.bitcoin.network = \"regtest\""],
    );

    let endpoints: Vec<(&str, Vec<&str>)> = config
        .chains()
        .iter()
        .map(|c| (c.name.as_str(), c.rpc.iter().map(RpcUrl::as_str).collect()))
        .collect();
    assert_eq!(
        endpoints,
        vec![
            ("arbitrum", vec!["http://127.0.0.1:18548"]),
            ("bitcoin", vec!["tcp://127.0.0.1:50001"]),
            ("bsc", vec!["http://127.0.0.1:18547"]),
            ("ethereum", vec!["http://127.0.0.1:18545"]),
            ("optimism", vec!["http://127.0.0.1:18549"]),
            ("polygon", vec!["http://127.0.0.1:18546"]),
        ]
    );
}

#[test]
fn every_chain_file_has_the_right_ids_and_native_coin() {
    let config = shipped();
    let expected = [
        (
            "bitcoin",
            // config.toml follows regtest (`network = "regtest"`); chains/bitcoin.toml is mainnet.
            "bip122:0f9188f13cb7b2c71f2a335e3a4fc328",
            ChainKind::Bitcoin,
            "BTC",
            8,
            0,
        ),
        ("ethereum", "eip155:1", ChainKind::Evm, "ETH", 18, 60),
        ("polygon", "eip155:137", ChainKind::Evm, "POL", 18, 966),
        ("bsc", "eip155:56", ChainKind::Evm, "BNB", 18, 714),
        ("arbitrum", "eip155:42161", ChainKind::Evm, "ETH", 18, 60),
        ("optimism", "eip155:10", ChainKind::Evm, "ETH", 18, 60),
    ];
    assert_eq!(config.chains().len(), expected.len());
    for (name, caip2, kind, symbol, decimals, slip44) in expected {
        let chain = config
            .chain(name)
            .unwrap_or_else(|| panic!("{name} is enabled"));
        assert_eq!(chain.caip2.to_string(), caip2, "{name}");
        assert_eq!(chain.kind, kind, "{name}");
        assert_eq!(
            (
                chain.native.symbol.as_str(),
                chain.native.decimals,
                chain.native.slip44
            ),
            (symbol, decimals, slip44)
        );
        assert_eq!(
            config.chain_by_id(&chain.caip2).map(|c| c.name.as_str()),
            Some(name)
        );
        if kind == ChainKind::Evm {
            assert_eq!(
                chain.finality_tags,
                vec![FinalityTag::Safe, FinalityTag::Finalized],
                "{name}"
            );
        } else {
            assert!(
                chain.finality_tags.is_empty() && chain.tokens.is_empty(),
                "{name}"
            );
        }
        assert!(
            chain.reorg_depth_max >= chain.confirmations.confirmations_max(),
            "{name}"
        );
    }
}

/// The shipped configuration without the dev stack's token overrides: the chain files as written.
fn mainnet() -> Config {
    let text: String = repo_config_text()
        .lines()
        .filter(|line| !line.starts_with("tokens = "))
        .map(|line| format!("{line}\n"))
        .collect();
    Config::from_str_with_env(&text, &repo_config_path(), &[]).unwrap_or_else(|e| panic!("chain files load: {e}"))
}

#[test]
fn every_token_has_its_mainnet_address_and_decimals() {
    let config = mainnet();
    // (chain, [(symbol, EIP-55 address, decimals)])
    type Expected<'a> = [(&'a str, [(&'a str, &'a str, u8); 3]); 5];
    let expected: Expected = [
        (
            "ethereum",
            [
                ("USDC", "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", 6),
                ("USDT", "0xdAC17F958D2ee523a2206206994597C13D831ec7", 6),
                ("DAI", "0x6B175474E89094C44Da98b954EedeAC495271d0F", 18),
            ],
        ),
        (
            "polygon",
            [
                ("USDC", "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359", 6),
                ("USDT", "0xc2132D05D31c914a87C6611C10748AEb04B58e8F", 6),
                ("DAI", "0x8f3Cf7ad23Cd3CaDbD9735AFf958023239c6A063", 18),
            ],
        ),
        // The Binance-Peg stablecoins use 18 decimals.
        (
            "bsc",
            [
                ("USDC", "0x8AC76a51cc950d9822D68b83fE1Ad97B32Cd580d", 18),
                ("USDT", "0x55d398326f99059fF775485246999027B3197955", 18),
                ("DAI", "0x1AF3F329e8BE154074D8769D1FFa4eE058B1DBc3", 18),
            ],
        ),
        (
            "arbitrum",
            [
                ("USDC", "0xaf88d065e77c8cC2239327C5EDb3A432268e5831", 6),
                ("USDT", "0xFd086bC7CD5C481DCC9C85ebE478A1C0b69FCbb9", 6),
                ("DAI", "0xDA10009cBd5D07dd0CeCc66161FC93D7c9000da1", 18),
            ],
        ),
        (
            "optimism",
            [
                ("USDC", "0x0b2C639c533813f4Aa9D7837CAf62653d097Ff85", 6),
                ("USDT", "0x94b008aA00579c1307B0EF2c499aD98a8ce58e58", 6),
                ("DAI", "0xDA10009cBd5D07dd0CeCc66161FC93D7c9000da1", 18),
            ],
        ),
    ];
    for (name, tokens) in expected {
        let chain = config
            .chain(name)
            .unwrap_or_else(|| panic!("{name} is enabled"));
        assert_eq!(chain.tokens.len(), tokens.len(), "{name}");
        for (symbol, address, decimals) in tokens {
            let token = chain
                .token(symbol)
                .unwrap_or_else(|| panic!("{name} has {symbol}"));
            // The EIP-55 checksum of each address guards against a mistyped digit.
            let checksummed = Address::parse_checksummed(address, None).expect("valid checksum");
            assert_eq!(token.address, checksummed, "{name} {symbol}");
            assert_eq!(token.decimals, decimals, "{name} {symbol}");
            assert_eq!(
                chain
                    .token_by_address(&checksummed)
                    .map(|t| t.symbol.as_str()),
                Some(symbol)
            );
        }
    }
}

#[test]
fn dev_stack_replaces_token_contracts_with_its_test_tokens() {
    let config = shipped();
    let polygon = config.chain("polygon").expect("polygon");
    let usdc = polygon.token("USDC").expect("usdc");
    assert_eq!(
        usdc.address,
        Address::parse_checksummed("0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512", None).expect("address")
    );
    assert_eq!(usdc.decimals, 6, "decimals stay the chain file's");
    assert!(polygon.forwarder_factory.is_some() && polygon.payout_batcher.is_some());
    assert_eq!(polygon.start_block, Some(0));
}

#[test]
fn shipped_confirmation_policies_grow_with_value() {
    let config = shipped();
    let usd = |dollars: u64| Amount::from_u64(dollars * 100);
    let bitcoin = config.chain("bitcoin").expect("bitcoin");
    assert_eq!(bitcoin.confirmations.confirmations_for(usd(50)), 1);
    assert_eq!(bitcoin.confirmations.confirmations_for(usd(5_000)), 3);
    assert_eq!(bitcoin.confirmations.confirmations_for(usd(50_000)), 6);
    for chain in config.chains() {
        let counts: Vec<u32> = [0, 1_000, 1_001, 10_000, 10_001, 1_000_000]
            .map(|d| chain.confirmations.confirmations_for(usd(d)))
            .to_vec();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "{}: {counts:?}",
            chain.name
        );
        assert!(counts[0] >= 1, "{}", chain.name);
    }
}

#[test]
fn assets_resolve_to_symbol_and_decimals() {
    let config = mainnet();
    let polygon = ChainId::from_str("eip155:137").expect("chain id");
    let usdc = AssetId::from_str("eip155:137/erc20:0x3c499c542cef5e3811e1192ce70d8cc03d5c3359")
        .expect("asset id");
    assert_eq!(
        config.asset(&usdc),
        Some(AssetInfo {
            chain: "polygon".into(),
            symbol: "USDC".into(),
            decimals: 6,
            token_address: config
                .chain("polygon")
                .and_then(|c| c.token("USDC"))
                .map(|t| t.address),
        })
    );
    let pol = config
        .asset(&AssetId::native(polygon.clone(), 966))
        .expect("native POL");
    assert_eq!(
        (pol.symbol.as_str(), pol.decimals, pol.token_address),
        ("POL", 18, None)
    );
    let btc =
        AssetId::from_str("bip122:0f9188f13cb7b2c71f2a335e3a4fc328/slip44:0").expect("asset id");
    assert_eq!(
        config.asset(&btc).map(|a| (a.symbol, a.decimals)),
        Some(("BTC".to_owned(), 8))
    );
    let bsc_usdt = AssetId::from_str("eip155:56/erc20:0x55d398326f99059ff775485246999027b3197955")
        .expect("asset id");
    assert_eq!(config.asset(&bsc_usdt).map(|a| a.decimals), Some(18));

    // Unknown: a wrong coin type, a token of another chain, a chain that is not configured.
    assert_eq!(config.asset(&AssetId::native(polygon, 60)), None);
    let wrong_chain =
        AssetId::from_str("eip155:1/erc20:0x3c499c542cef5e3811e1192ce70d8cc03d5c3359")
            .expect("asset id");
    assert_eq!(config.asset(&wrong_chain), None);
    assert_eq!(
        config.asset(&AssetId::native(ChainId::eip155(8453), 60)),
        None
    );
}

#[test]
fn fixed_rates_are_exact_and_keyed_by_pair() {
    let config = shipped();
    assert_eq!(
        config.fixed_rate("BTC", "USD"),
        Rate::from_str("65000").ok()
    );
    assert_eq!(config.fixed_rate("POL", "USD"), Rate::from_str("0.5").ok());
    assert_eq!(config.fixed_rate("ETH", "EUR"), Rate::from_str("2750").ok());
    for symbol in ["BTC", "ETH", "POL", "BNB", "USDC", "USDT", "DAI"] {
        for quote in ["USD", "EUR"] {
            assert!(
                config.fixed_rate(symbol, quote).is_some(),
                "{symbol}/{quote}"
            );
        }
    }
    assert_eq!(config.fixed_rate("BTC", "JPY"), None);
    assert_eq!(config.fixed_rate("BTC", "usd"), None);
    assert_eq!(config.fixed_rate("XYZ", "USD"), None);
}

#[test]
fn debug_output_hides_secrets() {
    let env = vars(&[
        (
            "DATABASE_URL",
            "postgres://app:hunter2@db.internal:5432/payrail",
        ),
        (
            "PAYRAIL_CHAINS__ETHEREUM__RPC",
            "[\"https://mainnet.infura.io/v3/SECRETKEY\"]",
        ),
    ]);
    let config =
        Config::from_str_with_env(&repo_config_text(), &repo_config_path(), &env).expect("loads");
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("SECRETKEY"),
        "{debug}"
    );
    assert_contains(
        &debug,
        &[
            "postgres://app:***@db.internal:5432/payrail",
            "https://mainnet.infura.io/***",
        ],
    );
    // The real values are still there for the code that connects.
    assert_eq!(
        config.database.url,
        "postgres://app:hunter2@db.internal:5432/payrail"
    );
    let ethereum = config.chain("ethereum").expect("ethereum");
    assert_eq!(
        ethereum.rpc[0].as_str(),
        "https://mainnet.infura.io/v3/SECRETKEY"
    );
}

// --- environment overrides -----------------------------------------------------------------

#[test]
fn environment_overrides_listen_and_database_url() {
    let env = vars(&[
        ("PAYRAIL_SERVER__LISTEN", "0.0.0.0:9090"),
        (
            "DATABASE_URL",
            "postgres://payrail@db.internal:5432/payrail",
        ),
        ("PAYRAIL_SERVER__BODY_LIMIT_BYTES", "2048"),
        ("PAYRAIL_LOG__FORMAT", "json"),
        ("PAYRAIL_INVOICES__AMOUNT_MAX", "5000"),
        ("PAYRAIL_CONFIG", "/elsewhere/config.toml"),
        ("HOME", "/root"),
    ]);
    let config =
        Config::from_str_with_env(&repo_config_text(), &repo_config_path(), &env).expect("loads");
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:9090");
    assert_eq!(config.server.body_limit_bytes, 2048);
    assert_eq!(
        config.database.url,
        "postgres://payrail@db.internal:5432/payrail"
    );
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.invoices.amount_max_whole(), Amount::from_u64(5000));
}

#[test]
fn explicit_database_override_wins_over_database_url() {
    let env = vars(&[
        ("DATABASE_URL", "postgres://conventional@db/payrail"),
        ("PAYRAIL_DATABASE__URL", "postgres://explicit@db/payrail"),
    ]);
    let config =
        Config::from_str_with_env(&repo_config_text(), &repo_config_path(), &env).expect("loads");
    assert_eq!(config.database.url, "postgres://explicit@db/payrail");
}

#[test]
fn environment_overrides_chains() {
    let env = vars(&[
        ("PAYRAIL_CHAINS__POLYGON__ENABLED", "false"),
        (
            "PAYRAIL_CHAINS__BSC__RPC",
            "[\"https://bsc-a.example\", \"https://bsc-b.example\"]",
        ),
    ]);
    let config =
        Config::from_str_with_env(&repo_config_text(), &repo_config_path(), &env).expect("loads");
    assert!(config.chain("polygon").is_none());
    assert_eq!(config.chains().len(), 5);
    let bsc = config.chain("bsc").expect("bsc");
    assert_eq!(
        bsc.rpc.iter().map(RpcUrl::as_str).collect::<Vec<_>>(),
        ["https://bsc-a.example", "https://bsc-b.example"]
    );
}

#[test]
fn a_broken_override_names_the_variable() {
    let fixture = Fixture::new();
    let message = fixture.error_with(&[("PAYRAIL_SERVER__LISTEN", "localhost")]);
    assert_contains(
        &message,
        &[
            "config.toml",
            "key server.listen",
            "PAYRAIL_SERVER__LISTEN",
            "invalid socket address",
        ],
    );

    let message = fixture.error_with(&[("PAYRAIL_SERVER__BODY_LIMIT_BYTES", "lots")]);
    assert_contains(
        &message,
        &[
            "key server.body_limit_bytes",
            "PAYRAIL_SERVER__BODY_LIMIT_BYTES",
            "invalid type",
        ],
    );

    let message = fixture.error_with(&[("PAYRAIL_SERVER__BODY_LIMIT_BYTES", "0")]);
    assert_contains(
        &message,
        &[
            "key server.body_limit_bytes",
            "PAYRAIL_SERVER__BODY_LIMIT_BYTES",
            "out of range",
        ],
    );

    let message = fixture.error_with(&[("PAYRAIL_SERVER__LISTEN_ADDR", "0.0.0.0:1")]);
    assert_contains(
        &message,
        &[
            "key server.listen_addr",
            "PAYRAIL_SERVER__LISTEN_ADDR",
            "unknown field",
        ],
    );

    let message = fixture.error_with(&[("PAYRAIL_CHAINS__SOLANA__ENABLED", "true")]);
    assert_contains(
        &message,
        &[
            "key chains.solana",
            "PAYRAIL_CHAINS__SOLANA__ENABLED",
            "unknown chain",
        ],
    );

    let message = fixture.error_with(&[("DATABASE_URL", "mysql://db/payrail")]);
    assert_contains(&message, &["key database.url", "(set by DATABASE_URL)"]);
}

// --- broken files ----------------------------------------------------------------------------

#[test]
fn a_string_where_an_integer_belongs_names_file_key_and_position() {
    let fixture = Fixture::new();
    let usdt = "address = \"0xc2132D05D31c914a87C6611C10748AEb04B58e8F\"\ndecimals = 6";
    fixture.edit(
        "chains/polygon.toml",
        usdt,
        &usdt.replace("decimals = 6", "decimals = \"six\""),
    );
    let message = fixture.error();
    let line = fixture.line_of("chains/polygon.toml", "\"six\"");
    assert_contains(
        &message,
        &[
            "chains/polygon.toml: key tokens[1].decimals: invalid type: string \"six\", expected u8",
            &format!("(line {line}, column 12)"),
        ],
    );
    assert!(!message.contains("set by"), "{message}");
}

#[test]
fn an_unknown_key_is_an_error() {
    let fixture = Fixture::new();
    fixture.edit("config.toml", "listen = ", "lisen = ");
    let message = fixture.error();
    let line = fixture.line_of("config.toml", "lisen");
    assert_contains(
        &message,
        &[
            "config.toml: key server.lisen: unknown field `lisen`",
            &format!("(line {line}, column 1)"),
        ],
    );

    let fixture = Fixture::new();
    fixture.edit(
        "chains/bsc.toml",
        "block_time_ms",
        "block_time_s = 1\nblock_time_ms",
    );
    assert_contains(
        &fixture.error(),
        &["chains/bsc.toml: key block_time_s: unknown field"],
    );
}

#[test]
fn malformed_toml_gives_line_and_column() {
    let fixture = Fixture::new();
    fixture.write(
        "config.toml",
        "[server]\nlisten = \"127.0.0.1:8080\"\npublic_url = http://x\n",
    );
    let message = fixture.error();
    assert_contains(
        &message,
        &["config.toml: malformed toml at line 3, column 14: "],
    );
    assert!(!message.contains('\n'), "{message}");

    let fixture = Fixture::new();
    fixture.edit("chains/optimism.toml", "[native]", "[native");
    let line = fixture.line_of("chains/optimism.toml", "[native");
    assert_contains(
        &fixture.error(),
        &[&format!(
            "chains/optimism.toml: malformed toml at line {line}, "
        )],
    );
}

#[test]
fn a_missing_section_names_the_file() {
    let fixture = Fixture::new();
    let text = std::fs::read_to_string(fixture.path("config.toml")).expect("config");
    let start = text.find("[invoices]").expect("invoices section");
    let end = text.find("[rates]").expect("rates section");
    fixture.write(
        "config.toml",
        &format!("{}{}", &text[..start], &text[end..]),
    );
    assert_contains(&fixture.error(), &["config.toml: missing field `invoices`"]);
}

#[test]
fn semantic_errors_name_file_and_key() {
    let cases: [(&str, &str, &str, &[&str]); 12] = [
        (
            "chains/ethereum.toml",
            "0xdAC17F958D2ee523a2206206994597C13D831ec7",
            "0xdAC17F958D2ee523a2206206994597C13D831e",
            &[
                "chains/ethereum.toml",
                "key tokens[1].address",
                "40 hex digits",
            ],
        ),
        (
            "chains/ethereum.toml",
            "0xdAC17F958D2ee523a2206206994597C13D831ec7",
            "0xdAC17F958D2ee523a2206206994597C13D831eC7",
            &["key tokens[1].address", "checksum"],
        ),
        (
            "chains/arbitrum.toml",
            "symbol = \"USDT\"",
            "symbol = \"USDC\"",
            &[
                "chains/arbitrum.toml",
                "key tokens[1].symbol",
                "duplicate symbol \"USDC\"",
            ],
        ),
        (
            "chains/bsc.toml",
            "caip2 = \"eip155:56\"",
            "caip2 = \"bip122:000000000019d6689c085ae165831e93\"",
            &["chains/bsc.toml", "key caip2", "does not match kind"],
        ),
        (
            "chains/bsc.toml",
            "caip2 = \"eip155:56\"",
            "caip2 = \"eip155:1\"",
            &[
                "chains/ethereum.toml",
                "key caip2",
                "also the chain id of \"bsc\"",
            ],
        ),
        (
            "chains/bitcoin.toml",
            "up_to_usd = \"10000\"",
            "up_to_usd = \"500\"",
            &[
                "chains/bitcoin.toml",
                "key confirmations[1].up_to_usd",
                "strictly increase",
            ],
        ),
        (
            "chains/bitcoin.toml",
            "[[confirmations]]\nconfirmations = 6",
            "[[confirmations]]\nconfirmations = 2",
            &[
                "chains/bitcoin.toml",
                "key confirmations[2].confirmations",
                "must not decrease",
            ],
        ),
        (
            "chains/bitcoin.toml",
            "up_to_usd = \"1000\"",
            "up_to_usd = 1000",
            &[
                "chains/bitcoin.toml",
                "key confirmations[0].up_to_usd",
                "invalid type: integer `1000`, expected a string",
            ],
        ),
        (
            "config.toml",
            "[chains.bsc]",
            "[chains.solana]",
            &[
                "config.toml",
                "key chains.solana",
                "unknown chain \"solana\"",
            ],
        ),
        (
            "config.toml",
            "listen = \"127.0.0.1:8080\"",
            "listen = \"localhost\"",
            &["config.toml", "key server.listen"],
        ),
        (
            "config.toml",
            "\"BTC/USD\" = \"65000\"",
            "\"BTCUSD\" = \"65000\"",
            &["config.toml", "key rates.fixed.BTCUSD", "BASE/QUOTE"],
        ),
        (
            "config.toml",
            "\"BTC/USD\" = \"65000\"",
            "\"BTC/USD\" = \"0\"",
            &["config.toml", "key rates.fixed.BTC/USD", "zero"],
        ),
    ];
    for (file, from, to, expected) in cases {
        let fixture = Fixture::new();
        fixture.edit(file, from, to);
        assert_contains(&fixture.error(), expected);
    }
}

#[test]
fn more_semantic_errors() {
    let cases: [(&str, &str, &str, &[&str]); 9] = [
        (
            "config.toml",
            "\"ETH/USD\" = \"3000\"",
            "\"ETH/USD\" = 3000",
            &["key rates.fixed.ETH/USD", "expected a string"],
        ),
        (
            "config.toml",
            "\"ETH/USD\" = \"3000\"",
            "\"ETH/USD\" = \"3e3\"",
            &["key rates.fixed.ETH/USD"],
        ),
        (
            "config.toml",
            "expires_in_s_default = 900",
            "expires_in_s_default = 90000",
            &["key invoices.expires_in_s_default"],
        ),
        (
            "config.toml",
            "amount_max = \"1000000\"",
            "amount_max = \"10.5\"",
            &["key invoices.amount_max", "whole number"],
        ),
        (
            "config.toml",
            "rpc = [\"http://127.0.0.1:18545\"]",
            "rpc = [\"ws://127.0.0.1:18545\"]",
            &["key chains.ethereum.rpc[0]", "http://"],
        ),
        (
            "config.toml",
            "rpc = [\"tcp://127.0.0.1:50001\"]",
            "rpc = []",
            &["key chains.bitcoin.rpc", "at least one endpoint"],
        ),
        (
            "chains/polygon.toml",
            "reorg_depth_max = 256",
            "reorg_depth_max = 64",
            &["chains/polygon.toml", "key reorg_depth_max"],
        ),
        (
            "chains/polygon.toml",
            "# internal_transfers = \"auto\"",
            "internal_transfers = \"logs\"",
            &["chains/polygon.toml", "internal_transfers", "traces"],
        ),
        (
            "chains/bitcoin.toml",
            "reorg_depth_max",
            "internal_transfers = \"traces\"\nreorg_depth_max",
            &["chains/bitcoin.toml", "key internal_transfers", "bitcoin has no contract calls"],
        ),
    ];
    for (file, from, to, expected) in cases {
        let fixture = Fixture::new();
        fixture.edit(file, from, to);
        assert_contains(&fixture.error(), expected);
    }
}

#[test]
fn internal_transfers_default_to_auto_and_follow_the_chain_file() {
    let fixture = Fixture::new();
    fixture.edit("chains/polygon.toml", "# internal_transfers = \"auto\"", "internal_transfers = \"balance_check\"");
    let config = fixture.load().expect("loads");
    assert_eq!(config.chain("polygon").map(|c| c.internal_transfers), Some(InternalTransfers::BalanceCheck));
    assert_eq!(config.chain("ethereum").map(|c| c.internal_transfers), Some(InternalTransfers::Auto));
}

#[test]
fn a_chain_file_must_be_named_after_its_chain() {
    let fixture = Fixture::new();
    std::fs::rename(
        fixture.path("chains/bsc.toml"),
        fixture.path("chains/bnb.toml"),
    )
    .expect("rename");
    assert_contains(
        &fixture.error(),
        &["chains/bnb.toml", "key name", "bsc.toml"],
    );
}

#[test]
fn chains_without_a_table_are_known_but_not_enabled() {
    let fixture = Fixture::new();
    let text = std::fs::read_to_string(fixture.path("config.toml")).expect("config");
    let start = text.find("[chains.polygon]").expect("polygon table");
    let end = text.find("[chains.bsc]").expect("bsc table");
    fixture.write(
        "config.toml",
        &format!("{}{}", &text[..start], &text[end..]),
    );
    let config = fixture.load().expect("loads");
    assert!(config.chain("polygon").is_none());
    assert!(config
        .asset(&AssetId::native(ChainId::eip155(137), 966))
        .is_none());
    assert_eq!(config.chains().len(), 5);
}

#[test]
fn the_chains_directory_is_relative_to_the_config_file() {
    let fixture = Fixture::new();
    std::fs::rename(fixture.path("chains"), fixture.path("networks")).expect("rename");
    assert_contains(&fixture.error(), &["chains", "cannot read"]);
    fixture.edit("config.toml", "dir = \"chains\"", "dir = \"networks\"");
    let config = fixture.load().expect("loads");
    assert_eq!(config.chains_dir(), fixture.path("networks"));
    assert_eq!(config.chains().len(), 6);
}

// --- rate feeds ------------------------------------------------------------------------------

/// The commented-out example table `header` of the shipped config.toml, uncommented.
fn commented_example(header: &str) -> String {
    let text = repo_config_text();
    let start = text
        .find(&format!("# {header}\n"))
        .unwrap_or_else(|| panic!("config.toml has a commented {header} example"));
    let block = &text[start..];
    let end = block.find("\n\n").unwrap_or(block.len());
    block[..end]
        .lines()
        .map(|line| line.strip_prefix("# ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A fixture whose config.toml selects `feed` and ends with `table`.
fn with_rates_table(feed: &str, table: &str) -> Fixture {
    let fixture = Fixture::new();
    fixture.edit("config.toml", "feed = \"fixed\"", &format!("feed = \"{feed}\""));
    let text = std::fs::read_to_string(fixture.path("config.toml")).expect("config");
    fixture.write("config.toml", &format!("{text}\n{table}\n"));
    fixture
}

const LIVE_MINIMAL: &str = "[rates.live]\nsources = [\"coinbase\", \"kraken\", \"coingecko\"]\npairs = [\"BTC/USD\", \"USDC/USD\"]";

#[test]
fn the_commented_live_example_is_valid() {
    let fixture = with_rates_table("live", &commented_example("[rates.live]"));
    let config = fixture.load().unwrap_or_else(|e| panic!("live example loads: {e}"));
    assert_eq!(config.rates.feed, RateFeed::Live);
    let live = config.rates.live().expect("[rates.live]");
    assert_eq!(live.sources, crate::markets::LiveSource::ALL);
    let pairs: Vec<String> = live.pairs.iter().map(ToString::to_string).collect();
    assert_eq!(pairs.len(), 13);
    assert_eq!((pairs[0].as_str(), pairs[12].as_str()), ("BTC/USD", "DAI/EUR"));
    assert_eq!(
        (live.refresh_interval_ms, live.max_age_ms, live.quorum, live.outlier_bps, live.depeg_bps, live.timeout_ms),
        (30_000, 120_000, 2, 200, 100, 5_000)
    );
    assert_eq!(live.base_url(crate::markets::LiveSource::CoinGecko), Some("https://api.coingecko.com"));
    assert_eq!(live.base_url(crate::markets::LiveSource::Kraken), None);
    assert!(config.rates.file().is_none());
    // The fixed table stays loaded beside it.
    assert_eq!(config.fixed_rate("BTC", "USD"), Rate::from_str("65000").ok());
}

#[test]
fn the_commented_file_example_is_valid() {
    let fixture = with_rates_table("file", &commented_example("[rates.file]"));
    let config = fixture.load().unwrap_or_else(|e| panic!("file example loads: {e}"));
    assert_eq!(config.rates.feed, RateFeed::File);
    let file = config.rates.file().expect("[rates.file]");
    assert_eq!(
        (file.path.as_path(), file.refresh_interval_ms, file.max_age_ms, file.depeg_bps),
        (Path::new("rates.json"), 5_000, 60_000, 100)
    );
}

#[test]
fn live_and_file_tables_have_defaults() {
    let config = with_rates_table("live", LIVE_MINIMAL).load().expect("loads");
    let live = config.rates.live().expect("[rates.live]");
    assert_eq!(
        (live.refresh_interval_ms, live.max_age_ms, live.quorum, live.outlier_bps, live.depeg_bps, live.timeout_ms),
        (
            sections::RATES_LIVE_REFRESH_INTERVAL_MS_DEFAULT,
            sections::RATES_LIVE_MAX_AGE_MS_DEFAULT,
            sections::RATES_LIVE_QUORUM_DEFAULT,
            sections::RATES_OUTLIER_BPS_DEFAULT,
            sections::RATES_DEPEG_BPS_DEFAULT,
            crate::markets::FEED_TIMEOUT_MS_DEFAULT
        )
    );
    let config = with_rates_table("file", "[rates.file]\npath = \"dev/rates.json\"").load().expect("loads");
    let file = config.rates.file().expect("[rates.file]");
    assert_eq!(
        (file.refresh_interval_ms, file.max_age_ms),
        (sections::RATES_FILE_REFRESH_INTERVAL_MS_DEFAULT, sections::RATES_FILE_MAX_AGE_MS_DEFAULT)
    );
}

#[test]
fn rate_feed_errors_name_file_and_key() {
    let live = |extra: &str| format!("{LIVE_MINIMAL}\n{extra}");
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("live", "[rates.live]\nsources = []\npairs = [\"BTC/USD\"]".to_owned(), &["key rates.live.sources:", "at least one"]),
        (
            "live",
            "[rates.live]\nsources = [\"coinbase\", \"krakn\"]\npairs = [\"BTC/USD\"]".to_owned(),
            &["key rates.live.sources[1]", "unknown variant `krakn`"],
        ),
        (
            "live",
            "[rates.live]\nsources = [\"coinbase\", \"kraken\", \"coinbase\"]\npairs = [\"BTC/USD\"]".to_owned(),
            &["key rates.live.sources[2]", "coinbase is listed twice"],
        ),
        ("live", "[rates.live]\nsources = [\"coinbase\", \"kraken\"]\npairs = []".to_owned(), &["key rates.live.pairs:", "expected 1 to"]),
        (
            "live",
            "[rates.live]\nsources = [\"coinbase\", \"kraken\"]\npairs = [\"BTC/USD\", \"BTCUSD\"]".to_owned(),
            &["key rates.live.pairs[1]", "BASE/QUOTE"],
        ),
        (
            "live",
            "[rates.live]\nsources = [\"coinbase\", \"kraken\"]\npairs = [\"BTC/USD\", \"BTC/USD\"]".to_owned(),
            &["key rates.live.pairs[1]", "BTC/USD is listed twice"],
        ),
        (
            "live",
            "[rates.live]\nsources = [\"coinbase\", \"kraken\", \"coingecko\"]\npairs = [\"BTC/USD\", \"BNB/EUR\"]".to_owned(),
            &["key rates.live.pairs[1]", "BNB/EUR is listed by 1 of the sources (coingecko), fewer than the quorum of 2"],
        ),
        (
            "live",
            "[rates.live]\nsources = [\"coinbase\", \"binance\"]\npairs = [\"BTC/USD\"]".to_owned(),
            &["key rates.live.pairs:", "add \"USDT/USD\""],
        ),
        ("live", live("quorum = 4"), &["key rates.live.quorum", "expected 1 to the number of sources (3)"]),
        ("live", live("quorum = 0"), &["key rates.live.quorum", "out of range"]),
        ("live", live("quorum = \"2\""), &["key rates.live.quorum", "invalid type: string \"2\""]),
        ("live", live("max_age_ms = 10000"), &["key rates.live.max_age_ms", "do not expire between two refreshes"]),
        ("live", live("refresh_interval_ms = 10"), &["key rates.live.refresh_interval_ms", "expected 1000 to 3600000"]),
        ("live", live("timeout_ms = 45000"), &["key rates.live.timeout_ms", "at most refresh_interval_ms"]),
        ("live", live("outlier_bps = 0"), &["key rates.live.outlier_bps", "out of range"]),
        ("live", live("depeg_bps = 5000"), &["key rates.live.depeg_bps", "expected 1 to 2000"]),
        ("live", live("quorom = 2"), &["key rates.live.quorom", "unknown field `quorom`"]),
        ("live", live("base_url = { kraken = \"ftp://127.0.0.1:9000\" }"), &["key rates.live.base_url.kraken", "http://"]),
        ("live", live("base_url = { binance = \"http://127.0.0.1:9000\" }"), &["key rates.live.base_url.binance", "not in sources"]),
        ("live", live("base_url = { bitstamp = \"http://127.0.0.1:9000\" }"), &["key rates.live.base_url.bitstamp", "unknown source"]),
        ("live", live("base_url = { kraken = \"http://127.0.0.1:9000/?x=1\" }"), &["key rates.live.base_url.kraken", "no query"]),
        ("live", String::new(), &["key rates.live:", "feed \"live\" needs a [rates.live] table"]),
        ("file", String::new(), &["key rates.file:", "feed \"file\" needs a [rates.file] table"]),
        ("file", "[rates.file]\npath = \"\"".to_owned(), &["key rates.file.path", "JSON file of pairs"]),
        ("file", "[rates.file]\npath = \"r.json\"\nrefresh_interval_ms = 500".to_owned(), &["key rates.file.refresh_interval_ms"]),
        ("websocket", String::new(), &["key rates.feed", "unknown variant `websocket`"]),
        // A table that is present is checked whatever the feed.
        ("fixed", live("quorum = 9"), &["key rates.live.quorum"]),
    ];
    for (feed, table, expected) in cases {
        let message = with_rates_table(feed, &table).error();
        assert_contains(&message, &["config.toml"]);
        assert_contains(&message, expected);
    }
}

#[test]
fn rate_feed_overrides_name_the_variable() {
    let fixture = with_rates_table("fixed", LIVE_MINIMAL);
    let config = fixture.load_with(&[("PAYRAIL_RATES__FEED", "live"), ("PAYRAIL_RATES__LIVE__QUORUM", "3")]).expect("loads");
    assert_eq!(config.rates.feed, RateFeed::Live);
    assert_eq!(config.rates.live().map(|live| live.quorum), Some(3));
    assert_contains(
        &fixture.error_with(&[("PAYRAIL_RATES__LIVE__QUORUM", "5")]),
        &["config.toml: key rates.live.quorum (set by PAYRAIL_RATES__LIVE__QUORUM)", "out of range"],
    );
}

#[test]
fn rate_source_urls_are_redacted_in_debug_output() {
    let fixture = with_rates_table("live", &format!("{LIVE_MINIMAL}\nbase_url = {{ coingecko = \"https://pro-api.coingecko.com/SECRETKEY\" }}"));
    let config = fixture.load().expect("loads");
    let debug = format!("{config:?}");
    assert!(!debug.contains("SECRETKEY"), "{debug}");
    assert_contains(&debug, &["https://pro-api.coingecko.com/***"]);
    assert_eq!(
        config.rates.live().and_then(|live| live.base_url(crate::markets::LiveSource::CoinGecko)),
        Some("https://pro-api.coingecko.com/SECRETKEY")
    );
}

#[test]
fn the_shipped_production_config_is_safe() {
    let path = Path::new(REPO).join("config.toml");
    let text = std::fs::read_to_string(&path).expect("config.toml is readable");
    let config = Config::from_str_with_env(&text, &path, &[]).expect("config.toml loads");
    assert_eq!(config.dev_only_settings(), vec![], "config.toml must carry no dev-only setting");
    assert!(!config.webhooks.allow_loopback);
    assert_eq!(config.rates.feed, RateFeed::Live);
    assert!(config.chains().is_empty(), "no chain is followed until the operator enables it");
    // A Stripe API base that is not https is a dev-only setting too.
    let env = [("PAYRAIL_STRIPE__API_BASE".to_owned(), "http://127.0.0.1:8420".to_owned())];
    let config = Config::from_str_with_env(&text, &path, &env).expect("loads");
    let keys: Vec<String> = config.dev_only_settings().into_iter().map(|s| s.key).collect();
    assert_eq!(keys, ["stripe.api_base (not https)"]);
}
