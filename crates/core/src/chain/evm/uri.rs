//! EIP-681 payment requests, so a wallet fills in chain, token, recipient and exact amount.

use alloy_primitives::Address;

use crate::money::{Amount, AssetId};

/// `ethereum:<deposit>@<chainId>?value=<wei>` for the native coin,
/// `ethereum:<token>@<chainId>/transfer?address=<deposit>&uint256=<units>` for an ERC-20.
/// `None` for assets that are not on an EVM chain.
pub fn payment_uri(asset: &AssetId, deposit: &Address, amount: Amount) -> Option<String> {
    let chain_id = asset.chain().evm_chain_id()?;
    if let Some(token) = asset.erc20_address() {
        return Some(format!(
            "ethereum:{}@{chain_id}/transfer?address={}&uint256={amount}",
            token.to_checksum(None),
            deposit.to_checksum(None)
        ));
    }
    asset.is_native().then(|| format!("ethereum:{}@{chain_id}?value={amount}", deposit.to_checksum(None)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_native_requests() {
        let deposit: Address = "0x00000000000000000000000000000000000000aa".parse().expect("address");
        let usdc: AssetId = "eip155:137/erc20:0x3c499c542cef5e3811e1192ce70d8cc03d5c3359".parse().expect("asset");
        assert_eq!(
            payment_uri(&usdc, &deposit, Amount::from_u64(25_000_000)).as_deref(),
            Some("ethereum:0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359@137/transfer?address=0x00000000000000000000000000000000000000AA&uint256=25000000")
        );
        let eth: AssetId = "eip155:1/slip44:60".parse().expect("asset");
        assert_eq!(
            payment_uri(&eth, &deposit, Amount::from_u64(5)).as_deref(),
            Some("ethereum:0x00000000000000000000000000000000000000AA@1?value=5")
        );
        let btc: AssetId = "bip122:000000000019d6689c085ae165831e93/slip44:0".parse().expect("asset");
        assert_eq!(payment_uri(&btc, &deposit, Amount::from_u64(5)), None);
    }
}
