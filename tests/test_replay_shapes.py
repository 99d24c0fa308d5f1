"""An answered paid call retried in the other shape (a unary call resent as a stream, a
stream resent as a unary call, over agents.v1 and over A2A) gets its first answer, in the
shape asked for, charged once: never a failed task or an INTERNAL for a call that was paid."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from a2a.types import a2a_pb2, a2a_pb2_grpc

from agents import BuyerAgent, SellerAgent, _a2a_buyer, per_call, skill
from agents.payments import paid_call_metadata
from agents.v1 import agent_pb2_grpc
from marketplace import a2a_extension as ext
from marketplace.node import MarketplaceNode

EXTENSION = [(ext.EXTENSIONS_HEADER, ext.URI)]


@skill(price=per_call("0.003", "USD"))
def write(topic: str) -> Iterator[str]:
    """Write about a topic, streamed."""
    for word in ("agents", " pay", " each", " other"):
        time.sleep(0.01)
        yield f"{word}"


@pytest.fixture
def market(tmp_path):
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("writer", skills=[write], marketplace=node.address, card_port=0).serve()
    buyer = BuyerAgent("reader", marketplace=node.address)
    buyer.fund("1.00", "USD")
    channel = grpc.insecure_channel(seller.endpoint)
    try:
        deal = buyer.negotiate_card(seller.card_url, "write", quantity=6, budget="0.05",
                                    currency="USD")
        buyer.hire(deal)
        yield seller, buyer, deal, channel
    finally:
        channel.close()
        buyer.close()
        seller.stop(0)
        node.stop(0)


def _charged(seller: SellerAgent, agreement_id: str) -> int:
    return seller.gate._account(agreement_id).charged_atomic


def test_agents_v1_retries_in_the_other_shape_get_the_first_answer(market):
    seller, buyer, deal, channel = market
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    unary = buyer._plan(deal, {"topic": "x"}, "unary-first", None)
    metadata = paid_call_metadata(unary.voucher)
    first = stub.Invoke(unary.request, metadata=metadata, timeout=10)
    chunks = list(stub.InvokeStream(unary.request, metadata=metadata, timeout=10))
    assert len(chunks) == 1
    assert (chunks[0].end.output_json, chunks[0].end.receipt) == (first.output_json,
                                                                  first.receipt)
    _, request, voucher, _ = buyer._stream_plan(buyer._deal(deal), {"topic": "y"},
                                                "stream-first", None)
    metadata = paid_call_metadata(voucher)
    streamed = list(stub.InvokeStream(request, metadata=metadata, timeout=10))
    again = stub.Invoke(request, metadata=metadata, timeout=10)
    assert (again.output_json, again.receipt) == (streamed[-1].end.output_json,
                                                  streamed[-1].end.receipt)
    assert _charged(seller, deal.agreement_id) == \
        first.usage.charged_atomic + streamed[-1].end.usage.charged_atomic


def test_an_a2a_message_answered_whole_and_resent_as_a_stream_stays_completed(market):
    seller, buyer, deal, channel = market
    stub = a2a_pb2_grpc.A2AServiceStub(channel)
    _, request, voucher, _ = buyer._stream_plan(buyer._deal(deal), {"topic": "x"}, "m1", None)
    message = _a2a_buyer.stream_request(request, voucher, "write")
    task = stub.SendMessage(message, metadata=EXTENSION, timeout=10).task
    assert task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    charged = _charged(seller, deal.agreement_id)
    events = list(stub.SendStreamingMessage(message, metadata=EXTENSION, timeout=10))
    states = [e.task.status.state if e.HasField("task") else e.status_update.status.state
              for e in events if e.HasField("task") or e.HasField("status_update")]
    assert states and set(states) == {a2a_pb2.TASK_STATE_COMPLETED}, events
    again = stub.GetTask(a2a_pb2.GetTaskRequest(id=task.id), timeout=5)
    assert again.status.state == a2a_pb2.TASK_STATE_COMPLETED
    assert again.artifacts == task.artifacts
    assert _charged(seller, deal.agreement_id) == charged
