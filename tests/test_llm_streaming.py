"""Streaming skills: billed as tokens flow, stopped when the voucher's prepaid budget is spent."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Iterator

import pytest

from agents import AsyncBuyerAgent, BuyerAgent, SellerAgent, per_1k_tokens, skill
from agents._streaming import sent_text
from agents.errors import DeadlineExceeded
from agents.llm import count_tokens, stream
from agents.v1 import agent_pb2
from marketplace.node import MarketplaceNode
from wallets.currencies import split

MODEL = "gpt-4o-mini"


@pytest.fixture
def market(tmp_path, monkeypatch):
    monkeypatch.delenv("AGENTMARKET_MODEL", raising=False)

    @skill(price=per_1k_tokens("0.001", "0.002", "USD"), max_input_tokens=200,
           max_output_tokens=400)
    def write(topic: str, words: int) -> Iterator[str]:
        """Write about a topic, streamed."""
        text = " ".join(f"{topic}{i}" for i in range(words))
        yield from stream(MODEL, [{"role": "user", "content": f"Write about {topic}"}],
                          mock_response=text)

    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("writer", skills=[write], marketplace=node.address).serve()
    buyer = BuyerAgent("reader", marketplace=node.address)
    buyer.fund("1.00", "USD")
    listing = buyer.discover("write", currency="USD")[0]
    deal = buyer.negotiate(listing, "write", quantity=2, budget="0.01", currency="USD")
    buyer.hire(deal)
    yield node, seller, buyer, deal
    seller.stop(0)
    buyer.close()
    node.stop(0)


def _charge(deal, input_tokens: int, output_tokens: int) -> int:
    terms = deal.body.terms
    return -(-(input_tokens * terms.unit_price_atomic
               + output_tokens * terms.output_unit_price_atomic) // 1000)


def test_a_stream_stops_at_the_prepaid_budget_with_a_receipt_for_what_was_delivered(market):
    node, _seller, buyer, deal = market
    budget = deal.call_max_atomic // 10
    call = buyer.stream(deal, {"topic": "agents", "words": 300}, max_atomic=budget)
    pieces = list(call)
    assert pieces and call.text == "".join(pieces)
    assert call.stop_reason == "budget"
    end = call.end
    assert end is not None and end.stop_reason == end.stop_reason.__class__(2)  # BUDGET
    usage = end.usage
    assert usage.charged_atomic <= usage.reserved_atomic
    prepaid = buyer.sessions[deal.agreement_id].paid_atomic
    assert usage.reserved_atomic == prepaid >= budget  # the voucher's budget (whole links)
    assert usage.output_tokens == count_tokens(MODEL, call.text)
    assert usage.charged_atomic == _charge(deal, usage.input_tokens, usage.output_tokens)
    # one more piece would have passed the budget
    assert _charge(deal, usage.input_tokens, usage.output_tokens + 1) > 0
    assert end.receipt.charged_atomic == usage.charged_atomic and not call.problem
    assert len(call.text.split()) < 300

    done = buyer.stream(deal, {"topic": "ok", "words": 20})
    assert len("".join(done).split()) == 20 and done.stop_reason == "complete"

    before = node.ledger.find_account(buyer.agent_id, "USD").posted_atomic
    escrow = buyer.finish(deal)
    total = call.charged_atomic + done.charged_atomic
    assert escrow.captured_atomic == total
    assert escrow.fee_atomic == split(total, node.settlement.fee_bps)[1]
    assert node.ledger.find_account(buyer.agent_id, "USD").posted_atomic == before - total
    assert node.ledger.find_account(buyer.agent_id, "USD").pending_debits_atomic == 0


def test_unary_invoke_of_a_streaming_skill_collects_and_bills_the_text(market):
    _node, _seller, buyer, deal = market
    result = buyer.invoke(deal, {"topic": "t", "words": 5})
    assert result.output["text"].split() == [f"t{i}" for i in range(5)]
    assert result.usage.output_tokens == count_tokens(MODEL, result.output["text"])
    assert result.usage.charged_atomic == _charge(deal, result.usage.input_tokens,
                                                  result.usage.output_tokens)
    assert result.verified, result.problem


def _cut_short(call, pieces: int) -> str:
    read = ""
    for i, piece in enumerate(call):
        read += piece
        if i + 1 == pieces:
            break
    return read


@pytest.mark.parametrize("door", ["stream", "send_stream"])
def test_a_stream_cut_short_hangs_up_and_books_what_was_sent(market, door):
    """A buyer that stops reading (`break`) hangs up: the seller stops writing and bills what
    it had sent, the buyer books that receipt (fetched under the same call id, charged once)
    and has its unspent budget back at once, not at finish."""
    _node, _seller, buyer, deal = market
    session = buyer.sessions[deal.agreement_id]
    call = getattr(buyer, door)(deal, {"topic": "agents", "words": 400})
    read = _cut_short(call, 3)
    assert call.stop_reason == "cancelled" and not call.problem and not deal.problems
    assert session.reserved_atomic == 0 and session.charged_atomic == call.charged_atomic > 0
    sent = json.loads(call.end.output_json)["text"]
    assert sent.startswith(read) and len(sent.split()) < 400  # the seller stopped early
    assert call.end.usage.output_tokens == count_tokens(MODEL, sent)

    done = getattr(buyer, door)(deal, {"topic": "ok", "words": 20})
    assert len("".join(done).split()) == 20 and not done.problem
    escrow = buyer.finish(deal)
    assert escrow.captured_atomic == call.charged_atomic + done.charged_atomic
    assert escrow.captured_atomic == session.charged_atomic


def test_an_async_stream_cut_short_hangs_up_too(market):
    node, _seller, _buyer, _deal = market

    async def task() -> tuple[int, int, int, str, str]:
        async with AsyncBuyerAgent("async-reader", marketplace=node.address) as buyer:
            await buyer.fund("1.00", "USD")
            listing = (await buyer.discover("write", currency="USD"))[0]
            deal = await buyer.negotiate(listing, "write", quantity=3, budget="0.01",
                                         currency="USD")
            await buyer.hire(deal)
            session = buyer.sessions[deal.agreement_id]
            closed = await buyer.stream(deal, {"topic": "agents", "words": 400})
            async for _piece in closed:
                break
            await closed.aclose()  # at once
            assert session.reserved_atomic == 0 and closed.stop_reason == "cancelled"
            dropped = await buyer.stream(deal, {"topic": "agents", "words": 400})
            async for _piece in dropped:
                break
            for _ in range(500):  # the loop finalises the abandoned iterator
                if dropped.end is not None:
                    break
                await asyncio.sleep(0.01)
            escrow = await buyer.finish(deal)
            return (escrow.captured_atomic, session.charged_atomic,
                    closed.charged_atomic + dropped.charged_atomic, closed.problem,
                    dropped.problem)

    captured, charged, receipts, *problems = asyncio.run(task())
    assert captured == charged == receipts > 0 and problems == ["", ""]


def test_a_stream_whose_voucher_was_overtaken_is_paid_again_with_a_new_one(market,
                                                                            monkeypatch):
    """Calls on one deal run at once: when a later call's voucher reaches the seller before a
    stream's, the seller refuses the stream's (words are taken in order); the buyer sends the
    stream again with a new voucher, as it does a unary call, charged once."""
    _node, _seller, buyer, deal = market
    budget = deal.call_max_atomic // 4
    stub = buyer._seller(deal.body.seller_endpoint)
    sent = stub.InvokeStream
    overtaking: list = []

    class Overtaken:
        """The stream's request leaves only after another call of the deal was answered."""

        def __getattr__(self, name):
            return getattr(stub, name)

        def InvokeStream(self, *args, **kwargs):
            if not overtaking:
                overtaking.append(None)  # once: this call's own request goes straight on
                overtaking[0] = buyer.stream(deal, {"topic": "first", "words": 5},
                                             max_atomic=budget)
                assert len("".join(overtaking[0]).split()) == 5
            return sent(*args, **kwargs)

    monkeypatch.setattr(buyer, "_seller", lambda _endpoint: Overtaken())
    session = buyer.sessions[deal.agreement_id]
    call = buyer.stream(deal, {"topic": "agents", "words": 20}, max_atomic=budget)
    assert len("".join(call).split()) == 20 and not call.problem
    assert call.sequence == session.sequence == overtaking[0].sequence + 1
    assert session.reserved_atomic == 0
    escrow = buyer.finish(deal)
    assert escrow.captured_atomic == call.charged_atomic + overtaking[0].charged_atomic


def test_an_async_stream_overtaken_is_paid_again_too(market):
    node, _seller, _buyer, _deal = market

    async def task() -> None:
        async with AsyncBuyerAgent("async-overtaken", marketplace=node.address) as buyer:
            await buyer.fund("1.00", "USD")
            listing = (await buyer.discover("write", currency="USD"))[0]
            deal = await buyer.negotiate(listing, "write", quantity=2, budget="0.01",
                                         currency="USD")
            await buyer.hire(deal)
            budget = deal.call_max_atomic // 4
            stub = buyer._seller(deal.body.seller_endpoint)
            overtaking: list = []

            class Late:
                """The stream's request leaves once another call of the deal was answered."""

                def __init__(self, *args, **kwargs):
                    self._args, self._kwargs, self._call = args, kwargs, None

                async def __aiter__(self):
                    if not overtaking:
                        overtaking.append(None)
                        overtaking[0] = await buyer.stream(deal, {"topic": "first", "words": 5},
                                                           max_atomic=budget)
                        assert len("".join([p async for p in overtaking[0]]).split()) == 5
                    self._call = stub.InvokeStream(*self._args, **self._kwargs)
                    async for chunk in self._call:
                        yield chunk

                def cancel(self):
                    return self._call.cancel() if self._call else False

                async def trailing_metadata(self):
                    return await self._call.trailing_metadata()

            class Overtaken:
                def __getattr__(self, name):
                    return getattr(stub, name)

                def InvokeStream(self, *args, **kwargs):
                    return Late(*args, **kwargs) if not overtaking else \
                        stub.InvokeStream(*args, **kwargs)

            buyer._seller = lambda _endpoint: Overtaken()
            session = buyer.sessions[deal.agreement_id]
            call = await buyer.stream(deal, {"topic": "agents", "words": 20}, max_atomic=budget)
            assert len("".join([p async for p in call]).split()) == 20 and not call.problem
            assert call.sequence == session.sequence == overtaking[0].sequence + 1
            assert session.reserved_atomic == 0
            escrow = await buyer.finish(deal)
            assert escrow.captured_atomic == call.charged_atomic + overtaking[0].charged_atomic

    asyncio.run(task())


@pytest.fixture
def slow_market(tmp_path):
    """A seller whose skill writes a word every 0.2 s."""

    @skill(price=per_1k_tokens("0.001", "0.002", "USD"), max_input_tokens=200,
           max_output_tokens=400)
    def slow(topic: str, words: int) -> Iterator[str]:
        """Write slowly."""
        for i in range(words):
            time.sleep(0.2)
            yield f"{topic}{i} "

    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("slow-writer", skills=[slow], marketplace=node.address).serve()
    yield node
    seller.stop(0)
    node.stop(0)


def _slow_deal(buyer):
    return buyer.negotiate(buyer.discover("slow", currency="USD")[0], "slow", quantity=3,
                           budget="0.01", currency="USD")


def test_a_stream_cut_off_by_its_deadline_books_what_the_seller_sent(slow_market,
                                                                      monkeypatch):
    """A stream that runs past its deadline after some pieces came was billed by the seller
    for what it sent: the buyer books that (fetched as a hang-up's end), not nothing."""
    import agents._streaming as streaming

    monkeypatch.setattr(streaming, "STREAM_TIMEOUT_S", 1.0)
    with BuyerAgent("timed", marketplace=slow_market.address) as buyer:
        buyer.fund("1.00", "USD")
        deal = _slow_deal(buyer)
        buyer.hire(deal)
        call = buyer.stream(deal, {"topic": "t", "words": 40})
        with pytest.raises(DeadlineExceeded):
            for _piece in call:
                pass
        session = buyer.sessions[deal.agreement_id]
        assert call.pieces and session.reserved_atomic == 0 and not call.problem
        assert session.charged_atomic == call.charged_atomic > 0
        assert buyer.finish(deal).captured_atomic == session.charged_atomic


def test_an_async_stream_left_by_a_timeout_or_closed_from_another_task_books_its_end(
        slow_market):
    async def task() -> None:
        async with AsyncBuyerAgent("async-slow", marketplace=slow_market.address) as buyer:
            await buyer.fund("1.00", "USD")
            listing = (await buyer.discover("slow", currency="USD"))[0]
            deal = await buyer.negotiate(listing, "slow", quantity=3, budget="0.01",
                                         currency="USD")
            await buyer.hire(deal)
            session = buyer.sessions[deal.agreement_id]
            timed = await buyer.stream(deal, {"topic": "t", "words": 40})
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.7):
                    async for _piece in timed:
                        pass
            assert timed.pieces and timed.charged_atomic > 0 and not timed.problem

            closed = await buyer.stream(deal, {"topic": "u", "words": 40})

            async def read() -> int:
                return len([piece async for piece in closed])

            reader = asyncio.create_task(read())
            await asyncio.sleep(0.7)  # the reader waits for the next piece
            await closed.aclose()  # hangs up under it: its loop ends
            assert await reader == len(closed.pieces) > 0
            assert closed.stop_reason == "cancelled" and not closed.problem
            unread = await buyer.stream(deal, {"topic": "v", "words": 40})
            await asyncio.sleep(0.5)  # the seller is writing
            await unread.aclose()  # never read: hung up here
            assert [piece async for piece in unread] == []
            assert unread.stop_reason == "cancelled" and not unread.problem
            assert session.reserved_atomic == 0
            assert session.charged_atomic == timed.charged_atomic + closed.charged_atomic + \
                unread.charged_atomic
            escrow = await buyer.finish(deal)
            assert escrow.captured_atomic == session.charged_atomic

    asyncio.run(task())


def test_a_sellers_bad_json_in_a_hang_ups_end_is_not_a_crash():
    end = agent_pb2.StreamEnd(output_json="[" * 200_000 + "]" * 200_000)
    assert sent_text(end, "read") == "read"  # then reported as other text than was sent


def test_close_stops_a_stream_from_another_thread_or_before_it_is_read(slow_market):
    """`close()` hangs up: a loop reading the stream in another thread ends without an error,
    and a stream closed before anyone read it is booked for what the seller sent (a stream
    closed or read once yields nothing more)."""
    with BuyerAgent("closer", marketplace=slow_market.address) as buyer:
        buyer.fund("1.00", "USD")
        deal = _slow_deal(buyer)
        buyer.hire(deal)
        session = buyer.sessions[deal.agreement_id]
        read = buyer.stream(deal, {"topic": "t", "words": 40})
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.extend(read))
        reader.start()
        time.sleep(0.7)  # the reader waits for the next piece
        read.close()
        reader.join(timeout=10)
        assert not reader.is_alive() and got == read.pieces and got
        assert read.stop_reason == "cancelled" and not read.problem
        unread = buyer.stream(deal, {"topic": "u", "words": 40})
        time.sleep(0.5)  # the seller is writing
        unread.close()
        assert list(unread) == [] and list(read) == []
        assert unread.stop_reason == "cancelled" and not unread.problem
        assert session.reserved_atomic == 0
        assert session.charged_atomic == read.charged_atomic + unread.charged_atomic
        assert buyer.finish(deal).captured_atomic == session.charged_atomic
