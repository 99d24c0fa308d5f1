"""EVM addresses as requests give them: checked, with their EIP-55 checksum when mixed-case."""

from __future__ import annotations

from typing import Any

from web3 import Web3

from wallets.errors import InvalidArgument


def checked_address(address: str, field: str) -> str:
    """`address` checksummed; INVALID_ARGUMENT unless it is one (a mixed-case address must
    carry a valid EIP-55 checksum)."""
    if not is_evm_address(address):
        raise InvalidArgument(f"{field} {str(address)[:60]!r} is not an EVM address (0x and 40 "
                              "hex characters, with a valid EIP-55 checksum if mixed-case)")
    return str(Web3.to_checksum_address(address))


def is_evm_address(address: Any) -> bool:
    """0x and 40 hex characters; a mixed-case one must carry its EIP-55 checksum (web3's
    `is_address` no longer checks it)."""
    if not isinstance(address, str) or not Web3.is_address(address) or \
            not address.startswith("0x"):
        return False
    digits = address[2:]
    mixed = digits != digits.lower() and digits != digits.upper()
    return not mixed or Web3.is_checksum_address(address)
