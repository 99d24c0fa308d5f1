"""A call in the seller's redeem margin is refused: the seller redeems then, and a call answered
after it would be paid only by a redeem inside the marketplace's grace after the deadline, a
tenth of the escrow's span (nothing for an escrow opened just before its deadline: a buyer that
waited so got the work for free)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents import BuyerAgent, SellerAgent
from agents._deal import chain_shape
from agents._strategy_host import LIST_PRICE_PREFIX, OFFER_TTL_MS
from agents.errors import AgreementEnded
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace import MarketplaceNode
from marketplace import agreements as ag
from marketplace.auth import signed_channel
from marketplace.payword import PaywordChain
from marketplace.v1 import agreement_pb2, registry_pb2
from tests.test_seller_restart import upper
from tests.x402_market import books_balance

COMPLETION_WINDOW_S = 4
REDEEM_MARGIN_S = 2


@pytest.fixture
def market(tmp_path: Path) -> Iterator[tuple[MarketplaceNode, SellerAgent, BuyerAgent]]:
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("late", skills=[upper], marketplace=node.address,
                        completion_window_s=COMPLETION_WINDOW_S,
                        redeem_margin_s=REDEEM_MARGIN_S, settle_interval_s=0.1) as seller, \
            BuyerAgent("late-buyer", marketplace=node.address) as buyer:
        buyer.fund("1.00", "USD")
        yield node, seller, buyer


def _until_margin(deal) -> None:  # type: ignore[no-untyped-def]
    """Sleep into the seller's redeem margin (the last REDEEM_MARGIN_S before the deadline)."""
    margin_at = deal.body.terms.completion_deadline_ms / 1000 - REDEEM_MARGIN_S
    time.sleep(max(0.0, margin_at - time.time() + 0.3))


def test_a_call_in_the_redeem_margin_is_refused_and_the_calls_before_it_are_paid(market):
    node, _seller, buyer = market
    deal = buyer.negotiate(buyer.discover("upper"), "upper", quantity=3, budget="0.01",
                           currency="USD", deadline_s=1)
    buyer.hire(deal)
    assert buyer.call(deal, {"text": "in time"}) == {"text": "IN TIME"}
    _until_margin(deal)
    with pytest.raises(AgreementEnded, match="redeem"):
        buyer.call(deal, {"text": "too late"})
    escrow = buyer.finish(deal, confirm=True)
    assert escrow.captured_atomic == deal.body.terms.unit_price_atomic
    books_balance(node)


def _listed_deal(seller: SellerAgent, buyer: BuyerAgent, deadline_in_ms: int) -> Any:
    """A list-price agreement (as an x402 client makes them: no negotiation, its offer open
    for OFFER_TTL_MS whatever its deadline), countersigned by the seller, as a buyer's deal."""
    price = seller.skills["upper"].price_in("USD").amount_atomic
    tariff = seller.skills["upper"].tariff(price, "USD")
    link_value, length = chain_shape(tariff, 3 * price)
    chain, now = PaywordChain(length), time.time_ns() // 1_000_000
    body = agreement_pb2.AgreementBody(
        rfq_id=f"{LIST_PRICE_PREFIX}{uuid.uuid4().hex[:16]}", buyer_id=buyer.key.agent_id,
        seller_id=seller.agent_id, seller_endpoint=seller.endpoint,
        terms=agreement_pb2.Terms(
            skill="upper", unit_price_atomic=price, unit=tariff.unit, currency="USD",
            max_total_atomic=3 * price,
            verification=registry_pb2.VERIFICATION_METHOD_SCHEMA,
            completion_deadline_ms=now + deadline_in_ms, dispute_window_s=0),
        payword_root=chain.root, payword_length=length, link_value_atomic=link_value,
        created_at_ms=now, nonce=os.urandom(16), offer_expires_at_ms=now + OFFER_TTL_MS)
    signed = agreement_pb2.SignedAgreement(body=body.SerializeToString())
    ag.sign_as_buyer(signed, buyer.key)
    stub = agent_pb2_grpc.AgentServiceStub(signed_channel(seller.endpoint, buyer.key))
    countersigned = stub.Negotiate(agent_pb2.NegotiationMessage(agreement=signed),
                                   timeout=10).agreement
    return buyer.restore_deal({
        "agreement_hex": countersigned.SerializeToString().hex(), "seed_hex": chain.seed.hex(),
        "output_schema": seller.skills["upper"].output_schema, "rounds": 0,
        "tariff": [tariff.unit, tariff.unit_price_atomic, 0, tariff.max_call_atomic]})


def test_an_escrow_opened_in_the_margin_gets_no_work_for_free(market):
    """A list-price agreement's offer stays open whatever its deadline: the buyer opens the
    escrow just before the deadline (its grace is then a tenth of almost nothing) and calls at
    once: refused, and its money goes back whole."""
    node, seller, buyer = market
    deal = _listed_deal(seller, buyer, (REDEEM_MARGIN_S + 1) * 1000)
    _until_margin(deal)
    buyer.hire(deal)
    with pytest.raises(AgreementEnded, match="redeem"):
        buyer.call(deal, {"text": "free work"})
    assert seller.gate._accounts[deal.agreement_id].latest is None  # nothing was answered
    books_balance(node)
