// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

interface IPayoutBatcher {
    function payout(bytes32 batchId, address token, address[] calldata recipients, uint256[] calldata amounts)
        external
        payable;
}

/// @title ReentrantReceiver
/// @notice A payout recipient that, on receiving native coin, tries to re-enter
/// `PayoutBatcher.payout` with the batch id given to `arm` (paying itself once more). It swallows
/// the outcome so that the outer payout completes, and records it: after a payout,
/// `reentered == false` and `lastError` holding the `Reentrancy()` error mean the guard held.
/// Make it an operator of the batcher to reach the guard rather than the role check. FOR TESTS ONLY.
contract ReentrantReceiver {
    address public target;
    bytes32 public batchId;
    uint256 public amount;
    bool public reentered;
    uint256 public attempts;
    bytes public lastError;

    function arm(address target_, bytes32 batchId_, uint256 amount_) external {
        target = target_;
        batchId = batchId_;
        amount = amount_;
    }

    receive() external payable {
        if (target == address(0) || attempts != 0) return;
        attempts += 1;
        address[] memory recipients = new address[](1);
        recipients[0] = address(this);
        uint256[] memory amounts = new uint256[](1);
        amounts[0] = amount;
        try IPayoutBatcher(target).payout(batchId, address(0), recipients, amounts) {
            reentered = true;
        } catch (bytes memory reason) {
            lastError = reason;
        }
    }
}
