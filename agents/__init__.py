"""The agent SDK: sell skills and buy work over gRPC, paid per call from escrow.

Selling: `skill` (a function, async function, generator or LangGraph graph + a price) and
`SellerAgent`. LLM skills call models through `agents.llm` (litellm), billed per token. Buying:
`BuyerAgent` (and `AsyncBuyerAgent`, the same on grpc.aio), the checkpointed LangGraph workflow
`buyer_graph`, and `marketplace_tools` for ReAct/ToolNode agents. Negotiation:
`ConcessionStrategy`, `LLMStrategy`, bounded by `Limits`. Results are typed (`Money`, `Escrow`,
`Wallet`, `CallResult`); errors are one tree (`AgentmarketError`, drawn in `agents.errors`).
Keys that last across runs: `agents.keystore`.
"""

import os
import sys
import warnings

# Before anything imports litellm: use its bundled cost map, never fetch one at import.
if "litellm" in sys.modules and "LITELLM_LOCAL_MODEL_COST_MAP" not in os.environ:
    warnings.warn("litellm was imported before agents without LITELLM_LOCAL_MODEL_COST_MAP=True,"
                  " so its import fetched the model cost map from the network (an offline run "
                  "waits for it); import agents first or set the variable", stacklevel=2)
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agents._bargain import Quote
from agents._deal import Deal
from agents._streaming import StreamedCall
from agents.approvals import OperatorApprover
from agents.buyer import BuyerAgent
from agents.errors import (
    AgentmarketError,
    AgreementEnded,
    ApprovalRequired,
    BadSignature,
    BudgetExceeded,
    CallInProgress,
    DeadlineExceeded,
    DeadlinePassed,
    FailedPrecondition,
    Forbidden,
    IdempotencyConflict,
    IllegalTransition,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
    InvalidVoucher,
    NegotiationFailed,
    NotFound,
    OfferExpired,
    PaymentRequired,
    PermissionDenied,
    PolicyDenied,
    ResourceExhausted,
    SchemaViolation,
    SellerUnavailable,
    ServerError,
    Unauthenticated,
    Unavailable,
    UnknownCurrency,
    WalletFrozen,
)
from agents.metering import Meter, Tariff, current_meter
from agents.negotiation import ConcessionStrategy, Limits, Strategy
from agents.payment_session import PaymentSession
from agents.payments import PaymentGate
from agents.results import AgreementState, CallResult, Escrow, Money, Usage, Wallet
from agents.seller import SellerAgent
from agents.skills import (
    Price,
    Skill,
    free,
    model_price,
    per_1k_tokens,
    per_call,
    per_unit,
    skill,
)
from agents.workflow import TaskState, buyer_graph

_LAZY = {"LLMStrategy": "agents.llm_strategy", "marketplace_tools": "agents.tools",
         "AsyncBuyerAgent": "agents.async_buyer", "AsyncStreamedCall": "agents.async_buyer"}


def __getattr__(name: str) -> object:
    """Load on first use: LLMStrategy (litellm), marketplace_tools (langchain tools), the
    async buyer (grpc.aio)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")


__all__ = [
    "AgentmarketError",
    "AgreementEnded",
    "AgreementState",
    "ApprovalRequired",
    "AsyncBuyerAgent",
    "AsyncStreamedCall",
    "BadSignature",
    "BudgetExceeded",
    "BuyerAgent",
    "CallInProgress",
    "CallResult",
    "ConcessionStrategy",
    "DeadlineExceeded",
    "DeadlinePassed",
    "Deal",
    "Escrow",
    "FailedPrecondition",
    "Forbidden",
    "IdempotencyConflict",
    "IllegalTransition",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidArgument",
    "InvalidVoucher",
    "LLMStrategy",
    "Limits",
    "Meter",
    "Money",
    "NegotiationFailed",
    "NotFound",
    "OfferExpired",
    "OperatorApprover",
    "PaymentGate",
    "PaymentRequired",
    "PaymentSession",
    "PermissionDenied",
    "PolicyDenied",
    "Price",
    "Quote",
    "ResourceExhausted",
    "SchemaViolation",
    "SellerAgent",
    "SellerUnavailable",
    "ServerError",
    "Skill",
    "Strategy",
    "StreamedCall",
    "Tariff",
    "TaskState",
    "Unauthenticated",
    "Unavailable",
    "UnknownCurrency",
    "Usage",
    "Wallet",
    "WalletFrozen",
    "buyer_graph",
    "current_meter",
    "free",
    "marketplace_tools",
    "model_price",
    "per_1k_tokens",
    "per_call",
    "per_unit",
    "skill",
]
