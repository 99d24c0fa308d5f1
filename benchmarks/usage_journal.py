"""Seller usage journal throughput: paid-call records made durable per second.

Each thread does what a seller's request thread does per paid call: `record_call` (voucher,
signed receipt and response, sized like real ones) and `Pending.wait()` until it committed,
then the next call. Figures (records/s) on a SQLite file with WAL and synchronous=FULL, so an
acknowledged record is on disk:
- 16 threads at once: their records share transactions (group commit);
- 1 thread: one record per commit, the journal's floor.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agents.usage_journal import UsageJournal
from wallets.store import sqlite_url

THREADS = 16
PER_THREAD = 300
SINGLE_N = 1500
VOUCHER = bytes(range(150))  # agreement id, sequence, payword index and word
RECEIPT = bytes(range(200))  # call id, charge, seller's signature
RESPONSE = bytes(256)


def bench(path: Path, threads: int, per_thread: int) -> float:
    """Records per second with `threads` callers each recording and waiting in a loop."""
    journal = UsageJournal(sqlite_url(path))
    try:
        agreements = [f"agreement-{t}" for t in range(threads)]
        for agreement_id in agreements:
            journal.open_agreement(agreement_id, "seller", b"agreement body")
        start_line = threading.Barrier(threads + 1)

        def caller(t: int) -> None:
            agreement_id = agreements[t]
            start_line.wait()
            for i in range(per_thread):
                journal.record_call(agreement_id, f"call-{i}", i, i + 1, VOUCHER, RECEIPT,
                                    RESPONSE).wait()

        workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        start_line.wait()
        start = time.perf_counter()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - start
    finally:
        journal.close()
    return threads * per_thread / elapsed


def run(progress: Any = None) -> dict[str, float]:
    """Both journal figures; `progress(text)` is told what runs."""
    say = progress or (lambda _text: None)
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        workdir = Path(tmp)
        say(f"usage journal: {THREADS} threads recording paid calls")
        many = bench(workdir / "journal16.db", THREADS, PER_THREAD)
        say("usage journal: 1 thread recording paid calls")
        one = bench(workdir / "journal1.db", 1, SINGLE_N)
    return {
        "journal_records_per_s_16_threads": round(many),
        "journal_records_per_s_1_thread": round(one),
    }


if __name__ == "__main__":
    for name, value in run(print).items():
        print(f"{name}: {value}")
