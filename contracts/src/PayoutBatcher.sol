// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Roles} from "./lib/Roles.sol";
import {ReentrancyLock} from "./lib/ReentrancyLock.sol";
import {SafeToken} from "./lib/SafeToken.sol";

/// @title PayoutBatcher
/// @notice Pays creators in batches from its own balance. The treasury funds this contract; the
/// operator (the daemon's hot wallet) only pays gas and never holds the funds. Every batch has an
/// id that can be paid once: a crashed and retried payout run cannot pay twice.
contract PayoutBatcher is Roles, ReentrancyLock {
    /// The most recipients one batch may pay (keeps a batch well inside a block's gas limit).
    uint256 public constant MAX_RECIPIENTS = 500;

    mapping(bytes32 => bool) private _paid;

    event PayoutSent(bytes32 indexed batchId, address indexed recipient, address indexed token, uint256 amount);
    event BatchPaid(bytes32 indexed batchId, address indexed token, uint256 total, uint256 count);
    event Withdrawn(address indexed token, address indexed to, uint256 amount);

    error BatchAlreadyPaid(bytes32 batchId);
    error EmptyBatch();
    error LengthMismatch(uint256 recipients, uint256 amounts);
    error TooManyRecipients(uint256 count, uint256 max);
    error ZeroRecipient(uint256 index);
    error ZeroAmount(uint256 index);
    error UnexpectedValue(uint256 value);
    error InsufficientBalance(address token, uint256 needed, uint256 available);
    error NativeTransferFailed(address to, uint256 amount);

    constructor(address owner_) Roles(owner_) {}

    /// Accepts native coin: the treasury funds native payouts by plain transfers.
    receive() external payable {}

    /// Pays `amounts[i]` of `token` (0 = native coin) to `recipients[i]` from this contract's
    /// balance, all or nothing. A native batch may bring (part of) its funds as `msg.value`; a
    /// token batch must not send value. Refuses a `batchId` that was paid before.
    function payout(bytes32 batchId, address token, address[] calldata recipients, uint256[] calldata amounts)
        external
        payable
        nonReentrant
        onlyOperator
    {
        if (_paid[batchId]) revert BatchAlreadyPaid(batchId);
        uint256 count = recipients.length;
        if (count == 0) revert EmptyBatch();
        if (count != amounts.length) revert LengthMismatch(count, amounts.length);
        if (count > MAX_RECIPIENTS) revert TooManyRecipients(count, MAX_RECIPIENTS);
        if (token != address(0) && msg.value != 0) revert UnexpectedValue(msg.value);

        uint256 total = 0;
        for (uint256 i = 0; i < count; ++i) {
            if (recipients[i] == address(0)) revert ZeroRecipient(i);
            if (amounts[i] == 0) revert ZeroAmount(i);
            total += amounts[i];
        }
        uint256 available = token == address(0) ? address(this).balance : SafeToken.balanceOf(token, address(this));
        if (available < total) revert InsufficientBalance(token, total, available);

        // Marked before any transfer: no path through a recipient can pay this id again.
        _paid[batchId] = true;

        for (uint256 i = 0; i < count; ++i) {
            address recipient = recipients[i];
            uint256 amount = amounts[i];
            if (token == address(0)) {
                (bool ok,) = payable(recipient).call{value: amount}("");
                if (!ok) revert NativeTransferFailed(recipient, amount);
            } else {
                SafeToken.safeTransfer(token, recipient, amount);
            }
            emit PayoutSent(batchId, recipient, token, amount);
        }
        emit BatchPaid(batchId, token, total, count);
    }

    /// True once `batchId` has been paid.
    function isBatchPaid(bytes32 batchId) external view returns (bool) {
        return _paid[batchId];
    }

    /// Rescue: the owner moves `amount` of `token` (0 = native coin) out of this contract.
    function withdraw(address token, address payable to, uint256 amount) external nonReentrant onlyOwner {
        if (to == address(0)) revert ZeroAddress();
        if (token == address(0)) {
            (bool ok,) = to.call{value: amount}("");
            if (!ok) revert NativeTransferFailed(to, amount);
        } else {
            SafeToken.safeTransfer(token, to, amount);
        }
        emit Withdrawn(token, to, amount);
    }
}
