"""The marketplace node: registry, negotiation rules, escrow settlement, verification, disputes,
identity, tracing."""

from marketplace.auth import channel_credentials, server_credentials, signed_channel
from marketplace.checkers import CheckerRegistry
from marketplace.errors import (
    BadSignature,
    BudgetExceeded,
    IllegalTransition,
    InvalidVoucher,
    OfferExpired,
    ReceiptLimit,
    VerifierUnavailable,
)
from marketplace.identity import AgentKey, verify
from marketplace.judge import LlmJudge
from marketplace.negotiation import Negotiation
from marketplace.node import MarketplaceNode
from marketplace.payword import PaywordChain, verify_word
from marketplace.pvp import LegRefused, NodeUnavailable, PvpLeg, PvpParty, PvpPayment
from marketplace.receipt_verify import ReceiptInvalid, VerifiedReceipt, verify_receipt
from marketplace.receipts import ReceiptBook
from marketplace.registry import Registry
from marketplace.settlement import Settlement
from marketplace.spanstore import SpanStore
from marketplace.tracing import default_span_store, force_flush, setup_tracing
from marketplace.verifier_agent import VerifierAgent

__all__ = [
    "AgentKey",
    "BadSignature",
    "BudgetExceeded",
    "CheckerRegistry",
    "IllegalTransition",
    "InvalidVoucher",
    "LegRefused",
    "LlmJudge",
    "MarketplaceNode",
    "Negotiation",
    "NodeUnavailable",
    "OfferExpired",
    "PaywordChain",
    "PvpLeg",
    "PvpParty",
    "PvpPayment",
    "ReceiptBook",
    "ReceiptInvalid",
    "ReceiptLimit",
    "Registry",
    "Settlement",
    "SpanStore",
    "VerifiedReceipt",
    "VerifierAgent",
    "VerifierUnavailable",
    "channel_credentials",
    "default_span_store",
    "force_flush",
    "server_credentials",
    "setup_tracing",
    "signed_channel",
    "verify",
    "verify_receipt",
    "verify_word",
]
