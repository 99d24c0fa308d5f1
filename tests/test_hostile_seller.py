"""A seller that lies to an honest buyer: about the verification it offers, about a call it
says still runs, about what a call cost. The buyer never signs what it did not ask for, never
loses a reservation, and books what the seller can redeem.

Real parts: a marketplace node (SQLite file, gRPC on port 0), a SellerAgent whose answers are
tampered with in process, and a BuyerAgent over gRPC.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agents import AsyncBuyerAgent, BuyerAgent, SellerAgent, per_call, skill
from agents import async_buyer as async_buyer_module
from agents import buyer as buyer_module
from agents.errors import CallInProgress, NegotiationFailed, Unavailable
from marketplace.node import MarketplaceNode
from marketplace.v1 import agreement_pb2, registry_pb2


class Text(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"),
       verification=[registry_pb2.VERIFICATION_METHOD_SCHEMA,
                     registry_pb2.VERIFICATION_METHOD_THIRD_PARTY])
def shout(text: str) -> Text:
    """Upper-case a text."""
    return Text(text=text.upper())


@pytest.fixture
def market(tmp_path: Path) -> Iterator[tuple[SellerAgent, BuyerAgent]]:
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("liar", skills=[shout], marketplace=node.address) as seller, \
            BuyerAgent("me", marketplace=node.address) as buyer:
        buyer.fund("1.00", "USD")
        yield seller, buyer


def _deal(buyer: BuyerAgent) -> Any:
    listing = buyer.discover("shout", currency="USD")[0]
    deal = buyer.negotiate(listing, "shout", quantity=3, budget="0.05", currency="USD")
    buyer.hire(deal)
    return deal


def test_an_offer_paying_a_verifier_the_buyer_did_not_ask_for_is_refused(market):
    """A verifier's fee is taken from the escrow whatever its verdict: a seller switching the
    buyer's schema check to a verifier of its choosing ends the negotiation, unsigned."""
    seller, buyer = market
    accomplice = "ab" * 32
    real = seller.negotiator._offer

    def hostile(*args: Any, **kwargs: Any) -> agreement_pb2.Offer:
        offer = real(*args, **kwargs)
        offer.terms.verification = registry_pb2.VERIFICATION_METHOD_THIRD_PARTY
        offer.terms.verifier.CopyFrom(agreement_pb2.VerifierTerms(
            agent_id=accomplice, endpoint="127.0.0.1:9",
            fee_atomic=offer.terms.max_total_atomic // 3))
        return offer

    seller.negotiator._offer = hostile
    listing = buyer.discover("shout", currency="USD")[0]
    with pytest.raises(NegotiationFailed, match="third-party verification"):
        buyer.negotiate(listing, "shout", quantity=3, budget="0.05", currency="USD",
                        failover=False)
    assert buyer.wallet("USD").pending_debits_atomic == 0  # nothing held


def test_a_call_the_seller_keeps_saying_runs_is_fetched_again_with_its_voucher(market,
                                                                               monkeypatch):
    """The wait is bounded, the reservation kept, and a retry with the same call id re-sends
    the same voucher: the one answer, charged once."""
    seller, buyer = market
    monkeypatch.setattr(buyer_module, "IN_PROGRESS_WAIT_S", 2.0)
    deal = _deal(buyer)
    session = buyer.sessions[deal.agreement_id]
    real = seller.invoke

    def stalls(request: Any, context: Any) -> Any:
        real(request, context)  # the seller runs (and records) the call
        raise CallInProgress("still running")

    seller.invoke = stalls
    with pytest.raises(Unavailable, match="same call id"):
        buyer.invoke(deal, {"text": "hi"}, call_id="c1")
    assert "c1" in deal.unanswered and session.reserved_atomic == deal.call_max_atomic
    seller.invoke = real
    answer = buyer.invoke(deal, {"text": "hi"}, call_id="c1")
    assert answer.output == {"text": "HI"} and answer.verified
    assert session.reserved_atomic == 0 and session.charged_atomic == deal.call_max_atomic
    assert buyer.invoke(deal, {"text": "next"}).verified  # the deal goes on


def test_an_attempt_the_wait_ends_under_leaves_the_call_still_running(market, monkeypatch):
    """The seller said the call runs, then its next answer outlasts what is left of the wait:
    that attempt's deadline is the wait's end, so the buyer says the call still runs (retry
    with the same call id), as when the wait ends between attempts, not that it timed out;
    the reservation is kept, and the retry gets the one answer."""
    seller, buyer = market
    monkeypatch.setattr(buyer_module, "IN_PROGRESS_WAIT_S", 2.0)
    deal = _deal(buyer)
    session = buyer.sessions[deal.agreement_id]
    real, attempts = seller.invoke, []

    def slower_each_time(request: Any, context: Any) -> Any:
        attempts.append(request.call_id)
        if len(attempts) == 1:
            real(request, context)  # the seller runs (and records) the call
        else:
            time.sleep(3.0)  # past the end of the buyer's wait
        raise CallInProgress("still running")

    seller.invoke = slower_each_time
    with pytest.raises(Unavailable, match="same call id"):
        buyer.invoke(deal, {"text": "hi"}, call_id="c2")
    assert len(attempts) == 2
    assert "c2" in deal.unanswered and session.reserved_atomic == deal.call_max_atomic
    seller.invoke = real
    answer = buyer.invoke(deal, {"text": "hi"}, call_id="c2")
    assert answer.output == {"text": "HI"} and answer.verified
    assert session.reserved_atomic == 0 and session.charged_atomic == deal.call_max_atomic


def test_the_async_buyer_too_leaves_a_call_the_wait_ends_under_still_running(
        market, monkeypatch):
    """The async buyer's twin of the test above."""
    seller, _ = market
    monkeypatch.setattr(async_buyer_module, "IN_PROGRESS_WAIT_S", 2.0)
    real, attempts = seller.invoke, []

    def slower_each_time(request: Any, context: Any) -> Any:
        attempts.append(request.call_id)
        if len(attempts) == 1:
            real(request, context)
        else:
            time.sleep(3.0)
        raise CallInProgress("still running")

    async def task() -> tuple[Any, Any, int, int]:
        async with AsyncBuyerAgent("me-async", marketplace=seller.marketplace) as buyer:
            await buyer.fund("1.00", "USD")
            deal = await buyer.negotiate(await buyer.discover("shout", currency="USD"),
                                         "shout", quantity=3, budget="0.05", currency="USD")
            await buyer.hire(deal)
            seller.invoke = slower_each_time
            with pytest.raises(Unavailable, match="same call id"):
                await buyer.invoke(deal, {"text": "hi"}, call_id="c3")
            assert "c3" in deal.unanswered
            held = buyer.sessions[deal.agreement_id].reserved_atomic
            seller.invoke = real
            answer = await buyer.invoke(deal, {"text": "hi"}, call_id="c3")
            return answer, deal, held, buyer.sessions[deal.agreement_id].charged_atomic

    answer, deal, held, charged = asyncio.run(task())
    assert len(attempts) == 2 and held == deal.call_max_atomic
    assert answer.output == {"text": "HI"} and answer.verified and charged == held


@pytest.mark.parametrize("claimed", [0, -10**15])
def test_the_buyer_books_what_the_receipt_charges_not_the_usage_the_seller_claims(market,
                                                                                 claimed):
    seller, buyer = market
    deal = _deal(buyer)
    session = buyer.sessions[deal.agreement_id]
    real = seller.invoke

    def lies(request: Any, context: Any) -> Any:
        response = real(request, context)
        response.usage.charged_atomic = claimed
        return response

    seller.invoke = lies
    answer = buyer.invoke(deal, {"text": "hi"})
    assert not answer.verified and "the usage says" in deal.problems[-1]
    assert session.charged_atomic == answer.receipt.charged_atomic > 0
    assert session.reserved_atomic == 0
