"""The workflow's other ending: work that fails the buyer's own check is disputed, not paid."""

from __future__ import annotations

from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, buyer_graph, per_call, skill
from marketplace.node import MarketplaceNode
from marketplace.v1 import registry_pb2

ACCEPTANCE = registry_pb2.VERIFICATION_METHOD_BUYER_ACCEPTANCE


class Shout(BaseModel):
    text: str


def test_outputs_failing_the_buyers_check_are_disputed_and_the_money_frozen(tmp_path):
    @skill(price=per_call("0.001", "USD"), verification=[ACCEPTANCE])
    def shout(text: str) -> Shout:
        """Upper-case a text (this one forgets to)."""
        return Shout(text=text)

    def upper_case(arguments: dict, output: dict) -> str:
        return "" if output["text"] == arguments["text"].upper() else "not upper-cased"

    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("sloppy", skills=[shout], marketplace=node.address).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    buyer.fund("1.00", "USD")
    try:
        graph = buyer_graph(buyer, checkpoint_path=tmp_path / "checkpoints.sqlite",
                            check_output=upper_case)
        state = graph.invoke(
            {"skill": "shout", "currency": "USD", "budget": "0.01", "max_sellers": 1,
             "verification": ACCEPTANCE, "inputs": [{"text": "a"}, {"text": "b"}]},
            {"configurable": {"thread_id": "dispute"}})
        assert (state["status"], state["escrow_state"]) == ("disputed", "disputed")
        assert state["problems"] == ["not upper-cased"] * 2
        assert state["captured_atomic"] == 0
        assert node.settlement.get(state["agreement_id"])["state"] == "disputed"
        seller_wallet = node.ledger.find_account(seller.agent_id, "USD")
        assert seller_wallet is None or seller_wallet.posted_atomic == 0  # frozen, not paid
    finally:
        seller.stop(0)
        buyer.close()
        node.stop(0)
