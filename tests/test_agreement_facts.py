"""What a node remembers about agreements and accounts to spare reads: only what never changes,
bounded, and never an agreement that has no escrow."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from marketplace.errors import InvalidArgument, NotFound
from marketplace.escrows import AgreementFacts
from marketplace.testing import Harness, funded_market
from marketplace.v1 import registry_pb2

FUNDS = 1_000_000_000


@pytest.fixture
def market(engine: Engine, clock) -> Iterator[Harness]:  # type: ignore[no-untyped-def]
    with funded_market(engine, clock, FUNDS, price_atomic=1_000,
                       methods=[registry_pb2.VERIFICATION_METHOD_SCHEMA]) as harness:
        yield harness


def test_facts_are_the_escrows_parties_and_stay_bounded(market: Harness):
    deals = [market.deal() for _ in range(3)]
    for deal in deals:
        market.open(deal)
    facts = AgreementFacts(market.settlement.engine, size=2)
    for deal in deals:
        found = facts.get(deal.agreement_id)
        assert (found.buyer_id, found.seller_id, found.currency) == (
            market.buyer.agent_id, market.seller.agent_id, deal.body.terms.currency)
    assert len(facts._facts) == 2  # the oldest went first
    assert facts.get(deals[0].agreement_id).agreement_id == deals[0].agreement_id


def test_an_agreement_without_escrow_is_not_found_and_not_remembered(market: Harness):
    deal = market.deal()
    facts = AgreementFacts(market.settlement.engine)
    with pytest.raises(NotFound):
        facts.get(deal.agreement_id)
    with pytest.raises(InvalidArgument):
        facts.get("not-an-id")
    assert not facts._facts
    market.open(deal)  # opened later: found then
    assert facts.get(deal.agreement_id).buyer_id == market.buyer.agent_id


def test_a_confirm_after_the_facts_were_remembered_pays_as_before(market: Harness):
    deal = market.deal(dispute_window_s=3600)
    market.open(deal)
    market.redeem(deal, [{"text": "fine"}])
    assert market.settlement.facts.get(deal.agreement_id).seller_id == market.seller.agent_id
    paid = market.confirm(deal)
    assert paid["state"] == "settled" and paid["captured_atomic"] == 1_000
    assert market.posted(market.seller) == 1_000 - 1_000 * 250 // 10_000
