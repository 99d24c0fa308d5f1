"""The token contract on an EVM chain: its compiled artifact, deployment, and a chain in process.

`token.vy` (Vyper, compiled offline into `token.json` by `python -m wallets.evm.compile`) is an
ERC-20 of 6 decimals with EIP-3009 `transferWithAuthorization`, like USDC. `sandbox_chain`
runs a whole chain in this process (eth-tester over py-evm: real EVM execution, blocks that are
mined on demand, snapshots to simulate reorganisations); a real deployment points web3 at a node
instead and names the token's address.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract

from wallets import _stack
from wallets.currencies import currency

ARTIFACT = Path(__file__).resolve().with_name("token.json")
TOKEN_DECIMALS = 6
USDC = currency("USDC")
ATOMIC_PER_UNIT = 10 ** (USDC.scale - TOKEN_DECIMALS)  # ledger atomic units per token unit


@cache
def artifact() -> dict[str, Any]:
    return json.loads(ARTIFACT.read_text())


def token_contract(w3: Web3, address: str) -> Contract:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact()["abi"])


@dataclass
class SandboxChain:
    """An in-process chain with the token deployed; the deployer is the issuer (minter)."""

    w3: Web3
    tester: Any  # eth_tester.EthereumTester: mine_blocks, take_snapshot, revert_to_snapshot
    token: Contract
    issuer: str
    name: str
    version: str

    def mint(self, to_address: str, units: int) -> str:
        tx = self.token.functions.mint(Web3.to_checksum_address(to_address), units).transact(
            {"from": self.issuer})
        return "0x" + bytes(tx).hex()

    def fund_gas(self, to_address: str, wei: int = 10**18) -> None:
        """Give an account ether for gas (the tester's accounts start rich)."""
        self.w3.eth.send_transaction({"from": self.issuer, "value": wei,
                                      "to": Web3.to_checksum_address(to_address)})

    def mine(self, blocks: int = 1) -> int:
        self.tester.mine_blocks(blocks)
        return int(self.w3.eth.block_number)


def sandbox_chain(name: str = "USD Coin", symbol: str = "USDC",
                  version: str = "2") -> SandboxChain:
    from eth_tester import EthereumTester

    tester = EthereumTester()
    _stack.restore()  # py-evm raised it when the tester loaded it
    w3 = Web3(EthereumTesterProvider(tester))
    issuer = w3.eth.accounts[0]
    factory = w3.eth.contract(abi=artifact()["abi"], bytecode=artifact()["bytecode"])
    receipt = w3.eth.wait_for_transaction_receipt(
        factory.constructor(name, symbol, version).transact({"from": issuer}))
    return SandboxChain(w3, tester, token_contract(w3, receipt.contractAddress), issuer, name,
                        version)
