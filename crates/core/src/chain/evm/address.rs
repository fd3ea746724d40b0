//! Deterministic deposit addresses: the CREATE2 address of an EIP-1167 minimal proxy that the
//! `ForwarderFactory` deploys for an invoice's salt. Computed here without any RPC, it equals the
//! factory's own `predict(salt)`; where the factory sits at the same address on several chains, an
//! invoice gets the same deposit address on each of them.

use alloy_primitives::{keccak256, Address, B256};

/// Domain separation for the salt: a deposit salt can never collide with any other hash payrail makes.
const SALT_DOMAIN: &[u8] = b"payrail:deposit:";

/// The salt of an invoice's forwarder.
pub fn deposit_salt(invoice_id: &str) -> B256 {
    let mut preimage = Vec::with_capacity(SALT_DOMAIN.len() + invoice_id.len());
    preimage.extend_from_slice(SALT_DOMAIN);
    preimage.extend_from_slice(invoice_id.as_bytes());
    keccak256(preimage)
}

/// The 55-byte EIP-1167 creation code for a proxy to `implementation`.
pub fn minimal_proxy_init_code(implementation: Address) -> Vec<u8> {
    let mut code = Vec::with_capacity(55);
    code.extend_from_slice(&[0x3d, 0x60, 0x2d, 0x80, 0x60, 0x0a, 0x3d, 0x39, 0x81, 0xf3]);
    code.extend_from_slice(&[0x36, 0x3d, 0x3d, 0x37, 0x3d, 0x3d, 0x3d, 0x36, 0x3d, 0x73]);
    code.extend_from_slice(implementation.as_slice());
    code.extend_from_slice(&[0x5a, 0xf4, 0x3d, 0x82, 0x80, 0x3e, 0x90, 0x3d, 0x91, 0x60, 0x2b, 0x57, 0xfd, 0x5b, 0xf3]);
    code
}

/// The deposit address of `invoice_id` for a factory whose forwarder implementation is
/// `implementation`.
pub fn deposit_address(factory: Address, implementation: Address, invoice_id: &str) -> Address {
    let init_code_hash = keccak256(minimal_proxy_init_code(implementation));
    factory.create2(deposit_salt(invoice_id), init_code_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_code_is_the_standard_55_bytes() {
        let implementation: Address = "0xbebebebebebebebebebebebebebebebebebebebe".parse().expect("address");
        let code = minimal_proxy_init_code(implementation);
        assert_eq!(code.len(), 55);
        assert_eq!(
            alloy_primitives::hex::encode(&code),
            "3d602d80600a3d3981f3363d3d373d3d3d363d73bebebebebebebebebebebebebebebebebebebebe5af43d82803e903d91602b57fd5bf3"
        );
    }

    #[test]
    fn salts_and_addresses_are_deterministic_and_distinct() {
        let factory: Address = "0x5FbDB2315678afecb367f032d93F642f64180aa3".parse().expect("address");
        let implementation: Address = "0xa16E02E87b7454126E5E10d957A927A7F5B5d2be".parse().expect("address");
        let a = deposit_address(factory, implementation, "inv_a");
        assert_eq!(a, deposit_address(factory, implementation, "inv_a"));
        assert_ne!(a, deposit_address(factory, implementation, "inv_b"));
        assert_ne!(deposit_salt("inv_a"), deposit_salt("inv_b"));
    }
}
