"""Vanishing parties: a seller or a buyer disappears mid-task, the marketplace restarts.

No money may stay stuck past its timeout. Deadlines are real but short: sellers offer a 2 s
completion window after a 2 s negotiation deadline and redeem on their own 1 s before the
completion deadline; the node sweeps every 0.2 s.

- The seller crashes after escrow and two paid calls, before it redeems: at the completion
  deadline the sweep expires the agreement and the buyer gets every atom back.
- The seller becomes unreachable (its server is gone) but its redeem loop lives: it redeems
  what the two calls earned before the deadline; the rest goes back to the buyer.
- The buyer vanishes after two calls and never finishes: the seller's own redeem before the
  deadline gets it paid for those calls once the dispute window closes; the rest goes back.
- The marketplace node (a process) is killed during the negotiation, which goes on between
  buyer and seller without it, and again between paid calls; after each restart escrow and
  settlement work, and the books balance.
- The node is down past a verified escrow's hold timeout (a fake clock): the hold has lapsed,
  so the verified work is paid from the buyer's wallet and the record agrees with the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import BaseModel

from agents import AgentmarketError, BuyerAgent, SellerAgent, Unavailable, per_call, skill
from agents.buyer import Deal
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.registry import Registry
from marketplace.settlement import Settlement
from marketplace.testing import make_deal, make_listing, make_skill, make_terms
from tests.processes.node import NodeProcess
from wallets.audit import check_balances, verify_chain
from wallets.currencies import currency, split
from wallets.ledger import Ledger
from wallets.service import WalletService
from wallets.store import make_engine

USD = currency("USD")
FUNDS = "1.00"
FEE_BPS = 250
NEGOTIATION_S = 10  # only bounds the bargaining: a busy machine must not fail the hire
COMPLETION_WINDOW_S = 2
REDEEM_MARGIN_S = 1
SETTLE_WAIT_S = 15.0  # the bound on waiting for the sweep after the deadline
T = TypeVar("T")


class Upper(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def upper(text: str) -> Upper:
    """Upper-case a text."""
    return Upper(text=text.upper())


def short_seller(name: str, marketplace: str, *, dispute_window_s: int = 0) -> SellerAgent:
    return SellerAgent(name, skills=[upper], marketplace=marketplace,
                       completion_window_s=COMPLETION_WINDOW_S, redeem_margin_s=REDEEM_MARGIN_S,
                       dispute_window_s=dispute_window_s, settle_interval_s=0.1).serve()


def crash(seller: SellerAgent) -> None:
    """The seller's process dies: its port stops answering, and there is no goodbye (the
    listing stays), no heartbeat and no redeem."""
    seller._stop.set()  # its heartbeat and redeem loops end with it
    seller.server.stop(None)
    seller._channel.close()  # and its connection to the marketplace


def hire(buyer: BuyerAgent, seller: SellerAgent, calls: int) -> Deal:
    buyer.fund(FUNDS, "USD", idempotency_key=f"fund:{buyer.agent_id}")
    listing = next(found for found in buyer.discover("upper", currency="USD")
                   if found.agent_id == seller.agent_id)
    deal = buyer.negotiate(listing, "upper", quantity=5, budget="0.01", currency="USD",
                           deadline_s=NEGOTIATION_S)
    buyer.hire(deal)
    for n in range(calls):
        assert buyer.call(deal, {"text": f"call {n}"}) == {"text": f"CALL {n}"}
    return deal


@dataclass
class Expect:
    deal: Deal
    buyer: BuyerAgent
    seller: SellerAgent
    state: str
    paid_calls: int


def _posted(ledger: Ledger, owner: str) -> int:
    account = ledger.find_account(owner, "USD")
    return 0 if account is None else ledger.balance(account.account_id).posted_atomic


def _no_money_stuck(node: MarketplaceNode, expectations: list[Expect]) -> None:
    """Every task is final, paid exactly for its calls, with nothing left held."""
    ledger = node.ledger
    for e in expectations:
        found = node.settlement.get(e.deal.agreement_id)
        earned = e.paid_calls * e.deal.body.terms.unit_price_atomic
        assert found["state"] == e.state, (e.seller.name, found)
        assert found["captured_atomic"] == earned, (e.seller.name, found)
        assert found["refunded_atomic"] == found["held_atomic"] - earned, (e.seller.name, found)
        assert ledger.get_hold(found["hold_id"]).status != "open", e.seller.name
        assert _posted(ledger, e.buyer.agent_id) == USD.atomic(FUNDS) - earned, e.seller.name
        assert _posted(ledger, e.seller.agent_id) == split(earned, FEE_BPS)[0], e.seller.name
    _books_sound(ledger)


def _books_sound(ledger: Ledger) -> None:
    assert ledger.holds(status="open") == [], "a hold outlived its task"
    chain, balances = verify_chain(ledger), check_balances(ledger)
    assert chain.ok, chain.problems
    assert balances.ok, balances.problems
    assert sum(b.posted_atomic for b in ledger.accounts()) == 0


@pytest.fixture
def node(db_url: str) -> Iterator[MarketplaceNode]:
    node = MarketplaceNode(db_url, sweep_interval_s=0.2, fee_bps=FEE_BPS).start()
    yield node
    node.stop(0)


def test_vanished_seller_or_buyer_leaves_no_money_stuck(node: MarketplaceNode):
    """Three tasks at once, one party of each vanishing after two paid calls."""
    crashed = short_seller("crashes", node.address)
    unreachable = short_seller("unreachable", node.address)
    patient = short_seller("buyer-vanishes", node.address, dispute_window_s=1)
    buyers = [BuyerAgent(f"buyer-{n}", marketplace=node.address) for n in range(3)]
    sellers = [crashed, unreachable, patient]
    try:
        deals = [hire(buyer, seller, calls=2) for buyer, seller in zip(buyers, sellers,
                                                                       strict=True)]
        crash(crashed)
        unreachable.server.stop(None)  # gone for its buyer; its redeem loop lives on
        buyers[2].close()  # the buyer vanishes: it never calls finish (nor confirm)
        for deal, buyer in zip(deals[:2], buyers[:2], strict=True):
            with pytest.raises(Unavailable) as gone:
                buyer.call(deal, {"text": "anyone there?"})
            assert gone.value.status == "UNAVAILABLE"

        deadline_ms = max(d.body.terms.completion_deadline_ms for d in deals)
        final = {"settled", "expired", "refunded"}
        until = time.monotonic() + (deadline_ms - time.time_ns() // 1_000_000) / 1000 \
            + SETTLE_WAIT_S
        while time.monotonic() < until and not all(
                node.settlement.get(d.agreement_id)["state"] in final for d in deals):
            time.sleep(0.1)
        states = [node.settlement.get(d.agreement_id)["state"] for d in deals]
        assert states == ["expired", "settled", "settled"], states
        assert time.time_ns() // 1_000_000 > deals[0].body.terms.completion_deadline_ms, \
            "the crashed seller's hold went back only at the deadline, not before"
        _no_money_stuck(node, [
            Expect(deals[0], buyers[0], crashed, "expired", paid_calls=0),
            Expect(deals[1], buyers[1], unreachable, "settled", paid_calls=2),
            Expect(deals[2], buyers[2], patient, "settled", paid_calls=2)])
    finally:
        for buyer in buyers[:2]:
            buyer.close()
        for seller in (unreachable, patient):
            seller.stop(0)


def _until_served(action: Callable[[], T], within_s: float = 15.0) -> T:
    """Retry while the restarted node is not reachable yet (a client's channel may sit in
    reconnect backoff for a few seconds after the node came back)."""
    end = time.monotonic() + within_s
    while True:
        try:
            return action()
        except AgentmarketError as error:
            retriable = ("UNAVAILABLE", "FAILED_PRECONDITION")
            if error.status not in retriable or time.monotonic() > end:
                raise
            time.sleep(0.2)


def test_marketplace_restarts_mid_negotiation_and_mid_task(tmp_path: Path):
    db_url = f"sqlite:///{tmp_path / 'market.db'}"
    with NodeProcess(db_url, tmp_path / "node") as node:
        seller = SellerAgent("upper", skills=[upper], marketplace=node.address,
                             dispute_window_s=0, settle_interval_s=0.2).serve()
        buyer = BuyerAgent("buyer", marketplace=node.address)
        try:
            buyer.fund(FUNDS, "USD", idempotency_key="fund")
            listing = buyer.discover("upper", currency="USD")[0]

            node.kill()  # negotiation is buyer <-> seller: it goes on without the marketplace
            deal = buyer.negotiate(listing, "upper", quantity=5, budget="0.01", currency="USD",
                                   deadline_s=30)
            node.start()
            escrow = _until_served(lambda: buyer.hire(deal))  # the same key on every retry
            assert escrow.held_atomic == deal.body.terms.max_total_atomic
            assert buyer.call(deal, {"text": "one"}) == {"text": "ONE"}

            node.kill()  # mid-task: paid calls need no marketplace round trip
            for word in ("two", "three"):
                assert buyer.call(deal, {"text": word}) == {"text": word.upper()}
            node.start()
            escrow = _until_served(lambda: buyer.finish(deal))
            price = deal.body.terms.unit_price_atomic
            assert escrow.captured_atomic == 3 * price, escrow
            assert escrow.refunded_atomic == escrow.held_atomic - 3 * price
        finally:
            buyer.close()
            seller.stop(0)
        node.stop()
    engine = make_engine(db_url)
    try:
        ledger = Ledger(engine, group_commit=False)
        assert _posted(ledger, buyer.agent_id) == USD.atomic(FUNDS) - 3 * price
        assert _posted(ledger, seller.agent_id) == split(3 * price, FEE_BPS)[0]
        _books_sound(ledger)
    finally:
        engine.dispose()


def test_marketplace_down_past_the_hold_timeout(ledger: Ledger, clock):  # type: ignore[no-untyped-def]
    """The node is down from just after a redeem until after the hold's own timeout; when it
    comes back, its sweep (ledger expiry, then settlement) must leave the agreement final
    and its record agreeing with the ledger."""
    registry = Registry(ledger.engine, clock_ms=clock)
    settlement = Settlement(ledger, registry, clock_ms=clock, fee_bps=FEE_BPS)
    buyer, seller = AgentKey.generate(), AgentKey.generate()
    registry.advertise(make_listing(seller, make_skill("echo", price_atomic=1_000)), 86_400)
    account = ledger.open_account(buyer.agent_id, "USD").account_id
    WalletService(ledger).deposit("fund", account, USD.atomic(FUNDS), "USD")
    deal = make_deal(buyer, seller, make_terms(price_atomic=1_000, quantity=5,
                                               dispute_window_s=60), clock())
    settlement.open_escrow("open", deal.signed)
    receipts = [deal.receipt(seller, i, {"text": "x"}) for i in (1, 2)]
    voucher = deal.voucher(2)
    escrow = settlement.redeem("redeem", deal.agreement_id, voucher, receipts,
                               deal.redeem_signature(seller, voucher, receipts))
    assert escrow["state"] == "verified"
    hold = ledger.get_hold(escrow["hold_id"])
    clock.now_ms = hold.expires_at_ms + 1_000  # the outage ends after the hold's timeout
    for _sweep in range(2):  # the node's sweep loop, in its order
        ledger.expire_holds()
        settlement.sweep()
    escrow = settlement.get(deal.agreement_id)
    assert escrow["state"] in {"settled", "expired", "refunded"}, escrow
    paid_back = ledger.balance(account).posted_atomic - (USD.atomic(FUNDS) - escrow["held_atomic"])
    assert escrow["captured_atomic"] + escrow["refunded_atomic"] == escrow["held_atomic"]
    assert escrow["refunded_atomic"] == paid_back
    _books_sound(ledger)
