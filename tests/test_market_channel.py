"""Clients of a market served by several nodes: the addresses they take, and what a node that
stops answering costs them (a retry on another node, nothing more).

Two real nodes over one PostgreSQL schema; the async buyer (grpc.aio) keeps funding its wallet
while one of them stops; every deposit lands once.
"""

from __future__ import annotations

import asyncio

import pytest

from agents import AsyncBuyerAgent, BuyerAgent, InvalidArgument
from marketplace.market_channel import market_options, market_target
from marketplace.node import MarketplaceNode
from tests.conftest import postgres_schema


def test_a_list_of_nodes_is_one_round_robin_target():
    assert market_target("127.0.0.1:7000") == "127.0.0.1:7000"
    assert market_target(["127.0.0.1:7000"]) == "127.0.0.1:7000"
    target = market_target(["127.0.0.1:7000", "127.0.0.2:7001"])
    assert target == "ipv4:127.0.0.1:7000,127.0.0.2:7001"
    assert market_target(["[::1]:7000", "[::1]:7001"]) == "ipv6:[::1]:7000,[::1]:7001"
    assert market_options(target) == [("grpc.lb_policy_name", "round_robin")]
    assert market_options("dns:///market.internal:7000") == market_options(target)
    assert market_options("127.0.0.1:7000") == []


@pytest.mark.parametrize("addresses", [["market.internal:7000", "127.0.0.1:7001"],
                                       ["127.0.0.1:7000", "[::1]:7001"], [], ["127.0.0.1"]])
def test_a_list_the_client_cannot_balance_is_refused(addresses: list[str]):
    with pytest.raises(InvalidArgument):
        BuyerAgent("b", marketplace=addresses)


def test_the_async_buyer_rides_over_a_stopped_node(postgres_url: str):
    with postgres_schema(postgres_url) as db:
        first, second = MarketplaceNode(db).start(), MarketplaceNode(db).start()
        try:
            asyncio.run(_fund_through(first, second))
        finally:
            first.stop(0)
            second.stop(0)


async def _fund_through(first: MarketplaceNode, second: MarketplaceNode) -> None:
    async with AsyncBuyerAgent("b", marketplace=[first.address, second.address]) as buyer:
        for n in range(4):
            await buyer.fund("0.01", "USD", idempotency_key=f"before-{n}")
        first.stop(0)  # its calls now fail UNAVAILABLE: retried on the other node
        for n in range(4):
            await buyer.fund("0.01", "USD", idempotency_key=f"after-{n}")
        balance = await buyer.balance("USD")
        assert balance.amount_atomic == 8 * 10_000_000
    keys = [p.idempotency_key for p in second.ledger.postings()
            if p.idempotency_key.startswith(("before-", "after-"))]
    assert sorted(keys) == sorted([*(f"before-{n}" for n in range(4)),
                                   *(f"after-{n}" for n in range(4))])
