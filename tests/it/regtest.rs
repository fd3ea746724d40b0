//! The regtest node over real TCP, driven with a real Electrum client (`electrum-client`), a raw
//! socket (newline-delimited framing) and the control client.
//!
//! Each test runs its own node on a free loopback port. The Electrum client is blocking, so the
//! node runs on a multi-threaded runtime and the test thread talks to it like another process.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, Secp256k1, UntweakedPublicKey};
use bitcoin::secp256k1::{All, Message, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute, transaction, Address, Amount, CompressedPublicKey, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxOut, Txid, Witness,
};
use electrum_client::{Client, ElectrumApi};
use payrail_devnet::regtest::{RegtestConfig, RegtestControl, RegtestHandle, RegtestNode, REGTEST_CAIP2};
use serde_json::{json, Value};

struct Harness {
    runtime: tokio::runtime::Runtime,
    node: Option<RegtestHandle>,
}

impl Harness {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let node = runtime.block_on(RegtestNode::start(RegtestConfig::default())).expect("node starts");
        Self { runtime, node: Some(node) }
    }

    fn node(&self) -> &RegtestHandle {
        self.node.as_ref().expect("running")
    }

    fn client(&self) -> Client {
        Client::new(&self.node().electrum_url()).expect("electrum client connects")
    }

    fn mine(&self, n: u32) -> Vec<bitcoin::BlockHash> {
        self.runtime.block_on(self.node().mine(n)).expect("mined")
    }

    fn send(&self, to: &Address, sats: u64, rbf: bool) -> Txid {
        self.runtime.block_on(self.node().send(to, Amount::from_sat(sats), rbf)).expect("sent")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            self.runtime.block_on(node.shutdown());
        }
    }
}

/// A key of the test's own, outside the node's wallet.
struct TestKey {
    secp: Secp256k1<All>,
    secret: SecretKey,
}

impl TestKey {
    fn new() -> Self {
        let secp = Secp256k1::new();
        let (secret, _) = secp.generate_keypair(&mut bitcoin::secp256k1::rand::thread_rng());
        Self { secp, secret }
    }

    fn public(&self) -> CompressedPublicKey {
        CompressedPublicKey(self.secret.public_key(&self.secp))
    }

    fn p2wpkh(&self) -> Address {
        Address::p2wpkh(&self.public(), Network::Regtest)
    }

    fn p2tr(&self) -> Address {
        let keypair = Keypair::from_secret_key(&self.secp, &self.secret);
        let (internal, _) = UntweakedPublicKey::from_keypair(&keypair);
        Address::p2tr(&self.secp, internal, None, Network::Regtest)
    }

    /// Spends `outpoint` (paying `value` to this key's P2WPKH) to `to`, signed with `sign_with`.
    fn spend(&self, outpoint: OutPoint, value: Amount, to: &Address, pay: Amount, sign_with: &SecretKey) -> Transaction {
        let mut tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut { value: pay, script_pubkey: to.script_pubkey() }],
        };
        let script = self.p2wpkh().script_pubkey();
        let sighash = SighashCache::new(&tx).p2wpkh_signature_hash(0, &script, value, EcdsaSighashType::All).expect("sighash");
        let signature = self.secp.sign_ecdsa(&Message::from(sighash), sign_with);
        let signature = bitcoin::ecdsa::Signature { signature, sighash_type: EcdsaSighashType::All };
        tx.input[0].witness = Witness::p2wpkh(&signature, &self.public().0);
        tx
    }
}

fn raw_request(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, line: &str) -> Value {
    stream.write_all(line.as_bytes()).expect("write");
    stream.write_all(b"\n").expect("write");
    let mut answer = String::new();
    reader.read_line(&mut answer).expect("read");
    assert!(answer.ends_with('\n'), "answers end with a newline: {answer:?}");
    serde_json::from_str(&answer).expect("json")
}

#[test]
fn server_version_over_a_raw_socket_is_newline_delimited() {
    let harness = Harness::start();
    let mut stream = TcpStream::connect(harness.node().addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let answer = raw_request(
        &mut stream,
        &mut reader,
        r#"{"jsonrpc":"2.0","id":0,"method":"server.version","params":["payrail-test","1.4"]}"#,
    );
    assert_eq!(answer["id"], 0);
    assert_eq!(answer["result"][1], "1.4");
    assert!(answer["result"][0].as_str().expect("software version").starts_with("payrail-regtest"));

    // Two requests in one write: two answers, one per line, in order.
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"server.ping\"}\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"blockchain.relayfee\",\"params\":[]}\n")
        .expect("write");
    let mut first = String::new();
    reader.read_line(&mut first).expect("read");
    let mut second = String::new();
    reader.read_line(&mut second).expect("read");
    let first: Value = serde_json::from_str(&first).expect("json");
    let second: Value = serde_json::from_str(&second).expect("json");
    assert_eq!((first["id"].clone(), first["result"].clone()), (json!(1), Value::Null));
    assert_eq!(second["id"], 2);
    assert_eq!(second["result"].to_string(), "0.00001");

    // A batch is answered by an array; unknown methods and bad JSON are JSON-RPC errors.
    let batch = raw_request(
        &mut stream,
        &mut reader,
        r#"[{"jsonrpc":"2.0","id":3,"method":"blockchain.estimatefee","params":[2]},{"jsonrpc":"2.0","id":4,"method":"no.such"}]"#,
    );
    assert_eq!(batch[0]["result"].to_string(), "0.00002");
    assert_eq!(batch[1]["error"]["code"], -32601);
    let garbage = raw_request(&mut stream, &mut reader, "{not json");
    assert_eq!(garbage["error"]["code"], -32700);
    let unsupported = raw_request(
        &mut stream,
        &mut reader,
        r#"{"jsonrpc":"2.0","id":5,"method":"server.version","params":["x",["1.5","1.6"]]}"#,
    );
    assert!(unsupported["error"]["message"].as_str().expect("message").contains("unsupported protocol"));
}

#[test]
fn features_headers_and_header_notifications() {
    let harness = Harness::start();
    let client = harness.client();
    let features = client.server_features().expect("features");
    assert_eq!(features.protocol_max, "1.4");
    assert_eq!(features.hash_function.as_deref(), Some("sha256"));
    let genesis = bitcoin::blockdata::constants::genesis_block(Network::Regtest).block_hash();
    assert!(REGTEST_CAIP2.ends_with(&genesis.to_string()[..32]));

    let tip = client.block_headers_subscribe().expect("subscribe");
    assert_eq!(tip.height, 101);
    let headers = client.block_headers(0, 200).expect("headers");
    assert_eq!(headers.count, 102);
    assert_eq!(headers.max, 2016);
    assert_eq!(headers.headers[0].block_hash(), genesis);
    let target = bitcoin::pow::Target::from_compact(bitcoin::pow::CompactTarget::from_consensus(0x207f_ffff));
    for pair in headers.headers.windows(2) {
        assert_eq!(pair[1].prev_blockhash, pair[0].block_hash());
        pair[1].validate_pow(target).expect("proof of work");
    }
    assert_eq!(headers.headers[101], tip.header);

    let mined = harness.mine(1);
    client.ping().expect("ping");
    let notified = client.block_headers_pop().expect("pop").expect("a notification for the new tip");
    assert_eq!(notified.height, 102);
    assert_eq!(notified.header.block_hash(), mined[0]);
    assert_eq!(notified.header.prev_blockhash, tip.header.block_hash());
    assert_eq!(client.block_header(102).expect("header").block_hash(), mined[0]);
    assert!(client.block_header(500).is_err(), "a height above the tip is an error");
}

#[test]
fn p2wpkh_and_p2tr_payments_show_at_zero_conf_then_confirmed() {
    let harness = Harness::start();
    let client = harness.client();
    let key = TestKey::new();
    for (address, sats) in [(key.p2wpkh(), 125_000u64), (key.p2tr(), 64_000u64)] {
        let script = address.script_pubkey();
        assert_eq!(client.script_subscribe(&script).expect("subscribe"), None, "no history yet");
        let txid = harness.send(&address, sats, false);

        client.ping().expect("ping");
        let mempool_status = client.script_pop(&script).expect("pop").expect("a status after the payment");
        let history = client.script_get_history(&script).expect("history");
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].tx_hash, history[0].height), (txid, 0));
        assert!(history[0].fee.expect("mempool entries carry a fee") > 0);
        let balance = client.script_get_balance(&script).expect("balance");
        assert_eq!((balance.confirmed, balance.unconfirmed), (0, i64::try_from(sats).expect("small")));
        let unspent = client.script_list_unspent(&script).expect("unspent");
        assert_eq!(unspent.len(), 1);
        assert_eq!((unspent[0].tx_hash, unspent[0].height, unspent[0].value), (txid, 0, sats));

        let tx = client.transaction_get(&txid).expect("transaction");
        assert_eq!(tx.compute_txid(), txid);
        assert!(tx.output.iter().any(|o| o.script_pubkey == script && o.value.to_sat() == sats));

        let (height, _) = harness.runtime.block_on(harness.node().tip());
        harness.mine(1);
        client.ping().expect("ping");
        let confirmed_status = client.script_pop(&script).expect("pop").expect("a status after the block");
        assert_ne!(confirmed_status, mempool_status);
        let history = client.script_get_history(&script).expect("history");
        assert_eq!(history[0].height, i32::try_from(height + 1).expect("small"));
        assert_eq!(history[0].fee, None);
        let balance = client.script_get_balance(&script).expect("balance");
        assert_eq!((balance.confirmed, balance.unconfirmed), (sats, 0));
        assert_eq!(client.script_list_unspent(&script).expect("unspent")[0].height, usize::try_from(height + 1).expect("small"));
        assert_eq!(client.transaction_get(&txid).expect("confirmed transaction").compute_txid(), txid);
        let proof = client.transaction_get_merkle(&txid, usize::try_from(height + 1).expect("small")).expect("merkle proof");
        let header = client.block_header(proof.block_height).expect("header");
        let mut acc = txid.to_raw_hash().to_byte_array();
        let mut pos = proof.pos;
        for mut sibling in proof.merkle {
            // Electrum writes the hashes in display (reversed) order.
            sibling.reverse();
            let mut joined = Vec::with_capacity(64);
            if pos % 2 == 0 {
                joined.extend_from_slice(&acc);
                joined.extend_from_slice(&sibling);
            } else {
                joined.extend_from_slice(&sibling);
                joined.extend_from_slice(&acc);
            }
            acc = bitcoin::hashes::sha256d::Hash::hash(&joined).to_byte_array();
            pos /= 2;
        }
        assert_eq!(acc, header.merkle_root.to_raw_hash().to_byte_array(), "the proof leads to the header's merkle root");
    }
}

#[test]
fn broadcast_verifies_signatures() {
    let harness = Harness::start();
    let client = harness.client();
    let key = TestKey::new();
    let funding = harness.send(&key.p2wpkh(), 200_000, false);
    harness.mine(1);
    let tx = client.transaction_get(&funding).expect("funding tx");
    let vout = tx.output.iter().position(|o| o.script_pubkey == key.p2wpkh().script_pubkey()).expect("our output");
    let outpoint = OutPoint { txid: funding, vout: u32::try_from(vout).expect("small") };
    let to = TestKey::new().p2wpkh();

    let wrong_key = TestKey::new();
    let forged = key.spend(outpoint, Amount::from_sat(200_000), &to, Amount::from_sat(199_000), &wrong_key.secret);
    let err = client.transaction_broadcast(&forged).expect_err("a forged signature is refused");
    assert!(err.to_string().contains("signature"), "{err}");

    let greedy = key.spend(outpoint, Amount::from_sat(200_000), &to, Amount::from_sat(200_001), &key.secret);
    let err = client.transaction_broadcast(&greedy).expect_err("outputs above inputs are refused");
    assert!(err.to_string().contains("exceed"), "{err}");

    let err = client.transaction_broadcast_raw(&[0xde, 0xad, 0xbe, 0xef]).expect_err("garbage is refused");
    assert!(err.to_string().contains("decode"), "{err}");

    let good = key.spend(outpoint, Amount::from_sat(200_000), &to, Amount::from_sat(199_000), &key.secret);
    assert_eq!(client.transaction_broadcast(&good).expect("accepted"), good.compute_txid());
    let err = client.transaction_broadcast(&good).expect_err("not twice");
    assert!(err.to_string().contains("already known"), "{err}");
    let history = client.script_get_history(&to.script_pubkey()).expect("history");
    assert_eq!((history[0].tx_hash, history[0].height), (good.compute_txid(), 0));
}

#[test]
fn reorg_changes_the_tip_and_returns_a_transaction_to_the_mempool() {
    let harness = Harness::start();
    let client = harness.client();
    let to = TestKey::new().p2wpkh();
    let script = to.script_pubkey();
    let txid = harness.send(&to, 90_000, false);
    let mined = harness.mine(1);
    assert_eq!(client.script_get_history(&script).expect("history")[0].height, 102);
    let tip = client.block_headers_subscribe().expect("subscribe");
    assert_eq!(tip.header.block_hash(), mined[0]);

    let (height, hash) = harness.runtime.block_on(harness.node().reorg(1, 2, false)).expect("reorg");
    assert_eq!(height, 103);
    client.ping().expect("ping");
    let notified = client.block_headers_pop().expect("pop").expect("the new tip is notified");
    assert_eq!((notified.height, notified.header.block_hash()), (103, hash));
    assert_ne!(client.block_header(102).expect("header").block_hash(), mined[0], "block 102 was replaced");
    let history = client.script_get_history(&script).expect("history");
    assert_eq!((history[0].tx_hash, history[0].height), (txid, 0), "back in the mempool");

    harness.mine(1);
    assert_eq!(client.script_get_history(&script).expect("history")[0].height, 104);
}

#[test]
fn rbf_replacement_drops_the_original_from_history() {
    let harness = Harness::start();
    let client = harness.client();
    let victim = TestKey::new().p2wpkh();
    let other = TestKey::new().p2tr();
    let original = harness.send(&victim, 150_000, true);
    assert_eq!(client.script_get_history(&victim.script_pubkey()).expect("history")[0].tx_hash, original);

    let bumped = harness.runtime.block_on(harness.node().bump(original, Amount::from_sat(500))).expect("bump");
    let history = client.script_get_history(&victim.script_pubkey()).expect("history");
    assert_eq!(history.iter().map(|h| h.tx_hash).collect::<Vec<_>>(), vec![bumped], "the bump pays the same recipient");

    let replaced = harness.runtime.block_on(harness.node().replace(bumped, &other, Amount::from_sat(149_000))).expect("replace");
    assert!(client.script_get_history(&victim.script_pubkey()).expect("history").is_empty(), "the payment is gone");
    assert_eq!(client.script_get_balance(&victim.script_pubkey()).expect("balance").unconfirmed, 0);
    assert_eq!(client.script_get_history(&other.script_pubkey()).expect("history")[0].tx_hash, replaced);
    assert!(client.transaction_get(&original).is_err(), "the original is no longer served");

    // A payment without RBF cannot be replaced.
    let firm = harness.send(&victim, 10_000, false);
    let err = harness.runtime.block_on(harness.node().replace(firm, &other, Amount::from_sat(9_000))).expect_err("no rbf");
    assert!(err.to_string().contains("replace-by-fee"), "{err}");
}

#[test]
fn control_client_drives_the_node_from_another_connection() {
    let harness = Harness::start();
    let control = harness.runtime.block_on(RegtestControl::connect(harness.node().addr())).expect("control connects");
    let (height, hash) = harness.runtime.block_on(control.tip()).expect("tip");
    assert_eq!(height, 101);
    assert_eq!(harness.runtime.block_on(harness.node().tip()), (height, hash));
    let hashes = harness.runtime.block_on(control.mine(3)).expect("mine");
    assert_eq!(hashes.len(), 3);
    let to = TestKey::new().p2wpkh();
    let txid = harness.runtime.block_on(control.send(&to, Amount::from_sat(33_000), true)).expect("send");
    let bumped = harness.runtime.block_on(control.bump(txid, Amount::from_sat(300))).expect("bump");
    let other = TestKey::new().p2wpkh();
    let replaced = harness.runtime.block_on(control.replace(bumped, &other, Amount::from_sat(30_000))).expect("replace");
    let (height, hash) = harness.runtime.block_on(control.reorg(2, 3, true)).expect("reorg");
    assert_eq!(height, 105);
    assert_eq!(harness.runtime.block_on(harness.node().tip()), (height, hash));
    let client = harness.client();
    let history = client.script_get_history(&other.script_pubkey()).expect("history");
    assert_eq!((history[0].tx_hash, history[0].height), (replaced, 103), "mined into the first block of the new branch");
    let err = harness.runtime.block_on(control.reorg(2, 2, false)).expect_err("the new branch must be longer");
    assert!(err.to_string().contains("strictly longer"), "{err}");
    let url = harness.node().electrum_url();
    assert!(url.starts_with("tcp://127.0.0.1:"));
    let again = harness.runtime.block_on(RegtestControl::connect_url(&url)).expect("connects by url");
    assert_eq!(harness.runtime.block_on(again.tip()).expect("tip").0, 105);
}

#[test]
fn interval_mining_and_many_clients() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let config = RegtestConfig { mine_interval: Some(Duration::from_millis(200)), ..RegtestConfig::default() };
    let node = runtime.block_on(RegtestNode::start(config)).expect("starts");
    let clients: Vec<Client> = (0..8).map(|_| Client::new(&node.electrum_url()).expect("connects")).collect();
    for client in &clients {
        assert!(client.block_headers_subscribe().expect("subscribe").height >= 101);
    }
    std::thread::sleep(Duration::from_millis(700));
    for client in &clients {
        client.ping().expect("ping");
        let mut last = None;
        while let Some(header) = client.block_headers_pop().expect("pop") {
            last = Some(header.height);
        }
        assert!(last.expect("every client heard of a new block") > 101);
    }
    runtime.block_on(node.shutdown());
}

#[test]
fn a_replaced_payment_notifies_a_null_status_over_a_raw_socket() {
    let harness = Harness::start();
    let victim = TestKey::new().p2wpkh();
    let other = TestKey::new().p2wpkh();
    let mut stream = TcpStream::connect(harness.node().addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let sh = {
        use bitcoin::hashes::sha256;
        let mut bytes = sha256::Hash::hash(victim.script_pubkey().as_bytes()).to_byte_array();
        bytes.reverse();
        hex::encode(bytes)
    };
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "blockchain.scripthash.subscribe", "params": [sh]}).to_string();
    assert_eq!(raw_request(&mut stream, &mut reader, &request)["result"], Value::Null);
    let original = harness.send(&victim, 50_000, true);
    let mut line = String::new();
    reader.read_line(&mut line).expect("notification");
    let notification: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(notification["method"], "blockchain.scripthash.subscribe");
    assert_eq!(notification["params"][0], sh.as_str());
    let expected = hex::encode(bitcoin::hashes::sha256::Hash::hash(format!("{original}:0:").as_bytes()).to_byte_array());
    assert_eq!(notification["params"][1], expected.as_str());
    harness.runtime.block_on(harness.node().replace(original, &other, Amount::from_sat(49_000))).expect("replace");
    let mut line = String::new();
    reader.read_line(&mut line).expect("notification");
    let notification: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(notification["params"], json!([sh, null]), "the history is empty again");
}
