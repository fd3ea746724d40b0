//! The EVM rail against a real anvil: deposit addresses, payments in native coin and tokens,
//! confirmations, reorgs, and a reorg deeper than the watcher's window.

use crate::common;


use alloy::network::EthereumWallet;
use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use crate::common::state_with_clock;
use payrail::api::AppState;
use payrail::chain::evm::contracts::{ForwarderFactory, TestToken, TestUSDT};
use payrail::chain::evm::EvmClient;
use payrail::chain::evm::EvmWatcher;
use payrail::chain::FollowError;
use payrail::chain::ChainEvent;
use payrail::config::{ChainSpec, RpcUrl};
use payrail_devnet::anvil::{deploy_dev_contracts_with, Anvil, DevTokenDecimals, DEV_PAYER_KEY};
use payrail::invoice::{load_view, InvoiceStatus, InvoiceView};
use payrail::ledger::{AccountCode, SignedAmount};
use payrail::merchant::create_merchant;
use serde_json::{json, Value};
use sqlx::PgPool;

struct Rig {
    anvil: Anvil,
    state: AppState,
    spec: ChainSpec,
    merchant_id: String,
}

async fn rpc(anvil: &Anvil, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let response: Value =
        reqwest::Client::new().post(anvil.url()).json(&body).send().await.expect("rpc").json().await.expect("json");
    assert!(response.get("error").is_none(), "{method}: {response}");
    response["result"].clone()
}

async fn mine(anvil: &Anvil, blocks: u64) {
    rpc(anvil, "anvil_mine", json!([format!("{blocks:#x}")])).await;
}

/// anvil for Polygon (chain 137) with the dev contracts, and the shipped polygon configuration
/// pointed at it.
async fn rig(pool: PgPool) -> Rig {
    rig_for(pool, "polygon").await
}

/// anvil for the named chain, with its real chain id, the dev contracts, and the shipped
/// configuration of that chain pointed at it.
async fn rig_for(pool: PgPool, name: &str) -> Rig {
    let config = common::repo_config();
    let mut spec = config.chain(name).expect("chain configured").clone();
    let chain_id = spec.caip2.evm_chain_id().expect("an EVM chain");
    let anvil = Anvil::start(chain_id, 0, None).await.expect("anvil starts (scripts/tools installs it)");
    let contracts = deploy_dev_contracts_with(&anvil.url(), DevTokenDecimals::of(&spec)).await.expect("contracts deploy");
    let (state, _clock) = state_with_clock(pool);
    // The dev configuration's addresses are the deterministic ones the deployment produces.
    assert_eq!(spec.forwarder_factory, Some(contracts.forwarder_factory));
    assert_eq!(spec.token("USDC").map(|t| t.address), Some(contracts.usdc));
    assert_eq!(spec.token("USDT").map(|t| t.address), Some(contracts.usdt));
    assert_eq!(spec.token("DAI").map(|t| t.address), Some(contracts.dai));
    assert_eq!(spec.payout_batcher, Some(contracts.payout_batcher));
    spec.rpc = vec![RpcUrl::new(&anvil.url()).expect("url")];
    spec.ws = Some(RpcUrl::new(&anvil.ws_url()).expect("ws url"));
    let merchant = create_merchant(&state.pool, "Shop").await.expect("merchant");
    Rig { anvil, state, spec, merchant_id: merchant.merchant_id }
}

impl Rig {
    fn watcher(&self) -> EvmWatcher {
        EvmWatcher::new(
            self.spec.clone(),
            self.state.pool.clone(),
            self.state.ledger.clone(),
            self.state.rates.clone(),
            self.state.clock.clone(),
        )
        .expect("watcher")
    }

    async fn invoice(&self, amount: &str, accepted: &[String]) -> InvoiceView {
        let accepted: Vec<&str> = accepted.iter().map(String::as_str).collect();
        common::invoice_at(&self.state, &self.merchant_id, amount, &accepted, chrono::Utc::now()).await
    }

    async fn view(&self, id: &str) -> InvoiceView {
        let mut conn = self.state.pool.acquire().await.expect("conn");
        load_view(&mut conn, None, id).await.expect("view")
    }

    async fn balance(&self, asset: &str) -> SignedAmount {
        let mut conn = self.state.pool.acquire().await.expect("conn");
        self.state.ledger.balance(&mut conn, &AccountCode::merchant(&self.merchant_id), asset).await.expect("balance")
    }

    fn asset(&self, symbol: &str) -> String {
        match self.spec.token(symbol) {
            Some(token) => token.asset_id().to_string(),
            None => self.spec.native_asset_id().to_string(),
        }
    }

    /// One step, which must commit new blocks.
    async fn step_once(&self, watcher: &EvmWatcher) {
        assert!(!watcher.step().await.expect("step").is_idle(), "a block to read");
    }

    /// Runs the watcher until it has nothing left to do.
    async fn catch_up(&self, watcher: &EvmWatcher) {
        for _ in 0..50 {
            if watcher.step().await.expect("step").is_idle() {
                return;
            }
        }
        panic!("watcher did not catch up");
    }
}

fn payer() -> PrivateKeySigner {
    DEV_PAYER_KEY.parse().expect("payer key")
}

/// Pays `amount` smallest units of `symbol` (or native coin) to `to`; returns the tx hash.
async fn pay(rig: &Rig, symbol: &str, to: Address, amount: U256) -> alloy::primitives::B256 {
    let url = alloy::transports::http::reqwest::Url::parse(&rig.anvil.url()).expect("url");
    let provider = ProviderBuilder::new().wallet(EthereumWallet::from(payer())).connect_http(url);
    let pending = match (symbol, rig.spec.token(symbol)) {
        ("USDT", Some(token)) => TestUSDT::new(token.address, &provider).transfer(to, amount).send().await.expect("send"),
        (_, Some(token)) => TestToken::new(token.address, &provider).transfer(to, amount).send().await.expect("send"),
        (_, None) => provider.send_transaction(TransactionRequest::default().to(to).value(amount)).await.expect("send"),
    };
    pending.get_receipt().await.expect("mined").transaction_hash
}

fn deposit_of(invoice: &InvoiceView) -> Address {
    invoice.payment_options[0].address.as_deref().expect("deposit address").parse().expect("address")
}

#[sqlx::test]
async fn deposit_address_matches_the_factory_on_chain(pool: PgPool) {
    let rig = rig(pool).await;
    let invoice = rig.invoice("10.00", &[rig.asset("USDC")]).await;
    let url = alloy::transports::http::reqwest::Url::parse(&rig.anvil.url()).expect("url");
    let provider = ProviderBuilder::new().connect_http(url);
    let factory = ForwarderFactory::new(rig.spec.forwarder_factory.expect("factory"), &provider);
    let predicted = factory.predict(payrail::chain::evm::deposit_salt(&invoice.id)).call().await.expect("predict");
    assert_eq!(deposit_of(&invoice), predicted);
    let option = &invoice.payment_options[0];
    let uri = option.uri.as_deref().expect("EIP-681 uri");
    assert!(uri.starts_with("ethereum:0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512@137/transfer?address="), "{uri}");
    assert!(uri.ends_with("&uint256=10000000"), "{uri}");
}

#[sqlx::test]
async fn payments_in_native_coin_and_every_token_reach_paid_with_ledger_entries(pool: PgPool) {
    let rig = rig(pool).await;
    pay_every_asset(&rig).await;
    // Replaying every block from scratch changes nothing: credits are keyed by transaction and log.
    sqlx::query("DELETE FROM chain_cursors").execute(&rig.state.pool).await.expect("reset cursor");
    rig.catch_up(&rig.watcher()).await;
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(&rig.state.pool).await.expect("n");
    assert_eq!(entries, 4);
}

/// The same watcher code, configured for each of the other EVM chains, with their real chain ids.
#[sqlx::test]
async fn every_evm_chain_is_watched_with_its_own_configuration(pool: PgPool) {
    for name in ["ethereum", "bsc", "arbitrum", "optimism"] {
        let rig = rig_for(pool.clone(), name).await;
        pay_every_asset(&rig).await;
    }
    let paid: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices WHERE status = 'paid'").fetch_one(&pool).await.expect("n");
    assert_eq!(paid, 16);
}

/// Pays one invoice in each of the chain's tokens and its native coin, and checks each one through
/// seen, confirmed and credited.
async fn pay_every_asset(rig: &Rig) {
    let watcher = rig.watcher();
    watcher.check_chain().await.expect("chain id");
    rig.catch_up(&watcher).await;
    let native = rig.spec.native.symbol.clone();
    for symbol in ["USDC", "USDT", "DAI", native.as_str()] {
        let asset = rig.asset(symbol);
        let invoice = rig.invoice("25.00", std::slice::from_ref(&asset)).await;
        let due: U256 = invoice.payment_options[0].amount_minor.parse().expect("amount");
        pay(rig, symbol, deposit_of(&invoice), due).await;
        rig.catch_up(&watcher).await;
        let seen = rig.view(&invoice.id).await;
        assert_eq!(seen.payments.len(), 1, "{symbol}");
        let required = seen.payments[0].confirmations_required;
        if required > 1 {
            assert_eq!(seen.status, InvoiceStatus::Processing, "{symbol}");
            assert_eq!(rig.balance(&asset).await, SignedAmount::ZERO, "{symbol} credited before confirmation");
        }
        mine(&rig.anvil, u64::from(required)).await;
        rig.catch_up(&watcher).await;
        let paid = rig.view(&invoice.id).await;
        assert_eq!(paid.status, InvoiceStatus::Paid, "{symbol}");
        assert_eq!(paid.payments[0].status, "confirmed");
        assert_eq!(paid.payments[0].amount_minor, invoice.payment_options[0].amount_minor);
        let due_amount: payrail::money::Amount = invoice.payment_options[0].amount_minor.parse().expect("amount");
        assert_eq!(rig.balance(&asset).await, SignedAmount::positive(due_amount), "{symbol}");
    }
}

#[sqlx::test]
async fn a_reorg_orphans_an_unconfirmed_payment_and_its_return_is_counted_once(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.watcher();
    rig.catch_up(&watcher).await;
    let asset = rig.asset("USDC");
    let invoice = rig.invoice("5.00", std::slice::from_ref(&asset)).await;
    let snapshot = rpc(&rig.anvil, "evm_snapshot", json!([])).await;
    let tx = pay(&rig, "USDC", deposit_of(&invoice), U256::from(5_000_000u64)).await;
    let raw = rpc(&rig.anvil, "eth_getRawTransactionByHash", json!([tx])).await;
    mine(&rig.anvil, 2).await;
    rig.catch_up(&watcher).await;
    assert_eq!(rig.view(&invoice.id).await.status, InvoiceStatus::Processing);

    // The block with the payment is replaced by a longer branch without it.
    rpc(&rig.anvil, "evm_revert", json!([snapshot])).await;
    mine(&rig.anvil, 5).await;
    let step = watcher.step().await.expect("step");
    assert!(matches!(step, ChainEvent::Reorged { orphaned: 1, .. }), "{step:?}");
    rig.catch_up(&watcher).await;
    let orphaned = rig.view(&invoice.id).await;
    assert_eq!(orphaned.status, InvoiceStatus::Open);
    assert_eq!(orphaned.payments[0].status, "orphaned");

    // The same transaction is mined again on the new branch: seen again, then credited once.
    let hash = rpc(&rig.anvil, "eth_sendRawTransaction", json!([raw])).await;
    assert_eq!(hash, json!(tx), "the same transaction");
    for _ in 0..100 {
        if !rpc(&rig.anvil, "eth_getTransactionReceipt", json!([hash])).await.is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    rig.catch_up(&watcher).await;
    let back = rig.view(&invoice.id).await;
    assert_eq!(back.status, InvoiceStatus::Processing);
    assert_eq!(back.payments.len(), 1, "the same transfer is one payment");
    mine(&rig.anvil, u64::from(back.payments[0].confirmations_required)).await;
    rig.catch_up(&watcher).await;
    assert_eq!(rig.view(&invoice.id).await.status, InvoiceStatus::Paid);
    assert_eq!(rig.balance(&asset).await, SignedAmount::positive(payrail::money::Amount::from_u64(5_000_000)));
}

#[sqlx::test]
async fn a_reorg_deeper_than_the_window_stops_the_watcher(pool: PgPool) {
    let mut rig = rig(pool).await;
    rig.spec.reorg_depth_max = 3;
    let watcher = rig.watcher();
    let snapshot = rpc(&rig.anvil, "evm_snapshot", json!([])).await;
    mine(&rig.anvil, 10).await;
    rig.catch_up(&watcher).await;
    rpc(&rig.anvil, "evm_revert", json!([snapshot])).await;
    // A different branch: a transaction changes the blocks' contents, then it grows longer.
    pay(&rig, "POL", Address::repeat_byte(0x11), U256::from(1u64)).await;
    mine(&rig.anvil, 12).await;
    match watcher.step().await {
        Err(error @ FollowError::ReorgTooDeep { .. }) => assert!(!error.is_retryable()),
        other => panic!("expected the watcher to stop, got {other:?}"),
    }
}

#[sqlx::test]
async fn an_endpoint_of_another_chain_is_refused(pool: PgPool) {
    let mut rig = rig(pool).await;
    rig.spec.caip2 = "eip155:1".parse().expect("chain");
    let error = rig.watcher().check_chain().await.expect_err("wrong chain");
    assert!(matches!(error, FollowError::WrongChain { expected: 1, actual: 137, .. }), "{error:?}");
}

/// An endpoint of another network listed first is skipped: the watcher follows through the next.
#[sqlx::test]
async fn an_endpoint_of_another_chain_beside_a_right_one_is_skipped(pool: PgPool) {
    let mut rig = rig(pool).await;
    let mainnet = Anvil::start(1, 0, None).await.expect("anvil of chain 1");
    rig.spec.rpc.insert(0, RpcUrl::new(&mainnet.url()).expect("url"));
    let watcher = rig.watcher();
    watcher.check_chain().await.expect("the second endpoint serves chain 137");
    mine(&rig.anvil, 3).await;
    // The other network's anvil is at block 0; chain 137's tip is read through the second endpoint.
    let tip = EvmClient::for_chain(&rig.spec).expect("client").tip().await.expect("tip of chain 137");
    let want = rpc(&rig.anvil, "eth_blockNumber", json!([])).await;
    assert_eq!(format!("{tip:#x}"), want.as_str().expect("hex tip"));
    assert!(tip >= 3);
}

/// The one node client every EVM job uses: a dead endpoint is skipped, an endpoint serving another
/// chain is never handed out nor read from, reads fail over.
#[sqlx::test]
async fn the_evm_client_fails_over_and_hands_out_only_endpoints_of_its_chain(pool: PgPool) {
    let rig = rig(pool).await;
    let dead = RpcUrl::new("http://127.0.0.1:9").expect("url");
    let live = rig.spec.rpc[0].clone();
    let client = EvmClient::new(&[dead.clone(), live.clone()], Some(137)).expect("client");
    let provider = client.provider().await.expect("the live endpoint");
    assert_eq!(provider.get_chain_id().await.expect("chain id"), 137);
    let payer = DEV_PAYER_KEY.parse::<PrivateKeySigner>().expect("key").address();
    let usdc = rig.spec.token("USDC").expect("usdc").address;
    let on_chain = TestToken::new(usdc, &provider).balanceOf(payer).call().await.expect("balanceOf");
    assert!(!on_chain.is_zero(), "the dev payer holds test USDC");
    assert_eq!(client.balance_of(payer, usdc).await.expect("through failover"), on_chain);
    assert_eq!(client.balance_of(payer, Address::ZERO).await.expect("native"), provider.get_balance(payer).await.expect("balance"));

    let other_chain = EvmClient::new(&[dead, live], Some(1)).expect("client");
    let error = other_chain.provider().await.expect_err("only chain 137 is served");
    assert!(error.to_string().contains("serves chain 137"), "{error}");
    // Reads are not taken from a node of another network either.
    let error = other_chain.tip().await.expect_err("the tip of another chain is not read");
    assert!(error.to_string().contains("serves chain 137, not 1"), "{error}");
}

/// A reorg one endpoint reports is not believed while another endpoint, about as far along, still
/// has the block: that one is the witness. A block no endpoint has, a witness further behind than
/// `WITNESS_LAG_MAX`, or a client with one endpoint gives none. (Its use by the watcher, with one
/// endpoint on another branch, is the `rpc-faults` chaos scenario.)
#[sqlx::test]
async fn a_reorg_is_not_believed_on_one_endpoints_word(pool: PgPool) {
    use payrail::chain::evm::client::WITNESS_LAG_MAX;
    let rig = rig(pool).await;
    let live = rig.spec.rpc[0].clone();
    // Two endpoints on one node: the second has whatever the first has.
    let client = EvmClient::new(&[live.clone(), live.clone()], Some(137)).expect("client");
    mine(&rig.anvil, 3).await;
    let tip = client.tip().await.expect("tip");
    let hash = client.block_hash(tip - 1).await.expect("hash");
    assert!(client.witness_against_reorg(tip - 1, hash, tip).await.is_some(), "the other endpoint still has the block");
    assert_eq!(client.witness_against_reorg(tip - 1, alloy::primitives::B256::repeat_byte(7), tip).await, None, "no one has this block");
    assert_eq!(client.witness_against_reorg(tip - 1, hash, tip + WITNESS_LAG_MAX + 1).await, None, "too far behind to say");
    let single = EvmClient::new(&[live], Some(137)).expect("client");
    assert_eq!(single.witness_against_reorg(tip - 1, hash, tip).await, None, "one endpoint has no witness");
}

#[sqlx::test]
async fn a_dead_endpoint_is_a_retryable_error_and_failover_uses_the_next(pool: PgPool) {
    let mut rig = rig(pool).await;
    let live = rig.spec.rpc.clone();
    rig.spec.rpc = vec![RpcUrl::new("http://127.0.0.1:9").expect("url")];
    let error = rig.watcher().step().await.expect_err("dead endpoint");
    assert!(error.is_retryable(), "{error:?}");
    rig.spec.rpc = vec![RpcUrl::new("http://127.0.0.1:9").expect("url"), live[0].clone()];
    assert!(rig.watcher().step().await.is_ok());
}

#[sqlx::test]
async fn confirmed_deposits_are_swept_to_the_treasury_and_gas_is_booked(pool: PgPool) {
    use payrail::chain::evm::Sweeper;
    use payrail_devnet::anvil::{DEV_DEPLOYER_KEY, DEV_TREASURY};
    let rig = rig(pool).await;
    let watcher = rig.watcher();
    let sweeper = Sweeper::new(rig.spec.clone(), DEV_DEPLOYER_KEY, rig.state.pool.clone(), rig.state.ledger.clone())
        .expect("sweeper");
    let url = alloy::transports::http::reqwest::Url::parse(&rig.anvil.url()).expect("url");
    let provider = ProviderBuilder::new().connect_http(url);
    let usdc = TestToken::new(rig.spec.token("USDC").expect("usdc").address, &provider);
    let treasury_before = usdc.balanceOf(DEV_TREASURY).call().await.expect("balance");

    let paid = rig.invoice("7.00", &[rig.asset("USDC")]).await;
    let waiting = rig.invoice("3.00", &[rig.asset("USDC")]).await;
    pay(&rig, "USDC", deposit_of(&paid), U256::from(7_000_000u64)).await;
    mine(&rig.anvil, 40).await;
    pay(&rig, "USDC", deposit_of(&waiting), U256::from(3_000_000u64)).await;
    rig.catch_up(&watcher).await;
    assert_eq!(rig.view(&paid.id).await.status, InvoiceStatus::Paid);
    assert_eq!(rig.view(&waiting.id).await.status, InvoiceStatus::Processing);

    let pass = sweeper.pass().await.expect("sweep");
    assert_eq!((pass.confirmed, pass.failed), (1, 0), "only the confirmed deposit is swept");
    let treasury_after = usdc.balanceOf(DEV_TREASURY).call().await.expect("balance");
    assert_eq!(treasury_after - treasury_before, U256::from(7_000_000u64));
    assert_eq!(usdc.balanceOf(deposit_of(&paid)).call().await.expect("balance"), U256::ZERO);
    assert_eq!(usdc.balanceOf(deposit_of(&waiting)).call().await.expect("balance"), U256::from(3_000_000u64));
    let code = provider.get_code_at(deposit_of(&paid)).await.expect("code");
    assert!(!code.is_empty(), "the forwarder was deployed by the sweep");

    let mut conn = rig.state.pool.acquire().await.expect("conn");
    let fees = rig.state.ledger.balance(&mut conn, &AccountCode::network_fees(), &rig.asset("POL")).await.expect("fees");
    assert!(!fees.is_negative() && fees != SignedAmount::ZERO, "gas booked: {fees}");
    let swept: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE sweep_id IS NOT NULL")
        .fetch_one(&rig.state.pool)
        .await
        .expect("n");
    assert_eq!(swept, 1);
    // Nothing left to do: a second pass sends nothing.
    assert_eq!(sweeper.pass().await.expect("again"), payrail::chain::evm::SweepPass::default());
    // Once the waiting deposit confirms, it is swept too.
    mine(&rig.anvil, 40).await;
    rig.catch_up(&watcher).await;
    assert_eq!(sweeper.pass().await.expect("third").confirmed, 1);
    assert_eq!(usdc.balanceOf(DEV_TREASURY).call().await.expect("balance") - treasury_before, U256::from(10_000_000u64));
}

/// Pays `to` from inside a contract call (the payout batcher), as a smart wallet or a payout
/// contract would; returns the block it was mined in.
async fn pay_from_a_contract(rig: &Rig, to: Address, value: U256) -> u64 {
    use payrail::chain::evm::contracts::PayoutBatcher;
    use payrail_devnet::anvil::DEV_DEPLOYER_KEY;
    let url = alloy::transports::http::reqwest::Url::parse(&rig.anvil.url()).expect("url");
    let deployer: PrivateKeySigner = DEV_DEPLOYER_KEY.parse().expect("key");
    let provider = ProviderBuilder::new().wallet(EthereumWallet::from(deployer)).connect_http(url);
    let batcher = PayoutBatcher::new(rig.spec.payout_batcher.expect("batcher"), &provider);
    let receipt = batcher
        .payout(alloy::primitives::B256::repeat_byte(7), Address::ZERO, vec![to], vec![value])
        .value(value)
        .send()
        .await
        .expect("send")
        .get_receipt()
        .await
        .expect("mined");
    assert!(receipt.status());
    receipt.block_number.expect("block")
}

/// Native coin sent by a contract (an internal transfer) is found in the block's traces, in the
/// block that moved it, as soon as that block is read; a transfer inside a transaction that then
/// reverted moved nothing and is not counted.
#[sqlx::test]
async fn native_coin_sent_by_a_contract_is_found_in_the_block_traces(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.watcher();
    rig.catch_up(&watcher).await;
    let asset = rig.asset("POL");
    let invoice = rig.invoice("1.00", std::slice::from_ref(&asset)).await;
    let due: U256 = invoice.payment_options[0].amount_minor.parse().expect("amount");
    let deposit = deposit_of(&invoice);

    // A contract creation whose code pays the deposit address, then reverts.
    let code = format!("0x60006000600060003473{}5af160006000fd", hex::encode(deposit.as_slice()));
    let url = alloy::transports::http::reqwest::Url::parse(&rig.anvil.url()).expect("url");
    let provider = ProviderBuilder::new().wallet(EthereumWallet::from(payer())).connect_http(url);
    let reverted = TransactionRequest::default()
        .input(alloy::primitives::Bytes::from(hex::decode(&code[2..]).expect("hex")).into())
        .create()
        .value(due)
        .gas_limit(200_000);
    let receipt = provider.send_transaction(reverted).await.expect("send").get_receipt().await.expect("mined");
    assert!(!receipt.status(), "the creation reverts");
    rig.catch_up(&watcher).await;
    assert!(rig.view(&invoice.id).await.payments.is_empty(), "a reverted call moved nothing");

    let height = pay_from_a_contract(&rig, deposit, due).await;
    rig.step_once(&watcher).await;
    let key = contract_payment_is_credited_once(&rig, &watcher, &invoice).await;
    assert_eq!(key, format!("{}:balance:{deposit:#x}:{height}", rig.spec.caip2));
}

/// The invoice shows one payment of what it asked, `processing`; it is paid once the payment is
/// deep enough, and a new watcher finds nothing more (the payment explains the balance). Returns
/// the payment's key.
async fn contract_payment_is_credited_once(rig: &Rig, watcher: &EvmWatcher, invoice: &InvoiceView) -> String {
    let seen = rig.view(&invoice.id).await;
    assert_eq!(seen.status, InvoiceStatus::Processing);
    assert_eq!(seen.payments.len(), 1);
    assert_eq!(seen.payments[0].amount_minor, invoice.payment_options[0].amount_minor);
    mine(&rig.anvil, u64::from(seen.payments[0].confirmations_required)).await;
    rig.catch_up(watcher).await;
    assert_eq!(rig.view(&invoice.id).await.status, InvoiceStatus::Paid);
    let again = rig.watcher();
    rig.catch_up(&again).await;
    assert_eq!(rig.view(&invoice.id).await.payments.len(), 1);
    seen.payments[0].tx_ref.clone()
}

/// Where traces are not used, native coin sent by a contract is found by the balance check: at
/// the first idle step, as the difference between the balance and the payments recorded.
#[sqlx::test]
async fn native_coin_sent_by_a_contract_is_found_by_the_balance_check(pool: PgPool) {
    let mut rig = rig(pool).await;
    rig.spec.internal_transfers = payrail::config::InternalTransfers::BalanceCheck;
    let watcher = rig.watcher();
    rig.catch_up(&watcher).await;
    let asset = rig.asset("POL");
    let invoice = rig.invoice("1.00", std::slice::from_ref(&asset)).await;
    let due: U256 = invoice.payment_options[0].amount_minor.parse().expect("amount");
    pay_from_a_contract(&rig, deposit_of(&invoice), due).await;
    // The first idle tick runs the balance check.
    let watcher = rig.watcher();
    rig.catch_up(&watcher).await;
    let key = contract_payment_is_credited_once(&rig, &watcher, &invoice).await;
    assert!(key.contains(":balance:"), "{key}");
}

/// A deposit address written by a transaction that commits after the watcher read the addresses
/// written since its last read (while a later one was already visible) is still watched.
#[sqlx::test]
async fn an_address_committed_late_is_still_watched(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.watcher();
    rig.catch_up(&watcher).await;
    let usdc = rig.asset("USDC");
    let first = rig.invoice("2.00", std::slice::from_ref(&usdc)).await;
    let late = Address::repeat_byte(0x5a);
    let mut open = rig.state.pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO deposit_addresses (chain, address, invoice_id) VALUES ($1, $2, $3)")
        .bind(rig.spec.caip2.to_string())
        .bind(format!("{late:#x}"))
        .bind(&first.id)
        .execute(&mut *open)
        .await
        .expect("insert");
    // Written and committed after the open one began.
    let second = rig.invoice("3.00", std::slice::from_ref(&usdc)).await;
    mine(&rig.anvil, 1).await;
    rig.catch_up(&watcher).await;
    open.commit().await.expect("commit");
    pay(&rig, "USDC", deposit_of(&second), U256::from(3_000_000u64)).await;
    pay(&rig, "USDC", late, U256::from(2_000_000u64)).await;
    rig.catch_up(&watcher).await;
    assert_eq!(rig.view(&second.id).await.payments.len(), 1);
    let paid = rig.view(&first.id).await;
    assert_eq!(paid.payments.len(), 1, "the late address's payment is seen");
    assert_eq!(paid.payments[0].address.as_deref().map(str::to_lowercase), Some(format!("{late:#x}")));
}

/// A large payment needs more confirmations than the finalized tag lags; a finalized block is
/// final, so the payment confirms when its block is finalized.
#[sqlx::test]
async fn a_finalized_block_confirms_a_payment_before_its_count_is_reached(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.watcher();
    rig.catch_up(&watcher).await;
    let invoice = rig.invoice("20000.00", &[rig.asset("USDC")]).await;
    pay(&rig, "USDC", deposit_of(&invoice), U256::from(20_000_000_000u64)).await;
    rig.catch_up(&watcher).await;
    let required = rig.view(&invoice.id).await.payments[0].confirmations_required;
    assert!(required > 70, "polygon's large-payment tier: {required}");
    // anvil reports `finalized` 64 blocks below the tip.
    mine(&rig.anvil, 70).await;
    rig.catch_up(&watcher).await;
    let shown = rig.view(&invoice.id).await;
    assert_eq!(shown.status, InvoiceStatus::Paid);
    assert!(shown.payments[0].confirmations < required);
    let metrics = payrail::metrics::render();
    assert!(metrics.contains("payrail_chain_head_lag_blocks{chain=\"eip155:137\"}"), "{metrics}");
}

/// The session that holds `lock`'s advisory lock in this test's database, if any.
async fn lock_holder(pool: &PgPool, lock: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND ((classid::bigint << 32) | objid::bigint) = hashtext($1)::bigint",
    )
    .bind(lock)
    .fetch_optional(pool)
    .await
    .expect("pg_locks")
}

async fn wait_for_holder(pool: &PgPool, lock: &str, not: Option<i32>) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(pid) = lock_holder(pool, lock).await.filter(|pid| Some(*pid) != not) {
            return pid;
        }
        assert!(std::time::Instant::now() < deadline, "nobody took {lock}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A database restart ends the lock's session: the running watcher notices before its next tick,
/// takes the lock again on a new session and goes on following the chain.
#[sqlx::test]
async fn a_watcher_whose_lock_session_ends_takes_the_lock_again_and_keeps_watching(pool: PgPool) {
    let rig = rig(pool.clone()).await;
    let lock = format!("payrail.watch.{}", rig.spec.caip2);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(rig.watcher().run(stopped));
    let first = wait_for_holder(&pool, &lock, None).await;

    let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)").bind(first).fetch_one(&pool).await.expect("terminate");
    assert!(done);
    let second = wait_for_holder(&pool, &lock, Some(first)).await;
    assert_ne!(first, second);
    assert!(!task.is_finished(), "the watcher did not stop");

    let invoice = rig.invoice("4.00", &[rig.asset("USDC")]).await;
    pay(&rig, "USDC", deposit_of(&invoice), U256::from(4_000_000u64)).await;
    mine(&rig.anvil, 40).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while rig.view(&invoice.id).await.status != InvoiceStatus::Paid {
        assert!(std::time::Instant::now() < deadline, "the watcher follows the chain after taking the lock again");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.send(true).expect("stop");
    tokio::time::timeout(std::time::Duration::from_secs(10), task).await.expect("stops").expect("task").expect("clean stop");
    assert_eq!(lock_holder(&pool, &lock).await, None, "the lock is released at shutdown");
}

/// A paid USDC invoice whose deposit is confirmed and ready to sweep.
async fn confirmed_usdc_deposit(rig: &Rig, watcher: &EvmWatcher, amount: u64) -> InvoiceView {
    let invoice = rig.invoice(&format!("{}.00", amount / 1_000_000), &[rig.asset("USDC")]).await;
    pay(rig, "USDC", deposit_of(&invoice), U256::from(amount)).await;
    mine(&rig.anvil, 40).await;
    rig.catch_up(watcher).await;
    assert_eq!(rig.view(&invoice.id).await.status, InvoiceStatus::Paid);
    invoice
}

/// The `Swept` events of the factory for `invoice`'s forwarder.
async fn swept_events(rig: &Rig, invoice: &InvoiceView) -> usize {
    use alloy::sol_types::SolEvent;
    let url = alloy::transports::http::reqwest::Url::parse(&rig.anvil.url()).expect("url");
    let provider = ProviderBuilder::new().connect_http(url);
    let filter = alloy::rpc::types::Filter::new()
        .address(rig.spec.forwarder_factory.expect("factory"))
        .event_signature(ForwarderFactory::Swept::SIGNATURE_HASH)
        .topic1(payrail::chain::evm::deposit_salt(&invoice.id))
        .from_block(0u64);
    provider.get_logs(&filter).await.expect("logs").len()
}

fn sweeper_of(rig: &Rig) -> payrail::chain::evm::Sweeper {
    payrail::chain::evm::Sweeper::new(rig.spec.clone(), payrail_devnet::anvil::DEV_DEPLOYER_KEY, rig.state.pool.clone(), rig.state.ledger.clone())
        .expect("sweeper")
}

async fn hot_wallet_nonce(rig: &Rig) -> u64 {
    let key: PrivateKeySigner = payrail_devnet::anvil::DEV_DEPLOYER_KEY.parse().expect("key");
    let url = alloy::transports::http::reqwest::Url::parse(&rig.anvil.url()).expect("url");
    ProviderBuilder::new().connect_http(url).get_transaction_count(key.address()).await.expect("nonce")
}

async fn usdc_of(rig: &Rig, owner: Address) -> U256 {
    let url = alloy::transports::http::reqwest::Url::parse(&rig.anvil.url()).expect("url");
    let provider = ProviderBuilder::new().connect_http(url);
    TestToken::new(rig.spec.token("USDC").expect("usdc").address, &provider).balanceOf(owner).call().await.expect("balance")
}

/// A crash between storing a sweep's signed transaction and broadcasting it: after the restart the
/// same bytes are sent and the sweep completes once.
#[sqlx::test]
async fn a_sweep_signed_but_not_broadcast_is_completed_once_after_a_restart(pool: PgPool) {
    use payrail_devnet::anvil::DEV_TREASURY;
    let rig = rig(pool).await;
    let watcher = rig.watcher();
    let invoice = confirmed_usdc_deposit(&rig, &watcher, 7_000_000).await;
    let treasury_before = usdc_of(&rig, DEV_TREASURY).await;
    let nonce_before = hot_wallet_nonce(&rig).await;

    assert_eq!(sweeper_of(&rig).sign_only().await.expect("sign"), 1);
    let (status, stored_hash, raw): (String, String, Option<Vec<u8>>) =
        sqlx::query_as("SELECT status, tx_hash, raw_tx FROM sweeps").fetch_one(&rig.state.pool).await.expect("sweep");
    assert_eq!(status, "sent");
    assert!(raw.is_some_and(|r| !r.is_empty()), "the signed bytes are stored before broadcasting");
    assert_eq!(usdc_of(&rig, deposit_of(&invoice)).await, U256::from(7_000_000u64), "nothing was sent");

    // The restarted daemon: a new sweeper over the same database.
    let pass = sweeper_of(&rig).pass().await.expect("pass");
    assert_eq!((pass.confirmed, pass.failed), (1, 0));
    assert_eq!(usdc_of(&rig, DEV_TREASURY).await - treasury_before, U256::from(7_000_000u64));
    let (status, hash): (String, String) =
        sqlx::query_as("SELECT status, tx_hash FROM sweeps").fetch_one(&rig.state.pool).await.expect("sweep");
    assert_eq!((status.as_str(), hash.as_str()), ("confirmed", stored_hash.as_str()), "the stored transaction was the one mined");
    assert_eq!(swept_events(&rig, &invoice).await, 1);
    assert_eq!(hot_wallet_nonce(&rig).await, nonce_before + 1, "one sweep transaction, not two");
    assert_eq!(sweeper_of(&rig).pass().await.expect("again"), payrail::chain::evm::SweepPass::default());
    let sweeps: i64 = sqlx::query_scalar("SELECT count(*) FROM sweeps").fetch_one(&rig.state.pool).await.expect("n");
    assert_eq!(sweeps, 1);
}

/// A sweep mined by a transaction the store never learned of (sent before its hash was written) is
/// found by its `Swept` event; no second sweep is sent.
#[sqlx::test]
async fn a_sweep_mined_without_a_stored_hash_is_found_by_its_swept_event(pool: PgPool) {
    let rig = rig(pool).await;
    let watcher = rig.watcher();
    let invoice = confirmed_usdc_deposit(&rig, &watcher, 5_000_000).await;
    let nonce_before = hot_wallet_nonce(&rig).await;
    sweeper_of(&rig).sign_only().await.expect("sign");
    let (hash, raw): (String, Vec<u8>) =
        sqlx::query_as("SELECT tx_hash, raw_tx FROM sweeps").fetch_one(&rig.state.pool).await.expect("sweep");
    let url = alloy::transports::http::reqwest::Url::parse(&rig.anvil.url()).expect("url");
    ProviderBuilder::new().connect_http(url).send_raw_transaction(&raw).await.expect("sent").get_receipt().await.expect("mined");
    sqlx::query("UPDATE sweeps SET status = 'pending', tx_hash = NULL, sender = NULL, nonce = NULL, raw_tx = NULL")
        .execute(&rig.state.pool)
        .await
        .expect("lose the hash");

    let pass = sweeper_of(&rig).pass().await.expect("pass");
    assert_eq!(pass.confirmed, 1);
    let (status, found): (String, String) =
        sqlx::query_as("SELECT status, tx_hash FROM sweeps").fetch_one(&rig.state.pool).await.expect("sweep");
    assert_eq!((status.as_str(), found.as_str()), ("confirmed", hash.as_str()));
    assert_eq!(hot_wallet_nonce(&rig).await, nonce_before + 1, "no second sweep was sent");
    assert_eq!(swept_events(&rig, &invoice).await, 1);
}

/// Sweepers on two replicas: one holds the chain's sweep lock and sweeps each deposit once; when it
/// stops, the other takes over.
#[sqlx::test]
async fn two_sweepers_on_one_chain_sweep_each_deposit_once(pool: PgPool) {
    let rig = rig(pool.clone()).await;
    let watcher = rig.watcher();
    let mut invoices = Vec::new();
    for amount in [1_000_000u64, 2_000_000, 3_000_000] {
        invoices.push(confirmed_usdc_deposit(&rig, &watcher, amount).await);
    }
    let nonce_before = hot_wallet_nonce(&rig).await;
    let every = std::time::Duration::from_millis(100);
    let first = sweeper_of(&rig).every(every);
    let lock = first.lock_name();
    let (stop_first, first_stopped) = tokio::sync::watch::channel(false);
    let first_task = tokio::spawn(first.run(first_stopped));
    let holder = wait_for_holder(&pool, &lock, None).await;
    let (stop_second, second_stopped) = tokio::sync::watch::channel(false);
    let second_task = tokio::spawn(sweeper_of(&rig).every(every).run(second_stopped));

    let confirmed = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sweeps WHERE status = 'confirmed'").fetch_one(&pool).await.expect("n");
        n
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while confirmed().await < 3 {
        assert!(std::time::Instant::now() < deadline, "deposits swept");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(lock_holder(&pool, &lock).await, Some(holder), "one sweeper holds the lock throughout");
    let sweeps: i64 = sqlx::query_scalar("SELECT count(*) FROM sweeps").fetch_one(&pool).await.expect("n");
    assert_eq!(sweeps, 3, "one sweep per deposit");
    for invoice in &invoices {
        assert_eq!(swept_events(&rig, invoice).await, 1);
    }
    assert_eq!(hot_wallet_nonce(&rig).await, nonce_before + 3, "three sweep transactions");

    // The holder stops; the other replica's sweeper takes the lock and sweeps what comes next.
    stop_first.send(true).expect("stop");
    tokio::time::timeout(std::time::Duration::from_secs(10), first_task).await.expect("stops").expect("task");
    wait_for_holder(&pool, &lock, Some(holder)).await;
    let later = confirmed_usdc_deposit(&rig, &watcher, 4_000_000).await;
    while confirmed().await < 4 {
        assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(30), "the standby sweeps");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(swept_events(&rig, &later).await, 1);
    stop_second.send(true).expect("stop");
    tokio::time::timeout(std::time::Duration::from_secs(70), second_task).await.expect("stops").expect("task");
}

/// A watcher that stops for good marks its rail unhealthy at once (not after minutes of silence).
#[sqlx::test]
async fn a_watcher_that_stops_marks_its_rail_unhealthy_at_once(pool: PgPool) {
    let mut rig = rig(pool).await;
    rig.spec.caip2 = "eip155:1".parse().expect("chain");
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), rig.watcher().run(stopped)).await.expect("stops");
    assert!(matches!(outcome, Err(FollowError::WrongChain { .. })), "{outcome:?}");
    let health = payrail::chain::health::shared();
    assert_eq!(health.problem("eip155:1", rig.state.clock.now()), Some("its watcher stopped and needs an operator"));
}

/// anvil runs with `--prune-history` and keeps only the newest state: a balance at an older block is
/// told apart as pruned state (which the watcher's balance check skips with a logged reason instead of
/// failing its tick), while the newest block's balance is read.
#[sqlx::test]
async fn a_balance_at_a_pruned_block_is_told_apart_from_a_failing_node(pool: PgPool) {
    let rig = rig(pool).await;
    let rpc = EvmClient::for_chain(&rig.spec).expect("rpc");
    let payer_address = payer().address();
    mine(&rig.anvil, 5).await;
    let tip = rpc.tip().await.expect("tip");
    let now = rpc.balance_at(payer_address, tip).await.expect("the newest state is kept");
    assert!(now > U256::ZERO);
    match rpc.balance_at(payer_address, tip - 3).await {
        Err(payrail::chain::evm::client::RpcError::StateUnavailable { height, .. }) => assert_eq!(height, tip - 3),
        other => panic!("expected pruned state, got {other:?}"),
    }
    // The watcher, caught up with its balance check due, still ticks cleanly.
    let watcher = rig.watcher();
    rig.catch_up(&watcher).await;
    assert!(watcher.step().await.is_ok_and(|step| step.is_idle()));
}

/// A reorg below the window halts the running watcher: the rail is unhealthy at once, and the
/// watcher keeps the chain's lock until shutdown so that no other replica follows the chain past
/// the fork blindly (and halts in turn).
#[sqlx::test]
async fn a_halted_watcher_holds_the_chains_lock_until_shutdown(pool: PgPool) {
    let mut rig = rig_for(pool.clone(), "optimism").await;
    rig.spec.reorg_depth_max = 3;
    let caip2 = rig.spec.caip2.to_string();
    let lock = format!("payrail.watch.{caip2}");
    let snapshot = rpc(&rig.anvil, "evm_snapshot", json!([])).await;
    mine(&rig.anvil, 10).await;
    let tip = EvmClient::for_chain(&rig.spec).expect("rpc").tip().await.expect("tip");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(rig.watcher().run(stopped));
    let holder = wait_for_holder(&pool, &lock, None).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut conn = pool.acquire().await.expect("conn");
        let cursor = payrail::chain::cursor::load::<alloy::primitives::B256>(&mut conn, &caip2).await.expect("cursor");
        if cursor.is_some_and(|c| c.height == tip) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the watcher catches up");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    rpc(&rig.anvil, "evm_revert", json!([snapshot])).await;
    pay(&rig, "ETH", Address::repeat_byte(0x11), U256::from(1u64)).await;
    mine(&rig.anvil, 12).await;

    let health = payrail::chain::health::shared();
    while health.problem(&caip2, rig.state.clock.now()) != Some("its watcher stopped and needs an operator") {
        assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(20), "the rail shows the halt");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "a halted watcher waits for shutdown");
    assert_eq!(lock_holder(&pool, &lock).await, Some(holder), "and keeps the chain's lock");

    stop.send(true).expect("stop");
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), task).await.expect("stops").expect("task");
    assert!(matches!(outcome, Err(FollowError::ReorgTooDeep { .. })), "{outcome:?}");
    assert_eq!(lock_holder(&pool, &lock).await, None, "released at shutdown");
}

/// Far behind the tip the watcher fetches the next range while the current one commits. The ranges
/// still follow each other block for block, and payments in every range — the first, one fetched
/// ahead, the last — are each credited once.
#[sqlx::test]
async fn catching_up_over_many_ranges_reads_every_block_once_in_order(pool: PgPool) {
    let rig = rig(pool).await;
    let asset = rig.asset("USDC");
    let mut invoices = Vec::new();
    for _ in 0..3 {
        invoices.push(rig.invoice("10.00", std::slice::from_ref(&asset)).await);
    }
    let first = rpc(&rig.anvil, "eth_blockNumber", json!([])).await;
    let first = u64::from_str_radix(first.as_str().expect("height").trim_start_matches("0x"), 16).expect("height");
    let window = u64::from(rig.spec.reorg_depth_max);
    for (i, invoice) in invoices.iter().enumerate() {
        pay(&rig, "USDC", deposit_of(invoice), U256::from(10_000_000u64)).await;
        // Later payments land ranges apart; the last range is followed by a whole reorg window.
        mine(&rig.anvil, if i + 1 < invoices.len() { 700 } else { window + 700 }).await;
    }
    let mut spec = rig.spec.clone();
    spec.start_block = Some(first + 1);
    let watcher = EvmWatcher::new(spec, rig.state.pool.clone(), rig.state.ledger.clone(), rig.state.rates.clone(), rig.state.clock.clone())
        .expect("watcher");
    let mut next = first + 1;
    let mut steps = 0;
    loop {
        match watcher.step().await.expect("step") {
            ChainEvent::Committed { from, to, .. } if to >= from => {
                assert_eq!(from, next, "ranges follow each other");
                assert!(to - from < 500, "a range is at most 500 blocks");
                next = to + 1;
                steps += 1;
            }
            ChainEvent::Committed { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(steps >= 4, "{steps} steps");
    for invoice in &invoices {
        assert_eq!(rig.view(&invoice.id).await.status, InvoiceStatus::Paid);
    }
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries").fetch_one(&rig.state.pool).await.expect("n");
    assert_eq!(entries, 3);
}

/// Waits until `check` holds, at most `limit`.
async fn eventually(limit: std::time::Duration, check: impl Fn() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    check()
}

/// A chain with a `ws` endpoint has its new heads pushed: the wait for the next poll ends at the
/// block, not at the poll. A socket that dies with its node, or one that never answers, leaves the
/// follower polling at its usual pace.
#[tokio::test]
async fn pushed_new_heads_end_the_wait_for_the_next_poll_and_polling_covers_a_dead_socket() {
    use payrail::chain::evm::heads::Heads;
    use std::time::Duration;

    let mut anvil = Anvil::start(137, 0, None).await.expect("anvil");
    let ws = RpcUrl::new(&anvil.ws_url()).expect("ws url");
    let heads = Heads::spawn("polygon", &ws);
    let feed = heads.feed();
    assert!(eventually(Duration::from_secs(10), || feed.live()).await, "the subscription comes up");
    // No block, no wake-up: a wait for a ten-minute poll is still waiting a moment later.
    let _ = tokio::time::timeout(Duration::from_millis(100), feed.next_poll(Duration::from_millis(1))).await;
    let mut waiting = std::pin::pin!(feed.next_poll(Duration::from_secs(600)));
    assert!(tokio::time::timeout(Duration::from_millis(300), waiting.as_mut()).await.is_err(), "woken without a block");
    let before = feed.received();
    mine(&anvil, 1).await;
    tokio::time::timeout(Duration::from_secs(5), waiting.as_mut()).await.expect("the block ends the wait");
    assert_eq!(feed.received(), before + 1);

    // The node goes away: the subscription is down, and the wait is the poll again.
    anvil.stop().await;
    assert!(eventually(Duration::from_secs(10), || !feed.live()).await, "a dead socket is noticed");
    tokio::time::timeout(Duration::from_secs(2), feed.next_poll(Duration::from_millis(50))).await.expect("polling");

    // An endpoint that never answers is never live.
    let dead = Heads::spawn("polygon", &RpcUrl::new("ws://127.0.0.1:9").expect("url"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!dead.feed().live());
    tokio::time::timeout(Duration::from_secs(2), dead.feed().next_poll(Duration::from_millis(50))).await.expect("polling");
}
