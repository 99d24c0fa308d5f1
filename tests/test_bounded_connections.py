"""Parties that dial endpoints taken from strangers' listings keep a bounded number of
connections: a buyer, an async buyer and the x402 gateway buying from more sellers than their
cap still buy from each (an evicted seller is dialed again), keep at most the cap open, and the
books balance.

Real parts: a node (SQLite file), sellers on gRPC (port 0), the gateway on uvicorn
(loopback), x402's own httpx client.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
from collections.abc import Iterator

import pytest

from agents import AsyncBuyerAgent, BuyerAgent, SellerAgent, per_call, skill
from agents.x402 import Gateway, http_client
from marketplace import channel_cache
from marketplace.http import HttpServer
from marketplace.node import MarketplaceNode
from tests.x402_market import books_balance, count_words, shout

CAP = 2
SELLERS = 4


@skill(price=per_call("0.001", "USD"))
def echo(text: str) -> dict:
    """Echo a text."""
    return {"text": text}


@pytest.fixture
def market(tmp_path, monkeypatch) -> Iterator[tuple[MarketplaceNode, list[SellerAgent]]]:
    monkeypatch.setattr(channel_cache, "MAX_CHANNELS", CAP)
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    sellers = [SellerAgent(f"seller-{n}", skills=[echo, shout, count_words],
                           marketplace=node.address, dispute_window_s=0).serve()
               for n in range(SELLERS)]
    yield node, sellers
    books_balance(node)
    for seller in sellers:
        seller.stop(0)
    node.stop(0)


def test_a_buyer_dialing_more_sellers_than_its_cap_buys_from_each(market):
    node, _sellers = market
    with BuyerAgent("buyer", marketplace=node.address) as buyer:
        buyer.fund("1.00", "USD")
        listings = buyer.discover("echo", currency="USD")
        assert len(listings) == SELLERS
        deals = [buyer.negotiate(listing, "echo", quantity=2, budget="0.01", currency="USD")
                 for listing in listings]
        for deal in deals:
            buyer.hire(deal)
        for round_ in range(2):  # each round dials every seller again, past the cap
            for n, deal in enumerate(deals):
                assert buyer.call(deal, {"text": f"{round_}-{n}"}) == {"text": f"{round_}-{n}"}
                assert len(buyer._seller_channels) <= CAP
        escrows = [buyer.finish(deal) for deal in deals]
    assert [e.captured.amount_atomic for e in escrows] == [
        2 * deal.body.terms.unit_price_atomic for deal in deals]


def test_an_async_buyer_dialing_more_sellers_than_its_cap_buys_from_each(market):
    node, _sellers = market

    async def task() -> list[dict]:
        async with AsyncBuyerAgent("async", marketplace=node.address) as buyer:
            await buyer.fund("1.00", "USD")
            listings = await buyer.discover("echo", currency="USD")
            deals = [await buyer.negotiate(listing, "echo", quantity=2, budget="0.01",
                                           currency="USD") for listing in listings]
            for deal in deals:
                await buyer.hire(deal)
            outputs = []
            for round_ in range(2):
                for n, deal in enumerate(deals):
                    outputs.append(await buyer.call(deal, {"text": f"{round_}-{n}"}))
                    assert len(buyer._sellers._cache) <= CAP
            await asyncio.gather(*(buyer.finish(deal) for deal in deals))
            return outputs

    outputs = asyncio.run(task())
    assert outputs == [{"text": f"{r}-{n}"} for r in range(2) for n in range(SELLERS)]


def test_the_gateway_buying_from_more_sellers_than_its_cap_answers_each(market):
    node, sellers = market
    gateway = Gateway(node)
    http = HttpServer(gateway.app()).start()
    buyer = BuyerAgent("http-buyer", marketplace=node.address)
    buyer.fund("1.00", "USD")
    buyer.close()

    async def run() -> list[tuple[int, int]]:
        client, _ = http_client(buyer.key, gateway.network)
        answers = []
        async with client:
            for skill_name, arguments in (("shout", {"text": "hi"}),
                                          ("count_words", {"text": "a b c"})):
                for seller in sellers:  # metered: each route asks its seller for a quote
                    url = f"{http.url}/v1/skills/{seller.agent_id}/{skill_name}"
                    answer = await client.post(url, json=arguments)
                    answers.append((answer.status_code, len(gateway.channels)))
        return answers

    try:
        answers = asyncio.run(run())
    finally:
        http.stop(0)
    assert [status for status, _open in answers] == [200] * 2 * SELLERS
    assert all(open_ <= 2 * CAP for _status, open_ in answers)  # plain and signed kinds
