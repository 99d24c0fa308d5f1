"""Run the fault suite: consecutive seeds from --seed for --duration seconds (or --runs runs).
Prints each seed and its faults; exits 1 at the first run whose invariants fail, naming the
seed that replays it. Env: FAULTS_SEED, FAULTS_DURATION_S."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.world import run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--seed", type=int, default=int(os.environ.get(
        "FAULTS_SEED", random.SystemRandom().randrange(1_000_000))))
    parser.add_argument("--duration", type=float, default=float(os.environ.get(
        "FAULTS_DURATION_S", "60")), help="seconds to keep starting runs")
    parser.add_argument("--runs", type=int, default=0, help="stop after this many runs")
    parser.add_argument("--keep", action="store_true", help="keep every run's directory")
    args = parser.parse_args(argv)
    end = time.monotonic() + args.duration
    seed, runs = args.seed, 0
    print(f"fault suite: first seed {seed}", flush=True)
    while (args.runs and runs < args.runs) or (not args.runs and time.monotonic() < end):
        workdir = Path(tempfile.mkdtemp(prefix=f"agentmarket-faults-{seed}-"))
        started = time.monotonic()
        problems = run_seed(seed, workdir, say=lambda line: print(line, flush=True))
        runs += 1
        if problems:
            print(f"seed {seed} FAILED ({workdir} kept):", flush=True)
            for problem in problems:
                print(f"  - {problem}", flush=True)
            print(f"replay: python -m tests.faults --seed {seed} --runs 1", flush=True)
            return 1
        print(f"seed {seed} held ({time.monotonic() - started:.1f} s)", flush=True)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        seed += 1
    print(f"fault suite: {runs} runs, seeds {args.seed}..{seed - 1}, every invariant held",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
