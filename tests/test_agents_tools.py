"""Marketplace operations as LangChain tools, driven through LangGraph's ToolNode the way a
ReAct agent's tool calls would drive them."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, marketplace_tools, per_call, skill
from marketplace.node import MarketplaceNode
from wallets.currencies import currency

USD = currency("USD")


class Shout(BaseModel):
    text: str


@pytest.fixture
def market(tmp_path):
    @skill(price=per_call("0.001", "USD"))
    def shout(text: str) -> Shout:
        """Upper-case a text."""
        return Shout(text=text.upper())

    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("shouter", skills=[shout], marketplace=node.address).serve()
    buyer = BuyerAgent("agent", marketplace=node.address)
    buyer.fund("1.00", "USD")
    yield node, seller, buyer
    seller.stop(0)
    buyer.close()
    node.stop(0)


def _tool_graph(tools: list) -> object:
    """The tool-running half of a ReAct agent: a ToolNode in a MessagesState graph."""
    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    return graph.compile()


def _run(graph, name: str, args: dict, call_id: str) -> dict:
    message = AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": call_id}])
    result = graph.invoke({"messages": [message]})
    reply = result["messages"][-1]
    assert reply.tool_call_id == call_id
    return json.loads(reply.content)


def test_an_agent_discovers_hires_calls_and_pays_through_tool_calls(market):
    node, seller, buyer = market
    tools = _tool_graph(marketplace_tools(buyer, currency="USD", max_budget="0.05"))
    found = _run(tools, "discover_agents", {"skill": "shout"}, "1")
    assert [f["agent_id"] for f in found] == [seller.agent_id]
    assert found[0]["prices"][0]["unit"] == "PRICE_UNIT_CALL"
    hired = _run(tools, "hire_agent", {"agent_id": seller.agent_id, "skill": "shout",
                                       "calls": 2, "budget": "0.01"}, "2")
    agreement_id = hired["agreement_id"]
    assert seller.gate.known(agreement_id)
    for i, word in enumerate(("hello", "agents")):
        called = _run(tools, "call_agent", {"agreement_id": agreement_id,
                                            "input": {"text": word}}, f"c{i}")
        assert called["output"] == {"text": word.upper()} and called["verified"]
    finished = _run(tools, "finish_agreement", {"agreement_id": agreement_id}, "3")
    escrow = node.settlement.get(agreement_id)
    assert escrow["state"] == "settled"
    assert finished["paid"] == USD.format(escrow["captured_atomic"])
    assert buyer.wallet("USD").pending_debits_atomic == 0


def test_the_tools_cap_total_spending_in_code_whatever_the_model_asks(market):
    node, seller, buyer = market
    tools = _tool_graph(marketplace_tools(buyer, currency="USD", max_budget="0.01"))
    _run(tools, "discover_agents", {"skill": "shout"}, "1")
    refused = _run(tools, "hire_agent", {"agent_id": seller.agent_id, "skill": "shout",
                                         "calls": 100, "budget": "0.50"}, "2")
    assert refused["reason"] == "BUDGET_EXCEEDED" and "cap" in refused["error"]
    assert node.settlement.agreements() == []
    wrong = _run(tools, "call_agent", {"agreement_id": "ab" * 32, "input": {"text": "x"}}, "3")
    assert wrong["reason"] == "NOT_FOUND"
