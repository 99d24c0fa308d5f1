"""Scale-out on PostgreSQL: ledger writers in parallel, and full tasks with 1 and 2 nodes.

Figures:
- ledger postings/s with 1, 4 and 16 concurrent writers in several processes (up to 4, the
  writers spread over them as threads), each writer one connection posting transfers between
  its own two accounts, one posting per commit (`Ledger(group_commit=False)`); the ratio of 16
  writers to 1 (`ledger_pg_writer_scaling_16_vs_1`) shows whether anything serialises every
  write across processes. Writers lock only their own accounts' rows; each process runs the
  ledger's background sealer and one of them (the lease holder) links the postings into the
  hash chain meanwhile (`wallets.sealer`), so its cost is in the figures; the postings still
  unsealed when the writers stop (`ledger_pg_sealer_backlog_16_writers`) show it keeps up;
- full tasks/s of the deployed-shape market (`benchmarks.deployed`: every party its own
  process) served by 1 and by 2 `agentmarket serve` nodes over one PostgreSQL and one Redis
  (`--redis`), buyers given every node's address; with the CPU each task cost the nodes,
  PostgreSQL (its server processes, from /proc) and Redis (its INFO).

    python -m benchmarks.scale_out [writers] [nodes] [--window S]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._process import cpu_s as _cpu_s
from benchmarks.deployed import _machine_cpu_s
from benchmarks.tasks import _drop, _postgres_url

WRITER_LEVELS = (1, 4, 16)
MAX_PROCESSES = 4
WRITER_WINDOW_S = 8.0
NODES_WINDOW_S = 25.0
NODES_MIN_TASKS = 300
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


# ---- ledger writers ----------------------------------------------------------------------------


def _writer_process(url: str, pairs_json: str, start: str, stop: str) -> None:
    """One process: a thread per (debit, credit) pair, transferring until `stop` exists."""
    from wallets import Ledger, make_engine

    pairs = json.loads(pairs_json)
    ledger = Ledger(make_engine(url), group_commit=False)  # its sealer seals if it has the lease
    counts = [0] * len(pairs)

    def write(n: int, debit: str, credit: str) -> None:
        while not os.path.exists(start):
            time.sleep(0.005)
        i = 0
        while not os.path.exists(stop):
            ledger.transfer(f"w-{debit[:8]}-{i}", debit, credit, 1)
            i += 1
            counts[n] = i

    threads = [threading.Thread(target=write, args=(n, *pair)) for n, pair in enumerate(pairs)]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    for thread in threads:
        thread.join()
    print(json.dumps({"postings": sum(counts)}), flush=True)
    ledger.close()
    ledger.engine.dispose()


class _WaitSampler(threading.Thread):
    """Samples what the database's active backends wait on, every 50 ms while it runs
    (`pg_stat_activity`): 'Lock' is a row or transaction lock, one writer waiting on another;
    'LWLock' and 'IO' are mostly the WAL; none is running on CPU."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url.split("?", 1)[0].replace("postgresql+psycopg", "postgresql")
        self.counts: dict[str, int] = {}
        self.locked: dict[str, int] = {}  # lock waits by the table the waiting statement writes
        self.done = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.done.wait(0.05):
                for kind, query in conn.execute(
                        "SELECT coalesce(wait_event_type, 'CPU'), query FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND state = 'active' AND backend_type = 'client backend'"):
                    self.counts[kind] = self.counts.get(kind, 0) + 1
                    if kind == "Lock":
                        table = _written_table(query)
                        self.locked[table] = self.locked.get(table, 0) + 1

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.join(timeout=5)
        return self.counts


def _written_table(query: str) -> str:
    """The table a statement updates, inserts into, deletes from or locks: where it waits."""
    words = query.replace("(", " ").split()
    upper = [w.upper() for w in words]
    for marker in ("UPDATE", "INTO", "FROM"):
        if marker in upper and upper.index(marker) + 1 < len(words):
            return words[upper.index(marker) + 1].strip('"')
    return (words[0] if words else "?").lower()


def _writers(url: str, writers: int, workdir: Path,
             window_s: float) -> tuple[float, int, dict[str, float]]:
    """Postings/s of `writers` concurrent writers over `url` (a fresh schema), how many were
    still unsealed when they stopped, and where the CPU went: the writer processes' own, the
    rest of the machine's (PostgreSQL: the server runs here), and how many cores were busy."""
    from sqlalchemy import text

    from wallets import Ledger, WalletService, make_engine

    ledger = Ledger(make_engine(url), group_commit=False)
    wallets = WalletService(ledger)
    pairs = []
    for n in range(writers):
        debit = ledger.open_account(f"writer-{n}", "USD").account_id
        credit = ledger.open_account(f"payee-{n}", "USD").account_id
        wallets.deposit(f"fund-{n}", debit, 10**15, "USD")
        pairs.append((debit, credit))
    ledger.close()
    ledger.engine.dispose()
    processes = min(writers, MAX_PROCESSES)
    start, stop = workdir / f"start-{writers}", workdir / f"stop-{writers}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTMARKET_TRACING": "off"}
    children = [subprocess.Popen(
        [sys.executable, "-m", "benchmarks.scale_out", "_writer", url,
         json.dumps(pairs[p::processes]), str(start), str(stop)],
        env=env, stdout=subprocess.PIPE, text=True) for p in range(processes)]
    try:
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("a writer process did not start")
        sampler = _WaitSampler(url)
        sampler.start()
        clients_before = sum(_cpu_s(child.pid) for child in children)
        machine_before = _machine_cpu_s()
        start.touch()
        began = time.perf_counter()
        time.sleep(window_s)
        stop.touch()
        elapsed = time.perf_counter() - began
        clients_s = sum(_cpu_s(child.pid) for child in children) - clients_before
        waits = sampler.stop()
        machine_after = _machine_cpu_s()
        busy_s = machine_after[0] - machine_before[0]
        cores = os.cpu_count() or 1
        busy_cores = cores * busy_s / max(machine_after[1] - machine_before[1], 1e-9)
        total = 0
        for child in children:
            out, _ = child.communicate(timeout=60)
            total += json.loads(out.strip().splitlines()[-1])["postings"]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    engine = make_engine(url)
    with engine.connect() as conn:
        backlog = int(conn.execute(text(
            "SELECT count(*) FROM ledger_postings WHERE position IS NULL")).scalar() or 0)
    engine.dispose()
    cpu = {"client_ms": 1000 * clients_s / max(total, 1),
           "database_ms": 1000 * max(busy_s - clients_s, 0.0) / max(total, 1),
           "cores_busy": busy_cores,
           "lock_wait_share": waits.get("Lock", 0) / max(sum(waits.values()), 1),
           "wal_wait_share": (waits.get("LWLock", 0) + waits.get("IO", 0))
           / max(sum(waits.values()), 1)}
    return total / elapsed, backlog, cpu


def bench_writers(say: Any, window_s: float = WRITER_WINDOW_S) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="agentmarket-writers-") as tmp:
        for writers in WRITER_LEVELS:
            url = _postgres_url()
            if url is None:
                return {}
            say(f"ledger on PostgreSQL, {writers} concurrent writer(s)")
            try:
                rate, backlog, cpu = _writers(url, writers, Path(tmp), window_s)
                results[f"ledger_pg_postings_per_s_{writers}_writers"] = round(rate, 1)
                results[f"ledger_pg_client_cpu_ms_per_posting_{writers}_writers"] = round(
                    cpu["client_ms"], 3)
                results[f"ledger_pg_database_cpu_ms_per_posting_{writers}_writers"] = round(
                    cpu["database_ms"], 3)
                results[f"ledger_pg_cores_busy_{writers}_writers"] = round(cpu["cores_busy"], 2)
                results[f"ledger_pg_lock_wait_share_{writers}_writers"] = round(
                    cpu["lock_wait_share"], 3)
                results[f"ledger_pg_wal_wait_share_{writers}_writers"] = round(
                    cpu["wal_wait_share"], 3)
                if writers == WRITER_LEVELS[-1]:
                    results[f"ledger_pg_sealer_backlog_{writers}_writers"] = backlog
            finally:
                _drop(url)
    results["ledger_pg_writer_scaling_16_vs_1"] = round(
        results["ledger_pg_postings_per_s_16_writers"]
        / results["ledger_pg_postings_per_s_1_writers"], 2)
    # The most 16 writers could do over one on this machine if nothing were shared at all:
    # every core busy, at one writer's CPU per posting.
    results["ledger_pg_writer_scaling_cpu_ceiling"] = round(
        (os.cpu_count() or 1) / max(results["ledger_pg_cores_busy_1_writers"], 1e-9), 2)
    return results


# ---- nodes ---------------------------------------------------------------------------------------


def _redis_url() -> str | None:
    import redis

    url = os.environ.get("AGENTMARKET_BENCH_REDIS_URL", DEFAULT_REDIS)
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
            client.ping()
    except (redis.RedisError, OSError):
        return None
    return url


def bench_nodes(say: Any, window_s: float = NODES_WINDOW_S,
                min_tasks: int = NODES_MIN_TASKS) -> dict[str, Any]:
    from benchmarks.deployed import bench

    redis_url = _redis_url()
    results: dict[str, Any] = {}
    for nodes in (1, 2):
        url = _postgres_url()
        if url is None or redis_url is None:
            return results
        say(f"deployed shape over {nodes} node(s), PostgreSQL and Redis")
        sampler = _WaitSampler(url)
        sampler.start()
        try:
            with tempfile.TemporaryDirectory(prefix="agentmarket-nodes-") as tmp:
                figures = bench(url, Path(tmp), window_s, min_tasks, nodes=nodes,
                                redis_url=redis_url)
        finally:
            waits = sampler.stop()
            _drop(url)
        label = f"{nodes}_node{'s' if nodes > 1 else ''}"
        samples = max(sum(waits.values()), 1)
        results[f"scale_out_{label}_lock_wait_share"] = round(waits.get("Lock", 0) / samples, 3)
        for table, count in sorted(sampler.locked.items(), key=lambda item: -item[1])[:3]:
            results[f"scale_out_{label}_lock_wait_samples_{table}"] = count
        results[f"tasks_per_s_{label}"] = figures["tasks_per_s"]
        for key in ("node_cpu_ms_per_task", "database_cpu_ms_per_task",
                    "redis_cpu_ms_per_task", "sellers_cpu_ms_per_task",
                    "buyers_cpu_ms_per_task", "machine_cores_busy", "failed_tasks",
                    "first_error", "books_balanced",
                    "task_p50_ms", "task_p99_ms"):
            results[f"scale_out_{label}_{key}"] = figures.get(key)
    if "tasks_per_s_2_nodes" in results and results.get("tasks_per_s_1_node"):
        results["tasks_2_nodes_vs_1"] = round(
            results["tasks_per_s_2_nodes"] / results["tasks_per_s_1_node"], 2)
    return results


def run(progress: Any = None, parts: tuple[str, ...] = ("writers", "nodes"),
        window_s: float | None = None) -> dict[str, Any]:
    say = progress or (lambda _text: None)
    results: dict[str, Any] = {}
    if "writers" in parts:
        results.update(bench_writers(say, window_s or WRITER_WINDOW_S))
    if "nodes" in parts:
        results.update(bench_nodes(say, window_s or NODES_WINDOW_S))
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "_writer":
        _writer_process(*args[1:5])
        sys.exit(0)
    window = float(args[args.index("--window") + 1]) if "--window" in args else None
    chosen = tuple(a for a in args if a in ("writers", "nodes")) or ("writers", "nodes")
    for name, value in run(print, chosen, window).items():
        print(f"{name}: {value}")
