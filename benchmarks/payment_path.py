"""The payment's own work per paid call, on one event loop and without gRPC: what paying adds
to the seller's interpreter and to the buyer's, with and without the durable record.

Why: `paid_call_ratio_aio_async` runs seller and buyers in processes of their own over gRPC,
as deployed, so its CPU figures carry gRPC's own cost (about 230 us a call on the seller) and
move by up to 40% between runs on this machine; they cannot say which part of the payment
costs what. Here the same code runs with gRPC taken away: the buyer plans each call and checks
each answer as `BuyerAgent.invoke` does (`_plan`, `_answered`), and the aio seller's Invoke
(`agents._aio_invoke.fast_invoke`) admits, runs, bills and books it, `CALLERS` calls at once
(one agreement each), so the journal batches as it does under the saturating load. Reported
per call, as thread CPU:
- `payment_path_unpaid_us`: the unpaid async echo as the unpaid server runs it (input parsed and
  checked, the skill, the answer) and its caller parses the output: the work both sides share;
- `payment_path_seller_us`, `payment_path_buyer_us`: the paid call with the seller's journal
  switched off (as `paid_call_ratio_no_journal`: a measure, not a mode the framework offers);
- `payment_path_seller_recorded_us`, `payment_path_buyer_recorded_us`: with the journal, each
  answer waiting for its record's commit; `payment_path_writer_us`: the journal's writer
  thread (its SQLite work, and the kernel's fdatasync of each batch).
The seller's figure is the loop thread's CPU less the buyer's steps (timed in that thread).
Each caller lets the others run between its calls on every side, so calls interleave as on a
server (one caller's calls run back to back would find every cache warm and flatter the side
that never waits). With the record, both rise although their code is the same: the call now
waits (a future, a wake-up per batch, each call resumed), and the writer thread shares the
interpreter lock.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from opentelemetry import trace

from agents._aio_invoke import fast_invoke
from agents.seller import SellerAgent
from agents.v1 import agent_pb2
from benchmarks._paid_sides import SKILLS, UnpaidServicer, hired_buyers
from marketplace import MarketplaceNode

CALLERS = 16
CALLS_PER_CALLER = 400  # each round
ROUNDS = 5
SKILL = "echo_async"


class _Context:
    """What the aio Invoke reads of its gRPC context: the call's metadata."""

    def __init__(self, metadata: Any) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> Any:
        return self._metadata

    def done(self) -> bool:
        return False

    async def abort(self, code: Any, details: str = "", trailing: Any = ()) -> None:
        raise RuntimeError(f"the benchmark's call was refused: {code} {details}")

    async def abort_with_status(self, status: Any) -> None:
        raise RuntimeError(f"the benchmark's call was refused: {status}")


class _PaidSide:
    """A served aio seller and `CALLERS` buyers hired by it, driven on one loop."""

    def __init__(self, node: MarketplaceNode, journal: Path, loop: Any, *,
                 recorded: bool) -> None:
        self.seller = SellerAgent(SKILL, skills=[SKILLS[SKILL]], marketplace=node.address,
                                  journal=journal, server="aio")
        self.writer = self.seller.gate.journal._writer  # type: ignore[union-attr]
        if not recorded:
            self.seller.gate.journal = None
        self.seller.serve()
        self.buyers = hired_buyers(node, self.seller.endpoint, SKILL,
                                   CALLS_PER_CALLER * ROUNDS + 10, CALLERS,
                                   "path" if recorded else "path-unrecorded")
        self.executor = ThreadPoolExecutor(max_workers=4)
        self.invoke = fast_invoke(self.seller, self.executor)
        self.loop = loop
        self.calls = 0
        self.round(2)  # each agreement's first call asks the marketplace for its escrow

    def round(self, calls: int) -> tuple[float, float, float]:
        """Loop thread CPU, the buyer's share of it, and the journal writer's CPU, per call
        (seconds)."""
        buyer_s = [0.0]
        span = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
        clock = time.thread_time

        async def caller(buyer: Any, deal: Any) -> None:
            for i in range(calls):
                start = clock()
                planned = buyer._plan(deal, {"text": f"call {i}"}, None, None)
                metadata = planned.metadata
                buyer_s[0] += clock() - start
                response = await self.invoke(planned.request, _Context(metadata))
                start = clock()
                buyer._answered(planned, response, span)
                buyer_s[0] += clock() - start
                await asyncio.sleep(0)  # the others' calls in between, as a server runs them

        async def everyone() -> None:
            await asyncio.gather(*(caller(b, d) for b, d in self.buyers))

        writer_clock = time.pthread_getcpuclockid(self.writer.ident)  # type: ignore[arg-type]
        writer, thread = time.clock_gettime(writer_clock), clock()
        self.loop.run_until_complete(everyone())
        thread, writer = clock() - thread, time.clock_gettime(writer_clock) - writer
        made = calls * CALLERS
        self.calls += made
        return thread / made, buyer_s[0] / made, writer / made

    def close(self) -> None:
        for buyer, _ in self.buyers:
            buyer.close()
        self.executor.shutdown()
        self.seller.stop(0)


def _check_recorded(side: _PaidSide) -> None:
    """Every paid call of the recorded side has its record in the journal, and each buyer got
    an output per call: a side that skipped either would flatter its figures."""
    journal = side.seller.gate.journal
    assert journal is not None
    journal.flush()
    recorded = sum(len(entry.calls) for entry in journal.load())
    outputs = sum(len(deal.outputs) for _, deal in side.buyers)
    if recorded != side.calls or outputs != side.calls:
        raise RuntimeError(f"{side.calls} paid calls made, {recorded} recorded, {outputs} "
                           "answered")


def _unpaid_round(loop: Any, calls: int) -> float:
    """Thread CPU per unpaid call: the servicer's parse, skill and answer, the caller's parse."""
    unpaid = UnpaidServicer(SKILLS[SKILL])

    async def caller() -> None:
        for i in range(calls):
            response = await unpaid.invoke_async(agent_pb2.InvokeRequest(
                agreement_id="x", input_json=json.dumps({"text": f"call {i}"})))
            json.loads(response.output_json)
            await asyncio.sleep(0)  # interleaved, as the paid calls are

    async def everyone() -> None:
        await asyncio.gather(*(caller() for _ in range(CALLERS)))

    start = time.thread_time()
    loop.run_until_complete(everyone())
    return (time.thread_time() - start) / (calls * CALLERS)


def run(progress: Any = None) -> dict[str, float]:
    """Per-call CPU of each side, the median of ROUNDS rounds that alternate the sides."""
    say = progress or (lambda _text: None)
    figures: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        figures.setdefault(name, []).append(seconds * 1e6)

    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        node = MarketplaceNode(f"sqlite:///{Path(tmp) / 'market.db'}").start()
        say("payment path: hiring the buyers")
        recorded = _PaidSide(node, Path(tmp) / "journal.db", loop, recorded=True)
        unrecorded = _PaidSide(node, Path(tmp) / "unused.db", loop, recorded=False)
        try:
            for n in range(ROUNDS):
                say(f"payment path: round {n + 1} of {ROUNDS}")
                add("unpaid", _unpaid_round(loop, CALLS_PER_CALLER))
                thread, buyer, _ = unrecorded.round(CALLS_PER_CALLER)
                add("seller", thread - buyer)
                add("buyer", buyer)
                thread, buyer, writer = recorded.round(CALLS_PER_CALLER)
                add("seller_recorded", thread - buyer)
                add("buyer_recorded", buyer)
                add("writer", writer)
            _check_recorded(recorded)
        finally:
            recorded.close()
            unrecorded.close()
            node.stop()
            loop.close()
    results: dict[str, float] = {"payment_path_callers": CALLERS}
    for name, runs in figures.items():
        results[f"payment_path_{name}_us"] = round(statistics.median(runs), 1)
    return results


if __name__ == "__main__":
    for key, value in run(print).items():
        print(f"{key}: {value}")
