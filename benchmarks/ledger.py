"""Ledger throughput against raw sqlite3 doing the same writes, in the same run.

Figures (postings/s, each posting = one transfer between two of 100 funded accounts):
- single: `Ledger.transfer`, one posting per commit, vs raw sqlite3 doing the same statements
  (idempotency lookup, control rows, chain head, two guarded balance updates, posting, entries,
  head, key) one per commit (`RawLedger` says why each is needed);
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
    """The same rows written by hand with sqlite3: the baseline an expert would write.

    It does the durable work the ledger must do, because another process may write the same
    database: it reads the chain head in the transaction, moves balances only by UPDATEs that
    refuse to overdraw (checking each changed one row), reads the debited wallets' control rows
    (a policy set by another process must be honoured), seals each posting (position, hash)
    and records the idempotency key with the replayable result."""

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

    def _rows(self, key: str, debit: str, credit: str, amount: int, now_ms: int,
              sequence: int, prev_hash: str
              ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], tuple[Any, ...], str]:
        legs = (Leg(debit, "USD", posted_atomic=-amount), Leg(credit, "USD", posted_atomic=amount))
        fields = dict(sequence=sequence, idempotency_key=key, kind="transfer", hold_id="",
                      created_at_ms=now_ms, memo="", trace_id="", span_id="")
        digest = posting_hash(prev_hash, legs=legs, **fields)
        posting = (sequence, key, "transfer", "", now_ms, "", "", "", prev_hash, digest,
                   sequence)
        entries = [(sequence, leg.account_id, "USD", leg.posted_atomic, 0, 0) for leg in legs]
        body = ["transfer", {"transfers": [[debit, credit, amount]]}]
        request = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        result = orjson.dumps({**fields, "hash": digest, "legs": [
            {"account_id": leg.account_id, "currency": "USD", "posted_atomic": leg.posted_atomic,
             "pending_debit_atomic": 0, "pending_credit_atomic": 0} for leg in legs]})
        record = ("anonymous", key, "transfer", request, "ok", result.decode(), now_ms)
        return posting, entries, record, digest

    def _write(self, transfers: list[tuple[str, str, str, int]], now_ms: int) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        keys = [t[0] for t in transfers]
        assert not db.execute(f"SELECT key FROM idempotency_keys WHERE scope = 'anonymous' AND "
                              f"operation = 'transfer' AND key IN "
                              f"({','.join('?' * len(keys))})", keys).fetchall()
        debited = sorted({t[1] for t in transfers})
        assert not db.execute(f"SELECT account_id FROM wallet_policies WHERE account_id IN "
                              f"({','.join('?' * len(debited))})", debited).fetchall()
        sequence, prev_hash = db.execute(
            "SELECT sequence, hash FROM ledger_head WHERE id = 1").fetchone()
        postings, entries, records = [], [], []
        deltas: dict[str, list[int]] = {}  # account: [credits, debits]
        for key, debit, credit, amount in transfers:
            sequence += 1
            posting, legs, record, prev_hash = self._rows(key, debit, credit, amount, now_ms,
                                                          sequence, prev_hash)
            postings.append(posting)
            entries += legs
            records.append(record)
            deltas.setdefault(debit, [0, 0])[1] += amount
            deltas.setdefault(credit, [0, 0])[0] += amount
        for account in sorted(deltas):
            credits, debits = deltas[account]
            changed = db.execute(
                "UPDATE ledger_accounts SET posted_credits_atomic = posted_credits_atomic + ?, "
                "posted_debits_atomic = posted_debits_atomic + ? WHERE id = ? AND currency = ? "
                "AND posted_credits_atomic + ? - posted_debits_atomic - ? "
                "- pending_debits_atomic + credit_limit_atomic >= 0",
                (credits, debits, account, "USD", credits, debits)).rowcount
            assert changed == 1
        db.executemany("INSERT INTO ledger_postings (sequence, idempotency_key, kind, hold_id, "
                       "created_at_ms, trace_id, span_id, memo, prev_hash, hash, position) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", postings)
        db.executemany("INSERT INTO ledger_entries (sequence, account_id, currency, posted_atomic,"
                       " pending_debit_atomic, pending_credit_atomic) VALUES (?, ?, ?, ?, ?, ?)",
                       entries)
        db.executemany("INSERT INTO idempotency_keys (scope, key, operation, request_digest, "
                       "outcome, result_json, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       records)
        db.execute("UPDATE ledger_head SET sequence = ?, hash = ? WHERE id = 1",
                   (sequence, prev_hash))
        db.execute("COMMIT")

    def run(self, n: int, batch: int, prefix: str) -> float:
        now_ms = time.time_ns() // 1_000_000
        start = time.perf_counter()
        for b in range(0, n, batch):
            self._write([(f"{prefix}-{i}", self.ids[i % ACCOUNTS],
                          self.ids[(i * 7 + 1) % ACCOUNTS], 1000 + i)
                         for i in range(b, min(n, b + batch))], now_ms)
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
