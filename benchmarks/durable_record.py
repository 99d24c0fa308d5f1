"""What a durable usage record costs the process that waits for it, by storage design.

A paid call answers only once its usage record is durable, and `paid_call_ratio_floor` shows
that record taking a large share of what a paid call may cost. Would another store make it
cheap? Each design here makes the same records (a paid call's size) durable for 16 callers
that each wait for their own before the next, as a seller's calls do, and reports the CPU the
whole process spent per record:
- `journal`: the seller's `UsageJournal` (SQLite, WAL, synchronous=FULL, group commit; a
  batch of calls written to its call log, `agents._call_log`, in place in a file allocated
  ahead, and moved into the tables in bulk);
- `file`: the least a durable record can be with a plain file: the rows appended to one file
  and fdatasync'd, one batch at a time, by one of the callers (group commit with nothing else
  around it; each append grows the file, so each fdatasync also commits the filesystem's
  journal, which the call log's writes in place do not);
- `fsync_each` (threads only): each caller appends and fdatasyncs its own record, no waiting
  on anyone;
- `raw_sqlite`: raw sqlite3 inserting the same rows in batches of 16, one thread, no caller
  waiting: the database's own share of the journal's cost.
Threads are the threaded seller (each caller blocks until its record is durable); the loop is
the aio seller (callers are coroutines, and the writer wakes the loop once per batch).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agents.usage_journal import LOOP_GROUP_WAIT_S, UsageJournal
from wallets.store import sqlite_url

CALLERS = 16
PER_CALLER = 1_000
REPEATS = 3
AGREEMENT = "8a" * 32
VOUCHER = bytes(range(110))  # agreement id, sequence, running total, PayWord index and word
RECEIPT = bytes(range(200))  # a chained receipt
RESPONSE = b'{"length": 7, "text": "call 19"}'


def _row(caller: int, i: int) -> bytes:
    return b"".join((AGREEMENT.encode(), f"{caller:04x}{i:028x}".encode(), VOUCHER, RECEIPT,
                     RESPONSE))


class GroupFile:
    """Group commit to an append-only file: the first caller to find no write under way
    writes and fdatasyncs every row queued so far; the others wait for it."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.done = threading.Condition()
        self.rows: list[bytes] = []
        self.queued = self.written = 0
        self.writing = False

    def record(self, row: bytes) -> None:
        with self.done:
            self.rows.append(row)
            self.queued += 1
            mine = self.queued
            while self.written < mine:
                if self.writing:
                    self.done.wait()
                    continue
                self.writing, rows, self.rows, upto = True, self.rows, [], self.queued
                self.done.release()
                try:
                    os.write(self.fd, b"".join(rows))
                    os.fdatasync(self.fd)
                finally:
                    self.done.acquire()
                    self.writing, self.written = False, upto
                    self.done.notify_all()

    def close(self) -> None:
        os.close(self.fd)


class _LoopFile:
    """`GroupFile` for coroutines of one event loop: one writer thread per batch, the loop
    woken once per batch to resolve every caller's future."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.writer = ThreadPoolExecutor(1)
        self.loop: asyncio.AbstractEventLoop | None = None  # its callers' (the first one's)
        self.rows: list[bytes] = []
        self.waiting: list[asyncio.Future[None]] = []
        self.busy = False

    async def record(self, row: bytes) -> None:
        self.loop = self.loop or asyncio.get_running_loop()
        future = self.loop.create_future()
        self.rows.append(row)
        self.waiting.append(future)
        if not self.busy:
            self.busy = True
            self._flush()
        await future

    def _flush(self) -> None:
        rows, waiting, self.rows, self.waiting = self.rows, self.waiting, [], []

        loop = self.loop
        assert loop is not None  # set by the caller that queued these rows

        def write() -> None:
            os.write(self.fd, b"".join(rows))
            os.fdatasync(self.fd)
            loop.call_soon_threadsafe(self._written, waiting)

        self.writer.submit(write)

    def _written(self, waiting: list[asyncio.Future[None]]) -> None:
        for future in waiting:
            future.set_result(None)
        if self.rows:
            self._flush()
        else:
            self.busy = False

    def close(self) -> None:
        self.writer.shutdown()
        os.close(self.fd)


def _threads(record: Callable[[int, int], Any]) -> float:
    """CPU microseconds of this process per record, CALLERS threads recording in a loop."""
    def caller(n: int) -> None:
        for i in range(PER_CALLER):
            record(n, i)

    workers = [threading.Thread(target=caller, args=(n,)) for n in range(CALLERS)]
    start = time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (time.process_time() - start) / (CALLERS * PER_CALLER) * 1e6


def _loop(record: Callable[[int, int], Awaitable[Any]]) -> float:
    """`_threads` with CALLERS coroutines on the running loop (awaited by `asyncio.run`)."""
    async def caller(n: int) -> None:
        for i in range(PER_CALLER):
            await record(n, i)

    async def all_callers() -> float:
        start = time.process_time()
        await asyncio.gather(*(caller(n) for n in range(CALLERS)))
        return (time.process_time() - start) / (CALLERS * PER_CALLER) * 1e6

    return asyncio.run(all_callers())


def _journal(workdir: Path, on_loop: bool) -> float:
    journal = UsageJournal(sqlite_url(workdir / f"journal-{time.monotonic_ns()}.db"),
                           group_wait_s=LOOP_GROUP_WAIT_S if on_loop else 0.0)
    try:
        journal.open_agreement(AGREEMENT, "seller", b"agreement body")

        def pending(n: int, i: int) -> Any:
            return journal.record_call(AGREEMENT, f"{n:04x}{i:028x}", 0, 0, VOUCHER, RECEIPT,
                                       RESPONSE)

        if on_loop:
            return _loop(lambda n, i: pending(n, i).wait_async())
        return _threads(lambda n, i: pending(n, i).wait())
    finally:
        journal.close()


def _file(workdir: Path, on_loop: bool) -> float:
    path = workdir / f"log-{time.monotonic_ns()}"
    if on_loop:
        log = _LoopFile(path)
        try:
            return _loop(lambda n, i: log.record(_row(n, i)))
        finally:
            log.close()
    group = GroupFile(path)
    try:
        return _threads(lambda n, i: group.record(_row(n, i)))
    finally:
        group.close()


def _fsync_each(workdir: Path) -> float:
    fd = os.open(workdir / f"each-{time.monotonic_ns()}", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                 0o600)

    def record(n: int, i: int) -> None:
        os.write(fd, _row(n, i))
        os.fdatasync(fd)

    try:
        return _threads(record)
    finally:
        os.close(fd)


def _raw_sqlite(workdir: Path) -> float:
    database = sqlite3.connect(workdir / f"raw-{time.monotonic_ns()}.db", isolation_level=None)
    try:
        database.execute("PRAGMA journal_mode=WAL")
        database.execute("PRAGMA synchronous=FULL")
        database.execute("CREATE TABLE calls (agreement_id TEXT, call_id TEXT, position INT, "
                         "sequence INT, voucher BLOB, receipt BLOB, response BLOB, "
                         "PRIMARY KEY (agreement_id, call_id))")
        total = CALLERS * PER_CALLER
        start = time.process_time()
        for first in range(0, total, CALLERS):
            database.execute("BEGIN")
            database.executemany(
                "INSERT INTO calls VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(AGREEMENT, f"{n:032x}", 0, 0, VOUCHER, RECEIPT, RESPONSE)
                 for n in range(first, first + CALLERS)])
            database.execute("COMMIT")
        return (time.process_time() - start) / total * 1e6
    finally:
        database.close()


def run(progress: Any = None) -> dict[str, float]:
    """CPU per durable record of each design, the median of REPEATS runs each."""
    say = progress or (lambda _text: None)
    designs: dict[str, Callable[[Path], float]] = {
        "journal_threads": lambda d: _journal(d, False),
        "file_threads": lambda d: _file(d, False),
        "fsync_each_threads": _fsync_each,
        "journal_loop": lambda d: _journal(d, True),
        "file_loop": lambda d: _file(d, True),
        "raw_sqlite": _raw_sqlite,
    }
    measured: dict[str, list[float]] = {name: [] for name in designs}
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        for repeat in range(REPEATS):
            for name, design in designs.items():  # alternated: the same machine weather
                say(f"durable record: {name}, run {repeat + 1} of {REPEATS}")
                measured[name].append(design(Path(tmp)))
    results: dict[str, float] = {"durable_record_callers": CALLERS}
    for name, runs in measured.items():
        results[f"durable_record_{name}_cpu_us"] = round(statistics.median(runs), 1)
    return results


if __name__ == "__main__":
    for key, value in run(print).items():
        print(f"{key}: {value}")
