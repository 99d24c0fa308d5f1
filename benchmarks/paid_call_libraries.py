"""Where a paid call's extra seller CPU goes, library by library, and so the most a payment
path written outside CPython could win.

`paid_call_ratio` >= 0.9 asks a seller to spend at most 1/0.9 of the unpaid call's CPU on a
paid echo (the seller is the bottleneck: its interpreter lock). The payment's own Python is one
part of what it adds; protobuf, libc, SQLite, the kernel and grpc's C-core do the rest (larger
messages, the durable record, the wake-ups). This samples the seller process of three sides of
`benchmarks.paid_call` with Linux `perf`, on each server kind: the unpaid call, the floor (a
paid call's bytes and durable record, no payment work) and the paid call. Each round drives
`CLIENTS` clients' calls per side, the sides in turn; the seller's CPU per call (from /proc) is
split by perf's share of each kind of library (`benchmarks.native_profile.KINDS`), medians over
the rounds. The interpreter's part of paid less floor is what the payment's Python costs; a
payment path with no Python at all would still pay the rest, so unpaid over paid less that part
is the best CPU ratio any such rewrite could reach.

    python -m benchmarks.paid_call_libraries [--rounds N] [--kind aio|threaded|both]

On demand (root, or perf_event_paranoid <= 1), not part of `make bench`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._paid_sides import SATURATING, SKILLS, PaidSide, UnpaidSide
from benchmarks.native_profile import KINDS, PerfRecorder, available, shares
from benchmarks.paid_call import drive
from marketplace import MarketplaceNode

CLIENTS = SATURATING
CALLS_PER_CLIENT = 300
ROUNDS = 3
SIDES = ("unpaid", "floor", "paid")
ROWS = [kind for kind, _ in KINDS] + ["other"]


def _sides(node: MarketplaceNode, tmp: Path, kind: str, rounds: int) -> dict[str, Any]:
    """The three sides on `kind` of server: the echo on the loop for aio, in the pool for
    threaded, as `benchmarks.paid_call` measures them."""
    served = SKILLS["echo_async" if kind == "aio" else "echo"]
    calls = (rounds + 1) * CALLS_PER_CLIENT + 10
    return {"unpaid": UnpaidSide(served, "aio" if kind == "aio" else "threaded"),
            "floor": UnpaidSide(served, "floor_aio" if kind == "aio" else "floor"),
            "paid": PaidSide(node, calls, tmp / f"journal-{kind}.db", served, kind)}


def _sampled(side: Any, out: Path) -> dict[str, float]:
    """One round of `side` under perf: its seller's CPU per call (us) by kind of library."""
    perf = PerfRecorder(out)
    data = perf.start("seller", side.pid)
    try:
        measured = drive(side.callers[:CLIENTS], side.pid, CALLS_PER_CLIENT)
    finally:
        perf.stop()
    found = shares(data)
    data.unlink(missing_ok=True)
    per_call = {kind: found[kind] * measured.server_cpu_us for kind in ROWS}
    per_call["total"] = measured.server_cpu_us
    per_call["rate"] = measured.rate
    return per_call


def measure(kind: str, rounds: int = ROUNDS, say: Any = print) -> dict[str, dict[str, float]]:
    """Per side, the medians of its rounds (us per call by library, `total`, `rate`)."""
    rounds_of: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        node = MarketplaceNode(f"sqlite:///{Path(tmp) / 'market.db'}").start()
        sides: dict[str, Any] = {}
        try:
            sides = _sides(node, Path(tmp), kind, rounds)
            for side in sides.values():  # warm up
                drive(side.callers[:1], side.pid, 200)
            for n in range(rounds):
                for name, side in sides.items():
                    say(f"{kind} seller, round {n + 1} of {rounds}: {name}")
                    rounds_of[name].append(_sampled(side, Path(tmp) / "perf"))
        finally:
            for side in sides.values():
                side.close()
            node.stop(0)
    return {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            for name, runs in rounds_of.items()}


def best_ratio(found: dict[str, dict[str, float]]) -> float:
    """Unpaid CPU over paid CPU less the interpreter's part of paid less floor."""
    python = max(0.0, found["paid"]["interpreter"] - found["floor"]["interpreter"])
    return found["unpaid"]["total"] / (found["paid"]["total"] - python)


def table(kind: str, found: dict[str, dict[str, float]]) -> Table:
    shown = Table(title=f"{kind} seller: CPU us per call, by library")
    shown.add_column("")
    for side in SIDES:
        shown.add_column(side, justify="right")
    shown.add_column("paid - floor", justify="right")
    for row in [*ROWS, "total"]:
        shown.add_row(row, *(f"{found[side][row]:.1f}" for side in SIDES),
                      f"{found['paid'][row] - found['floor'][row]:+.1f}")
    shown.add_row("calls/s", *(f"{found[side]['rate']:.0f}" for side in SIDES), "")
    return shown


def _options(args: list[str]) -> tuple[int, str]:
    """(rounds, kind) from the command line; ValueError saying what is wrong."""
    def value(flag: str, default: str) -> str:
        if flag not in args:
            return default
        at = args.index(flag) + 1
        if at >= len(args):
            raise ValueError(f"{flag} needs a value")
        return args[at]

    rounds, kind = value("--rounds", str(ROUNDS)), value("--kind", "both")
    if not rounds.isdigit() or int(rounds) < 1:
        raise ValueError(f"--rounds is a whole number of at least 1, got {rounds!r}")
    if kind not in ("aio", "threaded", "both"):
        raise ValueError(f"--kind is aio, threaded or both, got {kind!r}")
    return int(rounds), kind


def main(args: list[str]) -> int:
    try:
        rounds, chosen = _options(args)
    except ValueError as error:
        print(f"paid_call_libraries: {error}", file=sys.stderr)
        return 2
    if why := available():
        print(f"paid_call_libraries: {why}", file=sys.stderr)
        return 2
    console = Console()
    for kind in ("aio", "threaded") if chosen == "both" else (chosen,):
        found = measure(kind, rounds, lambda text: console.log(text))
        console.print(table(kind, found))
        paid, unpaid = found["paid"], found["unpaid"]
        console.print(f"{kind}: CPU ratio unpaid/paid {unpaid['total'] / paid['total']:.3f}; "
                      f"with no payment Python at all, at most {best_ratio(found):.3f}; "
                      f"throughput ratio {paid['rate'] / unpaid['rate']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
