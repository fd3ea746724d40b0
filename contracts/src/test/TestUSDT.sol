// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {TestTokenBase} from "./TestTokenBase.sol";

/// @title TestUSDT
/// @notice A 6-decimal token that behaves like mainnet USDT where it matters to callers:
/// `transfer`, `transferFrom` and `approve` return NOTHING (a caller that expects a `bool`
/// reverts on it), and `approve` refuses to change a non-zero allowance to another non-zero one.
/// FOR TESTS AND THE LOCAL DEV STACK ONLY: anyone can mint.
contract TestUSDT is TestTokenBase {
    error AllowanceNotZero(address owner, address spender, uint256 allowance);

    constructor() TestTokenBase("Tether USD (test)", "USDT", 6) {}

    function transfer(address to, uint256 amount) external {
        _transfer(msg.sender, to, amount);
    }

    function transferFrom(address from, address to, uint256 amount) external {
        _spend(from, msg.sender, amount);
        _transfer(from, to, amount);
    }

    function approve(address spender, uint256 amount) external {
        uint256 current = allowance[msg.sender][spender];
        if (amount != 0 && current != 0) revert AllowanceNotZero(msg.sender, spender, current);
        _approve(msg.sender, spender, amount);
    }
}
