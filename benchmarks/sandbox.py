"""The market sandbox at scale: 1,000 agents (100 sellers, 900 buyers) and about 10,000 tasks
through a real node, agents and ledger; reports simulated tasks per second.

Each task is discover (once a round) -> negotiate -> escrow -> 1-2 paid calls -> settle, or
dispute forged output (5% of sellers cheat) and arbitrate. Every agent lives in this process
(each seller with its own gRPC server and journal, each buyer with its own key and wallet); the
node runs in a second process. Baseline in the same run: the same market with the node in this
process too, over fewer rounds (tasks/s is per round, so the rates compare). The books are
checked after each run: every currency sums to zero and the hash chain verifies.
AGENTMARKET_BENCH_SANDBOX_ROUNDS sets the measured run's rounds (default 12: ~10,000 tasks).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from agents.sandbox.loop import simulate
from agents.sandbox.scenario import Scenario, parse

SELLERS, BUYERS = 100, 900
BASELINE_ROUNDS = 2


def scenario(rounds: int) -> Scenario:
    return parse({
        "name": "1,000 agents", "rounds": rounds, "round_s": 60,
        "fx": {"units_per_usd": {"USDC": "1"}},
        "sellers": [{"group": "s", "count": SELLERS, "skill": "answer", "kind": "call",
                     "currency": "USD", "list_price": "0.004", "cost": "0.002",
                     "strategy": "concession", "capacity": 12, "failure_rate": 0.01,
                     "cheat_fraction": 0.05, "forgery_rate": 0.3}],
        "buyers": [{"group": "b", "count": BUYERS, "skill": "answer", "currency": "USD",
                    "deposit": "50.00", "task_budget": "0.05", "reservation_price": "0.0035",
                    "demand": 0.93, "calls": [1, 2], "min_reputation": 800,
                    "verify_rate": 0.8}]})


def _run(rounds: int, node_process: bool, say: Any) -> dict[str, Any]:
    def progress(what: str, done: int, total: int) -> None:
        say(f"sandbox ({'node in its own process' if node_process else 'one process'}): "
            f"{what} {done}/{total}")

    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        result = simulate(scenario(rounds), 1, Path(tmp), node_process=node_process,
                          progress=progress)
    if result.problems:
        raise AssertionError(f"the books do not verify: {result.problems[:3]}")
    return {"tasks": result.tasks, "tasks_per_s": round(result.tasks / result.wall_s, 1),
            "setup_s": round(result.setup_s, 1), "run_s": round(result.wall_s, 1),
            "agents": result.agents}


def run(progress: Any = None) -> dict[str, Any]:
    say = progress or (lambda _text: None)
    rounds = int(os.environ.get("AGENTMARKET_BENCH_SANDBOX_ROUNDS", "12"))
    main = _run(rounds, True, say)
    baseline = _run(BASELINE_ROUNDS, False, say)
    return {
        "sandbox_agents": main["agents"],
        "sandbox_tasks": main["tasks"],
        "sandbox_tasks_per_s": main["tasks_per_s"],
        "sandbox_setup_s": main["setup_s"],
        "sandbox_run_s": main["run_s"],
        "sandbox_one_process_tasks_per_s": baseline["tasks_per_s"],
        "sandbox_node_process_speedup": round(main["tasks_per_s"] / baseline["tasks_per_s"],
                                              2),
    }


if __name__ == "__main__":
    print(run(print))
