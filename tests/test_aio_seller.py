"""The seller on grpc.aio (`SellerAgent(server="aio")`): paid calls answered once their record
is durable, refusals with their statuses, streams and sync skills through the bounded pool,
and the journal's per-batch wake-up of an event loop. (The crash, lost-answer, restart, A2A and
introspection suites also pass on it: AGENTMARKET_SELLER_SERVER=aio.)"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pydantic import BaseModel

import agents.buyer
from agents import BuyerAgent, SellerAgent, model_price, per_call, skill
from agents.errors import DeadlineExceeded, InvalidArgument, PaymentRequired
from agents.llm import acomplete, text_of
from agents.usage_journal import JournalError, UsageJournal
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace import MarketplaceNode
from tests.journal_disk import log_stalls
from wallets.grpc_errors import error_reason, status_for


class Reply(BaseModel):
    text: str
    length: int


@skill(price=per_call("0.001", "USD"))
def echo(text: str) -> Reply:
    """Echo a text with its length."""
    return Reply(text=text, length=len(text))


@skill(price=per_call("0.001", "USD"))
def words(text: str) -> Iterator[str]:
    """Stream a text word by word."""
    for word in text.split():
        yield word + " "


@skill(price=per_call("0.001", "USD"))
async def where(text: str) -> Reply:
    """Name the thread the skill runs on (an async skill: the seller's event loop)."""
    await asyncio.sleep(0)
    name = threading.current_thread().name
    return Reply(text=name, length=len(text))


@skill(price=model_price("gpt-4o-mini", "USD"), max_input_tokens=200, max_output_tokens=50)
async def summary(text: str) -> Reply:
    """Summarise with litellm (offline): priced per token, its usage reported by litellm."""
    reply = await acomplete("gpt-4o-mini", [{"role": "user", "content": text}],
                            mock_response=f"short: {text[:20]}")
    return Reply(text=text_of(reply), length=len(text))


GATE = threading.Event()


@skill(price=per_call("0.001", "USD"))
def slow(text: str) -> Reply:
    """Echo once the test lets it (a call the buyer hangs up on midway)."""
    GATE.wait(10)
    return Reply(text=text, length=len(text))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[MarketplaceNode]:
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}").start()
    yield node
    node.stop(0)


def _hire(node: MarketplaceNode, seller: SellerAgent, name: str):  # type: ignore[no-untyped-def]
    buyer = BuyerAgent("buyer", marketplace=node.address)
    buyer.fund("1.00", "USD")
    listing = next(found for found in buyer.discover(name, currency="USD")
                   if found.endpoint == seller.endpoint)
    deal = buyer.negotiate(listing, name, quantity=20, budget="0.10", currency="USD")
    buyer.hire(deal)
    return buyer, deal


def test_paid_calls_are_durable_when_answered_and_settle(node: MarketplaceNode):
    with SellerAgent("echo", skills=[echo, words], marketplace=node.address,
                     server="aio") as seller:
        buyer, deal = _hire(node, seller, "echo")
        try:
            for n in range(5):
                assert buyer.call(deal, {"text": f"call {n}"}) == {"text": f"call {n}",
                                                                   "length": 6}
                recorded = {a.agreement_id: a for a in seller.journal.load()}
                assert len(recorded[deal.agreement_id].calls) == n + 1  # durable on answer
            with pytest.raises(InvalidArgument, match="schema"):
                buyer.call(deal, {"txt": "no such field"})
            escrow = buyer.finish(deal)
            assert escrow.captured_atomic == 5 * deal.body.terms.unit_price_atomic
            assert not deal.problems
        finally:
            buyer.close()


def test_an_unpaid_invoke_is_refused_with_its_status(node: MarketplaceNode):
    with SellerAgent("echo", skills=[echo], marketplace=node.address, server="aio") as seller, \
            grpc.insecure_channel(seller.endpoint) as channel:
        buyer, deal = _hire(node, seller, "echo")
        buyer.close()
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Invoke(agent_pb2.InvokeRequest(agreement_id=deal.agreement_id,
                                                input_json='{"text": "free?"}'), timeout=10)
        assert refused.value.code() == status_for(PaymentRequired("")), refused.value
        assert error_reason(refused.value) == PaymentRequired.reason
        with pytest.raises(grpc.RpcError) as malformed:
            channel.unary_unary("/agents.v1.AgentService/Invoke")(b"\xff\xff", timeout=10)
        assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(malformed.value) == "MALFORMED_REQUEST"


def test_async_skills_run_on_the_loop_and_sync_ones_in_the_pool(node: MarketplaceNode):
    with SellerAgent("mixed", skills=[where, echo], marketplace=node.address,
                     server="aio") as seller:
        buyer, deal = _hire(node, seller, "where")
        echo_buyer, echo_deal = _hire(node, seller, "echo")
        try:
            assert buyer.call(deal, {"text": "abc"}) == {"text": "seller-aio-server",
                                                         "length": 3}
            assert echo_buyer.call(echo_deal, {"text": "abc"})["length"] == 3
            recorded = {a.agreement_id: len(a.calls) for a in seller.journal.load()}
            assert recorded[deal.agreement_id] == recorded[echo_deal.agreement_id] == 1
        finally:
            buyer.close()
            echo_buyer.close()


def _billing_threads(seller: SellerAgent, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads the seller's paid calls are billed on."""
    threads: list[str] = []
    bill = seller.calls.bill_output

    def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return bill(*args, **kwargs)

    monkeypatch.setattr(seller.calls, "bill_output", recorded)
    return threads


def test_an_async_skill_priced_per_call_is_billed_on_the_loop(node: MarketplaceNode,
                                                               monkeypatch: pytest.MonkeyPatch):
    with SellerAgent("loop", skills=[where], marketplace=node.address, server="aio") as seller:
        threads = _billing_threads(seller, monkeypatch)
        buyer, deal = _hire(node, seller, "where")
        try:
            loop_thread = buyer.call(deal, {"text": "abc"})["text"]
            assert threads == [loop_thread]
            assert buyer.finish(deal).captured_atomic == deal.body.terms.unit_price_atomic
        finally:
            buyer.close()


def test_an_async_skill_priced_per_token_is_billed_in_the_pool_with_its_usage(
        node: MarketplaceNode, monkeypatch: pytest.MonkeyPatch):
    """Its bill may wait for litellm's usage report, so it is not made on the loop."""
    with SellerAgent("tokens", skills=[summary], marketplace=node.address,
                     server="aio") as seller:
        threads = _billing_threads(seller, monkeypatch)
        buyer, deal = _hire(node, seller, "summary")
        try:
            result = buyer.invoke(deal, {"text": "a long text to summarise"})
            assert result.output["text"].startswith("short:")
            assert len(threads) == 1 and threads[0] != "seller-aio-server"
            assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
        finally:
            buyer.close()


def test_a_call_hung_up_on_midway_is_booked_once_and_its_retry_answered(
        node: MarketplaceNode, monkeypatch: pytest.MonkeyPatch):
    """The buyer's deadline passes while the skill runs in the pool: the call still completes
    and is recorded, and the retry of its call id gets that answer, charged once."""
    GATE.clear()
    with SellerAgent("slow", skills=[slow], marketplace=node.address, server="aio") as seller:
        buyer, deal = _hire(node, seller, "slow")
        try:
            monkeypatch.setattr(agents.buyer, "RPC_TIMEOUT_S", 0.3)
            with pytest.raises(DeadlineExceeded):
                buyer.call(deal, {"text": "first"}, call_id="call-1")
            monkeypatch.undo()
            GATE.set()
            deadline = time.monotonic() + 10
            while not any(a.calls for a in seller.journal.load()):
                assert time.monotonic() < deadline, "the hung-up call was never recorded"
                time.sleep(0.02)
            assert buyer.call(deal, {"text": "first"}, call_id="call-1") == {
                "text": "first", "length": 5}
            assert buyer.call(deal, {"text": "second"})["length"] == 6
            escrow = buyer.finish(deal)
            assert escrow.captured_atomic == 2 * deal.body.terms.unit_price_atomic
        finally:
            GATE.set()
            buyer.close()


def test_streams_run_through_the_pool(node: MarketplaceNode):
    with SellerAgent("words", skills=[words], marketplace=node.address,
                     server="aio") as seller:
        buyer, deal = _hire(node, seller, "words")
        try:
            streamed = buyer.stream(deal, {"text": "one two three"})
            assert "".join(streamed) == "one two three "
            assert streamed.end is not None
        finally:
            buyer.close()


def test_a_server_kind_is_checked():
    with pytest.raises(InvalidArgument, match="aio"):
        SellerAgent("echo", skills=[echo], marketplace="127.0.0.1:1", server="fibers")


def test_records_awaited_on_a_loop_commit_or_fail_per_row(tmp_path: Path):
    with UsageJournal(f"sqlite:///{tmp_path / 'journal.db'}") as journal:
        journal.open_agreement("agr", "seller", b"body")

        async def record() -> None:
            pendings = [journal.record_call("agr", f"call-{n}", n, n + 1, b"v", b"r", b"a")
                        for n in range(50)]
            await asyncio.gather(*(p.wait_async() for p in pendings))
            orphan = journal.record_call("no-such-agreement", "c", 0, 1, b"v", b"r", b"a")
            with pytest.raises(JournalError):
                await orphan.wait_async()

        asyncio.run(record())
        assert [c.call_id for c in journal.load()[0].calls] == [f"call-{n}" for n in range(50)]


def test_a_cancelled_wait_on_a_loop_leaves_the_others_of_its_batch_waiting(tmp_path: Path):
    """Callers of one batch on one loop each await a future of their own: one cancelled (its
    buyer hung up) must not end, or fail, the others' wait for the same commit."""
    path = tmp_path / "journal.db"
    with UsageJournal(f"sqlite:///{path}") as journal:
        journal.open_agreement("agr", "seller", b"body")
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the writer's commit waits for this lock

        async def record(log_released: threading.Event) -> None:
            pendings = [journal.record_call("agr", f"call-{n}", n, n + 1, b"v", b"r", b"a")
                        for n in range(3)]
            waits = [asyncio.ensure_future(p.wait_async()) for p in pendings]
            await asyncio.sleep(0.1)
            assert not any(wait.done() for wait in waits)
            waits[0].cancel()
            await asyncio.sleep(0.1)
            assert waits[0].cancelled() and not waits[1].done() and not waits[2].done()
            blocker.execute("COMMIT")
            log_released.set()
            await asyncio.gather(*waits[1:])  # committed: no error

        try:
            with log_stalls() as log_released:  # the call log's append waits too
                asyncio.run(record(log_released))
        finally:
            blocker.close()
        assert [c.call_id for c in journal.load()[0].calls] == ["call-0", "call-1", "call-2"]
