"""The durable-record benchmark's designs (`benchmarks/durable_record.py`) make every record
durable before its caller goes on: if one skipped a write, its CPU per record would flatter it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from benchmarks import durable_record as bench

CALLERS, PER_CALLER = 6, 40


def _expected() -> bytes:
    return b"".join(sorted(bench._row(n, i) for n in range(CALLERS) for i in range(PER_CALLER)))


def _rows_in(path: Path) -> bytes:
    data, size = path.read_bytes(), len(bench._row(0, 0))
    return b"".join(sorted(data[at:at + size] for at in range(0, len(data), size)))


def test_group_commit_from_threads_writes_each_record_before_its_caller_goes_on(tmp_path):
    path = tmp_path / "log"
    log = bench.GroupFile(path)
    missing: list[bytes] = []

    def caller(n: int) -> None:
        for i in range(PER_CALLER):
            log.record(bench._row(n, i))
            if bench._row(n, i) not in path.read_bytes():
                missing.append(bench._row(n, i))

    workers = [threading.Thread(target=caller, args=(n,)) for n in range(CALLERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    log.close()
    assert not missing
    assert _rows_in(path) == _expected()


def test_group_commit_on_a_loop_resolves_a_caller_only_once_its_batch_is_written(tmp_path):
    path = tmp_path / "log"

    async def all_callers() -> None:
        log = bench._LoopFile(path)

        async def caller(n: int) -> None:
            for i in range(PER_CALLER):
                await log.record(bench._row(n, i))
                assert bench._row(n, i) in path.read_bytes()

        await asyncio.gather(*(caller(n) for n in range(CALLERS)))
        log.close()

    asyncio.run(all_callers())
    assert _rows_in(path) == _expected()


def test_every_design_is_measured(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(bench, "CALLERS", 4)
    monkeypatch.setattr(bench, "PER_CALLER", 20)
    monkeypatch.setattr(bench, "REPEATS", 1)
    results = bench.run()
    designs = ("journal_threads", "file_threads", "fsync_each_threads", "journal_loop",
               "file_loop", "raw_sqlite")
    assert results["durable_record_callers"] == 4
    assert all(results[f"durable_record_{name}_cpu_us"] > 0 for name in designs)
