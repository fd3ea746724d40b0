// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {TestTokenBase} from "./TestTokenBase.sol";

/// @title TestToken
/// @notice A standard ERC-20 (returns `true`) with a chosen name, symbol and decimals: USDC-like
/// with 6 decimals, DAI-like with 18. FOR TESTS AND THE LOCAL DEV STACK ONLY: anyone can mint.
contract TestToken is TestTokenBase {
    constructor(string memory name_, string memory symbol_, uint8 decimals_)
        TestTokenBase(name_, symbol_, decimals_)
    {}

    function transfer(address to, uint256 amount) external returns (bool) {
        _transfer(msg.sender, to, amount);
        return true;
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        _spend(from, msg.sender, amount);
        _transfer(from, to, amount);
        return true;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        _approve(msg.sender, spender, amount);
        return true;
    }
}
