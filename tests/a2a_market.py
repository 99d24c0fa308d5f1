"""A seller with an A2A door for the A2A tests: a node (SQLite file, gRPC on port 0), the
seller serving its skills and its Agent Card, a funded buyer, and a stub of the seller's
A2AService."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from a2a.types import a2a_pb2_grpc

from agents._a2a_door import A2ADoor
from agents.buyer import BuyerAgent, Deal
from agents.seller import SellerAgent
from agents.skills import free, per_call, skill
from marketplace.node import MarketplaceNode


@skill(price=per_call("0.002", "USD"))
def echo(text: str) -> dict:
    """Return the text."""
    return {"text": text}


@skill(price=free())
def hello(name: str) -> dict:
    """Greet someone, for free."""
    return {"greeting": f"hello {name}"}


# Cleared by a test that must see `write` still running; its last word waits until it is set.
WRITE_MAY_FINISH = threading.Event()
WRITE_MAY_FINISH.set()


@skill(price=per_call("0.003", "USD"))
def write(topic: str) -> Iterator[str]:
    """Write about a topic, streamed slowly."""
    for word in ("agents", " pay", " each", " other"):
        time.sleep(0.2)
        yield word
    WRITE_MAY_FINISH.wait(timeout=30)
    yield " slowly"


@dataclass
class Market:
    node: MarketplaceNode
    seller: SellerAgent
    buyer: BuyerAgent
    stub: a2a_pb2_grpc.A2AServiceStub

    @property
    def base_url(self) -> str:
        return self.seller.card_url.removesuffix("/.well-known/agent-card.json")

    def deal(self, skill_name: str = "echo", quantity: int = 5) -> Deal:
        deal = self.buyer.negotiate_card(self.seller.card_url, skill_name, quantity=quantity,
                                         budget="0.05", currency="USD")
        self.buyer.hire(deal)
        return deal

    def door(self) -> A2ADoor:
        """The seller's A2A door (its task store, its subscriptions)."""
        return next(o for o in gc.get_objects()
                    if isinstance(o, A2ADoor) and o.seller is self.seller)


def open_market(folder: Path, skills: list[Any]) -> Iterator[Market]:
    node = MarketplaceNode(f"sqlite:///{folder / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("echoer", skills=skills, marketplace=node.address,
                         card_port=0).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    buyer.fund("1.00", "USD")
    channel = grpc.insecure_channel(seller.endpoint)
    yield Market(node, seller, buyer, a2a_pb2_grpc.A2AServiceStub(channel))
    channel.close()
    seller.stop(0)
    buyer.close()
    node.stop(0)
