"""Human in the loop: a payment above the wallet's approval threshold stops the buyer's graph
with an interrupt; approving (with an operator's key) continues and pays, denying ends it with
nothing held. The buyer itself cannot approve its own spend."""

from __future__ import annotations

import grpc
import pytest
from langgraph.types import Command
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, buyer_graph, per_call, skill
from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from wallets.currencies import currency
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

PRICE = "0.002"
INPUTS = [{"text": f"t{i}"} for i in range(3)]
TASK = {"skill": "echo", "currency": "USD", "budget": "0.05", "inputs": INPUTS,
        "max_sellers": 1}


class Echo(BaseModel):
    text: str


@pytest.fixture
def market(tmp_path):
    @skill(price=per_call(PRICE, "USD"))
    def echo(text: str) -> Echo:
        """Echo a text."""
        return Echo(text=text)

    operator = AgentKey.generate()
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600,
                           operator_ids=[operator.agent_id]).start()
    seller = SellerAgent("echoer", skills=[echo], marketplace=node.address).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    buyer.fund("1.00", "USD")
    wallet = buyer.wallet("USD")
    buyer.wallets.SetPolicy(wallet_pb2.SetPolicyRequest(
        idempotency_key="policy-1", account_id=wallet.account_id,
        policy=wallet_pb2.WalletPolicy(
            approval_threshold_atomic=currency("USD").atomic("0.004"))), timeout=10)
    graph = buyer_graph(buyer, approver=operator, checkpoint_path=tmp_path / "checkpoints.sqlite")
    yield node, seller, buyer, graph, operator
    seller.stop(0)
    buyer.close()
    node.stop(0)


def _stop_for_approval(buyer: BuyerAgent, graph, config: dict) -> dict:
    result = graph.invoke(TASK, config)
    interrupts = result.get("__interrupt__") or graph.get_state(config).interrupts
    assert len(interrupts) == 1, result
    payload = interrupts[0].value
    state = graph.get_state(config).values
    assert payload["kind"] == "approval_required" and payload["approval_id"]
    assert payload["amount_atomic"] == state["max_total_atomic"] > currency("USD").atomic("0.004")
    assert payload["counterparty"] == state["seller_id"] and payload["currency"] == "USD"
    assert "approval" in payload["reason"]
    assert buyer.wallet("USD").pending_debits_atomic == 0  # nothing held while it waits
    return payload


def test_an_approved_payment_proceeds_and_pays(market):
    _node, _seller, buyer, graph, _operator = market
    config = {"configurable": {"thread_id": "approve"}}
    payload = _stop_for_approval(buyer, graph, config)
    state = graph.invoke(Command(resume={"approve": True, "note": "fine"}), config)
    assert state["status"] == "done" and len(state["outputs"]) == len(INPUTS)
    price = state["unit_price_atomic"]
    assert state["captured_atomic"] == price * len(INPUTS)
    wallet = buyer.wallet("USD")
    assert wallet.pending_debits_atomic == 0
    assert wallet.posted_credits_atomic - wallet.posted_debits_atomic == \
        currency("USD").atomic("1.00") - price * len(INPUTS)
    approvals = buyer.wallets.ListApprovals(wallet_pb2.ListApprovalsRequest(
        account_id=wallet.account_id), timeout=10).approvals
    assert [(a.approval_id, a.status) for a in approvals] == [(payload["approval_id"], "used")]


def test_a_denied_payment_aborts_and_leaves_no_hold(market):
    node, _seller, buyer, graph, _operator = market
    config = {"configurable": {"thread_id": "deny"}}
    payload = _stop_for_approval(buyer, graph, config)
    state = graph.invoke(Command(resume={"approve": False}), config)
    assert (state["escrow_state"], state["status"]) == ("denied", "aborted")
    assert not state.get("outputs")
    wallet = buyer.wallet("USD")
    assert wallet.pending_debits_atomic == 0
    assert wallet.posted_credits_atomic - wallet.posted_debits_atomic == \
        currency("USD").atomic("1.00")
    assert node.settlement.agreements() == []  # no escrow was ever opened
    approvals = buyer.wallets.ListApprovals(wallet_pb2.ListApprovalsRequest(
        account_id=wallet.account_id), timeout=10).approvals
    assert [(a.approval_id, a.status) for a in approvals] == [(payload["approval_id"], "denied")]


def test_the_buyer_cannot_approve_its_own_payment(market):
    _node, _seller, buyer, graph, _operator = market
    config = {"configurable": {"thread_id": "self-approve"}}
    payload = _stop_for_approval(buyer, graph, config)
    request = wallet_pb2.DecideApprovalRequest(idempotency_key="self", note="mine",
                                               approval_id=payload["approval_id"],
                                               decided_by="the buyer")
    with pytest.raises(grpc.RpcError) as caught:
        buyer.wallets.Approve(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operator-decides" in caught.value.details()
    approvals = buyer.wallets.ListApprovals(wallet_pb2.ListApprovalsRequest(
        account_id=buyer.wallet("USD").account_id), timeout=10).approvals
    assert [a.status for a in approvals] == ["pending"]


def test_without_an_approver_an_operator_decides_elsewhere_and_resuming_acts_on_it(
        market, tmp_path):
    node, _seller, buyer, _graph, operator = market
    graph = buyer_graph(buyer, checkpoint_path=tmp_path / "elsewhere.sqlite")
    config = {"configurable": {"thread_id": "elsewhere"}}
    payload = _stop_for_approval(buyer, graph, config)
    state = graph.invoke(Command(resume={"approve": True}), config)  # nobody approved yet
    assert state["__interrupt__"][0].value["approval_id"] == payload["approval_id"]
    channel = signed_channel(node.address, operator)  # the operator's own tool approves
    try:
        wallet_pb2_grpc.WalletServiceStub(channel).Approve(wallet_pb2.DecideApprovalRequest(
            idempotency_key="ops-1", approval_id=payload["approval_id"], decided_by="ops"),
            timeout=10)
    finally:
        channel.close()
    state = graph.invoke(Command(resume={"approve": True}), config)
    assert state["status"] == "done" and len(state["outputs"]) == len(INPUTS)
