"""A marketplace for the x402 tests: node, seller, funded buyer key and the gateway.

Real parts: a node (SQLite file, gRPC on port 0), a seller agent selling a per-call and a
per-unit skill, the gateway on uvicorn (loopback, port 0).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from x402.http.utils import decode_payment_response_header

from agents import (
    BuyerAgent,
    SellerAgent,
    current_meter,
    per_1k_tokens,
    per_call,
    per_unit,
    skill,
)
from agents.llm import stream
from agents.x402 import Gateway
from agents.x402.network import network_id
from marketplace.http import HttpServer
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode

MODEL = "gpt-4o-mini"


@skill(price=per_call("0.002", "USD"))
def shout(text: str) -> dict:
    """Upper-case a text (per call)."""
    return {"text": text.upper()}


@skill(price=per_call("0.002", "USD"))
def whisper(text: str) -> dict:
    """Lower-case a text (per call, the same price as shout)."""
    return {"text": text.lower()}


@skill(price=per_unit("0.001", "USD", "word"), max_units=50)
def count_words(text: str) -> dict:
    """Count words, billed per word."""
    words = len(text.split())
    current_meter().add_units(words)
    return {"text": str(words)}


@skill(price=per_1k_tokens("0.001", "0.002", "USD"), max_input_tokens=200,
       max_output_tokens=100)
def write(topic: str, words: int) -> Iterator[str]:
    """Write about a topic, streamed and billed per token."""
    text = " ".join(f"{topic}{i}" for i in range(words))
    yield from stream(MODEL, [{"role": "user", "content": f"Write about {topic}"}],
                      mock_response=text)


@skill(price=per_1k_tokens("0.001", "0.002", "USD"), max_input_tokens=200,
       max_output_tokens=100)
def drip(topic: str, words: int) -> Iterator[str]:
    """Write about a topic slowly, streamed and billed per token: its reader may hang up."""
    text = " ".join(f"{topic}{i}" for i in range(words))
    for piece in stream(MODEL, [{"role": "user", "content": f"Write about {topic}"}],
                        mock_response=text):
        time.sleep(0.01)
        yield piece


@dataclass
class Market:
    node: MarketplaceNode
    seller: SellerAgent
    gateway: Gateway
    http: HttpServer
    key: AgentKey

    def posted(self, owner: str) -> int:
        account = self.node.ledger.find_account(owner, "USD")
        return account.posted_atomic if account else 0

    @property
    def network(self) -> str:
        return network_id(self.node.agent_id)

    def url(self, skill_name: str) -> str:
        return f"{self.http.url}/v1/skills/{self.seller.agent_id}/{skill_name}"


def open_market(tmp_path: Path, tracer_provider: Any = None) -> Iterator[Market]:
    os.environ.pop("AGENTMARKET_MODEL", None)
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600,
                           tracer_provider=tracer_provider).start()
    seller = SellerAgent("shouter", skills=[shout, whisper, count_words, write],
                         marketplace=node.address, dispute_window_s=0,
                         tracer_provider=tracer_provider).serve()
    key = AgentKey.generate()
    buyer = BuyerAgent("http-buyer", marketplace=node.address, key=key)
    buyer.fund("1.00", "USD")
    buyer.close()
    gateway = Gateway(node, tracer_provider=tracer_provider)
    http = HttpServer(gateway.app()).start()
    yield Market(node, seller, gateway, http, key)
    books_balance(node)
    http.stop(0)
    seller.stop(0)
    node.stop(0)


async def read_stream(client: Any, url: str, *, words: int = 40, hang_up: bool = False,
                      seen: Any = None) -> tuple[list[tuple[str, str]], Any]:
    """The events of one streamed call and its PAYMENT-RESPONSE header (the hold); `hang_up`:
    leave after the first piece; `seen(events)`: told of each event as it comes."""
    events: list[tuple[str, str]] = []
    async with client.stream("POST", url, json={"topic": "agents", "words": words},
                             headers={"accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        held = decode_payment_response_header(response.headers["payment-response"])
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, line[6:]))
                if seen is not None:
                    seen(events)
                if hang_up and name == "message":
                    break
    return events, held


def books_balance(node: MarketplaceNode) -> None:
    """Per currency the accounts' posted amounts sum to zero and pending debits equal
    pending credits (what is held is owed to someone)."""
    totals: dict[str, list[int]] = {}
    for account in node.ledger.accounts():
        found = totals.setdefault(account.currency, [0, 0])
        found[0] += account.posted_atomic
        found[1] += account.pending_debits_atomic - account.pending_credits_atomic
    assert all(v == [0, 0] for v in totals.values()), totals
