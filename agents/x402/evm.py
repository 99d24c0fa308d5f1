"""x402's `exact` scheme on an EVM chain, settled by agentmarket's facilitator.

A third-party resource server that prices a route in a token with EIP-3009
`transferWithAuthorization` (USDC, or the sandbox token of `wallets.evm`) names the network
`eip155:<chain id>`; its buyer signs an authorisation with its Ethereum key (x402's own EVM
client). The facilitator verifies the signature, the payer's balance and the authorisation's
window against the chain, and settles by submitting the transaction from its own account, which
pays the gas: all of it is x402's `ExactEvmScheme`, given a signer that reaches the chain by
JSON-RPC (`wallets.evm.rpc` serves the in-process chain that way). Needs the `evm` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from x402 import x402FacilitatorSync

__all__ = ["EvmSettlement", "evm_network"]


def evm_network(chain_id: int) -> str:
    """The CAIP-2 id of an EVM chain, as x402 names it."""
    return f"eip155:{chain_id}"


@dataclass(frozen=True)
class EvmSettlement:
    """Where and as whom the facilitator settles EVM payments: the chain's JSON-RPC URL and
    the private key (hex) of the account that submits the transactions and pays their gas."""

    rpc_url: str
    private_key: str

    def register(self, facilitator: x402FacilitatorSync) -> str:
        """Register `exact` on this chain with `facilitator`; returns the network id. Needs
        web3 (`pip install agentmarket[evm]`)."""
        from x402.mechanisms.evm.exact import register_exact_evm_facilitator

        signer = _signer(self.private_key, self.rpc_url)
        network = evm_network(signer.get_chain_id())
        register_exact_evm_facilitator(facilitator, signer, networks=network)
        return network


def _signer(private_key: str, rpc_url: str) -> Any:
    """x402's web3 signer, on chains without Multicall3 too.

    x402 simulates a transfer through Multicall3's `tryAggregate` at its usual address, which
    every public chain has and a fresh chain (the sandbox's, a devnet) does not. There the
    batch is answered call by call with `eth_call`, as Multicall3 itself would: each call's
    success and return (or revert) data."""
    from web3 import Web3
    from web3.exceptions import ContractLogicError
    from x402.mechanisms.evm import FacilitatorWeb3Signer
    from x402.mechanisms.evm.constants import MULTICALL3_ADDRESS

    from wallets import _stack

    _stack.restore()  # eth_account's py_ecc raised it: deep JSON would crash, not refuse

    class Signer(FacilitatorWeb3Signer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(private_key=private_key, rpc_url=rpc_url)
            self._chain = Web3(Web3.HTTPProvider(rpc_url))
            self._has_multicall = bool(self._chain.eth.get_code(MULTICALL3_ADDRESS))

        def read_contract(self, address: str, abi: list[dict[str, Any]],
                          function_name: str, *args: Any) -> Any:
            if (self._has_multicall or function_name != "tryAggregate"
                    or address.lower() != MULTICALL3_ADDRESS.lower()):
                return super().read_contract(address, abi, function_name, *args)
            require_success, calls = args
            results = []
            for target, data in calls:
                try:
                    returned = self._chain.eth.call({"from": self.address, "to": target,
                                                     "data": data})
                    results.append((True, bytes(returned)))
                except ContractLogicError as reverted:
                    if require_success:
                        raise
                    revert = reverted.data if isinstance(reverted.data, str) else ""
                    results.append((False, bytes.fromhex(revert.removeprefix("0x"))))
            return results

    return Signer()
