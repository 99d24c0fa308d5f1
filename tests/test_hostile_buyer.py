"""A buyer (or any key) working against a seller: finishing during a slow call, flooding
negotiations and list-price agreements, overflowing terms, buying hashing with far vouchers.
Each gets a clear refusal and costs the seller neither money nor service to other buyers."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents.errors import AgreementEnded
from agents.v1 import agent_pb2
from marketplace.node import MarketplaceNode
from tests.x402_market import books_balance

RELEASE = threading.Event()  # lets the slow skills finish
STARTED = threading.Event()  # a slow skill is running


class Text(BaseModel):
    text: str


@skill(price=per_call("0.01", "USD"))
def slow(text: str) -> Text:
    """Runs until the test releases it (a long LLM call, say)."""
    STARTED.set()
    RELEASE.wait(10)
    return Text(text=text.upper())


@skill(price=per_call("0.01", "USD"))
def drip(text: str) -> Iterator[str]:
    """Streams a piece, then more only once released."""
    yield text
    STARTED.set()
    for _ in range(50):
        RELEASE.wait(10)
        yield "."
        time.sleep(0.01)


@pytest.fixture
def market(tmp_path: Path) -> Iterator[tuple[MarketplaceNode, SellerAgent, BuyerAgent]]:
    RELEASE.clear()
    STARTED.clear()
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("target", skills=[slow, drip], marketplace=node.address,
                        server="threaded") as seller, \
            BuyerAgent("hostile", marketplace=node.address) as buyer:
        buyer.fund("1.00", "USD")
        # the redeem waits this long for running calls (5 s by default)
        seller.gate.begin_redeem = functools.partial(  # type: ignore[method-assign]
            seller.gate.begin_redeem, wait_s=0.3)
        yield node, seller, buyer
        RELEASE.set()


def _in_thread(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = call()
        except Exception as error:  # the test looks at what the buyer got
            out["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_finishing_during_a_slow_call_gets_that_call_neither_charged_nor_answered(market):
    node, seller, buyer = market
    deal = buyer.negotiate(buyer.discover("slow"), "slow", quantity=3, budget="0.05",
                           currency="USD")
    before = buyer.balance("USD")
    buyer.hire(deal)
    thread, out = _in_thread(lambda: buyer.call(deal, {"text": "free work please"}))
    assert STARTED.wait(10)
    escrow = buyer.finish(deal, confirm=True)  # redeems without the running call
    RELEASE.set()
    thread.join(10)
    assert isinstance(out.get("error"), AgreementEnded), out  # no answer: the work stays
    assert "not charged and not answered" in out["error"].message
    assert escrow.captured_atomic == 0 and buyer.balance("USD") == before
    account = seller.gate._accounts[deal.agreement_id]
    assert account.charged_atomic == 0 and account.reserved_atomic == 0
    books_balance(node)


def test_finishing_during_a_stream_ends_it_billed_for_what_it_delivered(market):
    node, seller, buyer = market
    deal = buyer.negotiate(buyer.discover("drip"), "drip", quantity=3, budget="0.05",
                           currency="USD")
    buyer.hire(deal)
    stream = buyer.stream(deal, {"text": "start"})
    pieces = iter(stream)
    assert next(pieces) == "start"
    assert STARTED.wait(10)
    thread, out = _in_thread(lambda: buyer.finish(deal, confirm=True))
    deadline = time.monotonic() + 10
    while not seller.gate.closing(deal.agreement_id) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the redeem has begun: the stream ends at its next piece
    RELEASE.set()
    rest = list(pieces)
    thread.join(10)
    assert stream.stop_reason == "ended" and len(rest) <= 1
    end = stream.end
    assert end is not None and end.stop_reason == agent_pb2.STOP_REASON_ENDED
    escrow = out["result"]
    assert escrow.captured_atomic == end.usage.charged_atomic > 0  # in the redeem, paid
    assert seller.gate._accounts[deal.agreement_id].charged_atomic == escrow.captured_atomic
    books_balance(node)
