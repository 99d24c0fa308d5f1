"""Selling: functions, async functions and LangGraph graphs as priced skills; per-unit billing
with escrow; a seller that redeems on its own before the deadline when the buyer never finishes."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

from agents import (
    BuyerAgent,
    ConcessionStrategy,
    FailedPrecondition,
    InvalidArgument,
    SellerAgent,
    ServerError,
    current_meter,
    per_call,
    per_unit,
    skill,
)
from marketplace.node import MarketplaceNode
from marketplace.v1 import settlement_pb2
from wallets.currencies import currency

USD = currency("USD")


class Echo(BaseModel):
    text: str


class Job(BaseModel):
    steps: int
    gpu_seconds: int


class ResearchIn(TypedDict):
    question: str


class ResearchOut(TypedDict):
    answer: str
    words: int


class ResearchState(ResearchIn, ResearchOut, total=False):
    notes: list[str]


def _research_graph():
    def think(state: ResearchState) -> dict:
        return {"notes": [state["question"].lower()]}

    def answer(state: ResearchState) -> dict:
        return {"answer": f"about {state['notes'][0]}", "words": len(state["question"].split())}

    graph = StateGraph(ResearchState, input_schema=ResearchIn, output_schema=ResearchOut)
    graph.add_node("think", think)
    graph.add_node("answer", answer)
    graph.add_edge(START, "think")
    graph.add_edge("think", "answer")
    graph.add_edge("answer", END)
    return graph.compile()


@skill(price=per_call("0.001", "USD"))
async def slow_echo(text: str, delay_ms: int = 5) -> Echo:
    """An async skill: awaits, then echoes."""
    await asyncio.sleep(delay_ms / 1000)
    return Echo(text=text)


@skill(price=per_unit("0.0005", "USD", "gpu_second"), max_units=600)
def train(steps: int) -> Job:
    """A compute job billed per GPU-second used (3 per step here)."""
    current_meter().add_units(steps * 3)
    return Job(steps=steps, gpu_seconds=steps * 3)


RESEARCH = skill(_research_graph(), price=per_call("0.003", "USD"), name="research")


@pytest.fixture
def market(tmp_path):
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("lab", skills=[slow_echo, train, RESEARCH],
                         marketplace=node.address).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    buyer.fund("1.00", "USD")
    yield node, seller, buyer
    seller.stop(0)
    buyer.close()
    node.stop(0)


def _hire(buyer: BuyerAgent, skill_name: str, quantity: int, budget: str = "0.50",
          deadline_s: int = 30):
    listing = buyer.discover(skill_name, currency="USD")[0]
    deal = buyer.negotiate(listing, skill_name, quantity=quantity, budget=budget,
                           currency="USD", deadline_s=deadline_s)
    buyer.hire(deal)
    return deal


def test_a_graph_skill_takes_its_schemas_from_the_graph_state():
    assert RESEARCH.kind == "graph"
    assert RESEARCH.input_schema["required"] == ["question"]
    assert set(RESEARCH.output_schema["properties"]) == {"answer", "words"}
    assert RESEARCH.run({"question": "What is PayWord"}) == {"answer": "about what is payword",
                                                             "words": 3}


def test_a_graph_skill_with_explicit_models():
    class Question(BaseModel):
        question: str

    class Answer(BaseModel):
        answer: str

    explicit = skill(_research_graph(), price=per_call("0.003", "USD"), name="ask",
                     input_model=Question, output_model=Answer)
    assert explicit.output_schema["required"] == ["answer"]
    assert explicit.run({"question": "Why"}) == {"answer": "about why"}


def test_async_and_graph_skills_are_sold_and_paid_over_grpc(market):
    _node, _seller, buyer = market
    deal = _hire(buyer, "slow_echo", quantity=2)
    assert buyer.call(deal, {"text": "hi"}) == {"text": "hi"}
    research = _hire(buyer, "research", quantity=1)
    assert buyer.call(research, {"question": "Escrow how"})["words"] == 2
    for d in (deal, research):
        escrow = buyer.finish(d)
        assert escrow.state == settlement_pb2.AGREEMENT_STATE_SETTLED


def test_the_seller_works_only_once_the_escrow_holds_the_money(market):
    _node, seller, buyer = market
    listing = buyer.discover("slow_echo", currency="USD")[0]
    deal = buyer.negotiate(listing, "slow_echo", quantity=2, budget="0.01", currency="USD")
    with pytest.raises(FailedPrecondition, match="hire first") as refused:
        buyer.call(deal, {"text": "unpaid"})
    assert refused.value.status == "FAILED_PRECONDITION"
    assert seller.gate.unspent(deal.agreement_id) > 0  # prepaid, nothing charged
    buyer.hire(deal)
    assert buyer.call(deal, {"text": "paid"}) == {"text": "paid"}
    assert buyer.finish(deal).captured_atomic == deal.body.terms.unit_price_atomic


def test_compute_is_billed_per_gpu_second_used_from_escrow(market):
    _node, _seller, buyer = market
    deal = _hire(buyer, "train", quantity=2)
    price = deal.body.terms.unit_price_atomic
    assert deal.body.terms.unit_name == "gpu_second"
    assert deal.body.terms.max_total_atomic == 2 * 600 * price  # escrow holds the maximum
    results = [buyer.invoke(deal, {"steps": steps}) for steps in (10, 50)]
    assert [r.usage.units for r in results] == [30, 150]
    assert [r.usage.charged_atomic for r in results] == [30 * price, 150 * price]
    escrow = buyer.finish(deal)
    assert escrow.captured_atomic == 180 * price
    assert escrow.refunded_atomic == deal.body.terms.max_total_atomic - 180 * price


def test_volume_tiers_set_the_sellers_opening_price(market):
    node, _lab, buyer = market
    tiered = skill(train.handler, name="train_tiered", max_units=600,
                   price=per_unit("0.0006", "USD", "gpu_second").tiered((3600, "0.0005")))
    seller = SellerAgent("tiers", skills=[tiered], marketplace=node.address).serve()
    listing = buyer.discover("train_tiered", currency="USD")[0]
    assert listing.skills[0].prices[0].tiers[0].min_quantity == 3600
    takes_list = ConcessionStrategy(USD.atomic("0.0006"), USD.atomic("0.0006"))
    few = buyer.bargain(listing, "train_tiered", quantity=1, budget="5", currency="USD",
                        max_rounds=1, strategy=takes_list)  # 600 GPU-seconds: list price
    many = buyer.bargain(listing, "train_tiered", quantity=6, budget="5", currency="USD",
                         max_rounds=1, strategy=takes_list)  # 3,600 GPU-seconds: hour tier
    # a one-round negotiation opens at the seller's floor: 3/4 of the tier's list price
    assert few.unit_price_atomic == USD.atomic("0.00045")
    assert many.unit_price_atomic == USD.atomic("0.000375")
    seller.stop(0)


def test_the_seller_redeems_before_the_deadline_when_the_buyer_never_finishes(market):
    node, _lab, buyer = market
    # calls may come up to 2 s after the negotiation's 1 s deadline; redeem 1 s before that
    seller = SellerAgent("hasty", skills=[_echo_named("quick")], marketplace=node.address,
                         completion_window_s=2, redeem_margin_s=1, settle_interval_s=0.1).serve()
    deal = _hire(buyer, "quick", quantity=3, deadline_s=1)
    buyer.call(deal, {"text": "once"})
    deadline = time.monotonic() + 10
    while seller.gate.redeemed(deal.agreement_id) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    escrow = node.settlement.get(deal.agreement_id)
    assert escrow["state"] in ("verified", "settled")
    assert escrow["earned_atomic"] == deal.body.terms.unit_price_atomic
    assert time.time_ns() // 1_000_000 < deal.body.terms.completion_deadline_ms
    seller.stop(0)


def _echo_named(name: str):
    @skill(price=per_call("0.001", "USD"), name=name)
    def echo(text: str) -> Echo:
        """Echo."""
        return Echo(text=text)

    return echo


def test_the_seller_forgets_settled_agreements_after_the_retention(market):
    node, _lab, buyer = market
    seller = SellerAgent("tidy", skills=[_echo_named("tidy")], marketplace=node.address,
                         completion_window_s=2, redeem_margin_s=1, settle_interval_s=0.1,
                         journal_retention_s=0).serve()
    try:
        paid = _hire(buyer, "tidy", quantity=3, deadline_s=1)
        buyer.call(paid, {"text": "once"})
        assert seller.gate.forget([paid.agreement_id]) == []  # paid, not redeemed: kept
        never_called = _hire(buyer, "tidy", quantity=3, deadline_s=1)
        agreements = {paid.agreement_id, never_called.agreement_id}
        assert agreements <= set(seller.gate.agreements())
        deadline = time.monotonic() + 15
        while set(seller.gate.agreements()) & agreements and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not set(seller.gate.agreements()) & agreements
        assert not {a.agreement_id for a in seller.journal.load()} & agreements
        assert paid.agreement_id not in seller.tariffs
        # the paid one was redeemed before it was dropped: the seller got its money
        assert node.settlement.get(paid.agreement_id)["earned_atomic"] == \
            paid.body.terms.unit_price_atomic
    finally:
        seller.stop(0)


def test_a_broken_receipt_chain_is_one_problem_however_often_it_is_checked(market):
    node, _lab, buyer = market
    seller = SellerAgent("links", skills=[_echo_named("links")], marketplace=node.address
                         ).serve()
    try:
        deal = _hire(buyer, "links", quantity=4)
        for n in range(3):
            buyer.call(deal, {"text": f"call {n}"})
        assert buyer.check_receipt_signatures(deal) == [] and deal.problems == []
        deal.unsigned_receipts[1].previous_sha256 = bytes(32)  # a link the seller forged
        first = buyer.check_receipt_signatures(deal)
        assert len(first) == 1 and first[0].startswith("bad receipt")
        assert buyer.check_receipt_signatures(deal) == first
        assert deal.problems == first  # recorded once
    finally:
        seller.stop(0)


def test_the_journal_waits_only_for_calls_still_running(market):
    """Every call the seller's server accepts is announced to its journal until it records or
    ends: a refused call, a failed skill and a retried call leave nothing announced, so no
    commit waits for them."""
    node, _lab, buyer = market
    inside, release = threading.Event(), threading.Event()

    @skill(price=per_call("0.001", "USD"), name="gated")
    def gated(text: str) -> Echo:
        """Echo once released; 'fail' fails."""
        inside.set()
        release.wait(10)
        if text == "fail":
            raise RuntimeError("the skill failed")
        return Echo(text=text)

    seller = SellerAgent("gated", skills=[gated], marketplace=node.address).serve()
    journal = seller.journal
    journal.fast_call_s = 60.0  # count the blocked call as running however long it takes
    try:
        deal = _hire(buyer, "gated", quantity=5)
        running = threading.Thread(target=buyer.call, args=(deal, {"text": "slow"}, ),
                                   kwargs={"call_id": "slow"})
        running.start()
        assert inside.wait(10)
        assert journal.expected_records == 1  # inside the skill: its record is to come
        release.set()
        running.join(10)
        assert journal.expected_records == 0  # recorded
        with pytest.raises(ServerError):
            buyer.call(deal, {"text": "fail"})
        with pytest.raises(InvalidArgument):  # refused before the skill: wrong input
            buyer.call(deal, {"wrong": 1})
        replayed = buyer.invoke(deal, {"text": "slow"}, call_id="slow", voucher_at=(1, 1))
        assert replayed.output == {"text": "slow"}  # the first answer, from the journal's call
        deadline = time.monotonic() + 10  # a failed call's worker ends just after its answer
        while journal.expected_records and time.monotonic() < deadline:
            time.sleep(0.01)
        assert journal.expected_records == 0
        assert len(journal.load()[0].calls) == 1  # the one answered call
    finally:
        release.set()
        seller.stop(0)
