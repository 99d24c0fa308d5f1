"""The USDC rail of a node, reached over a chain's JSON-RPC URL (`agentmarket serve --usdc-rpc`).

`UsdcRailConfig` is what an operator names: the chain's URL, the token's address, the hot
wallet's key (the rail's deposit address and the payer of payouts and their gas) and how many
confirmations a deposit waits for. `rails(ledger)` connects and checks that the URL answers and
that the address holds a 6-decimal token before the node starts, so a wrong flag is one line at
start, not a failed deposit later. It is plain data (picklable), so a node in another process
(`agents.sandbox.node_process`) is configured with it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wallets.errors import FailedPrecondition, InvalidArgument, Unavailable
from wallets.ledger import Ledger

RPC_TIMEOUT_S = 10.0


def load_hot_key(path: Path) -> str:
    """The hex private key in `path` (one line, 0x optional)."""
    try:
        text = path.read_text().strip()
    except OSError as error:
        raise InvalidArgument(f"cannot read the USDC hot wallet key file {path}: "
                              f"{error.strerror or error}") from None
    return _checked_key(text, str(path))


def _checked_key(text: str, where: str) -> str:
    from eth_account import Account

    try:
        Account.from_key(text)
    except Exception:  # not 32 bytes of hex: never echo the file's content
        raise InvalidArgument(f"{where} does not hold a hex secp256k1 private key (64 hex "
                              "characters, 0x optional)") from None
    return text


@dataclass(frozen=True)
class UsdcRailConfig:
    rpc_url: str
    token_address: str
    hot_key: str  # hex private key
    confirmations: int = 3
    name: str = "usdc-evm"

    def __post_init__(self) -> None:
        from wallets.evm.addresses import is_evm_address

        if not self.rpc_url.startswith(("http://", "https://")):
            raise InvalidArgument(f"the chain's JSON-RPC URL must be http(s)://..., got "
                                  f"{self.rpc_url[:100]!r}")
        if not is_evm_address(self.token_address):
            raise InvalidArgument(f"{self.token_address[:100]!r} is not an EVM address (0x and "
                                  "40 hex characters, with a valid checksum if mixed-case)")
        if not 1 <= self.confirmations <= 1000:
            raise InvalidArgument(f"confirmations must be 1..1000, got {self.confirmations}")
        _checked_key(self.hot_key, "the USDC hot wallet key")

    def check(self) -> None:
        """Raise unless the URL answers and the address holds a 6-decimal token (one line)."""
        self._token()

    def rails(self, ledger: Ledger) -> list:  # type: ignore[type-arg]
        """The rail over `ledger` (a node's `rails=`): connected and checked."""
        from wallets.evm.rail import UsdcRail

        rail = UsdcRail(ledger, self._token(), self.hot_key, confirmations=self.confirmations,
                        name=self.name)
        rail.chain_id  # noqa: B018 (read once now: the chain answers while the node starts)
        return [rail]

    def _token(self) -> Any:
        from web3 import Web3

        from wallets.evm.chain import TOKEN_DECIMALS, token_contract

        w3 = Web3(Web3.HTTPProvider(self.rpc_url,
                                    request_kwargs={"timeout": RPC_TIMEOUT_S}))
        try:
            w3.eth.chain_id  # noqa: B018 (a request: does the URL answer JSON-RPC?)
        except Exception as error:
            raise Unavailable(f"cannot reach the chain at {self.rpc_url}: "
                              f"{_first_line(error)}") from None
        token = token_contract(w3, self.token_address)
        if not w3.eth.get_code(token.address):
            raise FailedPrecondition(f"no contract at {token.address} on the chain at "
                                     f"{self.rpc_url}")
        try:
            decimals = int(token.functions.decimals().call())
        except Exception as error:
            raise FailedPrecondition(f"{token.address} does not answer decimals() like an "
                                     f"ERC-20: {_first_line(error)}") from None
        if decimals != TOKEN_DECIMALS:
            raise FailedPrecondition(f"{token.address} has {decimals} decimals; USDC has "
                                     f"{TOKEN_DECIMALS}")
        return token


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
