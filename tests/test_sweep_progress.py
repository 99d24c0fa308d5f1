"""The settlement sweep pays what it owes whatever other parties do: agreements that cannot
move (however many one party makes) do not keep later ones from their release, and work whose
hold lapsed (the node was down past it) is paid past the buyer's spending controls, which the
hold already passed, so a freeze or a policy set since cannot refuse it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from marketplace import settlement as settlement_module
from marketplace.identity import AgentKey
from marketplace.testing import Harness, funded_market, make_deal, make_skill, make_terms
from wallets.errors import AgentmarketError
from wallets.policies import Policy

PRICE = 1_000
OK = {"text": "fine"}


@pytest.fixture
def market(engine: Engine, clock) -> Iterator[Harness]:  # type: ignore[no-untyped-def]
    with funded_market(engine, clock, 10**9, price_atomic=PRICE) as harness:
        yield harness


def test_agreements_that_cannot_move_do_not_hold_up_the_rest(market, monkeypatch):
    monkeypatch.setattr(settlement_module, "SWEEP_LIMIT", 2)  # pages of 2 rows
    monkeypatch.setattr(settlement_module, "_DUE", settlement_module._due())
    mallory, her_seller = AgentKey.generate(), AgentKey.generate()
    market.advertise(make_skill(price_atomic=PRICE), seller=her_seller)
    market.fund(mallory, 10**9)
    stuck = set()
    for n in range(5):  # made first: the rows a sweep would read first
        deal = make_deal(mallory, her_seller, make_terms(dispute_window_s=1), market.clock())
        market.settlement.open_escrow(f"mallory-open-{n}", deal.signed)
        receipts = [deal.receipt(her_seller, 1, OK)]
        voucher = deal.voucher(1)
        market.settlement.redeem(f"mallory-redeem-{n}", deal.agreement_id, voucher, receipts,
                                 deal.redeem_signature(her_seller, voucher, receipts))
        stuck.add(deal.agreement_id)
    honest = market.deal(dispute_window_s=1)
    market.open(honest)
    market.redeem(honest, [OK])
    market.clock.advance(5)
    real = market.settlement._sweep_one
    tried: list[str] = []

    def sweep_one(row):  # type: ignore[no-untyped-def]
        tried.append(row.agreement_id)
        if row.agreement_id in stuck:  # as when its payee's wallet refuses the credit
            raise AgentmarketError("the payee's wallet refuses this credit")
        real(row)

    monkeypatch.setattr(market.settlement, "_sweep_one", sweep_one)
    assert market.settlement.sweep() == 1
    assert market.settlement.get(honest.agreement_id)["state"] == "settled"
    assert set(tried) == stuck | {honest.agreement_id} and len(tried) == 6
    assert market.settlement.get(next(iter(stuck)))["state"] == "verified"  # due next time


@pytest.mark.parametrize("control", ["freeze", "policy"])
def test_work_whose_hold_lapsed_is_paid_past_controls_the_buyer_set_since(market, control):
    buyer_wallet = market.ledger.find_account(market.buyer.agent_id, "USD").account_id
    deal = market.deal(dispute_window_s=60)
    market.open(deal)
    market.redeem(deal, [OK, OK])  # verified: the buyer owes both calls
    market.clock.advance(3 * 3600)  # the node was down past the hold's timeout
    market.ledger.expire_holds()
    if control == "freeze":
        market.wallets.controls.freeze("freeze", buyer_wallet, reason="mine", actor="buyer")
    else:
        market.wallets.controls.set_policy("policy", buyer_wallet, Policy(
            deny_counterparties=(market.seller.agent_id,)))
    assert market.settlement.sweep() == 1
    escrow = market.settlement.get(deal.agreement_id)
    assert (escrow["state"], escrow["captured_atomic"]) == ("settled", 2 * PRICE)
    assert market.posted(market.seller) > 0
