"""The parties of the deployed-shape benchmark, each run as its own process.

    python -m benchmarks._deployed_parties seller MARKETPLACE NAME
    python -m benchmarks._deployed_parties buyers MARKETPLACE[,NODE...] COUNT PREFIX START STOP
    python -m benchmarks._deployed_parties async-buyers MARKETPLACE COUNT PREFIX START STOP

A seller prints "ready" once it serves and advertises, then serves until SIGTERM. A buyers
process runs COUNT buyers, each one task after another (discover, negotiate, escrow, 10 paid
calls, settle), from the moment START_FILE exists until STOP_FILE does, printing "done N"
every second; then one JSON line: when each task ended, errors, each step's latencies in ms.
`buyers` runs each `BuyerAgent` on a thread of its own; `async-buyers` runs `AsyncBuyerAgent`s
as tasks of one event loop, as a program serving many buyers at once would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agents import AsyncBuyerAgent, BuyerAgent, SellerAgent
from benchmarks.tasks import CALLS, echo  # the in-process benchmark's skill and task size
from marketplace.heap import settle_heap
from marketplace.scheduling import batch_scheduling
from marketplace.stop_signals import StopSignals

GC_DEFAULTS = "AGENTMARKET_BENCH_GC_DEFAULTS"  # "1": parties keep CPython's collector settings
NORMAL_SCHEDULING = "AGENTMARKET_BENCH_NORMAL_SCHEDULING"  # "1": Linux's default policy
STEPS = ("discover", "negotiate", "hire", "call", "finish", "task")


def seller(marketplace: str, name: str) -> None:
    stop = StopSignals((signal.SIGTERM,))
    agent = SellerAgent(name, skills=[echo], marketplace=marketplace).serve()
    _settle()
    print("ready", flush=True)
    stop.wait()
    agent.stop(0)


def _settle() -> None:
    """A started party settles its heap and takes batch scheduling, as a deployed process
    would (`marketplace.heap`, `marketplace.scheduling`), unless the benchmark compares against
    CPython's collector settings (`--gc-defaults`) or Linux's default policy
    (`--normal-scheduling`)."""
    if os.environ.get(GC_DEFAULTS) != "1":
        settle_heap()
    if os.environ.get(NORMAL_SCHEDULING) != "1":
        batch_scheduling()


def _timed(latencies: dict[str, list[float]], step: str, call):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    try:
        result = call()
    except Exception as error:  # which step failed, and after how long, goes with the error
        error.add_note(f"{step} after {(time.perf_counter() - start) * 1000:.0f} ms")
        raise
    latencies[step].append((time.perf_counter() - start) * 1000)
    return result


def _errored(error: Exception) -> str:
    where = "; ".join(getattr(error, "__notes__", []))
    return f"{type(error).__name__} ({where or 'between steps'}): {error}"


def _new_out() -> dict[str, Any]:
    return {"done_at": [], "errors": [], "latencies": {s: [] for s in STEPS}}


def _merged(outs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"done_at": [t for o in outs for t in o["done_at"]],
            "errors": [e for o in outs for e in o["errors"]],
            "latencies": {s: [x for o in outs for x in o["latencies"][s]] for s in STEPS}}


def _finished(out: dict[str, Any], deal: Any, escrow: Any, begun: float) -> None:
    """Count a settled task, or an error if the seller was not paid exactly for its calls."""
    if escrow.captured_atomic != CALLS * deal.body.terms.unit_price_atomic:
        out["errors"].append("seller not paid exactly for the calls made")
        return
    out["latencies"]["task"].append((time.perf_counter() - begun) * 1000)
    out["done_at"].append(time.time())


def _buyer_loop(buyer: BuyerAgent, start: Path, stop: Path, out: dict) -> None:  # type: ignore[type-arg]
    latencies: dict[str, list[float]] = out["latencies"]
    while not start.exists():
        time.sleep(0.01)
    while not stop.exists():
        begun = time.perf_counter()
        try:
            listings = _timed(latencies, "discover", lambda: buyer.discover("echo", currency="USD"))
            listing = listings[hash(buyer.agent_id) % len(listings)]
            deal = _timed(latencies, "negotiate", lambda chosen=listing: buyer.negotiate(
                chosen, "echo", quantity=CALLS, budget="0.01", currency="USD"))
            _timed(latencies, "hire", lambda d=deal: buyer.hire(d))
            for i in range(CALLS):
                _timed(latencies, "call", lambda d=deal, i=i: buyer.call(d, {"text": f"call {i}"}))
            _finished(out, deal, _timed(latencies, "finish", lambda d=deal: buyer.finish(d)),
                      begun)
        except Exception as error:  # counted and reported, never hidden
            out["errors"].append(_errored(error))


def buyers(marketplace: str, count: int, prefix: str, start: Path, stop: Path) -> None:
    nodes = marketplace.split(",")  # several nodes: every buyer is given all of them
    agents = [BuyerAgent(f"{prefix}-{i}", marketplace=nodes if len(nodes) > 1 else marketplace)
              for i in range(count)]
    for agent in agents:
        agent.fund("100.00", "USD")
    _settle()
    outs = [_new_out() for _ in agents]
    threads = [threading.Thread(target=_buyer_loop, args=(a, start, stop, o), daemon=True)
               for a, o in zip(agents, outs, strict=True)]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    while any(thread.is_alive() for thread in threads):
        time.sleep(1.0)
        print(f"done {sum(len(o['done_at']) for o in outs)}", flush=True)
    for agent in agents:
        agent.close()
    print(json.dumps(_merged(outs)), flush=True)


async def _atimed(latencies: dict[str, list[float]], step: str, call):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    try:
        result = await call
    except Exception as error:
        error.add_note(f"{step} after {(time.perf_counter() - start) * 1000:.0f} ms")
        raise
    latencies[step].append((time.perf_counter() - start) * 1000)
    return result


async def _async_buyer_loop(buyer: AsyncBuyerAgent, start: Path, stop: Path,
                            out: dict[str, Any]) -> None:
    """`_buyer_loop` as a task of the event loop."""
    latencies: dict[str, list[float]] = out["latencies"]
    while not start.exists():
        await asyncio.sleep(0.01)
    while not stop.exists():
        begun = time.perf_counter()
        try:
            listings = await _atimed(latencies, "discover",
                                     buyer.discover("echo", currency="USD"))
            listing = listings[hash(buyer.agent_id) % len(listings)]
            deal = await _atimed(latencies, "negotiate", buyer.negotiate(
                listing, "echo", quantity=CALLS, budget="0.01", currency="USD"))
            await _atimed(latencies, "hire", buyer.hire(deal))
            for i in range(CALLS):
                await _atimed(latencies, "call", buyer.call(deal, {"text": f"call {i}"}))
            _finished(out, deal, await _atimed(latencies, "finish", buyer.finish(deal)), begun)
        except Exception as error:  # counted and reported, never hidden
            out["errors"].append(_errored(error))


async def async_buyers(marketplace: str, count: int, prefix: str, start: Path, stop: Path
                       ) -> None:
    agents = [AsyncBuyerAgent(f"{prefix}-{i}", marketplace=marketplace) for i in range(count)]
    for agent in agents:
        await agent.fund("100.00", "USD")
    _settle()
    outs = [_new_out() for _ in agents]
    tasks = [asyncio.create_task(_async_buyer_loop(a, start, stop, o))
             for a, o in zip(agents, outs, strict=True)]
    print("ready", flush=True)
    while not all(task.done() for task in tasks):
        await asyncio.sleep(1.0)
        print(f"done {sum(len(o['done_at']) for o in outs)}", flush=True)
    for agent in agents:
        await agent.close()
    print(json.dumps(_merged(outs)), flush=True)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "seller":
        seller(args[0], args[1])
    elif role == "async-buyers":
        asyncio.run(async_buyers(args[0], int(args[1]), args[2], Path(args[3]), Path(args[4])))
    else:
        buyers(args[0], int(args[1]), args[2], Path(args[3]), Path(args[4]))
