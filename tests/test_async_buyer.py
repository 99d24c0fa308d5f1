"""The async buyer on grpc.aio: BuyerAgent's surface as coroutines, the same money and errors.

Issue 15 finding 10: BuyerAgent was sync only, while LangGraph graphs, A2A servers and most
agent code are async. The LangGraph example (examples/async_langgraph_buyer.py) runs in
tests/test_examples.py.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from agents import (
    AgreementEnded,
    AgreementState,
    AsyncBuyerAgent,
    AsyncStreamedCall,
    BuyerAgent,
    Escrow,
    FailedPrecondition,
    InvalidAmount,
    Money,
    SellerAgent,
    StreamedCall,
    Unavailable,
    per_1k_tokens,
    per_call,
    skill,
)
from marketplace.node import MarketplaceNode
from tests.processes.node import free_port
from wallets.audit import check_balances, verify_chain


class Shout(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def shout(text: str) -> Shout:
    """Upper-case a text."""
    return Shout(text=text.upper())


@skill(price=per_1k_tokens("0.0002", "0.0008", "USD"), max_input_tokens=500,
       max_output_tokens=200, model="gpt-4o-mini")
def tell(topic: str) -> Iterator[str]:
    """A streamed story."""
    for word in f"once upon a time {topic} paid per call".split():
        yield word + " "


class Slow(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def slow_shout(text: str) -> Slow:
    """Upper-case a text, slowly."""
    time.sleep(0.6)
    return Slow(text=text.upper())


@skill(price=per_1k_tokens("0.0002", "0.0008", "USD"), max_input_tokens=500,
       max_output_tokens=200, model="gpt-4o-mini")
def slow_tell(topic: str) -> Iterator[str]:
    """A story told slowly."""
    for word in f"once upon a time {topic} paid per call and then some".split():
        time.sleep(0.05)
        yield word + " "


@pytest.fixture
def node(tmp_path: Path) -> Iterator[MarketplaceNode]:
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as started, \
            SellerAgent("shouter", skills=[shout, tell, slow_shout, slow_tell],
                        marketplace=started.address):
        yield started


def test_the_async_buyer_has_the_sync_buyers_public_surface():
    def public(cls: type) -> set[str]:
        return {n for n, _ in inspect.getmembers(cls, callable) if not n.startswith("_")}

    assert public(AsyncBuyerAgent) == public(BuyerAgent)
    for name in public(BuyerAgent) - {"restore_deal", "check_receipt_signatures"}:
        assert inspect.iscoroutinefunction(getattr(AsyncBuyerAgent, name)), name


def test_the_stream_classes_have_one_surface():
    """A streamed call reads the same in both buyers (class attributes: `text`, `usage`,
    `charged_atomic`; `close`, on the event loop `aclose`)."""
    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_")}

    assert public(StreamedCall) == {"charged_atomic", "close", "start", "text", "usage"}
    assert public(AsyncStreamedCall) == public(StreamedCall) - {"close", "start"} | {"aclose"}
    assert inspect.iscoroutinefunction(AsyncStreamedCall.aclose)


def test_a_whole_task_with_concurrent_deals_and_a_stream(node: MarketplaceNode):
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))

    async def task() -> tuple[list[Escrow], str, Money, Money]:
        async with AsyncBuyerAgent("async", marketplace=node.address,
                                   tracer_provider=provider) as buyer:
            await buyer.fund("1.00", "USD")
            listings = await buyer.discover("shout", currency="USD")
            deals = await asyncio.gather(*(buyer.negotiate(
                listings, "shout", quantity=3, budget="0.01", currency="USD") for _ in range(3)))
            await asyncio.gather(*(buyer.hire(deal) for deal in deals))
            held = (await buyer.wallet("USD")).held
            outputs = await asyncio.gather(*(buyer.call(deal, {"text": f"deal {i}"})
                                             for i, deal in enumerate(deals)))
            assert outputs == [{"text": f"DEAL {i}"} for i in range(3)]
            typed = await buyer.call(deals[0], {"text": "typed"}, output_type=Shout)
            assert typed == Shout(text="TYPED")
            result = await buyer.invoke(deals[1], {"text": "receipt"})
            assert result.verified and result.usage.charged == Money(
                deals[1].body.terms.unit_price_atomic, "USD")
            story = await buyer.negotiate(await buyer.discover("tell", currency="USD"), "tell",
                                          quantity=1, budget="0.01", currency="USD")
            await buyer.hire(story)
            streamed = await buyer.stream(story, {"topic": "agents"})
            text = "".join([piece async for piece in streamed])
            assert streamed.usage is not None and streamed.usage.charged_atomic > 0
            escrows = await asyncio.gather(*(buyer.finish(d) for d in [*deals, story]))
            with pytest.raises(AgreementEnded, match="settled"):
                await buyer.call(deals[0], {"text": "after"})
            return escrows, text, held, await buyer.balance("USD")

    escrows, text, held, balance = asyncio.run(task())
    assert text == "once upon a time agents paid per call "
    assert all(e.state == AgreementState.SETTLED for e in escrows)
    spent = sum((e.captured for e in escrows), Money(0, "USD"))
    assert balance == Money.of("1.00", "USD") - spent
    assert held == sum((e.held for e in escrows[:3]), Money(0, "USD"))
    names = {s.name for s in spans.get_finished_spans()}
    assert {"paid_call", "negotiate", "agents.v1.AgentService/Invoke"} <= names
    assert check_balances(node.ledger).ok and verify_chain(node.ledger).ok


def test_async_calls_unary_or_streamed_are_signed_and_continue_the_trace(tmp_path: Path):
    """A signed call (Negotiate: traced and signed by one interceptor), an unsigned paid call
    (Invoke) and streamed calls (InvokeStream: grpc.aio runs a client interceptor on them only
    if it is filed as a stream interceptor) each continue the buyer's CLIENT span at the
    seller; a second stream that spends what the first left prepaid must be signed (an
    unsigned call must reveal a new payword)."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))

    async def task(address: str) -> tuple[str, str]:
        async with AsyncBuyerAgent("traced", marketplace=address,
                                   tracer_provider=provider) as buyer:
            await buyer.fund("1.00", "USD")
            deal = await buyer.negotiate(await buyer.discover("shout", currency="USD"), "shout",
                                         quantity=1, budget="0.01", currency="USD")
            story = await buyer.negotiate(await buyer.discover("tell", currency="USD"), "tell",
                                          quantity=3, budget="0.10", currency="USD")
            await buyer.hire(deal)
            await buyer.hire(story)
            assert await buyer.call(deal, {"text": "hi"}) == {"text": "HI"}
            first = await buyer.stream(story, {"topic": "agents"})
            first_text = "".join([piece async for piece in first])
            second = await buyer.stream(story, {"topic": "x"}, max_atomic=1)
            second_text = "".join([piece async for piece in second])
            await asyncio.gather(buyer.finish(deal), buyer.finish(story))
            return first_text, second_text

    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("traced", skills=[shout, tell], marketplace=node.address,
                        tracer_provider=provider):
        texts = asyncio.run(task(node.address))
    assert texts == ("once upon a time agents paid per call ", "once upon a time x paid per call ")
    finished = spans.get_finished_spans()
    for method, calls in (("Negotiate", None), ("Invoke", 1), ("InvokeStream", 2)):
        name = f"agents.v1.AgentService/{method}"
        clients = {s.context.span_id for s in finished
                   if s.name == name and s.kind == SpanKind.CLIENT}
        servers = [s for s in finished if s.name == name and s.kind == SpanKind.SERVER]
        assert clients and servers and calls in (None, len(servers)), method
        assert all(s.parent is not None and s.parent.span_id in clients for s in servers), method


def test_a_call_cut_off_by_the_callers_timeout_is_retried_once_charged(
        node: MarketplaceNode):
    """asyncio.wait_for cancels the call: it is booked as maybe answered (as a deadline is),
    so a retry with its call id re-sends its voucher and gets the first answer, charged once."""

    async def task() -> tuple[Any, Escrow, int, int]:
        async with AsyncBuyerAgent("impatient", marketplace=node.address) as buyer:
            await buyer.fund("1.00", "USD")
            deal = await buyer.negotiate(await buyer.discover("slow_shout", currency="USD"),
                                         "slow_shout", quantity=3, budget="0.10",
                                         currency="USD")
            await buyer.hire(deal)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(buyer.call(deal, {"text": "a"}, call_id="c1"), 0.2)
            assert "c1" in deal.unanswered
            await asyncio.sleep(0.6)  # the seller's first run ends
            again = await buyer.call(deal, {"text": "a"}, call_id="c1")
            reserved = buyer.sessions[deal.agreement_id].reserved_atomic
            return again, await buyer.finish(deal), reserved, deal.body.terms.unit_price_atomic

    again, escrow, reserved, price = asyncio.run(task())
    assert again == {"text": "A"} and reserved == 0
    assert escrow.captured == Money(price, "USD")  # one call, charged once


def test_closing_the_async_buyer_under_its_calls_raises_unavailable_and_books_them(
        node: MarketplaceNode):
    """close() cancels the calls in flight: each ends as the project's Unavailable (not
    asyncio's CancelledError, which would cancel its caller's siblings), the paid call booked
    as maybe answered and the stream's budget given back, as the sync buyer does."""

    async def task() -> None:
        buyer = AsyncBuyerAgent("closing", marketplace=node.address)
        await buyer.fund("1.00", "USD")
        deal = await buyer.negotiate(await buyer.discover("slow_shout", currency="USD"),
                                     "slow_shout", quantity=3, budget="0.10", currency="USD")
        story = await buyer.negotiate(await buyer.discover("slow_tell", currency="USD"),
                                      "slow_tell", quantity=3, budget="0.10", currency="USD")
        await buyer.hire(deal)
        await buyer.hire(story)
        stream = await buyer.stream(story, {"topic": "agents"})
        pieces = aiter(stream)
        await anext(pieces)
        call = asyncio.create_task(buyer.call(deal, {"text": "a"}, call_id="c1"))
        await asyncio.sleep(0.2)
        await buyer.close()
        with pytest.raises(Unavailable, match="closed while the call ran"):
            await call
        with pytest.raises(Unavailable, match="closed while the call ran"):
            async for _piece in pieces:
                pass
        assert "c1" in deal.unanswered
        assert buyer.sessions[story.agreement_id].reserved_atomic == 0

    asyncio.run(task())


CONCURRENT = 20


def test_concurrent_calls_on_one_deal_are_all_answered_and_charged_once(node: MarketplaceNode):
    """Calls on one deal run at once: the seller takes vouchers in order, so one that a later
    call's overtook is refused, and the buyer pays that call again with a new voucher (sync
    threads and async tasks alike), never twice, within the agreement's maximum."""

    def sync_calls() -> tuple[list[Any], int, int, Escrow, int]:
        with BuyerAgent("threads", marketplace=node.address) as buyer:
            buyer.fund("1.00", "USD")
            deal = buyer.negotiate(buyer.discover("shout", currency="USD"), "shout",
                                   quantity=CONCURRENT, budget="0.10", currency="USD")
            buyer.hire(deal)
            with ThreadPoolExecutor(CONCURRENT) as pool:
                outputs = list(pool.map(lambda i: buyer.call(deal, {"text": f"t{i}"}),
                                        range(CONCURRENT)))
            session = buyer.sessions[deal.agreement_id]
            return (outputs, session.charged_atomic, session.reserved_atomic,
                    buyer.finish(deal), deal.body.terms.unit_price_atomic)

    async def async_calls() -> tuple[list[Any], int, int, Escrow, int]:
        async with AsyncBuyerAgent("tasks", marketplace=node.address) as buyer:
            await buyer.fund("1.00", "USD")
            deal = await buyer.negotiate(await buyer.discover("shout", currency="USD"),
                                         "shout", quantity=CONCURRENT, budget="0.10",
                                         currency="USD")
            await buyer.hire(deal)
            outputs = await asyncio.gather(*(buyer.call(deal, {"text": f"t{i}"})
                                             for i in range(CONCURRENT)))
            session = buyer.sessions[deal.agreement_id]
            return (list(outputs), session.charged_atomic, session.reserved_atomic,
                    await buyer.finish(deal), deal.body.terms.unit_price_atomic)

    for outputs, charged, reserved, escrow, price in (sync_calls(), asyncio.run(async_calls())):
        assert outputs == [{"text": f"T{i}"} for i in range(CONCURRENT)]
        assert charged == CONCURRENT * price and reserved == 0
        assert escrow.captured == Money(CONCURRENT * price, "USD")
    assert check_balances(node.ledger).ok and verify_chain(node.ledger).ok


def test_concurrent_a2a_sends_on_one_deal_are_all_answered_and_charged_once(
        node: MarketplaceNode):
    """The same over A2A: SendMessage with the voucher in the message metadata."""

    def sync_sends() -> tuple[list[Any], int, int]:
        with BuyerAgent("a2a-threads", marketplace=node.address) as buyer:
            buyer.fund("1.00", "USD")
            deal = buyer.negotiate(buyer.discover("shout", currency="USD"), "shout",
                                   quantity=10, budget="0.10", currency="USD")
            buyer.hire(deal)
            with ThreadPoolExecutor(10) as pool:
                results = list(pool.map(lambda i: buyer.send(deal, {"text": f"a{i}"}),
                                        range(10)))
            return ([r.output for r in results], buyer.sessions[deal.agreement_id].charged_atomic,
                    deal.body.terms.unit_price_atomic)

    async def async_sends() -> tuple[list[Any], int, int]:
        async with AsyncBuyerAgent("a2a-tasks", marketplace=node.address) as buyer:
            await buyer.fund("1.00", "USD")
            deal = await buyer.negotiate(await buyer.discover("shout", currency="USD"),
                                         "shout", quantity=10, budget="0.10", currency="USD")
            await buyer.hire(deal)
            results = await asyncio.gather(*(buyer.send(deal, {"text": f"a{i}"})
                                             for i in range(10)))
            return ([r.output for r in results], buyer.sessions[deal.agreement_id].charged_atomic,
                    deal.body.terms.unit_price_atomic)

    for outputs, charged, price in (sync_sends(), asyncio.run(async_sends())):
        assert outputs == [{"text": f"A{i}"} for i in range(10)] and charged == 10 * price


def test_an_async_buyer_used_from_a_second_event_loop_says_so(node: MarketplaceNode):
    """Its grpc.aio channels serve the loop they were made in: a second asyncio.run gets the
    project's FailedPrecondition, not asyncio's RuntimeError from deep inside grpc."""
    buyer = AsyncBuyerAgent("one-loop", marketplace=node.address)
    asyncio.run(buyer.fund("1.00", "USD"))
    with pytest.raises(FailedPrecondition, match="one per event loop"):
        asyncio.run(buyer.balance("USD"))


def test_async_errors_are_the_projects_own():
    port = free_port()  # nothing listens there, and no bind to port 0 is handed it meanwhile

    async def attempts() -> None:
        async with AsyncBuyerAgent("async", marketplace=f"127.0.0.1:{port}") as buyer:
            with pytest.raises(InvalidAmount, match="'1,00'"):
                await buyer.fund("1,00", "USD")
            with pytest.raises(Unavailable):
                await buyer.balance("USD")

    asyncio.run(attempts())


def test_the_async_buyer_skips_an_impostor_listing_and_books_a_malformed_a2a_answer(
        node: MarketplaceNode, monkeypatch):
    """The async twin of tests/test_malicious_seller.py's listing and A2A checks."""
    from agents import _a2a_door as door
    from agents.errors import ServerError
    from marketplace import a2a_extension as ext
    from marketplace.identity import AgentKey
    from marketplace.v1 import registry_pb2

    real = door.paid_task_of

    def lying(*args):  # type: ignore[no-untyped-def]
        task = real(*args)
        task.metadata.update({ext.USAGE_KEY: {"chargedAtomic": "abc"}})
        return task

    async def task() -> None:
        async with AsyncBuyerAgent("async", marketplace=node.address) as buyer:
            await buyer.fund("1.00", "USD")
            honest = (await buyer.discover("shout", currency="USD"))[0]
            fake = registry_pb2.Listing()
            fake.CopyFrom(honest)
            fake.agent_id = AgentKey.generate().agent_id
            deal = await buyer.negotiate([fake, honest], "shout", quantity=2, budget="0.01",
                                         currency="USD", failover=False)
            assert deal.body.seller_id == honest.agent_id
            await buyer.hire(deal)
            monkeypatch.setattr(door, "paid_task_of", lying)
            with pytest.raises(ServerError, match="malformed payment metadata"):
                await buyer.send(deal, {"text": "hi"})
            session = buyer.sessions[deal.agreement_id]
            assert session.reserved_atomic == 0
            assert session.charged_atomic == deal.call_max_atomic and deal.problems

    asyncio.run(task())
