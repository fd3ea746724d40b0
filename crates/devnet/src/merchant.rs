//! The dev stack's demo merchant: a watch-only Bitcoin descriptor from a fixed, public seed, so BTC
//! invoices work out of the box on regtest. Development only: anyone can spend from these keys.

use bitcoin::bip32::{DerivationPath, Xpriv, Xpub};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::Network;

/// The demo merchant's seed. Public, so never for real money.
const DEV_MERCHANT_SEED: [u8; 32] = *b"payrail dev merchant seed 000001";

/// `wpkh([fingerprint/84h/1h/0h]tpub…/0/*)` of the demo merchant on `network` (regtest and the test
/// networks share tpubs).
pub fn dev_bitcoin_descriptor(network: Network) -> Result<String, bitcoin::bip32::Error> {
    let secp = Secp256k1::new();
    let master = Xpriv::new_master(network, &DEV_MERCHANT_SEED)?;
    let path: DerivationPath = "m/84h/1h/0h".parse()?;
    let account = master.derive_priv(&secp, &path)?;
    let xpub = Xpub::from_priv(&secp, &account);
    Ok(format!("wpkh([{}/84h/1h/0h]{xpub}/0/*)", master.fingerprint(&secp)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::bitcoin::WatchDescriptor;

    #[test]
    fn the_demo_descriptor_is_a_valid_regtest_watch_only_descriptor() {
        let text = dev_bitcoin_descriptor(Network::Regtest).expect("derives");
        assert!(text.starts_with("wpkh([") && text.contains("tpub") && text.ends_with("/0/*)"), "{text}");
        let descriptor = WatchDescriptor::parse(&text, Network::Regtest).expect("parses");
        assert!(descriptor.address_at(0).expect("address").to_string().starts_with("bcrt1q"));
    }
}
