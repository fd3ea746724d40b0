//! payrail's regtest node with a merchant taking Bitcoin through a watch-only descriptor, configured
//! as the shipped chain file says, for tests that need a real Bitcoin node.

use std::sync::Arc;

use bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bitcoin::{Address, Amount as Sats, Network, NetworkKind, Txid};
use payrail::api::AppState;
use payrail::merchant::bitcoin::{set_descriptor, SetDescriptor};
use payrail::chain::bitcoin::BitcoinWatcher;
use payrail::chain::ChainEvent;
use payrail::clock::ManualClock;
use payrail::config::{ChainSpec, RpcUrl};
use payrail_devnet::regtest::{RegtestConfig, RegtestHandle, RegtestNode};
use payrail::invoice::{load_view, InvoiceView};
use payrail::ledger::{AccountCode, SignedAmount};
use payrail::merchant::create_merchant;
use sqlx::PgPool;

use super::BTC;

pub const REGTEST: &str = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328";

/// A BIP84 receive descriptor on a test network key made from `seed`.
pub fn tpub_descriptor(seed: u8) -> String {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let root = Xpriv::new_master(NetworkKind::Test, &[seed; 32]).expect("root");
    let path: DerivationPath = "m/84'/1'/0'".parse().expect("path");
    let tpub = Xpub::from_priv(&secp, &root.derive_priv(&secp, &path).expect("derive"));
    format!("wpkh([{}/84h/1h/0h]{tpub}/0/*)", root.fingerprint(&secp))
}

pub struct Rig {
    pub node: RegtestHandle,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    pub spec: ChainSpec,
    pub merchant_id: String,
    pub api_key: String,
}

/// A regtest node, the shipped bitcoin configuration pointed at its Electrum server, and a
/// merchant with the descriptor of seed 1.
pub async fn rig(pool: PgPool) -> Rig {
    let node = RegtestNode::start(RegtestConfig { listen: "127.0.0.1:0".parse().expect("addr"), mine_interval: None })
        .await
        .expect("regtest node starts");
    let config = super::repo_config();
    let mut spec = config.chain("bitcoin").expect("bitcoin configured").clone();
    assert_eq!(spec.caip2.to_string(), REGTEST, "the dev stack follows regtest");
    spec.rpc = vec![RpcUrl::new(&node.electrum_url()).expect("url")];
    let (state, clock) = super::state_with_clock(pool);
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    set_descriptor(&state.pool, &merchant.merchant_id, &spec.caip2, &SetDescriptor { descriptor: tpub_descriptor(1), gap_limit: None })
        .await
        .expect("descriptor");
    Rig { node, state, clock, spec, merchant_id: merchant.merchant_id, api_key: merchant.api_key }
}

impl Rig {
    pub fn watcher(&self) -> BitcoinWatcher {
        BitcoinWatcher::new(
            self.spec.clone(),
            self.state.pool.clone(),
            self.state.ledger.clone(),
            self.state.rates.clone(),
            self.state.clock.clone(),
        )
        .expect("watcher")
    }

    /// A watcher that has read the chain up to the tip.
    pub async fn synced_watcher(&self) -> BitcoinWatcher {
        let watcher = self.watcher();
        self.sync(&watcher).await;
        watcher
    }

    /// Sends `sats` (replaceable) to the invoice's deposit address, mines it in one block and lets
    /// `watcher` read it; returns the transaction id.
    pub async fn pay_and_mine(&self, watcher: &BitcoinWatcher, invoice: &InvoiceView, sats: u64) -> Txid {
        let txid = self.node.send(&deposit(invoice), Sats::from_sat(sats), true).await.expect("send");
        self.node.mine(1).await.expect("mine");
        self.sync(watcher).await;
        txid
    }

    /// An invoice of `amount` USD payable in BTC for `merchant_id`.
    pub async fn invoice_for(&self, merchant_id: &str, amount: &str) -> InvoiceView {
        super::invoice(&self.state, merchant_id, amount, &[BTC]).await
    }

    /// An invoice of `amount` USD payable in BTC for the rig's merchant.
    pub async fn invoice(&self, amount: &str) -> InvoiceView {
        self.invoice_for(&self.merchant_id, amount).await
    }

    pub async fn view(&self, id: &str) -> InvoiceView {
        let mut conn = self.state.pool.acquire().await.expect("conn");
        load_view(&mut conn, None, id).await.expect("view")
    }

    pub async fn balance(&self, account: &AccountCode) -> SignedAmount {
        let mut conn = self.state.pool.acquire().await.expect("conn");
        self.state.ledger.balance(&mut conn, account, BTC).await.expect("balance")
    }

    pub async fn entries(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(&self.state.pool).await.expect("count")
    }

    /// Runs steps until the watcher has read the scripts at the tip, or unwound a reorg.
    pub async fn sync(&self, watcher: &BitcoinWatcher) -> ChainEvent<bitcoin::BlockHash> {
        for _ in 0..20 {
            let step = watcher.step().await.expect("step");
            if step.at_tip() || matches!(step, ChainEvent::Reorged { .. } | ChainEvent::Reverted { .. }) {
                return step;
            }
        }
        panic!("watcher did not reach the tip");
    }
}

/// The invoice's first deposit address.
pub fn deposit(invoice: &InvoiceView) -> Address {
    let text = invoice.payment_options[0].address.as_deref().expect("deposit address");
    text.parse::<Address<bitcoin::address::NetworkUnchecked>>().expect("address").require_network(Network::Regtest).expect("regtest")
}

/// The sats due on the invoice's first option.
pub fn due(invoice: &InvoiceView) -> u64 {
    invoice.payment_options[0].amount_minor.parse().expect("sats")
}
