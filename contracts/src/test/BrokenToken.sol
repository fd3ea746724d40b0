// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {TestTokenBase} from "./TestTokenBase.sol";

/// @title BrokenToken
/// @notice A token whose balances work but whose transfers fail, for failure tests: in mode
/// `RETURN_FALSE` `transfer`/`transferFrom` return `false` without moving anything (as some old
/// tokens do), in mode `REVERT` they revert, in mode `OK` it is a normal token. FOR TESTS ONLY.
contract BrokenToken is TestTokenBase {
    uint8 public constant OK = 0;
    uint8 public constant RETURN_FALSE = 1;
    uint8 public constant REVERT = 2;

    uint8 public mode;

    error TransferRefused();

    constructor(uint8 mode_) TestTokenBase("Broken Token (test)", "BROKEN", 18) {
        mode = mode_;
    }

    function setMode(uint8 mode_) external {
        mode = mode_;
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        if (!_allowed()) return false;
        _transfer(msg.sender, to, amount);
        return true;
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        if (!_allowed()) return false;
        _spend(from, msg.sender, amount);
        _transfer(from, to, amount);
        return true;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        _approve(msg.sender, spender, amount);
        return true;
    }

    function _allowed() private view returns (bool) {
        if (mode == REVERT) revert TransferRefused();
        return mode != RETURN_FALSE;
    }
}
