"""Listings parked at an honest seller's endpoint: free keys advertise copies of its listing a
unit cheaper at its address, so they rank above it. The registry cannot tell (the endpoint
answers its probe), but the buyer can: the endpoint answers as another agent. Such listings are
skipped without counting as sellers tried, and the buyer reaches the seller that answers there,
from the listings it was given or from the registry's refill."""

from __future__ import annotations

import uuid

import pytest

from agents import AsyncBuyerAgent, BuyerAgent, SellerAgent
from agents._failover import MAX_SELLERS_TRIED
from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.v1 import registry_pb2, registry_pb2_grpc
from tests.test_checked_answers import echo  # a per-call echo with a schema

PARKED = MAX_SELLERS_TRIED + 2  # more than a buyer tries


@pytest.fixture
def market(tmp_path):
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("honest", skills=[echo], marketplace=node.address) as seller, \
            BuyerAgent("buyer", marketplace=node.address) as buyer:
        buyer.fund("1.00", "USD")
        [honest] = buyer.discover("echo", currency="USD")
        for n in range(PARKED):
            _park(node, honest, f"parked-{n}", honest.endpoint)
        yield node, seller, buyer


def _park(node: MarketplaceNode, honest: registry_pb2.Listing, name: str,
          endpoint: str) -> None:
    """A free key lists a copy of `honest`, one atomic unit cheaper, at `endpoint`."""
    key = AgentKey.generate()
    listing = registry_pb2.Listing()
    listing.CopyFrom(honest)
    listing.agent_id, listing.name, listing.endpoint = key.agent_id, name, endpoint
    for field in ("expires_at_ms", "reputation_permille", "rated_agreements"):
        listing.ClearField(field)
    listing.skills[0].prices[0].amount_atomic -= 1
    with signed_channel(node.address, key) as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).Advertise(
            registry_pb2.AdvertiseRequest(idempotency_key=str(uuid.uuid4()),
                                          listing=listing, ttl_s=3600), timeout=10)


def test_the_buyer_reaches_the_seller_behind_listings_parked_at_its_endpoint(market):
    _node, seller, buyer = market
    ranked = buyer.discover("echo", currency="USD")
    assert ranked[-1].agent_id == seller.agent_id  # every parked copy ranks above it
    deal = buyer.negotiate(ranked, "echo", quantity=2, budget="0.10", currency="USD")
    assert deal.body.seller_id == seller.agent_id
    refilled = buyer.negotiate(buyer.discover("echo", currency="USD", limit=1), "echo",
                               quantity=2, budget="0.10", currency="USD")
    assert refilled.body.seller_id == seller.agent_id


def test_the_async_buyer_too(market):
    import asyncio

    node, seller, _ = market

    async def main() -> str:
        async with AsyncBuyerAgent("async-buyer", marketplace=node.address) as buyer:
            await buyer.fund("1.00", "USD")
            deal = await buyer.negotiate(await buyer.discover("echo", currency="USD", limit=1),
                                         "echo", quantity=2, budget="0.10", currency="USD")
            return deal.body.seller_id

    assert asyncio.run(main()) == seller.agent_id


def test_copies_at_other_spellings_of_its_address_leave_no_negotiation_open_there(tmp_path):
    """17 free keys list copies of the honest seller at other spellings of its address
    ("LOCALHOST:port", "lOcalhost:port" ...), so the buyer's failover does not know the agent
    behind each: every RFQ reached the honest seller and stayed open there, until it refused
    this buyer any more (16 open at once) and even the honest listing could not be
    negotiated. The buyer now declines each one it finds is not the listed agent."""
    import itertools

    from agents._strategy_host import MAX_NEGOTIATIONS_PER_BUYER

    copies = MAX_NEGOTIATIONS_PER_BUYER + 1
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("honest", skills=[echo], marketplace=node.address) as seller, \
            BuyerAgent("buyer", marketplace=node.address) as buyer:
        buyer.fund("1.00", "USD")
        [honest] = buyer.discover("echo", currency="USD")
        port = honest.endpoint.rsplit(":", 1)[1]
        spellings = ("".join(letters) + ":" + port for letters in itertools.product(
            *[(c.lower(), c.upper()) for c in "localhost"]))
        for n, endpoint in zip(range(copies), spellings, strict=False):
            _park(node, honest, f"p{n}", endpoint)
        ranked = buyer.discover("echo", currency="USD", limit=copies + 1)
        assert ranked[-1].agent_id == seller.agent_id
        deal = buyer.negotiate(ranked, "echo", quantity=2, budget="0.10", currency="USD")
        assert deal.body.seller_id == seller.agent_id
        assert not seller.negotiator._by_buyer.get(buyer.agent_id)
        again = buyer.negotiate(ranked[-1], "echo", quantity=2, budget="0.10",
                                currency="USD", failover=False)
        assert again.body.seller_id == seller.agent_id


def test_spellings_of_one_address_are_one_address_to_the_failover():
    from agents._failover import address_key

    assert address_key("LocalHost:0080") == address_key("localhost:80") == "localhost:80"
    assert address_key("[::1]:5000") == "[::1]:5000"
    assert address_key("seller.example:7000") != address_key("seller.example:7001")
