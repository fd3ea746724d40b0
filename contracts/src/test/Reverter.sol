// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title Reverter
/// @notice A recipient that refuses native coin: every plain transfer and every unknown call to it
/// reverts. For failure tests (a payout batch or a sweep whose recipient cannot receive). FOR TESTS ONLY.
contract Reverter {
    error Refused();

    receive() external payable {
        revert Refused();
    }

    fallback() external payable {
        revert Refused();
    }
}
