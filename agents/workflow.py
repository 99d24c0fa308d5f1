"""The buyer's task as a LangGraph StateGraph: discover -> negotiate -> hire -> call -> finish.

Each node does one step through `BuyerAgent` and keeps only ids and plain data in the graph
state; the agreement itself stays in the agent (`buyer.deals[agreement_id]`). Money-moving steps
are keyed by the agreement id, so re-running a node does not pay twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from agents.buyer import BuyerAgent
from agents.errors import NotFound


class TaskState(TypedDict, total=False):
    skill: str
    currency: str
    budget: str
    inputs: list[dict[str, Any]]
    max_rounds: int
    candidates: list[str]
    agreement_id: str
    seller_id: str
    unit_price_atomic: int
    rounds: int
    outputs: list[dict[str, Any]]
    escrow_state: str
    captured_atomic: int
    refunded_atomic: int


def buyer_graph(buyer: BuyerAgent, *, on_step: Callable[[str, TaskState], None] | None = None
                ) -> Any:
    """Compile the buyer workflow for `buyer`; `on_step` sees each node's result (progress)."""
    listings: dict[str, Any] = {}

    def report(step: str, update: TaskState) -> TaskState:
        if on_step is not None:
            on_step(step, update)
        return update

    def discover(state: TaskState) -> TaskState:
        found = buyer.discover(state["skill"], currency=state["currency"])
        if not found:
            raise NotFound(f"no seller offers {state['skill']} in {state['currency']}")
        listings.update({listing.agent_id: listing for listing in found})
        return report("discover", {"candidates": [listing.agent_id for listing in found]})

    def negotiate(state: TaskState) -> TaskState:
        listing = listings[state["candidates"][0]]
        deal = buyer.negotiate(listing, state["skill"], quantity=len(state["inputs"]),
                               budget=state["budget"], currency=state["currency"],
                               max_rounds=state.get("max_rounds", 6))
        return report("negotiate", {"agreement_id": deal.agreement_id,
                                    "seller_id": listing.agent_id,
                                    "unit_price_atomic": deal.body.terms.unit_price_atomic,
                                    "rounds": deal.rounds})

    def hire(state: TaskState) -> TaskState:
        escrow = buyer.hire(buyer.deals[state["agreement_id"]])
        return report("hire", {"escrow_state": "active", "captured_atomic": 0,
                               "refunded_atomic": 0} if escrow else {})

    def call(state: TaskState) -> TaskState:
        deal = buyer.deals[state["agreement_id"]]
        outputs = list(state.get("outputs", []))
        for arguments in state["inputs"][len(outputs):]:
            outputs.append(buyer.call(deal, arguments))
            report("call", {"outputs": outputs})
        return {"outputs": outputs}

    def finish(state: TaskState) -> TaskState:
        escrow = buyer.finish(buyer.deals[state["agreement_id"]])
        return report("finish", {"escrow_state": "settled" if escrow.captured_atomic else
                                 "refunded", "captured_atomic": escrow.captured_atomic,
                                 "refunded_atomic": escrow.refunded_atomic})

    graph = StateGraph(TaskState)
    for name, node in (("discover", discover), ("negotiate", negotiate), ("hire", hire),
                       ("call", call), ("finish", finish)):
        graph.add_node(name, node)
    graph.add_edge(START, "discover")
    graph.add_edge("discover", "negotiate")
    graph.add_edge("negotiate", "hire")
    graph.add_edge("hire", "call")
    graph.add_edge("call", "finish")
    graph.add_edge("finish", END)
    return graph.compile()
