"""Outages read as outages: `finish` while the marketplace is down is UNAVAILABLE (retry), and
succeeds once it is back; a seller that comes back after an agreement can no longer be redeemed
records that once and stops retrying."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from agents import BuyerAgent, SellerAgent
from agents.errors import AgentmarketError, SellerUnavailable, Unavailable
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.v1 import settlement_pb2
from tests.test_seller_restart import _crash, _free_port, _hire_upper, upper
from tests.test_vanishing_parties import COMPLETION_WINDOW_S, REDEEM_MARGIN_S, hire
from wallets.ledger import Ledger

SETTLERS = {
    "buyer-finish": lambda buyer, seller, deal: buyer.finish(deal),
    # SellerAgent.redeem is public too: the SDK's Unavailable, never gRPC's own error
    "seller-redeem": lambda buyer, seller, deal: seller.redeem(deal.agreement_id),
}


@pytest.mark.parametrize("settler", SETTLERS)
def test_settling_while_the_marketplace_is_down_is_unavailable(tmp_path: Path,
                                                                settler: str) -> None:
    """An outage is UNAVAILABLE (retry); once the marketplace is back, the same redeem,
    sent again, settles the calls."""
    settle = SETTLERS[settler]
    url, port = f"sqlite:///{tmp_path / 'market.db'}", _free_port()
    node = MarketplaceNode(url, port=port, sweep_interval_s=3600).start()
    seller = SellerAgent("upper", skills=[upper], marketplace=node.address,
                         dispute_window_s=0).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    try:
        deal = _hire_upper(buyer, 5)
        buyer.call(deal, {"text": "a"})
        buyer.call(deal, {"text": "b"})
        node.stop(0)
        with pytest.raises(Unavailable) as outage:
            settle(buyer, seller, deal)
        assert outage.value.status == "UNAVAILABLE"
        node = MarketplaceNode(url, port=port, sweep_interval_s=3600).start()
        escrow = _retried(lambda: settle(buyer, seller, deal))
        assert escrow.earned_atomic == 2 * deal.body.terms.unit_price_atomic
    finally:
        buyer.close()
        seller.stop(0)
        node.stop(0)


def _retried(operation):  # type: ignore[no-untyped-def]
    """What a client does with UNAVAILABLE: try again (gRPC reconnects with a backoff)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return operation()
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_seller_back_after_the_grace_stops_redeeming_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=0.2).start()
    key, journal = AgentKey.generate(), tmp_path / "seller.db"

    def seller() -> SellerAgent:
        return SellerAgent("upper", skills=[upper], marketplace=node.address, key=key,
                           journal=journal, completion_window_s=COMPLETION_WINDOW_S,
                           redeem_margin_s=REDEEM_MARGIN_S, dispute_window_s=0,
                           settle_interval_s=0.1).serve()

    first = seller()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    try:
        deal = hire(buyer, first, 2)
        _crash(first)
        first.journal.close()
        deadline = time.monotonic() + 15
        while node.settlement.get(deal.agreement_id)["state"] != "expired":
            assert time.monotonic() < deadline, "the sweep never expired the agreement"
            time.sleep(0.1)
        with caplog.at_level(logging.WARNING, logger="agentmarket.seller"):
            back = seller()
            try:
                time.sleep(1.0)  # ten settle intervals
                final = back.gate.redeemed(deal.agreement_id)
                assert final is not None
                assert final.state == settlement_pb2.AGREEMENT_STATE_EXPIRED
                assert back.gate.due(time.time_ns() // 1_000_000, 0) == []
            finally:
                back.stop(0)
        records = [r.getMessage() for r in caplog.records if deal.agreement_id[:12]
                   in r.getMessage()]
        assert sum("can no longer be redeemed" in m for m in records) == 1, records
        assert len(records) == 1, records  # no warning per settle interval
    finally:
        buyer.close()
        node.stop(0)


def test_negotiating_with_sellers_that_do_not_answer_is_unavailable(tmp_path: Path) -> None:
    """A seller that is down is an outage (retry), not a failed negotiation."""
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("upper", skills=[upper], marketplace=node.address).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    try:
        listings = buyer.discover("upper", currency="USD")
        seller.server.stop(0).wait()  # its endpoint stops answering
        with pytest.raises(SellerUnavailable) as outage:
            buyer.negotiate_best(listings, "upper", quantity=2, budget="0.05", currency="USD")
        assert outage.value.status == "UNAVAILABLE"
    finally:
        buyer.close()
        seller.stop(0)
        node.stop(0)


def test_the_seller_redeems_on_its_own_after_its_journal_failed(tmp_path: Path) -> None:
    """An auto-redeem whose journal record fails is tried again (the settle loop goes on)."""
    import sqlite3

    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=0.2).start()
    journal = tmp_path / "seller.db"
    seller = SellerAgent("upper", skills=[upper], marketplace=node.address, journal=journal,
                         key=AgentKey.generate(), completion_window_s=4, redeem_margin_s=3,
                         dispute_window_s=0, settle_interval_s=0.1).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    try:
        deal = hire(buyer, seller, 2)  # the seller redeems ~1 s after the 2 s negotiation
        with sqlite3.connect(journal, timeout=10) as conn:
            conn.execute("ALTER TABLE agentmarket_seller_agreements RENAME TO away")
        due_ms = deal.body.terms.completion_deadline_ms - 3000
        time.sleep(max(0.0, (due_ms - time.time_ns() // 1_000_000) / 1000) + 0.6)  # it fails
        with sqlite3.connect(journal, timeout=10) as conn:
            conn.execute("ALTER TABLE away RENAME TO agentmarket_seller_agreements")
        deadline = time.monotonic() + 10
        while node.settlement.get(deal.agreement_id)["state"] == "active":
            assert time.monotonic() < deadline, "the seller never redeemed"
            time.sleep(0.1)
        assert node.settlement.get(deal.agreement_id)["captured_atomic"] == \
            2 * deal.body.terms.unit_price_atomic
    finally:
        buyer.close()
        seller.stop(0)
        node.stop(0)


def test_a_redeem_answered_internal_after_it_landed_keeps_the_agreement_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node commits a redeem and then fails (INTERNAL): the seller must not take the
    agreement back to calls (their receipts would never be paid): it stays closed, and the
    same redeem, sent again, gets the first outcome."""
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("upper", skills=[upper], marketplace=node.address,
                         dispute_window_s=0).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    original, failed = Ledger.mutate, []

    def mutate(self, key, operation, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = original(self, key, operation, *args, **kwargs)
        if operation == "redeem" and not failed:
            failed.append(key)
            raise RuntimeError("after the commit")  # answered INTERNAL
        return result

    try:
        deal = _hire_upper(buyer, 5)
        buyer.call(deal, {"text": "a"})
        buyer.call(deal, {"text": "b"})
        monkeypatch.setattr(Ledger, "mutate", mutate)
        with pytest.raises(Unavailable, match="finish again"):
            buyer.finish(deal, confirm=True)
        assert failed  # the redeem landed, its answer was INTERNAL
        with pytest.raises(AgentmarketError):  # closed to calls: no work its redeem misses
            buyer.call(deal, {"text": "c"})
        escrow = buyer.finish(deal, confirm=True)
        assert escrow.captured_atomic == 2 * deal.body.terms.unit_price_atomic
    finally:
        buyer.close()
        seller.stop(0)
        node.stop(0)
