"""Writers that never queue behind one row, and a hash chain sealed after commit.

On PostgreSQL a write transaction locks only the rows it touches: two transactions on disjoint
accounts are open at once, the second committing while the first still holds its rows (each
refuses to wait for any lock, so a shared lock would fail it rather than slow it); on the same
account the second does wait. Postings commit unsealed and a sealer links them into the chain.
With several writer processes, a contested wallet they all spend from, and the sealer killed
with SIGKILL while it seals and replaced by another process: every acknowledged posting is in
the ledger once, the contested wallet is never overspent, the books balance and the chain
verifies over every posting. On SQLite the chain is sealed as postings are written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from tests.conftest import postgres_schema
from wallets import Ledger, Transfer, WalletService, make_engine
from wallets.audit import check_balances, verify_chain
from wallets.currencies import currency
from wallets.ledger import HEAD, POSTINGS

ROOT = Path(__file__).resolve().parent.parent
WRITERS = 4
TRANSFERS = 120  # per writer
CONTESTED = 25  # atomic in the wallet every writer tries to spend from
T = TypeVar("T")


def _until(condition: Callable[[], T], timeout_s: float = 60.0) -> T:
    end = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def _funded(ledger: Ledger, owner: str, atomic: int) -> str:
    """A USD wallet holding exactly `atomic` (deposits come in whole cents: the rest is moved
    to a sink wallet)."""
    account = ledger.open_account(owner, "USD").account_id
    if atomic:
        step = currency("USD").rail_step_atomic
        cents = -(-atomic // step) * step
        WalletService(ledger).deposit(f"fund-{owner}", account, cents, "USD")
        if cents > atomic:
            sink = ledger.open_account("sink", "USD").account_id
            ledger.transfer(f"trim-{owner}", account, sink, cents - atomic)
    return account


@contextmanager
def _no_waiting(ledger: Ledger) -> Iterator[object]:
    """A ledger write transaction that fails at once instead of waiting for a row lock."""
    with ledger._write() as conn:
        conn.execute(text("SET LOCAL lock_timeout = '50ms'"))
        yield conn


def test_postings_on_different_accounts_commit_in_parallel(postgres_url: str):
    with postgres_schema(postgres_url) as db:
        ledger = Ledger(make_engine(db), group_commit=False)
        alice, bob = _funded(ledger, "alice", 100), _funded(ledger, "bob", 0)
        carol, dave = _funded(ledger, "carol", 100), _funded(ledger, "dave", 0)
        with _no_waiting(ledger) as first:
            ledger.post_linked_in(first, "a-1", [Transfer(alice, bob, 10)])
            with _no_waiting(ledger) as second:  # disjoint accounts: no lock in common
                ledger.post_linked_in(second, "c-1", [Transfer(carol, dave, 10)])
            # the second committed while the first is still open
            assert ledger.balance(dave).posted_atomic == 10
            assert ledger.balance(bob).posted_atomic == 0
            with pytest.raises(OperationalError, match="lock timeout"), \
                    _no_waiting(ledger) as third:  # alice's row is the first's until it ends
                ledger.post_linked_in(third, "a-2", [Transfer(alice, dave, 10)])
        assert ledger.balance(bob).posted_atomic == 10
        ledger.seal()
        chain = verify_chain(ledger)
        assert chain.ok and chain.unsealed == 0 and chain.postings == 6
        assert check_balances(ledger).ok
        ledger.close()


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTMARKET_TRACING": "off"}
    return subprocess.Popen([sys.executable, "-m", "tests.processes.ledger_writer", *args],
                            env=env, stdout=subprocess.PIPE, text=True)


def _sealing_now(db: str, name: str) -> bool:
    """Whether the sealer process `name` is inside a sealing transaction right now."""
    conninfo = db.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn:
        return bool(conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
            "AND state IN ('active', 'idle in transaction') "
            "AND query ILIKE '%%ledger_%%'", (name,)).fetchone())


def _lease_holder(db: str) -> str:
    """The sealer process holding this schema's sealer lease ('' when none does)."""
    conninfo = db.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.classid::int = hashtext('agentmarket-sealer') "
            "AND l.objid::int = hashtext(current_schema())").fetchone()
    return row[0].removesuffix(" lease") if row else ""


def test_a_sealer_killed_mid_seal_is_taken_over(postgres_url: str):
    with postgres_schema(postgres_url) as db:
        engine = make_engine(db)
        ledger = Ledger(engine, group_commit=False, sealer=False)
        contested = _funded(ledger, "contested", CONTESTED)
        payee = _funded(ledger, "payee", 0)
        own = [_funded(ledger, f"writer-{n}", TRANSFERS) for n in range(WRITERS)]
        first = _spawn("seal", db, "sealer-first", "7")
        second = _spawn("seal", db, "sealer-second", "7")
        writers = [_spawn("write", db, f"w{n}", own[n], payee, contested, str(TRANSFERS),
                          str(n % 2)) for n in range(WRITERS)]
        try:
            for sealer in (first, second):
                assert sealer.stdout is not None and sealer.stdout.readline().strip() == "ready"

            def head() -> int:
                with engine.connect() as conn:
                    return int(conn.execute(select(HEAD.c.sequence)).scalar() or 0)

            _until(lambda: head() > 20)  # one of them holds the lease and seals
            name = _until(lambda: _lease_holder(db))
            holder, survivor = (first, "sealer-second") if name == "sealer-first" \
                else (second, "sealer-first")
            _until(lambda: _sealing_now(db, name))
            os.kill(holder.pid, signal.SIGKILL)  # mid-seal: its batch rolls back whole
            holder.wait(timeout=10)
            killed_at = head()
            assert _until(lambda: _lease_holder(db)) == survivor  # taken over at once
            _until(lambda: head() > killed_at)
            outputs = [w.communicate(timeout=300)[0] for w in writers]
            assert all(w.returncode == 0 for w in writers)
        finally:
            for process in (first, second, *writers):
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
        lines = [json.loads(line) for out in outputs for line in out.splitlines()]
        acknowledged = {r["key"]: r["sequence"] for r in lines if "sequence" in r}
        refused = [r["key"] for r in lines if r.get("refused")]
        contested_spent = [k for k in acknowledged if "-contested-" in k]
        assert len(acknowledged) == WRITERS * TRANSFERS + len(contested_spent)
        assert len(contested_spent) == CONTESTED  # all of it, and not one atomic more
        assert len(refused) == WRITERS * len(range(0, TRANSFERS, 3)) - CONTESTED
        ledger.seal()  # whatever the survivor had not reached yet
        with engine.connect() as conn:
            stored = conn.execute(select(POSTINGS.c.idempotency_key, POSTINGS.c.sequence)
                                  .where(POSTINGS.c.idempotency_key.in_(list(acknowledged))
                                         )).all()
            unsealed = conn.execute(select(func.count()).where(
                POSTINGS.c.position.is_(None))).scalar()
            everything = conn.execute(select(func.count()).select_from(POSTINGS)).scalar()
        assert sorted(stored) == sorted(acknowledged.items())  # each once, as acknowledged
        assert unsealed == 0
        assert ledger.balance(contested).posted_atomic == 0
        chain, balances = verify_chain(ledger), check_balances(ledger)
        assert chain.ok and balances.ok, chain.problems + balances.problems
        assert chain.postings == everything  # every posting, sealed
        ledger.close()


def test_sqlite_seals_as_it_writes(tmp_path: Path):
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"))
    alice, bob = _funded(ledger, "alice", 100), _funded(ledger, "bob", 0)
    posting = ledger.transfer("t-1", alice, bob, 10)
    assert posting.hash  # sealed in its own transaction
    chain = verify_chain(ledger)
    assert chain.ok and chain.unsealed == 0 and chain.postings == 3
    assert ledger.seal() == 0
    ledger.close()
