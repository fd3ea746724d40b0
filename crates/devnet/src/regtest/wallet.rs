//! The regtest node's wallet: deterministic keys from a fixed, public seed (development only —
//! never hold value with them), coin selection, change, fees and signing.
//!
//! Scripts: coinbases pay the P2WPKH key (BIP84 path m/84'/1'/0'/0/0), change goes to a P2TR key
//! (BIP86 m/86'/1'/0'/1/0), and a second P2TR key (m/86'/1'/0'/0/0) is a receive address tests
//! may pay; so both segwit v0 (ECDSA) and taproot key-path (Schnorr) spends are exercised.
//!
//! Fees: [`FEE_RATE_SAT_PER_VB`] times the virtual size of the signed transaction, estimated
//! from the largest signatures (72-byte DER + sighash byte for ECDSA, 64 bytes for Schnorr), so
//! the real rate is never below it; a caller may ask for a higher absolute fee. Change below
//! [`DUST_SAT`] goes to the fee.

use std::str::FromStr;

use bitcoin::bip32::{DerivationPath, Xpriv};
use bitcoin::key::{Keypair, Secp256k1, TapTweak, UntweakedPublicKey};
use bitcoin::secp256k1::{All, Message, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::transaction::Version;
use bitcoin::{
    absolute, Address, Amount, CompressedPublicKey, Network, OutPoint, Script, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
    Witness,
};

use super::{RegtestError, Result};

/// The wallet's seed. Public on purpose: the keys are for a throw-away regtest chain.
pub const WALLET_SEED: [u8; 32] = *b"payrail regtest wallet, dev only";
/// The wallet's fee rate.
pub const FEE_RATE_SAT_PER_VB: u64 = 2;
/// Change smaller than this is left to the fee (Bitcoin Core's P2PKH dust threshold, the
/// strictest of the common ones).
pub const DUST_SAT: u64 = 546;
/// The most inputs one wallet transaction uses.
pub const INPUTS_MAX: usize = 500;

const P2WPKH_PATH: &str = "m/84'/1'/0'/0/0";
const P2TR_RECEIVE_PATH: &str = "m/86'/1'/0'/0/0";
const P2TR_CHANGE_PATH: &str = "m/86'/1'/0'/1/0";

/// A spendable output of the wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coin {
    pub outpoint: OutPoint,
    pub output: TxOut,
    /// Confirmed in the chain (else an output of a mempool transaction).
    pub confirmed: bool,
    /// The height it was confirmed at (0 when unconfirmed).
    pub height: u64,
}

/// A taproot key of the wallet: the internal keypair and the output script it makes.
#[derive(Debug)]
struct TaprootKey {
    tweaked: Keypair,
    script: ScriptBuf,
    address: Address,
}

impl TaprootKey {
    fn new(secp: &Secp256k1<All>, secret: SecretKey) -> Self {
        let keypair = Keypair::from_secret_key(secp, &secret);
        let (internal, _) = UntweakedPublicKey::from_keypair(&keypair);
        let address = Address::p2tr(secp, internal, None, Network::Regtest);
        Self { tweaked: keypair.tap_tweak(secp, None).to_keypair(), script: address.script_pubkey(), address }
    }
}

#[derive(Debug)]
pub struct Wallet {
    secp: Secp256k1<All>,
    wpkh_secret: SecretKey,
    wpkh_public: CompressedPublicKey,
    wpkh_script: ScriptBuf,
    wpkh_address: Address,
    tr_receive: TaprootKey,
    tr_change: TaprootKey,
}

fn derive(secp: &Secp256k1<All>, master: &Xpriv, path: &str) -> Result<SecretKey> {
    let path =
        DerivationPath::from_str(path).map_err(|e| RegtestError::Address { address: path.to_owned(), reason: e.to_string() })?;
    master
        .derive_priv(secp, &path)
        .map(|x| x.private_key)
        .map_err(|e| RegtestError::Address { address: path.to_string(), reason: e.to_string() })
}

impl Wallet {
    pub fn new() -> Result<Self> {
        let secp = Secp256k1::new();
        let master = Xpriv::new_master(Network::Regtest, &WALLET_SEED)
            .map_err(|e| RegtestError::Address { address: "m".to_owned(), reason: e.to_string() })?;
        let wpkh_secret = derive(&secp, &master, P2WPKH_PATH)?;
        let wpkh_public = CompressedPublicKey(wpkh_secret.public_key(&secp));
        let wpkh_address = Address::p2wpkh(&wpkh_public, Network::Regtest);
        let tr_receive = TaprootKey::new(&secp, derive(&secp, &master, P2TR_RECEIVE_PATH)?);
        let tr_change = TaprootKey::new(&secp, derive(&secp, &master, P2TR_CHANGE_PATH)?);
        Ok(Self {
            wpkh_script: wpkh_address.script_pubkey(),
            wpkh_address,
            wpkh_secret,
            wpkh_public,
            tr_receive,
            tr_change,
            secp,
        })
    }

    pub fn secp(&self) -> &Secp256k1<All> {
        &self.secp
    }

    /// The P2WPKH receive address (coinbases pay it).
    pub fn p2wpkh_address(&self) -> &Address {
        &self.wpkh_address
    }

    /// The P2TR receive address.
    pub fn p2tr_address(&self) -> &Address {
        &self.tr_receive.address
    }

    pub fn coinbase_script(&self) -> &Script {
        &self.wpkh_script
    }

    pub fn change_script(&self) -> &Script {
        &self.tr_change.script
    }

    /// Whether the wallet can sign for outputs paying `script`.
    pub fn is_mine(&self, script: &Script) -> bool {
        script == self.wpkh_script.as_script()
            || script == self.tr_receive.script.as_script()
            || script == self.tr_change.script.as_script()
    }

    /// Builds and signs a transaction paying `outputs`: it spends every coin of `required`
    /// (a replacement must conflict with what it replaces), then `candidates` in the given order
    /// until inputs cover the outputs and the fee, which is at least `fee_min` and at least the
    /// wallet's rate. Change, if not dust, is the last output. `rbf` sets every input's nSequence
    /// to 0xfffffffd (else 0xffffffff).
    pub fn build(
        &self,
        required: Vec<Coin>,
        candidates: impl IntoIterator<Item = Coin>,
        outputs: Vec<TxOut>,
        fee_min: Amount,
        rbf: bool,
    ) -> Result<Transaction> {
        let sequence = if rbf { Sequence::ENABLE_RBF_NO_LOCKTIME } else { Sequence::MAX };
        let out_total: Amount = outputs.iter().map(|o| o.value).sum();
        let mut selected = required;
        let mut candidates = candidates.into_iter();
        loop {
            let in_total: Amount = selected.iter().map(|c| c.output.value).sum();
            let mut tx = Transaction {
                version: Version::TWO,
                lock_time: absolute::LockTime::ZERO,
                input: selected
                    .iter()
                    .map(|c| TxIn {
                        previous_output: c.outpoint,
                        script_sig: ScriptBuf::new(),
                        sequence,
                        witness: Witness::new(),
                    })
                    .collect(),
                output: outputs.clone(),
            };
            let change = TxOut { value: Amount::ZERO, script_pubkey: self.tr_change.script.clone() };
            tx.output.push(change);
            let fee_with_change = self.fee_for(&tx, &selected, fee_min);
            let spare = out_total.checked_add(fee_with_change).and_then(|needed| in_total.checked_sub(needed));
            if let Some(spare) = spare.filter(|s| s.to_sat() >= DUST_SAT) {
                if let Some(change) = tx.output.last_mut() {
                    change.value = spare;
                }
                self.sign(&mut tx, &selected.iter().map(|c| c.output.clone()).collect::<Vec<_>>())?;
                return Ok(tx);
            }
            tx.output.pop();
            let fee_without_change = self.fee_for(&tx, &selected, fee_min);
            let needed = out_total.checked_add(fee_without_change).unwrap_or(Amount::MAX);
            if in_total >= needed && !selected.is_empty() {
                self.sign(&mut tx, &selected.iter().map(|c| c.output.clone()).collect::<Vec<_>>())?;
                return Ok(tx);
            }
            match candidates.next() {
                Some(coin) if selected.len() < INPUTS_MAX => {
                    if !selected.iter().any(|c| c.outpoint == coin.outpoint) {
                        selected.push(coin);
                    }
                }
                _ => return Err(RegtestError::InsufficientFunds { needed, available: in_total }),
            }
        }
    }

    /// The fee of `tx` once signed: at least `fee_min` and the wallet's rate times its size.
    fn fee_for(&self, tx: &Transaction, coins: &[Coin], fee_min: Amount) -> Amount {
        let mut sized = tx.clone();
        for (input, coin) in sized.input.iter_mut().zip(coins) {
            input.witness = if coin.output.script_pubkey.is_p2tr() {
                Witness::from_slice(&[[0u8; 64].as_slice()])
            } else {
                Witness::from_slice(&[[0u8; 72].as_slice(), [0u8; 33].as_slice()])
            };
        }
        let vsize = u64::try_from(sized.vsize()).unwrap_or(u64::MAX);
        fee_min.max(Amount::from_sat(vsize.saturating_mul(FEE_RATE_SAT_PER_VB)))
    }

    /// Signs every input of `tx` (spending `prevouts`, in input order) with the wallet's keys:
    /// SIGHASH_ALL for P2WPKH, SIGHASH_DEFAULT for P2TR key path.
    pub fn sign(&self, tx: &mut Transaction, prevouts: &[TxOut]) -> Result<()> {
        let txid = tx.compute_txid();
        let mut witnesses = Vec::with_capacity(tx.input.len());
        {
            let mut cache = SighashCache::new(&*tx);
            for (index, prevout) in prevouts.iter().enumerate() {
                let script = &prevout.script_pubkey;
                let sign_error = |e: &dyn std::fmt::Display| RegtestError::BadSignature { txid, index, reason: e.to_string() };
                if *script == self.wpkh_script {
                    let sighash = cache
                        .p2wpkh_signature_hash(index, script, prevout.value, EcdsaSighashType::All)
                        .map_err(|e| sign_error(&e))?;
                    let signature = self.secp.sign_ecdsa(&Message::from(sighash), &self.wpkh_secret);
                    let signature = bitcoin::ecdsa::Signature { signature, sighash_type: EcdsaSighashType::All };
                    witnesses.push(Witness::p2wpkh(&signature, &self.wpkh_public.0));
                } else if let Some(key) = [&self.tr_receive, &self.tr_change].into_iter().find(|k| k.script == *script) {
                    let sighash = cache
                        .taproot_key_spend_signature_hash(index, &Prevouts::All(prevouts), TapSighashType::Default)
                        .map_err(|e| sign_error(&e))?;
                    let signature = self.secp.sign_schnorr_no_aux_rand(&Message::from(sighash), &key.tweaked);
                    let signature = bitcoin::taproot::Signature { signature, sighash_type: TapSighashType::Default };
                    witnesses.push(Witness::p2tr_key_spend(&signature));
                } else {
                    return Err(RegtestError::NotOurs { txid });
                }
            }
        }
        for (input, witness) in tx.input.iter_mut().zip(witnesses) {
            input.witness = witness;
        }
        Ok(())
    }
}
