"""A seller that stops abruptly and starts again with the same key and usage journal takes up
its agreements: answered calls are redeemable, a retried call id gets its first answer without
a second charge, new calls continue the voucher sequence and the receipt chain, and the seller
is paid for every call it answered, before and after the restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from agents import BuyerAgent, Deal, SellerAgent, per_call, skill
from agents.usage_journal import UsageJournal
from marketplace import agreements as ag
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from tests.processes.node import free_port as _free_port  # a port bind(0) never hands out


class Upper(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def upper(text: str) -> Upper:
    """Upper-case a text."""
    return Upper(text=text.upper())


def _crash(seller: SellerAgent) -> None:
    """Stop serving at once, without withdrawing, redeeming or closing the journal cleanly."""
    seller._stop.set()
    seller.server.stop(0).wait()
    seller._channel.close()


def _hire_upper(buyer: BuyerAgent, calls: int) -> Deal:
    buyer.fund("1.00", "USD")
    deal = buyer.negotiate(buyer.discover("upper", currency="USD")[0], "upper",
                           quantity=calls, budget="0.05", currency="USD")
    buyer.hire(deal)
    return deal


@pytest.fixture
def node(tmp_path: Path) -> Iterator[MarketplaceNode]:
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    yield node
    node.stop(0)


def test_a_restarted_seller_is_paid_for_calls_before_and_after(node: MarketplaceNode,
                                                               tmp_path: Path) -> None:
    key, port, journal = AgentKey.generate(), _free_port(), tmp_path / "seller.db"
    seller = SellerAgent("upper", skills=[upper], marketplace=node.address, key=key,
                         port=port, journal=journal, dispute_window_s=0).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    try:
        deal = _hire_upper(buyer, 40)
        first = buyer.invoke(deal, {"text": "before"}, call_id="call-before")
        for n in range(19):
            buyer.call(deal, {"text": f"early {n}"})
        _crash(seller)
        seller = SellerAgent("upper", skills=[upper], marketplace=node.address, key=key,
                             port=port, journal=journal, dispute_window_s=0).serve()

        again = buyer.invoke(deal, {"text": "before"}, call_id="call-before",
                             voucher_at=(first.receipt.sequence, 1))
        assert again.output == first.output and again.receipt == first.receipt
        for n in range(5):
            assert buyer.call(deal, {"text": f"late {n}"}) == {"text": f"LATE {n}"}
        escrow = buyer.finish(deal)
        assert not deal.problems
        price = deal.body.terms.unit_price_atomic
        assert escrow.captured_atomic == 25 * price  # 20 before, 5 after, the retry free
        assert sorted({r.chain_index for r in deal.unsigned_receipts}) == list(range(1, 26))
    finally:
        buyer.close()
        seller.stop(0)


def test_an_acknowledged_call_is_in_the_journal(node: MarketplaceNode, tmp_path: Path) -> None:
    """Every call the buyer got an answer for is durable before the answer left the seller."""
    journal = tmp_path / "seller.db"
    seller = SellerAgent("upper", skills=[upper], marketplace=node.address,
                         journal=journal).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    try:
        deal = _hire_upper(buyer, 20)
        answers = [buyer.invoke(deal, {"text": f"t{n}"}, call_id=f"c{n}") for n in range(17)]
        reader = UsageJournal(f"sqlite:///{journal}")
        try:
            saved = {entry.agreement_id: entry for entry in reader.load()}[deal.agreement_id]
        finally:
            reader.close()
        recorded = {call.call_id: call for call in saved.calls}
        assert set(recorded) == {f"c{n}" for n in range(17)}
        for n, answer in enumerate(answers):
            assert recorded[f"c{n}"].receipt == answer.receipt.SerializeToString()
        # the chain: whole, and signed at every 16th receipt
        receipts = [answer.receipt for answer in answers]
        ordered = ag.check_receipt_chain(receipts, seller.agent_id, complete=True)
        assert [bool(r.seller_signature) for r in ordered] == [i % 16 == 0
                                                             for i in range(1, 18)]
    finally:
        buyer.close()
        seller.stop(0)
