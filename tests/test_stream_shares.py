"""One buyer holds at most its share of a seller's stream slots
(`marketplace.stream_limits.PayerShares`).

A seller's server keeps 12 of its 16 workers for streams. Before the share, one buyer running
slow streamed skills could hold all 12 (and pay for each), and every other buyer's stream was
refused STREAMS_BUSY for as long as they ran. Now the buyer's seventh is refused instead, with
its reserve given back, and another buyer's stream goes through meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents.errors import AgentmarketError
from marketplace.node import MarketplaceNode
from marketplace.stream_limits import PAYER_SHARE, streams_allowed

WORKERS = 16
SHARE = int(streams_allowed(WORKERS) * PAYER_SHARE)
GATE = threading.Event()  # the slow skill's streams wait on it after their first piece


@skill(price=per_call("0.001", "USD"))
def slow(topic: str) -> Iterator[str]:
    """A first piece at once, the rest once let go."""
    yield f"{topic}: "
    GATE.wait(30)
    yield "done"


def _deals(buyer: BuyerAgent, count: int) -> list:
    listing = buyer.discover("slow", currency="USD")[0]
    deals = []
    for _ in range(count):
        deal = buyer.negotiate(listing, "slow", quantity=2, budget="0.01", currency="USD")
        buyer.hire(deal)
        deals.append(deal)
    return deals


@pytest.mark.parametrize("server", ["threaded", "aio"])
def test_one_buyer_holds_at_most_its_share_of_the_stream_slots(tmp_path, server: str):
    assert SHARE == 6
    GATE.clear()
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("slow", skills=[slow], marketplace=node.address, server=server,
                        max_workers=WORKERS) as seller:
        greedy = BuyerAgent("greedy", marketplace=node.address)
        honest = BuyerAgent("honest", marketplace=node.address)
        try:
            greedy.fund("1", "USD")
            honest.fund("1", "USD")
            deals = _deals(greedy, SHARE + 1)
            (honest_deal,) = _deals(honest, 1)
            held = [iter(greedy.stream(deal, {"topic": f"g{n}"})) for n, deal in
                    enumerate(deals[:SHARE])]
            assert [next(pieces) for pieces in held] == [f"g{n}: " for n in range(SHARE)]

            with pytest.raises(AgentmarketError) as refused:
                next(iter(greedy.stream(deals[SHARE], {"topic": "one too many"})))
            assert refused.value.reason == "STREAMS_BUSY" and "share" in refused.value.message
            assert seller.calls.stream_shares.holding(greedy.agent_id) == SHARE

            fair = honest.stream(honest_deal, {"topic": "h"})
            fair_pieces = iter(fair)
            assert next(fair_pieces) == "h: "  # while the greedy buyer still holds its share
            GATE.set()
            assert "".join(fair_pieces) == "done" and fair.text == "h: done"
            assert ["".join(pieces) for pieces in held] == ["done"] * SHARE

            greedy_free = greedy.stream(deals[SHARE], {"topic": "later"})
            assert "".join(greedy_free) == "later: done"  # its share was given back
            assert seller.calls.stream_shares.holding(greedy.agent_id) == 0

            price = deals[0].body.terms.unit_price_atomic
            for deal in deals:  # the refused stream was not charged: one call each
                assert greedy.finish(deal).captured_atomic == price
            assert honest.finish(honest_deal).captured_atomic == price
        finally:
            GATE.set()
            greedy.close()
            honest.close()
