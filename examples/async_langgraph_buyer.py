"""An async LangGraph buyer: a StateGraph whose nodes await the async buyer (grpc.aio).

Two sellers of a translation skill; the graph discovers them, negotiates with the cheapest
that answers, hires it (escrow), translates three sentences with paid calls made concurrently
with other asyncio work, and settles, all inside `await graph.ainvoke(...)`, as an async agent
framework would run it. Every hop is real gRPC on loopback; the marketplace runs in-process.
"""

import asyncio
import tempfile
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

from agents import AsyncBuyerAgent, SellerAgent, per_call, skill
from marketplace import MarketplaceNode

SENTENCES = ["Agents pay per call.", "Escrow holds the money.", "Receipts are signed."]


class Translation(BaseModel):
    text: str
    language: str


def translator(price: str) -> Any:
    @skill(price=per_call(price, "USD"), name="translate")
    async def translate(text: str, language: str = "pig-latin") -> Translation:
        """Translate a sentence (into pig latin, offline)."""
        await asyncio.sleep(0)  # an async skill: it could await a model here
        words = [w[1:] + w[0] + "ay" if w[:1].isalpha() else w for w in text.split()]
        return Translation(text=" ".join(words), language=language)

    return translate


class Task(TypedDict, total=False):
    sentences: list[str]
    listings: list[Any]
    deal: Any
    translations: list[str]
    paid: str
    refunded: str


def build_graph(buyer: AsyncBuyerAgent) -> Any:
    async def discover(state: Task) -> Task:
        return {"listings": await buyer.discover("translate", currency="USD")}

    async def negotiate(state: Task) -> Task:
        deal = await buyer.negotiate(state["listings"], "translate",
                                     quantity=len(state["sentences"]), budget="0.01",
                                     currency="USD")
        await buyer.hire(deal)
        return {"deal": deal}

    async def translate(state: Task) -> Task:
        outputs = []
        for sentence in state["sentences"]:
            outputs.append(await buyer.call(state["deal"], {"text": sentence},
                                            output_type=Translation))
        return {"translations": [o.text for o in outputs]}

    async def settle(state: Task) -> Task:
        escrow = await buyer.finish(state["deal"])
        return {"paid": str(escrow.seller_net), "refunded": str(escrow.refunded)}

    graph = StateGraph(Task)
    for name, node in [("discover", discover), ("negotiate", negotiate),
                       ("translate", translate), ("settle", settle)]:
        graph.add_node(name, node)
    graph.add_edge(START, "discover")
    graph.add_edge("discover", "negotiate")
    graph.add_edge("negotiate", "translate")
    graph.add_edge("translate", "settle")
    graph.add_edge("settle", END)
    return graph.compile()


async def main(address: str) -> None:
    async with AsyncBuyerAgent("async-buyer", marketplace=address) as buyer:
        await buyer.fund("0.10", "USD")
        ticks = 0

        async def heartbeat() -> None:  # other asyncio work runs while the graph pays
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        beating = asyncio.create_task(heartbeat())
        state = await build_graph(buyer).ainvoke({"sentences": SENTENCES})
        beating.cancel()
        for sentence, translation in zip(SENTENCES, state["translations"], strict=True):
            print(f"{sentence:<28} -> {translation}")
        balance = await buyer.balance("USD")
        print(f"seller received {state['paid']}; refunded {state['refunded']}; "
              f"wallet now {balance}; the event loop ran {ticks} other ticks meanwhile")


with MarketplaceNode(f"sqlite:///{tempfile.mkdtemp()}/market.db") as node, \
        SellerAgent("cheap", skills=[translator("0.001")], marketplace=node.address), \
        SellerAgent("dear", skills=[translator("0.002")], marketplace=node.address):
    asyncio.run(main(node.address))
