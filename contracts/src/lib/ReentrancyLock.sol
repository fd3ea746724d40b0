// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title ReentrancyLock
/// @notice A function marked `nonReentrant` cannot be entered again, directly or through another
/// `nonReentrant` function, before it has returned.
abstract contract ReentrancyLock {
    uint256 private constant _UNLOCKED = 1;
    uint256 private constant _LOCKED = 2;

    uint256 private _lock = _UNLOCKED;

    error Reentrancy();

    modifier nonReentrant() {
        if (_lock != _UNLOCKED) revert Reentrancy();
        _lock = _LOCKED;
        _;
        _lock = _UNLOCKED;
    }
}
