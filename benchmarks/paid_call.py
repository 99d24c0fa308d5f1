"""A paid call against the same call unpaid, on the same machine, in the same run.

Paid: a BuyerAgent's call to a SellerAgent: the payment check (PayWord word, sequence,
budget), metering, a chained receipt per call (signed every 16th) checked by the buyer, and a
durable usage record, committed before the answer. Unpaid: the same skill behind a gRPC server
with everything of the framework that is not about payment: the malformed-request guard,
tracing, authentication and access interceptors (an unsigned call passes them, as a paid one
does), the error mapping, input validation on the server, and on the client the output parsed
and checked against the skill's schema, as `BuyerAgent.call` returns it. So the ratio is the
cost of paying. A third side is the paid call with the seller's usage journal switched off
(`paid_call_ratio_no_journal`): what the durable record costs, not a mode the framework
offers. A fourth is the unpaid servicer with no interceptor on either end
(`unpaid_no_interceptors_*`): what the interceptors add to the unpaid call, and what is left of
it is gRPC's own cost and the skill's. A fifth is the floor (`paid_call_ratio_floor`,
`benchmarks._paid_floor`): the unpaid servicer carrying a paid call's bytes (request, voucher,
usage, chained receipt) and writing a paid call's durable usage record through the seller's
journal, with no payment work at all: the most any payment that works per call could reach.
The floor is measured without its record too (`paid_call_ratio_floor_no_record`: the bytes'
share), and on grpc.aio with the echo on the loop and the record awaited
(`paid_call_ratio_aio_floor`, `..._aio_floor_no_record`, against the unpaid async echo), so the
record's share is known on both server kinds (`benchmarks/durable_record.py` asks whether
another store would make it cheaper), and once more with the record appended to a plain file
and fdatasync'd by group commit instead of the journal (`paid_call_ratio_floor_file_record`):
the least a durable record can cost, whatever store a seller used.
Each client thread makes calls on its own channel (paid: its own agreement, one buyer
each). Tracing is off everywhere (AGENTMARKET_TRACING=off by `make bench`).

Two loads: `SATURATING` clients keep the server busy (the headline `paid_call_ratio`: what a
seller serving many buyers keeps of its unpaid throughput), and `FEW` closed-loop clients,
where each call's latency (a paid call waits for its usage record's commit) limits throughput.
CPU time per call is reported for the server's process and the clients' process, and the
server's thread switches per call. `thread_wakeup_cpu_us`, measured in the same run, is what one
of them costs here: waiting for the usage record's commit adds at least one to every paid call,
and under the interpreter lock each costs tens of microseconds, about a tenth of the unpaid
call's whole server CPU.

Each server runs in a process of its own, as a seller does: the buyers' threads (and the
marketplace) are in this process, so the seller's work does not queue on the same interpreter
lock as its callers'. Every server, of every side, settles its heap once started
(`marketplace.heap`), as README tells a deployed seller to.

Both server kinds of a seller are measured (`SellerAgent(server=...)`): the threaded one (the
headline figures) and grpc.aio (`paid_call_ratio_aio`, and `paid_call_ratio_aio_no_journal`,
against an unpaid server on grpc.aio with the same interceptors, its skill run in a pool as the
aio seller runs a synchronous one). The same echo written as a coroutine runs on the event loop
of both (`paid_call_ratio_aio_async`): no thread hop but the journal's once-per-batch wake-up.

The echo skill does almost nothing, so its ratio is the payment's whole overhead. A second
comparison (`paid_call_ratio_llm_skill`) prices an LLM skill per token, as a seller of model
calls would: the skill calls litellm (offline, `mock_response`: its real code path and
usage, no network), and the paid side meters its tokens (the prompt counted against the skill's
limit, the reported usage billed under the agreement).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._paid_sides import SATURATING, PaidSide, UnpaidSide, echo, echo_async, summarize
from benchmarks._process import cpu_s_so_far
from marketplace import MarketplaceNode

FEW = 4
CALLS_PER_ROUND = 2400  # shared out between the clients of a round
ROUNDS = 7
LLM_CALLS_PER_ROUND = 960
LLM_ROUNDS = 5


class Round:
    """One round's throughput, CPU time per call (server's process, clients' process) and the
    server's thread switches per call."""

    def __init__(self, calls: int, wall_s: float, server_cpu_s: float, client_cpu_s: float,
                 server_switches: int) -> None:
        self.rate = calls / wall_s
        self.server_cpu_us = server_cpu_s / calls * 1e6
        self.client_cpu_us = client_cpu_s / calls * 1e6
        self.server_switches = server_switches / calls


def drive(call_fns: list[Any], server_pid: int, calls_per_client: int) -> Round:
    """Run each client's calls in its own thread; the round's rate and CPU per call
    (`benchmarks.paid_call_libraries` drives its rounds with it too)."""
    def worker(fn: Any) -> None:
        for i in range(calls_per_client):
            fn(i)

    threads = [threading.Thread(target=worker, args=(fn,)) for fn in call_fns]
    switches = _switches(server_pid)
    server_cpu, client_cpu = cpu_s_so_far(server_pid), time.process_time()
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return Round(len(call_fns) * calls_per_client, wall, cpu_s_so_far(server_pid) - server_cpu,
                  time.process_time() - client_cpu, _switches(server_pid) - switches)


def _switches(pid: int) -> int:
    """Context switches (voluntary and not) the threads of a process made so far (Linux
    /proc; 0 elsewhere): each is a thread that blocked or was preempted and woken again."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            status = Path(f"/proc/{pid}/task/{task}/status").read_text()
        except OSError:  # the thread ended
            continue
        for line in status.splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split()[-1])
    return total


def _wakeup_cpu_us(round_trips: int = 5_000) -> float:
    """CPU time per wake-up of a thread blocked on another (two threads handing an Event back
    and forth, both woken once per round trip): what a paid call pays for each time its
    handler waits for its usage record's commit and is woken."""
    ping, pong = threading.Event(), threading.Event()

    def other() -> None:
        for _ in range(round_trips):
            ping.wait()
            ping.clear()
            pong.set()

    thread = threading.Thread(target=other)
    cpu = time.process_time()
    thread.start()
    for _ in range(round_trips):
        ping.set()
        pong.wait()
        pong.clear()
    thread.join()
    return (time.process_time() - cpu) / (2 * round_trips) * 1e6


Rounds = dict[tuple[str, int], list[Round]]


def _compare(sides: dict[str, Any], loads: tuple[int, ...], rounds: int, calls_per_round: int,
             say: Any, label: str) -> Rounds:
    """Alternate rounds of the sides (so all see the same machine weather), under each load."""
    measured: Rounds = {}
    for side in sides.values():  # warm up
        drive(side.callers[:1], side.pid, 200)
    for n in range(rounds):
        say(f"{label}, round {n + 1} of {rounds}")
        for clients in loads:
            for name, side in sides.items():
                measured.setdefault((name, clients), []).append(
                    drive(side.callers[:clients], side.pid, calls_per_round // clients))
    return measured


def _median(measured: Rounds, name: str, clients: int, figure: str) -> float:
    return statistics.median(getattr(r, figure) for r in measured[(name, clients)])


SIDES = ("unpaid", "paid", "no_journal", "unpaid_aio", "paid_aio", "no_journal_aio", "bare",
         "unpaid_aio_async", "paid_aio_async", "floor", "floor_bytes", "floor_aio",
         "floor_aio_bytes", "floor_file")


def _echo(node: MarketplaceNode, tmp: Path, say: Any) -> dict[str, float]:
    """The echo skill: unpaid, paid, and paid with the journal off, under both loads."""
    calls = (ROUNDS + 1) * 2 * CALLS_PER_ROUND // FEW
    built: list[Any] = []
    try:
        built.append(UnpaidSide(echo))
        built.append(PaidSide(node, calls, tmp / "journal.db", echo))
        built.append(PaidSide(node, calls, None, echo))
        built.append(UnpaidSide(echo, "aio"))
        built.append(PaidSide(node, calls, tmp / "journal-aio.db", echo, "aio"))
        built.append(PaidSide(node, calls, None, echo, "aio"))
        built.append(UnpaidSide(echo, "bare"))
        built.append(UnpaidSide(echo_async, "aio"))
        built.append(PaidSide(node, calls, tmp / "journal-aio-async.db", echo_async, "aio"))
        built.append(UnpaidSide(echo, "floor"))
        built.append(UnpaidSide(echo, "floor_bytes"))
        built.append(UnpaidSide(echo_async, "floor_aio"))
        built.append(UnpaidSide(echo_async, "floor_aio_bytes"))
        built.append(UnpaidSide(echo, "floor_file"))
        sides = dict(zip(SIDES, built, strict=True))
        measured = _compare(sides, (SATURATING, FEW), ROUNDS, CALLS_PER_ROUND, say,
                            "paid vs unpaid calls")
    finally:
        for side in built:
            side.close()
    results: dict[str, float] = {"paid_call_clients": SATURATING}
    names = {"no_journal": "paid_no_journal", "no_journal_aio": "paid_aio_no_journal",
             "bare": "unpaid_no_interceptors", "floor": "paid_floor",
             "floor_bytes": "paid_floor_no_record", "floor_aio": "paid_aio_floor",
             "floor_aio_bytes": "paid_aio_floor_no_record", "floor_file": "paid_floor_file_record"}
    baselines = {"unpaid": ("paid", "no_journal", "floor", "floor_bytes", "floor_file"),
                 "unpaid_aio": ("paid_aio", "no_journal_aio"),
                 "unpaid_aio_async": ("paid_aio_async", "floor_aio", "floor_aio_bytes")}
    # each against its own unpaid side: the aio floors run the echo on the loop
    for clients, suffix in ((SATURATING, ""), (FEW, f"_{FEW}_clients")):
        for unpaid, paid_sides in baselines.items():
            unpaid_rate = _median(measured, unpaid, clients, "rate")
            results[f"{unpaid}_calls_per_s{suffix}"] = round(unpaid_rate)
            for name in paid_sides:
                key = names.get(name, name)
                rate = _median(measured, name, clients, "rate")
                results[f"{key}_calls_per_s{suffix}"] = round(rate)
                results[f"{key.replace('paid', 'paid_call_ratio', 1)}{suffix}"] = round(
                    rate / unpaid_rate, 3)
    results["unpaid_no_interceptors_calls_per_s"] = round(
        _median(measured, "bare", SATURATING, "rate"))
    for name in SIDES:
        key = names.get(name, name)
        for where in ("server", "client"):
            results[f"{key}_{where}_cpu_us_per_call"] = round(
                _median(measured, name, SATURATING, f"{where}_cpu_us"))
        results[f"{key}_server_switches_per_call"] = round(
            _median(measured, name, SATURATING, "server_switches"), 2)
    return results


def _llm_skill(node: MarketplaceNode, tmp: Path, say: Any) -> dict[str, float]:
    """The per-token LLM skill, unpaid and paid, under the saturating load."""
    calls = (LLM_ROUNDS + 1) * LLM_CALLS_PER_ROUND // SATURATING
    built: list[Any] = []
    try:
        built.append(UnpaidSide(summarize))
        built.append(PaidSide(node, calls, tmp / "journal-llm.db", summarize))
        sides = dict(zip(("unpaid", "paid"), built, strict=True))
        measured = _compare(sides, (SATURATING,), LLM_ROUNDS, LLM_CALLS_PER_ROUND, say,
                            "paid vs unpaid LLM calls")
    finally:
        for side in built:
            side.close()
    unpaid_rate = _median(measured, "unpaid", SATURATING, "rate")
    paid_rate = _median(measured, "paid", SATURATING, "rate")
    results = {"llm_skill_unpaid_calls_per_s": round(unpaid_rate),
               "llm_skill_paid_calls_per_s": round(paid_rate),
               "paid_call_ratio_llm_skill": round(paid_rate / unpaid_rate, 3)}
    for name in ("unpaid", "paid"):
        results[f"llm_skill_{name}_server_cpu_us_per_call"] = round(
            _median(measured, name, SATURATING, "server_cpu_us"))
    return results


def run(progress: Any = None) -> dict[str, float]:
    """Both comparisons (the medians of their rounds), on one marketplace node."""
    say = progress or (lambda _text: None)
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        node = MarketplaceNode(f"sqlite:///{Path(tmp) / 'market.db'}").start()
        try:
            wakeup = {"thread_wakeup_cpu_us": round(_wakeup_cpu_us(), 1)}
            return {**wakeup, **_echo(node, Path(tmp), say), **_llm_skill(node, Path(tmp), say)}
        finally:
            node.stop(0)


if __name__ == "__main__":
    for name, value in run(print).items():
        print(f"{name}: {value}")
