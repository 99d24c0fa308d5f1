"""The agent SDK: sell skills and buy work over gRPC, paid per call from escrow."""

from agents.buyer import BuyerAgent, Deal
from agents.errors import NegotiationFailed, PaymentRequired
from agents.negotiation import ConcessionStrategy, Limits, Strategy
from agents.payments import PaymentGate, PaymentSession
from agents.seller import SellerAgent
from agents.skills import Price, Skill, per_call, skill
from agents.workflow import TaskState, buyer_graph

__all__ = [
    "BuyerAgent",
    "ConcessionStrategy",
    "Deal",
    "Limits",
    "NegotiationFailed",
    "PaymentGate",
    "PaymentRequired",
    "PaymentSession",
    "Price",
    "SellerAgent",
    "Skill",
    "Strategy",
    "TaskState",
    "buyer_graph",
    "per_call",
    "skill",
]
