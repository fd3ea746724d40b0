// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title Roles
/// @notice One owner and any number of operators. The owner manages the operator set, moves
/// the ownership, and is always an operator itself.
abstract contract Roles {
    /// The account that manages this contract.
    address public owner;

    mapping(address => bool) private _operators;

    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    event OperatorSet(address indexed operator, bool enabled);

    error NotOwner(address caller);
    error NotOperator(address caller);
    error ZeroAddress();

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    modifier onlyOperator() {
        if (!isOperator(msg.sender)) revert NotOperator(msg.sender);
        _;
    }

    constructor(address owner_) {
        if (owner_ == address(0)) revert ZeroAddress();
        owner = owner_;
        emit OwnershipTransferred(address(0), owner_);
    }

    /// True for the owner and for every account the owner made an operator.
    function isOperator(address account) public view returns (bool) {
        return account == owner || _operators[account];
    }

    /// Grants (`enabled = true`) or revokes the operator role.
    function setOperator(address operator, bool enabled) external onlyOwner {
        if (operator == address(0)) revert ZeroAddress();
        _operators[operator] = enabled;
        emit OperatorSet(operator, enabled);
    }

    /// Hands the ownership to `newOwner` (effective at once).
    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroAddress();
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }
}
