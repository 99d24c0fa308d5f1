"""The sandbox's USDC on a chain (`usdc_chain = true`): buyers funded by token transfers.

An in-process EVM (eth-tester over py-evm, the token of `wallets.evm`) served over JSON-RPC on
loopback, which the node's USDC rail reaches by URL as it would a chain's node. Each USDC buyer
gets an address of its own, with ether for gas and tokens minted to it; its agent registers the
address over gRPC (the address's key signs the rail's registration message) and the address
transfers its deposit to the rail. `settle` then mines the confirmations and waits until the
node's sweeper has credited every wallet: the buyers start trading with money that came from
the chain, exactly what was sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agents.errors import FailedPrecondition

CONFIRMATIONS = 2
CREDIT_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 10.0


class SandboxUsdc:
    """Start with the constructor (the chain and its JSON-RPC server), `close()` at the end."""

    def __init__(self, confirmations: int = CONFIRMATIONS) -> None:
        try:
            from eth_account import Account

            from wallets.evm import UsdcRailConfig, sandbox_chain
            from wallets.evm.rpc import ChainRpcServer
        except ImportError as error:
            raise FailedPrecondition(f"usdc_chain = true needs the evm extra (pip install "
                                     f"agentmarket[evm]): {error}") from None

        self.chain = sandbox_chain()
        self.rpc = ChainRpcServer(self.chain).start()
        hot = Account.create()
        self.chain.fund_gas(hot.address)
        self.confirmations = confirmations
        self.config = UsdcRailConfig(self.rpc.url, self.chain.token.address, hot.key.hex(),
                                     confirmations)
        self.expected: dict[str, int] = {}  # wallet -> atomic USDC it is owed from the chain

    def fund(self, wallets: Any, account_id: str, amount_atomic: int) -> None:
        """Fund the wallet from an address of its own (`wallets`: its agent's signed stub)."""
        from eth_account import Account
        from eth_account.messages import encode_defunct

        from wallets.evm.chain import ATOMIC_PER_UNIT
        from wallets.v1 import wallet_pb2

        units = amount_atomic // ATOMIC_PER_UNIT  # the token's 6 decimals
        holder = Account.create()
        with self.rpc.holding() as chain:
            chain.fund_gas(holder.address)
            chain.mint(holder.address, units)
        instructions = wallets.GetDepositInstructions(wallet_pb2.GetDepositInstructionsRequest(
            account_id=account_id, address=holder.address), timeout=RPC_TIMEOUT_S)
        signature = Account.sign_message(encode_defunct(
            text=instructions.registration_message), holder.key).signature
        wallets.RegisterDepositAddress(wallet_pb2.RegisterDepositAddressRequest(
            idempotency_key=f"sandbox-address:{account_id}", account_id=account_id,
            address=holder.address, signature=bytes(signature)), timeout=RPC_TIMEOUT_S)
        with self.rpc.holding() as chain:
            tx = chain.token.functions.transfer(instructions.rail_address, units) \
                .build_transaction({"from": holder.address, "nonce": 0, "gas": 100_000,
                                    "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9,
                                    "chainId": instructions.chain_id})
            chain.w3.eth.send_raw_transaction(holder.sign_transaction(tx).raw_transaction)
        self.expected[account_id] = units * ATOMIC_PER_UNIT

    def settle(self, posted: Callable[[str], int]) -> None:
        """Mine the confirmations, then wait until every funded wallet holds what it sent
        (`posted`: a wallet's posted balance, read from the node's database)."""
        if not self.expected:
            return
        with self.rpc.holding() as chain:
            chain.mine(self.confirmations)
        deadline = time.monotonic() + CREDIT_TIMEOUT_S
        waiting = dict(self.expected)
        while waiting:
            waiting = {a: amount for a, amount in waiting.items() if posted(a) < amount}
            if waiting and time.monotonic() > deadline:
                raise FailedPrecondition(f"{len(waiting)} USDC deposit(s) not credited by the "
                                         f"node within {CREDIT_TIMEOUT_S:.0f} s")
            if waiting:
                time.sleep(0.05)

    def close(self) -> None:
        self.rpc.stop()
