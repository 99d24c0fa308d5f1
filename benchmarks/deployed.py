"""Full tasks per second as a market is deployed: every party in its own process.

The node is `agentmarket serve` (SQLite, then PostgreSQL when one answers), each of 5 sellers
is its own process, and 50 buyers run as threads in 2 buyer processes (`BuyerAgent`); on
SQLite, a second run has the 50 buyers as `AsyncBuyerAgent` tasks on one event loop per buyer
process instead (keys `..._async_buyers`). Each buyer does task
after task (discover, negotiate, escrow, 10 paid calls, settle). After a warm-up, the steady
state is measured for at least `MIN_WINDOW_S` and `MIN_TASKS` tasks (capped at `MAX_WINDOW_S`):
tasks/s, the CPU each kind of party spent per task (user + system time from /proc), and p50/p99
of every step. At the end the node's books must balance with no agreement left open.

    python -m benchmarks.deployed [sqlite|postgres] [--window S] [--tasks N] [--profile DIR]
                                  [--perf DIR] [--gc-defaults] [--buyers threads|async|both]
                                  [--scheduling batch|normal|both]

Every party settles its heap once started (`marketplace.heap`), as the node command does;
`--gc-defaults` runs them all with CPython's collector settings instead, for comparison.
Every party also runs its threads under SCHED_BATCH (`marketplace.scheduling`), as the node
command does; with `--scheduling both` (the default) a run on SQLite with threaded buyers under
Linux's default policy follows as the same run's baseline (keys `..._normal_scheduling`).

`--profile DIR` samples the node and one seller and one buyer process with py-spy over the
window (folded stacks in DIR; py-spy beside this Python or on PATH). `--perf DIR` samples the
same three with Linux `perf` instead and prints where each one's CPU goes below Python: the
interpreter, the kernel (and its thread switching), grpc's C-core, SQLite, libsodium
(`benchmarks.native_profile`).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks._deployed_parties import GC_DEFAULTS, NORMAL_SCHEDULING
from benchmarks._process import TICKS_PER_S, terminate
from benchmarks._process import cpu_s as _cpu_s
from benchmarks.native_profile import PerfRecorder, available, shares, table
from benchmarks.tasks import _drop, _postgres_url

SELLERS = 5
BUYER_PROCESSES = 2
BUYERS_PER_PROCESS = 25
WARMUP_S = 5.0
MIN_WINDOW_S = 30.0
MIN_TASKS = 1000
MAX_WINDOW_S = 150.0
ROOT = Path(__file__).resolve().parent.parent


class Party:
    """One process of the market; `wait_for` reads its stdout for a line."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("w") as err:
            self.process = subprocess.Popen(argv, cwd=log.parent, env=env, text=True,
                                            stdout=subprocess.PIPE, stderr=err)
        self.lines: list[str] = []

    def wait_for(self, word: str, timeout_s: float = 60.0) -> str:
        assert self.process.stdout is not None
        end = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while time.monotonic() < end:
                if not selector.select(timeout=max(0.0, end - time.monotonic())):
                    continue
                line = self.process.stdout.readline()
                if not line:
                    break
                if word in line:
                    return line
        raise RuntimeError(f"{self.process.args[3:5]} never said {word!r}:\n"
                           f"{self.log.read_text()[-2000:]}")

    def follow(self) -> None:
        """Keep the last lines in `lines` (a reader thread), so stdout never fills."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def done(self) -> int:
        ticks = [line for line in self.lines if line.startswith("done ")]
        return int(ticks[-1].split()[1]) if ticks else 0

    def stop(self) -> None:
        terminate(self.process)


def _quantile(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100)[q - 1], 2) if len(values) > 1 else 0.0


NODE_APPLICATION = "agentmarket-bench-node"


def _database_cpu(db_url: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving the nodes (their application_name; the
    server runs on this machine), so that other users of the server are not counted."""
    if not db_url.startswith("postgresql"):
        return {}
    import psycopg

    with psycopg.connect(db_url.split("?", 1)[0], autocommit=True) as conn:
        pids = [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (NODE_APPLICATION,))]
    spent = {}
    for pid in pids:
        try:
            spent[pid] = _cpu_s(pid)
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return spent


def _redis_cpu_s(redis_url: str | None) -> float:
    """CPU seconds Redis reports it spent (its INFO), 0 without Redis."""
    if not redis_url:
        return 0.0
    import redis

    with redis.Redis.from_url(redis_url) as client:
        info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _address(listening: str) -> str:
    return next(w for w in listening.split() if w.count(":") == 1 and
                w.rsplit(":", 1)[1].rstrip(".,").isdigit()).rstrip(".,")


def _profile(kinds: dict[str, list[Party]], profile_dir: Path | None) -> list[subprocess.Popen]:  # type: ignore[type-arg]
    """py-spy on the first process of each kind, folded stacks per kind (`--profile DIR`)."""
    if profile_dir is None:
        return []
    profile_dir.mkdir(parents=True, exist_ok=True)
    beside = Path(sys.executable).with_name("py-spy")
    spy = str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"
    return [subprocess.Popen([spy, "record", "--nonblocking", "--format", "raw", "--rate", "200",
                              "--pid", str(ps[0].process.pid), "--output",
                              str(profile_dir / f"{kind}.folded")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for kind, ps in kinds.items()]


def bench(db_url: str, workdir: Path, window_s: float = MIN_WINDOW_S,
          min_tasks: int = MIN_TASKS, *, nodes: int = 1,
          redis_url: str | None = None, profile_dir: Path | None = None,
          gc_defaults: bool = False, perf_dir: Path | None = None,
          async_buyers: bool = False, normal_scheduling: bool = False) -> dict[str, Any]:
    """`nodes` node processes over `db_url` (sharing `redis_url` with --redis when given);
    seller i talks to node i mod nodes, every buyer to all of them (round robin);
    `async_buyers`: each buyer process runs its buyers on one event loop (one node only);
    `normal_scheduling`: every party keeps Linux's default policy instead of SCHED_BATCH."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "AGENTMARKET_TRACING": "off",
           "AGENTMARKET_HOME": str(workdir / "home")}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    if gc_defaults:
        env[GC_DEFAULTS] = "1"
    if normal_scheduling:
        env[NORMAL_SCHEDULING] = "1"
    python = sys.executable
    shared = (["--redis", redis_url] if redis_url else []) + \
        (["--gc-defaults"] if gc_defaults else []) + \
        (["--normal-scheduling"] if normal_scheduling else [])
    node_db = (f"{db_url}{'&' if '?' in db_url else '?'}application_name={NODE_APPLICATION}"
               if db_url.startswith("postgresql") else db_url)
    node_parties = [Party([python, "-m", "marketplace.cli.main", "serve", "--db", node_db,
                           "--port", "0", "--spans", str(workdir / f"spans-{n}.db"), *shared],
                          workdir / f"node-{n}.log", env) for n in range(nodes)]
    parties: list[Party] = list(node_parties)
    try:
        addresses = [_address(node.wait_for("listening", timeout_s=180)) for node in node_parties]
        address = ",".join(addresses)
        sellers = [Party([python, "-m", "benchmarks._deployed_parties", "seller",
                          addresses[i % nodes], f"seller-{i}"], workdir / f"seller-{i}.log",
                         env) for i in range(SELLERS)]
        parties += sellers
        for seller in sellers:
            seller.wait_for("ready")
        start, stop = workdir / "start", workdir / "stop"
        role = "async-buyers" if async_buyers else "buyers"
        buyers = [Party([python, "-m", "benchmarks._deployed_parties", role, address,
                         str(BUYERS_PER_PROCESS), f"buyers{i}", str(start), str(stop)],
                        workdir / f"buyers-{i}.log", env) for i in range(BUYER_PROCESSES)]
        parties += buyers
        for buyer in buyers:
            buyer.wait_for("ready", timeout_s=120)
            threading.Thread(target=buyer.follow, daemon=True).start()
        start.touch()
        time.sleep(WARMUP_S)
        kinds = {"node": node_parties, "sellers": sellers, "buyers": buyers}
        profilers = _profile(kinds, profile_dir)
        perf = PerfRecorder(perf_dir) if perf_dir is not None else None
        recorded = {kind: perf.start(kind, ps[0].process.pid)
                    for kind, ps in kinds.items()} if perf is not None else {}
        cpu_before = {k: sum(_cpu_s(p.process.pid) for p in ps) for k, ps in kinds.items()}
        cpu_before["redis"] = _redis_cpu_s(redis_url)
        database_before = _database_cpu(db_url)
        machine_before = _machine_cpu_s()
        began, done_before = time.time(), sum(b.done() for b in buyers)
        while True:
            time.sleep(1.0)
            elapsed = time.time() - began
            tasks = sum(b.done() for b in buyers) - done_before
            if (elapsed >= window_s and tasks >= min_tasks) or elapsed >= MAX_WINDOW_S:
                break
        cpu_after = {k: sum(_cpu_s(p.process.pid) for p in ps) for k, ps in kinds.items()}
        cpu_after["redis"] = _redis_cpu_s(redis_url)
        database_after = _database_cpu(db_url)
        machine_after = _machine_cpu_s()
        cpu_before["database"] = 0.0
        cpu_after["database"] = sum(spent - database_before.get(pid, 0.0)
                                    for pid, spent in database_after.items())
        ended = time.time()
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            profiler.wait(timeout=60)
        if perf is not None:
            perf.stop()
        stop.touch()
        outs = []
        for buyer in buyers:
            buyer.process.wait(timeout=120)
            outs.append(json.loads(buyer.lines[-1]))
        done_at = [t for out in outs for t in out["done_at"]]
        errors = [e for out in outs for e in out["errors"]]
        in_window = sum(1 for t in done_at if began <= t < ended)
        seconds = ended - began
        figures: dict[str, Any] = {
            "tasks_per_s": round(in_window / seconds, 2),
            "window_s": round(seconds, 1),
            "tasks_in_window": in_window,
            "failed_tasks": len(errors),
            "first_error": errors[0] if errors else "",
            # every core's busy seconds per second: at os.cpu_count() the machine is the limit
            "machine_cores_busy": round((machine_after[0] - machine_before[0])
                                        / max(machine_after[1] - machine_before[1], 1e-9)
                                        * (os.cpu_count() or 1), 2),
        }
        for kind in cpu_after:
            spent_ms = (cpu_after[kind] - cpu_before[kind]) * 1000
            figures[f"{kind}_cpu_ms_per_task"] = round(spent_ms / max(in_window, 1), 2)
        for step in ("discover", "negotiate", "hire", "call", "finish", "task"):
            values = [x for out in outs for x in out["latencies"][step]]
            figures[f"{step}_p50_ms"] = _quantile(values, 50)
            figures[f"{step}_p99_ms"] = _quantile(values, 99)
        if recorded:  # the same processes' CPU, by library (printed, never in results.json)
            figures["perf_shares"] = {kind: shares(data) for kind, data in recorded.items()}
    finally:
        for party in reversed(parties):
            party.stop()
    figures.update(_books(db_url))
    return figures


def _machine_cpu_s() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, summed over its cores (/proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS_PER_S, sum(fields[:8]) / TICKS_PER_S


def _books(db_url: str) -> dict[str, Any]:
    """The node's books once every party stopped: balanced, chained, nothing left open."""
    from marketplace.node import MarketplaceNode
    from wallets.audit import check_balances, verify_chain

    node = MarketplaceNode(db_url)
    try:
        node.ledger.expire_holds()
        balanced = check_balances(node.ledger).ok and verify_chain(node.ledger).ok
        open_left = [e for e in node.settlement.agreements(limit=100_000)
                     if e["state"] in ("active", "delivered")]
    finally:
        node.stop(0)
    return {"books_balanced": balanced, "open_agreements_left": len(open_left)}


def run(progress: Any = None, window_s: float = MIN_WINDOW_S, min_tasks: int = MIN_TASKS,
        backends: tuple[str, ...] = ("sqlite", "postgres"),
        profile_dir: Path | None = None, gc_defaults: bool = False,
        perf_dir: Path | None = None, buyers: str = "both",
        scheduling: str = "both") -> dict[str, Any]:
    """`buyers` on SQLite: "threads" (the headline keys), "async" (`..._async_buyers`) or
    "both"; PostgreSQL runs the threaded buyers. `scheduling`: "batch" (every party under
    SCHED_BATCH), "normal" (Linux's default policy) or "both" (batch, then SQLite with
    threaded buyers under the default policy, keys `..._normal_scheduling`)."""
    normal = scheduling == "normal"
    say = progress or (lambda _text: None)
    results: dict[str, Any] = {"deployed_buyers": BUYER_PROCESSES * BUYERS_PER_PROCESS,
                               "deployed_sellers": SELLERS}
    if "sqlite" in backends and buyers in ("threads", "both"):
        with tempfile.TemporaryDirectory(prefix="agentmarket-deployed-") as tmp:
            say("deployed shape (every party its own process), SQLite")
            figures = bench(f"sqlite:///{Path(tmp) / 'market.db'}", Path(tmp), window_s, min_tasks,
                            profile_dir=profile_dir and profile_dir / "sqlite",
                            gc_defaults=gc_defaults, perf_dir=perf_dir and perf_dir / "sqlite",
                            normal_scheduling=normal)
        results["tasks_per_s_deployed_sqlite"] = figures.pop("tasks_per_s")
        results["node_cpu_ms_per_task"] = figures["node_cpu_ms_per_task"]
        results.update({f"deployed_sqlite_{k}": v for k, v in figures.items()})
    if "sqlite" in backends and buyers in ("async", "both"):
        with tempfile.TemporaryDirectory(prefix="agentmarket-deployed-") as tmp:
            say("deployed shape, SQLite, the buyers as AsyncBuyerAgent tasks")
            figures = bench(f"sqlite:///{Path(tmp) / 'market.db'}", Path(tmp), window_s,
                            min_tasks, gc_defaults=gc_defaults, async_buyers=True,
                            normal_scheduling=normal)
        results["tasks_per_s_deployed_sqlite_async_buyers"] = figures.pop("tasks_per_s")
        results.update({f"deployed_sqlite_async_buyers_{k}": v for k, v in figures.items()})
    if "sqlite" in backends and scheduling == "both":
        with tempfile.TemporaryDirectory(prefix="agentmarket-deployed-") as tmp:
            say("deployed shape, SQLite, every party under Linux's default scheduling policy")
            figures = bench(f"sqlite:///{Path(tmp) / 'market.db'}", Path(tmp), window_s,
                            min_tasks, gc_defaults=gc_defaults, normal_scheduling=True)
        results["tasks_per_s_deployed_sqlite_normal_scheduling"] = figures.pop("tasks_per_s")
        results.update({f"deployed_sqlite_normal_scheduling_{k}": v for k, v in figures.items()})
    url = _postgres_url() if "postgres" in backends else None
    if url is not None:
        say("deployed shape (every party its own process), PostgreSQL")
        try:
            with tempfile.TemporaryDirectory(prefix="agentmarket-deployed-") as tmp:
                figures = bench(url, Path(tmp), window_s, min_tasks,
                                profile_dir=profile_dir and profile_dir / "postgres",
                                gc_defaults=gc_defaults,
                                perf_dir=perf_dir and perf_dir / "postgres",
                                normal_scheduling=normal)
        finally:
            _drop(url)
        results["tasks_per_s_deployed_postgres"] = figures.pop("tasks_per_s")
        results.update({f"deployed_postgres_{k}": v for k, v in figures.items()})
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    window = float(args[args.index("--window") + 1]) if "--window" in args else MIN_WINDOW_S
    tasks = int(args[args.index("--tasks") + 1]) if "--tasks" in args else MIN_TASKS
    chosen = tuple(a for a in args if a in ("sqlite", "postgres")) or ("sqlite", "postgres")
    profile = Path(args[args.index("--profile") + 1]) if "--profile" in args else None
    perf_out = Path(args[args.index("--perf") + 1]) if "--perf" in args else None
    if perf_out is not None and (why := available()):
        sys.exit(f"--perf: {why}")
    kind = args[args.index("--buyers") + 1] if "--buyers" in args else "both"
    if kind not in ("threads", "async", "both"):
        sys.exit("--buyers is threads, async or both")
    policy = args[args.index("--scheduling") + 1] if "--scheduling" in args else "both"
    if policy not in ("batch", "normal", "both"):
        sys.exit("--scheduling is batch, normal or both")
    results = run(print, window, tasks, chosen, profile, gc_defaults="--gc-defaults" in args,
                  perf_dir=perf_out, buyers=kind, scheduling=policy)
    found = {backend: results.pop(f"deployed_{backend}_perf_shares", None) for backend in chosen}
    for name, value in results.items():
        print(f"{name}: {value}")
    for backend, by_kind in found.items():
        if by_kind:
            Console().print(table({kind: results[f"deployed_{backend}_{kind}_cpu_ms_per_task"]
                                   for kind in by_kind}, by_kind))
