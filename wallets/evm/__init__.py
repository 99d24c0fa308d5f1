"""USDC on an EVM chain (an optional extra: `pip install agentmarket[evm]`): the token contract
(`token.vy`, compiled offline into `token.json`), an in-process chain for the sandbox and tests
(`chain`), the USDC rail with confirmed deposits and recorded payouts (`rail`) a node reaches by
URL (`config`), and EIP-3009 authorizations a facilitator verifies and settles
(`authorization`)."""

from wallets import _stack
from wallets.evm.authorization import (
    AuthorizationRefused,
    TransferAuthorization,
    settle_authorization,
    verify_authorization,
)
from wallets.evm.chain import SandboxChain, sandbox_chain, token_contract
from wallets.evm.config import UsdcRailConfig, load_hot_key
from wallets.evm.rail import ScanResult, UsdcRail, registration_message

_stack.restore()  # eth_account's py_ecc raised it: deep JSON would crash, not refuse

__all__ = [
    "AuthorizationRefused",
    "SandboxChain",
    "ScanResult",
    "TransferAuthorization",
    "UsdcRail",
    "UsdcRailConfig",
    "load_hot_key",
    "registration_message",
    "sandbox_chain",
    "settle_authorization",
    "token_contract",
    "verify_authorization",
]
