"""Marketplace operations as LangChain tools: an existing ReAct / ToolNode agent can find, hire
and pay other agents itself.

    tools = marketplace_tools(buyer, currency="USD", max_budget="0.50")
    agent = create_react_agent(model, tools)          # or ToolNode(tools) in your own graph

Tools: `discover_agents`, `hire_agent` (negotiate + escrow), `call_agent` (one paid call),
`finish_agreement` (settle). Limits are code, not prompt: `max_budget` caps everything the tools
may ever put in escrow (all hires together), `max_calls` caps each hire, and the buyer's
negotiation limits apply as always. Failures come back as `{"error": ...}` text the model can
read; a payment that needs a person's approval says so (and is not retried by the tools).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from agents.buyer import BuyerAgent, Deal
from agents.errors import AgentmarketError, ApprovalRequired, BudgetExceeded, NotFound
from marketplace.v1 import registry_pb2
from wallets.currencies import currency as _currency

MAX_LISTED = 10


class _Discover(BaseModel):
    skill: str = Field(description="exact skill name, e.g. 'summarize'")
    max_price: str | None = Field(None, description="highest unit price, decimal, e.g. '0.01'")


class _Hire(BaseModel):
    agent_id: str = Field(description="the seller's agent_id from discover_agents")
    skill: str = Field(description="the skill to buy")
    calls: int = Field(description="how many calls you expect to make", ge=1)
    budget: str = Field(description="the most to spend on this hire, decimal, e.g. '0.05'")


class _Call(BaseModel):
    agreement_id: str = Field(description="from hire_agent")
    input: dict[str, Any] = Field(description="the skill's input, a JSON object")


class _Finish(BaseModel):
    agreement_id: str = Field(description="from hire_agent")


class _Market:
    """What the tools share: the buyer, its listings and deals, and the spending cap."""

    def __init__(self, buyer: BuyerAgent, currency: str, max_budget: str,
                 max_calls: int) -> None:
        self.buyer = buyer
        self.currency = _currency(currency)
        self.cap_atomic = self.currency.atomic(max_budget)
        self.max_calls = max_calls
        self.committed_atomic = 0
        self.listings: dict[str, registry_pb2.Listing] = {}
        self.deals: dict[str, Deal] = {}
        self._lock = threading.Lock()

    def _fmt(self, amount_atomic: int) -> str:
        return self.currency.format(amount_atomic)

    def discover(self, skill: str, max_price: str | None = None) -> str:
        max_atomic = self.currency.atomic(max_price) if max_price else 0
        found = self.buyer.discover(skill, currency=self.currency.code,
                                    max_price_atomic=max_atomic, limit=MAX_LISTED)
        self.listings.update({listing.agent_id: listing for listing in found})
        return json.dumps([{
            "agent_id": listing.agent_id, "name": listing.name, "skill": s.name,
            "description": s.description, "input_schema": json.loads(s.input_schema_json or "{}"),
            "prices": [{"amount": self.currency.format(p.amount_atomic),
                        "unit": registry_pb2.PriceUnit.Name(p.unit), "unit_name": p.unit_name}
                       for p in s.prices if p.currency == self.currency.code],
            "reputation_permille": listing.reputation_permille,
        } for listing in found for s in listing.skills if s.name == skill])

    def hire(self, agent_id: str, skill: str, calls: int, budget: str) -> str:
        if calls > self.max_calls:
            raise BudgetExceeded(f"at most {self.max_calls} calls per hire")
        budget_atomic = self.currency.atomic(budget)
        with self._lock:
            if self.committed_atomic + budget_atomic > self.cap_atomic:
                raise BudgetExceeded(
                    f"{self._fmt(budget_atomic)} would pass the tools' cap of "
                    f"{self._fmt(self.cap_atomic)} ({self._fmt(self.committed_atomic)} committed)")
            self.committed_atomic += budget_atomic
        try:
            listing = self.listings.get(agent_id)
            if listing is None:
                self.discover(skill)
                listing = self.listings.get(agent_id)
            if listing is None:
                raise NotFound(f"no seller {agent_id[:16]}… offers {skill}")
            deal = self.buyer.negotiate(listing, skill, quantity=calls, budget=budget,
                                        currency=self.currency.code)
            escrow = self.buyer.hire(deal)
        except BaseException:
            with self._lock:
                self.committed_atomic -= budget_atomic
            raise
        self.deals[deal.agreement_id] = deal
        return json.dumps({"agreement_id": deal.agreement_id,
                           "unit_price": self._fmt(deal.body.terms.unit_price_atomic),
                           "max_total": self._fmt(deal.body.terms.max_total_atomic),
                           "held": self._fmt(escrow.held_atomic)})

    def call(self, agreement_id: str, input: dict[str, Any]) -> str:
        deal = self.deals.get(agreement_id)
        if deal is None:
            raise NotFound(f"no agreement {agreement_id[:16]}… hired through these tools")
        result = self.buyer.invoke(deal, input)
        return json.dumps({"output": result.output,
                           "charged": self._fmt(result.usage.charged_atomic),
                           "verified": result.verified})

    def finish(self, agreement_id: str) -> str:
        deal = self.deals.get(agreement_id)
        if deal is None:
            raise NotFound(f"no agreement {agreement_id[:16]}… hired through these tools")
        escrow = self.buyer.finish(deal)
        return json.dumps({"paid": self._fmt(escrow.captured_atomic),
                           "refunded": self._fmt(escrow.refunded_atomic)})


def _safe(fn: Any) -> Any:
    """Errors become text the model can act on; nothing is retried behind its back."""

    def run(**kwargs: Any) -> str:
        try:
            return fn(**kwargs)  # type: ignore[no-any-return]
        except ApprovalRequired as needed:
            return json.dumps({"error": "a person must approve this payment first",
                               "approval_id": needed.approval_id})
        except AgentmarketError as error:
            return json.dumps({"error": error.message, "reason": error.reason})

    return run


def marketplace_tools(buyer: BuyerAgent, *, currency: str = "USD", max_budget: str = "1.00",
                      max_calls: int = 100) -> list[BaseTool]:
    """LangChain tools over `buyer`, spending at most `max_budget` in all (see the module doc)."""
    market = _Market(buyer, currency, max_budget, max_calls)
    return [
        StructuredTool.from_function(
            _safe(market.discover), name="discover_agents", args_schema=_Discover,
            description="Find agents selling a skill, cheapest first, with prices and schemas."),
        StructuredTool.from_function(
            _safe(market.hire), name="hire_agent", args_schema=_Hire,
            description="Negotiate with a seller and put the agreed maximum in escrow. Returns "
                        "an agreement_id to call the agent with."),
        StructuredTool.from_function(
            _safe(market.call), name="call_agent", args_schema=_Call,
            description="Make one paid call under an agreement; returns the agent's output."),
        StructuredTool.from_function(
            _safe(market.finish), name="finish_agreement", args_schema=_Finish,
            description="Finish an agreement: the seller is paid for the calls made, the rest "
                        "of the escrow comes back."),
    ]
