"""A buyer that accepts the work in advance sends its confirm with Finish: the seller passes it
on with its redeem and the work is paid by the redeem, with no Confirm round trip. A confirm
not signed by the buyer is refused by the seller and changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from pydantic import BaseModel
from sqlalchemy import func, select

from agents import AgreementState, BuyerAgent, SellerAgent, per_call, skill
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from wallets.tables import IdempotencyRow

KEYS = IdempotencyRow.__table__  # type: ignore[attr-defined]


class Echoed(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def echo(text: str) -> Echoed:
    """Echo a text."""
    return Echoed(text=text)


@dataclass
class Market:
    node: MarketplaceNode
    seller: SellerAgent
    buyer: BuyerAgent

    def hired(self):  # type: ignore[no-untyped-def]
        listing = self.buyer.discover("echo", currency="USD")[0]
        deal = self.buyer.negotiate(listing, "echo", quantity=3, budget="0.01", currency="USD")
        self.buyer.hire(deal)
        self.buyer.call(deal, {"text": "one"})
        self.buyer.call(deal, {"text": "two"})
        return deal

    def confirms(self) -> int:
        """Confirm requests the node has answered (each leaves an idempotency record)."""
        with self.node.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(KEYS)
                                .where(KEYS.c.operation == "confirm")).scalar_one()


@pytest.fixture
def market(tmp_path: Path) -> Iterator[Market]:
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("echoer", skills=[echo], marketplace=node.address) as seller, \
            BuyerAgent("me", marketplace=node.address) as buyer:
        buyer.fund("1.00", "USD")
        yield Market(node, seller, buyer)


def test_finish_pays_the_work_without_a_confirm_round_trip(market: Market):
    deal = market.hired()
    done = market.buyer.finish(deal)
    price = deal.body.terms.unit_price_atomic
    assert done.state == AgreementState.SETTLED and done.captured_atomic == 2 * price
    assert market.confirms() == 0  # paid by the redeem itself
    assert market.node.settlement.get(deal.agreement_id)["state"] == "settled"


def test_finish_without_confirm_leaves_the_dispute_window_open(market: Market):
    deal = market.hired()
    done = market.buyer.finish(deal, confirm=False)
    assert done.state in (AgreementState.VERIFIED, AgreementState.DELIVERED)
    assert market.buyer.confirm(deal).state == AgreementState.SETTLED
    assert market.confirms() == 1


def test_a_confirm_not_signed_by_the_buyer_is_refused_by_the_seller(market: Market):
    deal = market.hired()
    before = market.node.settlement.get(deal.agreement_id)
    stranger = AgentKey.generate()
    request = agent_pb2.FinishRequest(
        agreement_id=deal.agreement_id,
        buyer_signature=market.buyer.key.sign(ag.request_message("finish", deal.agreement_id)),
        confirm_signature=stranger.sign(ag.request_message("confirm", deal.agreement_id)))
    with pytest.raises(grpc.RpcError) as caught:
        market.buyer._seller(deal.body.seller_endpoint).Finish(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "confirm_signature" in (caught.value.details() or "")
    assert market.node.settlement.get(deal.agreement_id) == before  # nothing redeemed
    assert market.buyer.finish(deal).state == AgreementState.SETTLED


def test_a_redeem_retried_with_the_buyers_confirm_applies_it(market: Market):
    """The seller's redeem was answered but the answer lost; the buyer's Finish then sends it
    again, same key, now carrying the buyer's confirm: the first outcome stands and the confirm
    pays the work at once, as the first request would have, instead of being dropped."""
    deal = market.hired()
    agreement = deal.agreement_id
    voucher, receipts = market.seller.gate.begin_redeem(agreement)
    key = f"redeem:{agreement}:{voucher.sequence}"  # the key the seller's redeem uses
    request = ag.signed_redeem(market.seller.key, agreement, voucher, list(receipts), key)
    first = market.seller.settlement.Redeem(request, timeout=10)  # its answer "lost"
    assert first.captured_atomic == 0
    request.buyer_confirmation = market.buyer.key.sign(ag.request_message("confirm", agreement))
    again = market.seller.settlement.Redeem(request, timeout=10)
    assert again.captured_atomic == 2 * deal.body.terms.unit_price_atomic
    assert market.node.settlement.get(agreement)["state"] == "settled"
    assert market.seller.settlement.Redeem(request, timeout=10) == again  # and once only
