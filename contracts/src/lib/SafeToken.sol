// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title SafeToken
/// @notice ERC-20 calls that work with every token seen in practice: tokens that return `true`,
/// tokens that return nothing (mainnet USDT, BNB), and tokens that signal failure by returning
/// `false` instead of reverting. Every failure reverts.
library SafeToken {
    /// The token call failed: it reverted, returned `false`, or the address has no code.
    error TokenCallFailed(address token, bytes4 selector);

    /// `transfer(address,uint256)` that accepts a missing return value and reverts on any failure.
    function safeTransfer(address token, address to, uint256 amount) internal {
        _call(token, abi.encodeWithSelector(0xa9059cbb, to, amount));
    }

    /// `transferFrom(address,address,uint256)` with the same guarantees as `safeTransfer`.
    function safeTransferFrom(address token, address from, address to, uint256 amount) internal {
        _call(token, abi.encodeWithSelector(0x23b872dd, from, to, amount));
    }

    /// `balanceOf(address)`; reverts when the address is not a token (no code, or a short answer).
    function balanceOf(address token, address account) internal view returns (uint256 amount) {
        (bool ok, bytes memory ret) = token.staticcall(abi.encodeWithSelector(0x70a08231, account));
        if (!ok || ret.length < 32 || token.code.length == 0) {
            revert TokenCallFailed(token, 0x70a08231);
        }
        amount = abi.decode(ret, (uint256));
    }

    function _call(address token, bytes memory data) private {
        (bool ok, bytes memory ret) = token.call(data);
        bool done = ok
            && (ret.length == 0 ? token.code.length != 0 : (ret.length >= 32 && abi.decode(ret, (bool))));
        if (!done) {
            revert TokenCallFailed(token, bytes4(data));
        }
    }
}
