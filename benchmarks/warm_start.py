"""The first paid call to a fresh LLM seller against its tenth, in the same run.

A seller started a moment ago used to answer its first call to an LLM skill in seconds (it
imported litellm's provider modules, selected the tokenizer and compiled validators on that
call) and its later ones in milliseconds; a buyer's deadline could run out on the first. Now
`SellerAgent.serve()` loads what the skills need before it advertises. Each round starts a
fresh seller in a process of its own (a new interpreter, as a deployment would), then a buyer
here makes ten calls under one agreement and times each: `warm_start_first_call_ms` against
`warm_start_tenth_call_ms` (goal: the first within 2x the tenth), the first call of a second
agreement with the now warm seller (`warm_start_next_agreement_first_call_ms`: what every
agreement's first call costs, its escrow proof checked), and the same with the
warm-up switched off (`serve(warm=False)`) for what it saves. The skill is priced per token and
calls litellm offline (`mock_response`: its real code path, no network); tracing is off.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agents import BuyerAgent
from marketplace import MarketplaceNode

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 5
CALLS = 10
START_TIMEOUT_S = 120


def _seller(address: str, warm: bool) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTMARKET_TRACING": "off"}
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._fresh_seller", address, "warm" if warm else "cold"],
        env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    endpoint = process.stdout.readline().strip()
    if not endpoint:
        process.kill()
        raise RuntimeError("the seller process did not start")
    return process, endpoint


def _round(node: MarketplaceNode, warm: bool) -> list[float]:
    """Ten calls to a seller started for this round, then the first call of a second
    agreement with the same (now warm) seller; their latencies in ms."""
    process, _endpoint = _seller(node.address, warm)
    try:
        with BuyerAgent("bench-buyer", marketplace=node.address) as buyer:
            buyer.fund("1.00", "USD")
            listing = next(item for item in buyer.discover("summarize", currency="USD", limit=100)
                           if item.endpoint == _endpoint)
            deal = buyer.negotiate(listing, "summarize", quantity=CALLS, budget="0.5",
                                   currency="USD", failover=False)
            buyer.hire(deal)
            latencies = []
            for index in range(CALLS):
                started = time.perf_counter()
                buyer.call(deal, {"text": f"a text to summarise, number {index}"})
                latencies.append((time.perf_counter() - started) * 1000)
            buyer.finish(deal)
            again = buyer.negotiate(listing, "summarize", quantity=1, budget="0.5",
                                    currency="USD", failover=False)
            buyer.hire(again)
            started = time.perf_counter()
            buyer.call(again, {"text": "a text to summarise, once more"})
            latencies.append((time.perf_counter() - started) * 1000)
            buyer.finish(again)
            return latencies
    finally:
        process.terminate()
        process.wait(timeout=30)


def run(progress: Any = None) -> dict[str, float]:
    say = progress or (lambda _text: None)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        node = MarketplaceNode(f"sqlite:///{Path(tmp) / 'market.db'}").start()
        try:
            for label, warm in (("warm_start", True), ("cold_start", False)):
                rounds = []
                for number in range(ROUNDS):
                    say(f"{label}: fresh seller {number + 1}/{ROUNDS}")
                    rounds.append(_round(node, warm))
                first = statistics.median(r[0] for r in rounds)
                tenth = statistics.median(r[CALLS - 1] for r in rounds)
                results[f"{label}_first_call_ms"] = round(first, 2)
                results[f"{label}_tenth_call_ms"] = round(tenth, 2)
                results[f"{label}_first_over_tenth"] = round(first / tenth, 2)
                # what any agreement's first call costs on a warm seller (its escrow check)
                again = statistics.median(r[CALLS] for r in rounds)
                results[f"{label}_next_agreement_first_call_ms"] = round(again, 2)
        finally:
            node.stop(0)
    return results


if __name__ == "__main__":
    for name, value in run(print).items():
        print(f"{name}: {value}")
