"""Ledger throughput against raw sqlite3 doing the same writes, in the same run.

Figures (postings/s, each posting = one transfer between two of 100 funded accounts):
- single: `Ledger.transfer`, one posting per commit, vs raw sqlite3 doing the same statements
  (idempotency lookup, two balance updates, posting, entries, head, key) one per commit;
- batched: `Ledger.transfer_many` in batches of 1,000, vs raw sqlite3 writing the same rows with
  executemany, one commit per batch;
- group commit: 16 threads calling `Ledger.transfer` at once (they share commits).
Both sides use WAL and synchronous=FULL: an acknowledged posting is on disk.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from wallets import Ledger, Transfer, WalletService, make_engine, sqlite_url
from wallets._bulk import TransferRequest
from wallets._chain import GENESIS_HASH, posting_hash
from wallets.models import Leg

ACCOUNTS = 100
SINGLE_N = 1500
BATCH = 1000
BATCHES = 10
THREADS = 16


def _funded_ledger(path: Path, *, group_commit: bool = True) -> tuple[Ledger, list[str]]:
    ledger = Ledger(make_engine(sqlite_url(path)), group_commit=group_commit)
    wallets = WalletService(ledger)
    ids = [ledger.open_account(f"acct-{i}", "USD").account_id for i in range(ACCOUNTS)]
    for i, account in enumerate(ids):
        wallets.deposit(f"fund-{i}", account, 10**15, "USD")
    return ledger, ids


def _pair(i: int, ids: list[str]) -> tuple[str, str]:
    return ids[i % ACCOUNTS], ids[(i * 7 + 1) % ACCOUNTS]


def bench_single(workdir: Path) -> float:
    ledger, ids = _funded_ledger(workdir / "single.db", group_commit=False)
    start = time.perf_counter()
    for i in range(SINGLE_N):
        debit, credit = _pair(i, ids)
        ledger.transfer(f"s-{i}", debit, credit, 1000 + i)
    elapsed = time.perf_counter() - start
    ledger.engine.dispose()
    return SINGLE_N / elapsed


def bench_batched(workdir: Path) -> float:
    ledger, ids = _funded_ledger(workdir / "batched.db")
    elapsed = 0.0
    for b in range(BATCHES):
        requests = [TransferRequest(f"b-{b}-{i}", Transfer(*_pair(i, ids), 1000 + i))
                    for i in range(BATCH)]
        start = time.perf_counter()
        ledger.transfer_many(requests)
        elapsed += time.perf_counter() - start
    ledger.close()
    ledger.engine.dispose()
    return BATCH * BATCHES / elapsed


def bench_group_commit(workdir: Path) -> float:
    ledger, ids = _funded_ledger(workdir / "group.db")
    per_thread = 150

    def worker(t: int) -> None:
        for i in range(per_thread):
            debit, credit = _pair(t * per_thread + i, ids)
            ledger.transfer(f"g-{t}-{i}", debit, credit, 1000 + i)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    ledger.close()
    ledger.engine.dispose()
    return THREADS * per_thread / elapsed


class RawLedger:
    """The same rows written by hand with sqlite3: the baseline an expert would write."""

    def __init__(self, path: Path, template: Path) -> None:
        Ledger(make_engine(sqlite_url(template)), group_commit=False).close()  # same schema
        schema = sqlite3.connect(template).execute(
            "SELECT group_concat(sql, ';') FROM sqlite_master WHERE sql IS NOT NULL").fetchone()[0]
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(schema)
        self.db.execute("INSERT INTO ledger_head VALUES (1, 0, ?)", (GENESIS_HASH,))
        self.ids = [f"{i:032x}" for i in range(ACCOUNTS)]
        self.db.executemany(
            "INSERT INTO ledger_accounts (id, owner, currency, kind, posted_debits_atomic, "
            "posted_credits_atomic, pending_debits_atomic, pending_credits_atomic, "
            "credit_limit_atomic, created_at_ms) VALUES (?, ?, 'USD', 'wallet', 0, ?, 0, 0, 0, 0)",
            [(a, f"acct-{i}", 10**15) for i, a in enumerate(self.ids)])
        self.balances = {a: [10**15, 0] for a in self.ids}  # credits, debits
        self.sequence, self.hash = 0, GENESIS_HASH

    def _rows(self, key: str, debit: str, credit: str, amount: int, now_ms: int
              ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], tuple[Any, ...]]:
        cr, dr = self.balances[debit]
        assert cr - dr >= amount
        self.balances[debit][1] += amount
        self.balances[credit][0] += amount
        self.sequence += 1
        legs = (Leg(debit, "USD", posted_atomic=-amount), Leg(credit, "USD", posted_atomic=amount))
        fields = dict(sequence=self.sequence, idempotency_key=key, kind="transfer", hold_id="",
                      created_at_ms=now_ms, memo="", trace_id="", span_id="")
        digest = posting_hash(self.hash, legs=legs, **fields)
        posting = (self.sequence, key, "transfer", "", now_ms, "", "", "", self.hash, digest,
                   self.sequence)  # sealed as written, as the ledger does on SQLite
        self.hash = digest
        entries = [(self.sequence, leg.account_id, "USD", leg.posted_atomic, 0, 0) for leg in legs]
        body = ["transfer", {"transfers": [[debit, credit, amount]]}]
        request = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        result = orjson.dumps({"sequence": self.sequence, "hash": digest, "legs": [
            {"account_id": leg.account_id, "posted_atomic": leg.posted_atomic} for leg in legs]})
        record = ("anonymous", key, "transfer", request, "ok", result.decode(), now_ms)
        return posting, entries, record

    def _write(self, batch: list[tuple[Any, ...]]) -> None:
        postings = [p for p, _, _ in batch]
        entries = [e for _, es, _ in batch for e in es]
        records = [r for _, _, r in batch]
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        keys = [r[1] for r in records]
        assert not db.execute(f"SELECT key FROM idempotency_keys WHERE scope = 'anonymous' AND "
                              f"operation = 'transfer' AND key IN "
                              f"({','.join('?' * len(keys))})", keys).fetchall()
        db.executemany("INSERT INTO ledger_postings (sequence, idempotency_key, kind, hold_id, "
                       "created_at_ms, trace_id, span_id, memo, prev_hash, hash, position) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", postings)
        db.executemany("INSERT INTO ledger_entries (sequence, account_id, currency, posted_atomic,"
                       " pending_debit_atomic, pending_credit_atomic) VALUES (?, ?, ?, ?, ?, ?)",
                       entries)
        touched = {e[1] for e in entries}
        db.executemany("UPDATE ledger_accounts SET posted_credits_atomic = ?, "
                       "posted_debits_atomic = ? WHERE id = ?",
                       [(*self.balances[a], a) for a in sorted(touched)])
        db.executemany("INSERT INTO idempotency_keys (scope, key, operation, request_digest, "
                       "outcome, result_json, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       records)
        db.execute("UPDATE ledger_head SET sequence = ?, hash = ? WHERE id = 1",
                   (self.sequence, self.hash))
        db.execute("COMMIT")

    def run(self, n: int, batch: int, prefix: str) -> float:
        now_ms = time.time_ns() // 1_000_000
        start = time.perf_counter()
        for b in range(0, n, batch):
            rows = [self._rows(f"{prefix}-{i}", self.ids[i % ACCOUNTS],
                               self.ids[(i * 7 + 1) % ACCOUNTS], 1000 + i, now_ms)
                    for i in range(b, min(n, b + batch))]
            self._write(rows)
        return n / (time.perf_counter() - start)


def run(progress: Any = None) -> dict[str, float]:
    """All ledger figures; `progress(text)` is told what runs."""
    say = progress or (lambda _text: None)
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        workdir = Path(tmp)
        say("ledger: one posting per commit")
        single = bench_single(workdir)
        say("raw sqlite3: one posting per commit")
        raw_single = RawLedger(workdir / "raw1.db", workdir / "t1.db").run(SINGLE_N, 1, "r")
        say("ledger: batched (transfer_many)")
        batched = bench_batched(workdir)
        say("raw sqlite3: batched")
        raw_batched = RawLedger(workdir / "raw2.db", workdir / "t2.db").run(
            BATCH * BATCHES, BATCH, "rb")
        say("ledger: group commit, 16 threads")
        group = bench_group_commit(workdir)
    return {
        "ledger_postings_per_s": round(single),
        "ledger_raw_sqlite_postings_per_s": round(raw_single),
        "ledger_single_vs_raw_sqlite_ratio": round(single / raw_single, 3),
        "ledger_postings_per_s_batched": round(batched),
        "ledger_raw_sqlite_postings_per_s_batched": round(raw_batched),
        "ledger_vs_raw_sqlite_ratio": round(batched / raw_batched, 3),
        "ledger_postings_per_s_group_commit_16_threads": round(group),
    }


if __name__ == "__main__":
    for name, value in run(print).items():
        print(f"{name}: {value}")
