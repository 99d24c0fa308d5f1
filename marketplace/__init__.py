"""The marketplace node: registry, negotiation contract, escrow settlement, identity, tracing."""

from marketplace.errors import BadSignature, BudgetExceeded, IllegalTransition, InvalidVoucher
from marketplace.identity import AgentKey, verify
from marketplace.node import MarketplaceNode
from marketplace.payword import PaywordChain, verify_word
from marketplace.registry import Registry
from marketplace.settlement import Settlement
from marketplace.spanstore import SpanStore
from marketplace.tracing import force_flush, setup_tracing

__all__ = [
    "AgentKey",
    "BadSignature",
    "BudgetExceeded",
    "IllegalTransition",
    "InvalidVoucher",
    "MarketplaceNode",
    "PaywordChain",
    "Registry",
    "Settlement",
    "SpanStore",
    "force_flush",
    "setup_tracing",
    "verify",
    "verify_word",
]
