"""The agreement state machine: every transition of the table, the money each one moves, and
every other (state, event) pair refused with ILLEGAL_TRANSITION, changing nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from marketplace import agreement_states as st
from marketplace.errors import IllegalTransition
from marketplace.testing import Deal, Harness, funded_market
from marketplace.v1 import dispute_pb2, registry_pb2
from wallets.audit import check_balances, verify_chain
from wallets.currencies import split
from wallets.errors import AgentmarketError

PRICE = 1_000
QUANTITY = 5
HELD = PRICE * QUANTITY
WINDOW_S = 60
FUNDS = 1_000_000_000  # 1 USD: deposits come in whole cents
OK = {"text": "fine"}
BAD = {"wrong": 1}
ACCEPTANCE = registry_pb2.VERIFICATION_METHOD_BUYER_ACCEPTANCE


@pytest.fixture
def market(engine: Engine, clock) -> Iterator[Harness]:  # type: ignore[no-untyped-def]
    with funded_market(engine, clock, FUNDS, price_atomic=PRICE) as harness:
        yield harness


def _books_ok(market: Harness) -> None:
    assert check_balances(market.ledger).ok
    assert verify_chain(market.ledger).ok
    assert sum(b.posted_atomic for b in market.ledger.accounts()) == 0


def _kinds(market: Harness, hold_id: str) -> list[str]:
    return [p.kind for p in market.ledger.postings(hold_id=hold_id)]


# ---- the table itself ----------------------------------------------------------------------


def test_the_table_is_complete_and_closed():
    for state in st.STATES:
        for event in st.EVENTS:
            expected = st.TRANSITIONS.get((state, event))
            if expected is None:
                with pytest.raises(IllegalTransition):
                    st.next_state(state, event)
            else:
                assert st.next_state(state, event) == expected
    reachable = {st.PROPOSED} | set(st.TRANSITIONS.values())
    assert reachable == set(st.STATES)
    assert all(not any(s == final for s, _ in st.TRANSITIONS) for final in st.FINAL)


# ---- each transition, with its money --------------------------------------------------------


def test_open_holds_the_maximum(market: Harness):
    deal = market.deal(price_atomic=PRICE, quantity=QUANTITY)
    escrow = market.open(deal)
    assert escrow["state"] == st.ACTIVE and escrow["held_atomic"] == HELD
    buyer = market.ledger.find_account(market.buyer.agent_id, "USD")
    assert buyer is not None and buyer.pending_debits_atomic == HELD
    _books_ok(market)


def test_redeem_verify_keeps_the_earnings_in_the_hold(market: Harness):
    deal = market.deal()
    market.open(deal)
    escrow = market.redeem(deal, [OK, OK, BAD])
    assert escrow["state"] == st.VERIFIED
    assert (escrow["earned_atomic"], escrow["captured_atomic"]) == (2 * PRICE, 0)
    assert (escrow["verified_outputs"], escrow["failed_outputs"]) == (2, 1)
    assert escrow["release_at_ms"] == market.clock() + WINDOW_S * 1000
    assert market.posted(market.seller) == 0
    assert _kinds(market, escrow["hold_id"]) == ["hold"]


def _settled(market: Harness, escrow: dict, earned: int) -> None:
    seller_part, fee = split(earned, 250)
    assert escrow["state"] == st.SETTLED
    assert (escrow["captured_atomic"], escrow["fee_atomic"]) == (earned, fee)
    assert escrow["refunded_atomic"] == HELD - earned
    assert market.posted(market.seller) == seller_part
    assert market.posted("marketplace", "fees") == fee
    assert market.posted(market.buyer) == FUNDS - earned
    assert _kinds(market, escrow["hold_id"]) == ["hold", "capture"]  # one posting pays all
    _books_ok(market)


def test_verified_confirm_pays_now(market: Harness):
    deal = market.deal()
    market.open(deal)
    market.redeem(deal, [OK, OK])
    _settled(market, market.confirm(deal), 2 * PRICE)


def test_verified_release_pays_when_the_window_closes(market: Harness):
    deal = market.deal()
    market.open(deal)
    market.redeem(deal, [OK, OK, OK])
    market.clock.advance(WINDOW_S - 1)
    assert market.settlement.sweep() == 0
    market.clock.advance(1)
    assert market.settlement.sweep() == 1
    _settled(market, market.settlement.get(deal.agreement_id), 3 * PRICE)


def test_a_zero_window_settles_at_redeem(market: Harness):
    deal = market.deal(dispute_window_s=0)
    market.open(deal)
    _settled(market, market.redeem(deal, [OK]), PRICE)


def test_redeem_accept_then_confirm(market: Harness):
    deal = market.deal(method=ACCEPTANCE)
    market.open(deal)
    escrow = market.redeem(deal, [OK, OK])
    assert escrow["state"] == st.DELIVERED and escrow["earned_atomic"] == 2 * PRICE
    _settled(market, market.confirm(deal), 2 * PRICE)


def test_redeem_accept_then_silence_releases(market: Harness):
    deal = market.deal(method=ACCEPTANCE)
    market.open(deal)
    market.redeem(deal, [OK])
    market.clock.advance(WINDOW_S)
    assert market.settlement.sweep() == 1
    _settled(market, market.settlement.get(deal.agreement_id), PRICE)


@pytest.mark.parametrize("method", ["schema", "acceptance"])
def test_dispute_freezes_the_earnings(market: Harness, method: str):
    deal = market.deal(method=ACCEPTANCE if method == "acceptance" else
                       registry_pb2.VERIFICATION_METHOD_SCHEMA)
    market.open(deal)
    market.redeem(deal, [OK, OK])
    escrow = market.dispute(deal)
    assert escrow["state"] == st.DISPUTED
    assert market.posted("marketplace", "escrow") == 2 * PRICE
    assert market.posted(market.buyer) == FUNDS - 2 * PRICE  # the rest went back
    assert market.posted(market.seller) == 0
    market.clock.advance(10 * WINDOW_S)
    assert market.settlement.sweep() == 0  # frozen: no release
    _books_ok(market)


def test_redeem_fail_refunds_everything(market: Harness):
    deal = market.deal()
    market.open(deal)
    escrow = market.redeem(deal, [BAD, "not json"])
    assert escrow["state"] == st.REFUNDED
    assert (escrow["captured_atomic"], escrow["refunded_atomic"]) == (0, HELD)
    assert market.posted(market.buyer) == FUNDS
    assert _kinds(market, escrow["hold_id"]) == ["hold", "void"]
    _books_ok(market)


def test_expire_returns_the_hold_after_the_deadline(market: Harness):
    deal = market.deal()
    market.open(deal)
    market.clock.advance(3600 + 360)  # the deadline and its redeem grace (a tenth of the span)
    assert market.settlement.sweep() == 0
    market.clock.advance(1)
    assert market.settlement.sweep() == 1
    escrow = market.settlement.get(deal.agreement_id)
    assert escrow["state"] == st.EXPIRED and escrow["refunded_atomic"] == HELD
    buyer = market.ledger.find_account(market.buyer.agent_id, "USD")
    assert buyer is not None and buyer.pending_debits_atomic == 0
    _books_ok(market)


# ---- every other pair is refused ------------------------------------------------------------


def _reach(market: Harness, state: str) -> Deal:
    deal = market.deal(method=ACCEPTANCE if state == st.DELIVERED else
                       registry_pb2.VERIFICATION_METHOD_SCHEMA)
    market.open(deal)
    if state == st.EXPIRED:
        market.clock.advance(3600 + 360 + 1)
        market.settlement.sweep()
    elif state != st.ACTIVE:
        market.redeem(deal, [BAD] if state == st.REFUNDED else [OK])
    if state == st.SETTLED:
        market.confirm(deal)
    if state in (st.DISPUTED, st.RESOLVED):
        market.dispute(deal)
    if state == st.RESOLVED:
        market.resolve(deal, dispute_pb2.DISPUTE_OUTCOME_BUYER)
    assert market.settlement.get(deal.agreement_id)["state"] == state
    return deal


EVENTS: dict[str, Callable[[Harness, Deal], object]] = {
    "open": lambda m, d: m.open(d),
    "redeem": lambda m, d: m.redeem(d, [OK]),
    "confirm": lambda m, d: m.confirm(d),
    "dispute": lambda m, d: m.dispute(d),
    "resolve": lambda m, d: m.resolve(d, dispute_pb2.DISPUTE_OUTCOME_SELLER),
}
ALLOWED = {st.ACTIVE: {"redeem"}, st.VERIFIED: {"confirm", "dispute"},
           st.DELIVERED: {"confirm", "dispute"}, st.DISPUTED: {"resolve"}}


@pytest.mark.parametrize("state", [s for s in st.STATES if s != st.PROPOSED])
def test_every_illegal_transition_is_refused_and_changes_nothing(market: Harness, state: str):
    deal = _reach(market, state)
    for event, attempt in EVENTS.items():
        if event in ALLOWED.get(state, set()):
            continue
        before, escrow = market.balances(), market.settlement.get(deal.agreement_id)
        with pytest.raises(AgentmarketError) as caught:
            attempt(market, deal)
        assert caught.value.status == "FAILED_PRECONDITION", (state, event)
        if not (state == st.EXPIRED and event in ("open", "redeem")):  # deadline checked first
            assert caught.value.reason == "ILLEGAL_TRANSITION", (state, event, caught.value)
        assert market.balances() == before
        assert market.settlement.get(deal.agreement_id) == escrow


def test_disputing_or_confirming_work_not_yet_delivered_says_what_to_do_first():
    for event, hint in (("dispute", "finish first without accepting it"),
                        ("confirm", "finish first")):
        with pytest.raises(IllegalTransition) as refused:
            st.next_state(st.ACTIVE, event)
        assert refused.value.message.startswith(f"an agreement that is active cannot {event}: ")
        assert hint in refused.value.message
