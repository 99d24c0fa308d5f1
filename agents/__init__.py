"""The agent SDK: sell skills and buy work over gRPC, paid per call from escrow.

Selling: `skill` (a function, async function, generator or LangGraph graph + a price) and
`SellerAgent`. LLM skills call models through `agents.llm` (litellm), billed per token. Buying:
`BuyerAgent`, the checkpointed LangGraph workflow `buyer_graph`, and `marketplace_tools` for
ReAct/ToolNode agents. Negotiation: `ConcessionStrategy`, `LLMStrategy`, bounded by `Limits`.
"""

import os

# Before anything imports litellm: use its bundled cost map, never fetch one at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agents._bargain import Quote
from agents._streaming import StreamedCall
from agents.approvals import OperatorApprover
from agents.buyer import BuyerAgent, CallResult, Deal
from agents.errors import ApprovalRequired, NegotiationFailed, PaymentRequired
from agents.metering import Meter, Tariff, current_meter
from agents.negotiation import ConcessionStrategy, Limits, Strategy
from agents.payments import PaymentGate, PaymentSession
from agents.seller import SellerAgent
from agents.skills import (
    Price,
    Skill,
    model_price,
    per_1k_tokens,
    per_call,
    per_unit,
    skill,
)
from agents.workflow import TaskState, buyer_graph

_LAZY = {"LLMStrategy": "agents.llm_strategy", "marketplace_tools": "agents.tools"}


def __getattr__(name: str) -> object:
    """LLMStrategy and marketplace_tools load on first use (litellm, langchain tools)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")

__all__ = [
    "ApprovalRequired",
    "BuyerAgent",
    "CallResult",
    "ConcessionStrategy",
    "Deal",
    "LLMStrategy",
    "Limits",
    "Meter",
    "NegotiationFailed",
    "OperatorApprover",
    "PaymentGate",
    "PaymentRequired",
    "PaymentSession",
    "Price",
    "Quote",
    "SellerAgent",
    "Skill",
    "Strategy",
    "StreamedCall",
    "Tariff",
    "TaskState",
    "buyer_graph",
    "current_meter",
    "marketplace_tools",
    "model_price",
    "per_1k_tokens",
    "per_call",
    "per_unit",
    "skill",
]
