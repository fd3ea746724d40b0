// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Forwarder} from "./Forwarder.sol";
import {Roles} from "./lib/Roles.sol";
import {ReentrancyLock} from "./lib/ReentrancyLock.sol";
import {SafeToken} from "./lib/SafeToken.sol";

/// @title ForwarderFactory
/// @notice Gives every invoice a deterministic deposit address without a private key for it.
/// The address of `salt` is the CREATE2 address of an EIP-1167 minimal proxy of `implementation`
/// deployed by this factory with that salt (`predict`). Payers send native coin or ERC-20 tokens
/// there before anything is deployed; an operator's `sweep` deploys the proxy on first use and
/// moves everything it holds to the treasury.
contract ForwarderFactory is Roles, ReentrancyLock {
    /// The `Forwarder` every deposit address delegates to (deployed by this factory's constructor).
    address public immutable implementation;

    /// keccak256 of the 55-byte EIP-1167 creation code of a clone of `implementation`: the
    /// CREATE2 init-code hash, for computing deposit addresses off-chain.
    bytes32 public immutable cloneCodeHash;

    /// Where swept funds go.
    address payable public treasury;

    event ForwarderDeployed(bytes32 indexed salt, address forwarder);
    event Swept(
        bytes32 indexed salt, address indexed forwarder, address indexed token, uint256 amount, address treasury
    );
    event TreasuryChanged(address indexed previousTreasury, address indexed newTreasury);

    error DeployFailed(bytes32 salt);
    error InvalidToken(address token);
    error DuplicateToken(address token);
    /// Raised by `Forwarder.flush` (and passed through `sweep`) when the treasury refuses native coin.
    error NativeTransferFailed(address to, uint256 amount);

    constructor(address owner_, address payable treasury_) Roles(owner_) {
        if (treasury_ == address(0)) revert ZeroAddress();
        address impl = address(new Forwarder());
        implementation = impl;
        cloneCodeHash = keccak256(_cloneCode(impl));
        treasury = treasury_;
        emit TreasuryChanged(address(0), treasury_);
    }

    /// The deposit address of `salt`: where the clone is (or will be) deployed.
    function predict(bytes32 salt) public view returns (address) {
        return address(uint160(uint256(keccak256(abi.encodePacked(bytes1(0xff), address(this), salt, cloneCodeHash)))));
    }

    /// Deploys the forwarder of `salt` if it has no code yet, then moves the whole balance of each
    /// listed token and the whole native balance to the treasury. Emits `Swept` for every asset
    /// moved with a non-zero amount (`token` 0 = native coin).
    function sweep(bytes32 salt, address[] calldata tokens) external nonReentrant onlyOperator returns (address forwarder) {
        _checkTokens(tokens);
        forwarder = _sweep(salt, tokens, treasury);
    }

    /// `sweep` for several deposit addresses, each with the same token list.
    function sweepMany(bytes32[] calldata salts, address[] calldata tokens)
        external
        nonReentrant
        onlyOperator
        returns (address[] memory forwarders)
    {
        _checkTokens(tokens);
        address payable to = treasury;
        forwarders = new address[](salts.length);
        for (uint256 i = 0; i < salts.length; ++i) {
            forwarders[i] = _sweep(salts[i], tokens, to);
        }
    }

    /// Changes where swept funds go.
    function setTreasury(address payable newTreasury) external onlyOwner {
        if (newTreasury == address(0)) revert ZeroAddress();
        emit TreasuryChanged(treasury, newTreasury);
        treasury = newTreasury;
    }

    function _sweep(bytes32 salt, address[] calldata tokens, address payable to) private returns (address forwarder) {
        forwarder = predict(salt);
        if (forwarder.code.length == 0) {
            bytes memory code = _cloneCode(implementation);
            address deployed;
            assembly ("memory-safe") {
                deployed := create2(0, add(code, 0x20), mload(code), salt)
            }
            if (deployed != forwarder) revert DeployFailed(salt);
            emit ForwarderDeployed(salt, forwarder);
        }

        uint256[] memory amounts = new uint256[](tokens.length);
        for (uint256 i = 0; i < tokens.length; ++i) {
            amounts[i] = SafeToken.balanceOf(tokens[i], forwarder);
        }
        uint256 native = forwarder.balance;

        Forwarder(payable(forwarder)).flush(tokens, to);

        for (uint256 i = 0; i < tokens.length; ++i) {
            if (amounts[i] != 0) emit Swept(salt, forwarder, tokens[i], amounts[i], to);
        }
        if (native != 0) emit Swept(salt, forwarder, address(0), native, to);
    }

    /// A token list must not hold the zero address (native coin is always swept) nor repeat a
    /// token (its amount would be reported twice).
    function _checkTokens(address[] calldata tokens) private pure {
        for (uint256 i = 0; i < tokens.length; ++i) {
            address token = tokens[i];
            if (token == address(0)) revert InvalidToken(token);
            for (uint256 j = 0; j < i; ++j) {
                if (tokens[j] == token) revert DuplicateToken(token);
            }
        }
    }

    /// EIP-1167 creation code: a 10-byte constructor returning the 45-byte runtime proxy.
    function _cloneCode(address impl) private pure returns (bytes memory) {
        return abi.encodePacked(
            hex"3d602d80600a3d3981f3363d3d373d3d3d363d73", impl, hex"5af43d82803e903d91602b57fd5bf3"
        );
    }
}
