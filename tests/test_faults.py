"""The fault-injection suite, briefly: one seeded run (`tests/faults/`). Longer runs:
`python -m tests.faults --seed N --duration S`. FAULTS_SEED picks the seed (default: a fixed
one, so a run of the suite is repeatable); the seed is printed, and a failure names it."""

from __future__ import annotations

import os
from pathlib import Path

from tests.faults.world import run_seed

SEED = int(os.environ.get("FAULTS_SEED", "2012"))  # seller, buyer kills; journal; links


def test_faults_never_cost_money(tmp_path: Path) -> None:
    lines: list[str] = []
    problems = run_seed(SEED, tmp_path, say=lines.append)
    print("\n".join(lines))
    assert not problems, (f"seed {SEED} broke invariants (replay: python -m tests.faults "
                          f"--seed {SEED} --runs 1):\n" + "\n".join(lines + problems))
