"""A usage-journal write that fails leaves no trace in what the seller charges: the refused
call is not in the receipt chain, the chain has no hole (so every call answered before and after
stays redeemable, also after a restart), and a retry of the refused call id runs it anew."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from agents import BuyerAgent, SellerAgent
from agents.errors import AgentmarketError, Unavailable
from marketplace import agreements as ag
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from tests.journal_disk import journal_unwritable
from tests.test_seller_restart import _crash, _free_port, _hire_upper, upper
from wallets.store import make_engine


@pytest.fixture
def node(tmp_path: Path) -> Iterator[MarketplaceNode]:
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    yield node
    node.stop(0)


def _seller(node: MarketplaceNode, key: AgentKey, port: int, journal: Path) -> SellerAgent:
    return SellerAgent("upper", skills=[upper], marketplace=node.address, key=key, port=port,
                       journal=journal, dispute_window_s=0).serve()


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "restarted"])
def test_a_refused_call_is_not_charged_and_leaves_no_hole(node: MarketplaceNode,
                                                          tmp_path: Path, restart: bool) -> None:
    key, port, journal = AgentKey.generate(), _free_port(), tmp_path / "seller.db"
    seller = _seller(node, key, port, journal)
    buyer = BuyerAgent("buyer", marketplace=node.address)
    try:
        deal = _hire_upper(buyer, 10)
        answered = [buyer.invoke(deal, {"text": f"c{n}"}, call_id=f"c{n}") for n in (1, 2)]
        with journal_unwritable(journal), pytest.raises(Unavailable) as refused:
            buyer.invoke(deal, {"text": "lost"}, call_id="lost")
        assert refused.value.reason == "JOURNAL_UNAVAILABLE"
        answered += [buyer.invoke(deal, {"text": f"c{n}"}, call_id=f"c{n}") for n in (3, 4)]
        # the refused call took no position: the answered calls' receipts are 1..4, linked
        ordered = ag.check_receipt_chain([a.receipt for a in answered], seller.agent_id,
                                         complete=True)
        assert [r.chain_index for r in ordered] == [1, 2, 3, 4]
        if restart:
            _crash(seller)
            seller = _seller(node, key, port, journal)
        escrow = buyer.finish(deal)
        price = deal.body.terms.unit_price_atomic
        assert escrow.earned_atomic == 4 * price  # the refused call is not charged
        assert escrow.captured_atomic == 4 * price
        assert not deal.problems
    finally:
        buyer.close()
        seller.stop(0)


def test_a_retry_of_the_refused_call_runs_it_and_charges_it_once(node: MarketplaceNode,
                                                                 tmp_path: Path) -> None:
    key, port, journal = AgentKey.generate(), _free_port(), tmp_path / "seller.db"
    seller = _seller(node, key, port, journal)
    buyer = BuyerAgent("buyer", marketplace=node.address)
    try:
        deal = _hire_upper(buyer, 10)
        first = buyer.invoke(deal, {"text": "one"}, call_id="one")
        with journal_unwritable(journal), pytest.raises(Unavailable):
            buyer.invoke(deal, {"text": "two"}, call_id="two")
        voucher = (first.receipt.sequence + 1, 2)
        again = buyer.invoke(deal, {"text": "two"}, call_id="two", voucher_at=voucher)
        assert again.output == {"text": "TWO"} and again.receipt.chain_index == 2
        _crash(seller)
        seller = _seller(node, key, port, journal)
        escrow = buyer.finish(deal)
        assert escrow.earned_atomic == 2 * deal.body.terms.unit_price_atomic
    finally:
        buyer.close()
        seller.stop(0)


def test_a_journal_with_a_hole_is_relinked_and_redeemed_whole(node: MarketplaceNode,
                                                              tmp_path: Path) -> None:
    """A journal an older seller left with a hole (a call recorded at position 3 was never
    made durable): after a restart every recorded call is redeemed, not none."""
    key, port, journal = AgentKey.generate(), _free_port(), tmp_path / "seller.db"
    seller = _seller(node, key, port, journal)
    buyer = BuyerAgent("buyer", marketplace=node.address)
    try:
        deal = _hire_upper(buyer, 40)
        for n in range(20):
            buyer.invoke(deal, {"text": f"c{n}"}, call_id=f"c{n}")
        _crash(seller)
        seller.journal.close()
        admin = make_engine(f"sqlite:///{journal}")
        try:
            with admin.begin() as conn:
                conn.execute(text("DELETE FROM agentmarket_seller_calls WHERE position = 3"))
        finally:
            admin.dispose()
        seller = _seller(node, key, port, journal)
        again = buyer.invoke(deal, {"text": "c10"}, call_id="c10",
                             voucher_at=(11, 11))  # answered from the re-linked record
        assert again.receipt.chain_index == 10
        escrow = buyer.finish(deal, confirm=False)
        assert escrow.earned_atomic == 19 * deal.body.terms.unit_price_atomic
    finally:
        buyer.close()
        seller.stop(0)


def test_concurrent_calls_through_journal_failures_are_paid_exactly(node: MarketplaceNode,
                                                                    tmp_path: Path) -> None:
    """Calls from several threads while the journal fails and recovers, then a restart: each
    answered call is charged once, no refused one is (half are never retried), and the chain
    redeems whole."""
    import threading

    key, port, journal = AgentKey.generate(), _free_port(), tmp_path / "seller.db"
    seller = _seller(node, key, port, journal)
    buyer = BuyerAgent("buyer", marketplace=node.address)
    answered: dict[str, int] = {}
    refused: list[str] = []
    try:
        deal = _hire_upper(buyer, 48)

        def calls(thread: int) -> None:
            for n in range(8):
                call_id = f"t{thread}-{n}"
                for _attempt in range(50 if n % 2 == 0 else 1):  # odd ones: never retried
                    try:
                        answer = buyer.invoke(deal, {"text": call_id}, call_id=call_id)
                    except Unavailable:
                        refused.append(call_id)
                        continue  # the same call id again: answered once, charged once
                    except AgentmarketError:  # vouchers of concurrent calls may arrive out of
                        break  # order: the later sequence wins, the other is refused, unpaid
                    answered[call_id] = answer.receipt.sequence
                    break

        threads = [threading.Thread(target=calls, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):  # failing on and off
            with journal_unwritable(journal):
                time.sleep(0.03)
            time.sleep(0.03)
        for thread in threads:
            thread.join()
        _crash(seller)
        seller = _seller(node, key, port, journal)
        escrow = buyer.finish(deal, confirm=False)
        assert escrow.earned_atomic == len(answered) * deal.body.terms.unit_price_atomic
        _voucher, receipts = seller.gate.redeemable(deal.agreement_id)
        assert sorted(r.sequence for r in receipts) == sorted(answered.values())
        print(f"{len(refused)} refusals while the journal failed")
    finally:
        buyer.close()
        seller.stop(0)


def test_an_answer_lost_before_the_seller_redeemed_is_still_answered(node: MarketplaceNode,
                                                                     tmp_path: Path) -> None:
    """The seller redeemed on its own (its deadline margin) while the buyer was retrying a call
    whose answer was lost: the retry still gets that answer, which the redeem charged."""
    key, port, journal = AgentKey.generate(), _free_port(), tmp_path / "seller.db"
    seller = _seller(node, key, port, journal)
    buyer = BuyerAgent("buyer", marketplace=node.address)
    try:
        deal = _hire_upper(buyer, 10)
        first = buyer.invoke(deal, {"text": "one"}, call_id="one")
        escrow = seller.redeem(deal.agreement_id)  # the buyer has not heard of it
        again = buyer.invoke(deal, {"text": "one"}, call_id="one",
                             voucher_at=(first.receipt.sequence, 1))
        assert again.output == first.output and again.receipt == first.receipt
        assert escrow.earned_atomic == deal.body.terms.unit_price_atomic
    finally:
        buyer.close()
        seller.stop(0)
