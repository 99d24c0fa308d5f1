"""A buyer whose wallet policy wants a person to approve payments above a threshold.

The wallet's owner sets an approval threshold. The buyer's LangGraph workflow negotiates a deal
whose escrow is above it, so the wallet refuses the hold with APPROVAL_REQUIRED and the graph
stops with an `interrupt` that says how much, to whom and why. A person (here, this script)
approves by resuming the graph with Command(resume={"approve": True}); the workflow approves at
the wallet with the operator's key it was given (the buyer cannot approve its own spend: only
the node's operators can), places the hold and finishes the task. Resuming with
{"approve": False} would deny it and end the task with nothing held.
"""

import tempfile

from langgraph.types import Command
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, buyer_graph, per_call, skill
from marketplace import AgentKey, MarketplaceNode
from wallets import currency
from wallets.v1 import wallet_pb2


class Report(BaseModel):
    title: str


@skill(price=per_call("0.02", "USD"))
def write_report(topic: str) -> Report:
    """Write a short report on a topic."""
    return Report(title=f"A short report on {topic}")


usd = currency("USD")
workdir = tempfile.mkdtemp()
operator = AgentKey.generate()  # the person's key; the node trusts it with approvals
with MarketplaceNode(f"sqlite:///{workdir}/market.db", operator_ids=[operator.agent_id]) as node, \
        SellerAgent("writer", skills=[write_report], marketplace=node.address) as _seller, \
        BuyerAgent("buyer", marketplace=node.address) as buyer:  # stopped however this ends
    buyer.fund("5.00", "USD")
    buyer.wallets.SetPolicy(wallet_pb2.SetPolicyRequest(  # the owner's rule
        idempotency_key="policy-v1", account_id=buyer.wallet("USD").account_id,
        policy=wallet_pb2.WalletPolicy(approval_threshold_atomic=usd.atomic("0.05"))))

    graph = buyer_graph(buyer, approver=operator,
                        checkpoint_path=f"{workdir}/checkpoints.sqlite")
    config = {"configurable": {"thread_id": "reports"}}
    topics = ["escrow", "vouchers", "disputes", "reputation"]
    state = graph.invoke({"skill": "write_report", "currency": "USD", "budget": "0.10",
                          "inputs": [{"topic": t} for t in topics]}, config)

    request = state["__interrupt__"][0].value
    print(f"approval needed: {request['amount']} to {request['counterparty'][:16]}… "
          f"({request['reason']})")
    state = graph.invoke(Command(resume={"approve": True, "note": "budgeted"}), config)
    for output in state["outputs"]:
        print(output["title"])
    print(f"status {state['status']}: paid {usd.format(state['captured_atomic'])}, "
          f"refunded {usd.format(state['refunded_atomic'])}")
