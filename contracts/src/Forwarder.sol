// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {SafeToken} from "./lib/SafeToken.sol";

/// @title Forwarder
/// @notice The code behind every deposit address. `ForwarderFactory` deploys one instance of
/// this contract as the implementation and then EIP-1167 minimal proxies (clones) of it, one per
/// invoice, at CREATE2 addresses. A clone delegates to this code, so it reads the implementation's
/// immutable `factory`: only the factory can move a clone's funds.
/// @dev A clone keeps no state of its own; it holds funds until the factory flushes them.
contract Forwarder {
    /// The factory that deployed the implementation and owns every clone's funds.
    address public immutable factory;

    error OnlyFactory(address caller);
    error ZeroAddress();
    error NativeTransferFailed(address to, uint256 amount);

    constructor() {
        factory = msg.sender;
    }

    /// Accepts native coin (payments sent to the deposit address after it was deployed).
    receive() external payable {}

    /// Moves the whole balance of every listed ERC-20 token, then the whole native balance, to `to`.
    /// Any failing token, or a native transfer `to` refuses, reverts the whole call: nothing is
    /// ever half-swept. Tokens with a zero balance are skipped.
    function flush(address[] calldata tokens, address payable to) external {
        if (msg.sender != factory) revert OnlyFactory(msg.sender);
        if (to == address(0)) revert ZeroAddress();
        for (uint256 i = 0; i < tokens.length; ++i) {
            address token = tokens[i];
            uint256 amount = SafeToken.balanceOf(token, address(this));
            if (amount != 0) {
                SafeToken.safeTransfer(token, to, amount);
            }
        }
        uint256 native = address(this).balance;
        if (native != 0) {
            (bool ok,) = to.call{value: native}("");
            if (!ok) revert NativeTransferFailed(to, native);
        }
    }
}
