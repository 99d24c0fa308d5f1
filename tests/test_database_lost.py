"""The database going away under a live ledger (PostgreSQL backends terminated, SQLite busy):
a mutation is retried or refused as UNAVAILABLE with its key, never answered INTERNAL, never
half-applied, and sent again with the same key it lands exactly once."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from tests.conftest import postgres_schema
from wallets import store
from wallets.audit import check_balances, verify_chain
from wallets.errors import HoldClosed, Unavailable
from wallets.grpc_errors import abort_internal
from wallets.ledger import Ledger
from wallets.service import WalletService
from wallets.store import connection_lost, make_engine

FUNDS = 1_000_000
TRANSFERS = 120


def _terminate(postgres_url: str, application: str) -> int:
    """Terminate every backend of `application` (as an operator, a failover or a restart
    would), from a connection of its own."""
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        row = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name = %s", (application,)).fetchone()
    return int(row[0]) if row else 0


@contextmanager
def _engine_named(postgres_url: str) -> Iterator[tuple[Engine, str]]:
    """An engine on a schema of its own, its connections named for `_terminate`."""
    application = f"lost_{uuid.uuid4().hex[:8]}"
    with postgres_schema(postgres_url) as url:
        engine = make_engine(f"{url}&application_name={application}")
        try:
            yield engine, application
        finally:
            engine.dispose()


@pytest.mark.postgres
def test_a_terminated_backend_is_a_lost_connection(postgres_url: str):
    with _engine_named(postgres_url) as (engine, application), engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        assert _terminate(postgres_url, application) == 1
        with pytest.raises(OperationalError) as raised:
            conn.execute(text("SELECT 1"))
        # psycopg marks the connection broken only once it reads the socket's close, which
        # may come after the backend's FATAL answer: closing it unmarked would send ROLLBACK
        # to a backend that is gone, and fail the test's own teardown
        conn.invalidate()
    assert connection_lost(raised.value)


@contextmanager
def _pooled_connection_terminated(postgres_url: str) -> Iterator[Engine]:
    """An engine whose one pooled connection's backend was terminated while it sat in the
    pool (as a restart or a failover would)."""
    with _engine_named(postgres_url) as (engine, application):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert _terminate(postgres_url, application) == 1
        yield engine


@pytest.mark.postgres
def test_a_pooled_connection_idle_past_the_ping_age_is_pinged_and_replaced_unseen(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch):
    """A restart while a pooled connection sat idle is found by its ping at checkout: the
    caller gets a new connection, not an error."""
    monkeypatch.setattr(store, "PING_AFTER_IDLE_S", 0.0)  # every pooled connection is old
    with _pooled_connection_terminated(postgres_url) as engine, engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.postgres
def test_a_pooled_connection_back_sooner_is_used_unpinged_and_its_loss_is_a_lost_connection(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch):
    """Under load a connection comes back to the pool within the ping age and is used as it
    is: a backend lost meanwhile fails that one statement as a lost connection (UNAVAILABLE,
    sent again with its key), and the pool has a working one at the next checkout."""
    monkeypatch.setattr(store, "PING_AFTER_IDLE_S", 3600.0)
    with _pooled_connection_terminated(postgres_url) as engine:
        with pytest.raises(OperationalError) as raised, engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert connection_lost(raised.value)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.postgres
def test_transfers_survive_their_backends_being_terminated(postgres_url: str):
    """Threads transfer while every backend is terminated again and again: each transfer
    lands or fails as UNAVAILABLE; sent again with its key, each lands exactly once."""
    application = f"lost_{uuid.uuid4().hex[:8]}"
    with postgres_schema(postgres_url) as url:
        ledger = Ledger(make_engine(f"{url}&application_name={application}"))
        try:
            alice = ledger.open_account("alice", "USD").account_id
            bob = ledger.open_account("bob", "USD").account_id
            WalletService(ledger).deposit("fund", alice, TRANSFERS * FUNDS, "USD")
            unexpected: list[BaseException] = []
            unanswered: list[str] = []
            stop = threading.Event()
            terminated: list[int] = []

            def transfer(keys: list[str]) -> None:
                for key in keys:
                    try:
                        ledger.transfer(key, alice, bob, FUNDS)
                    except Unavailable:
                        unanswered.append(key)
                    except BaseException as error:  # anything else is the defect
                        unexpected.append(error)

            def terminator() -> None:
                rng = random.Random(7)
                while not stop.is_set():
                    terminated.append(_terminate(postgres_url, application))
                    time.sleep(rng.uniform(0.005, 0.03))

            keys = [f"t{n}" for n in range(TRANSFERS)]
            workers = [threading.Thread(target=transfer, args=(keys[i::3],)) for i in range(3)]
            killer = threading.Thread(target=terminator)
            killer.start()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(120)
            stop.set()
            killer.join(10)
            assert sum(terminated) > 0  # the database did go away under the transfers
            assert not unexpected, unexpected[:3]
            for key in unanswered:  # the database is back: the same key learns the outcome
                ledger.transfer(key, alice, bob, FUNDS)
            for key in keys:  # and every transfer, sent again, is replayed: none runs twice
                ledger.transfer(key, alice, bob, FUNDS)
            assert ledger.balance(bob).posted_credits_atomic == TRANSFERS * FUNDS
            assert ledger.balance(alice).posted_credits_atomic - \
                ledger.balance(alice).posted_debits_atomic == 0
            for report in (check_balances(ledger), verify_chain(ledger)):
                assert report.ok, report.problems
        finally:
            ledger.close()


class _Context:
    def abort_with_status(self, status: grpc.Status) -> None:
        raise _Aborted(status)


class _Aborted(Exception):
    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


@pytest.mark.parametrize("error", [
    OperationalError("COMMIT", None, psycopg.OperationalError("server closed the connection")),
    OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")),
], ids=["postgres-commit-lost", "sqlite-busy"])
def test_a_lost_database_is_answered_unavailable_not_internal(error: Exception):
    try:
        raise error
    except Exception:
        with pytest.raises(_Aborted) as aborted:
            abort_internal(_Context(), "test")  # type: ignore[arg-type]
    assert aborted.value.status.code == grpc.StatusCode.UNAVAILABLE
    assert "same request again" in aborted.value.status.details


def test_a_bug_is_still_internal():
    try:
        raise KeyError("bug")
    except KeyError:
        with pytest.raises(_Aborted) as aborted:
            abort_internal(_Context(), "test")  # type: ignore[arg-type]
    assert aborted.value.status.code == grpc.StatusCode.INTERNAL
    assert "bug" not in aborted.value.status.details


def test_an_expiry_on_access_that_deadlocks_is_run_again(ledger: Ledger, clock):
    """PostgreSQL aborts one side of a deadlock; when that side is the ledger expiring a hold
    on the way into a caller's capture, the expiry runs again and the caller gets its answer
    (here: the hold has expired), not a database error."""
    alice = ledger.open_account("alice", "USD").account_id
    bob = ledger.open_account("bob", "USD").account_id
    WalletService(ledger).deposit("fund", alice, TRANSFERS * FUNDS, "USD")
    held = ledger.hold("h", alice, bob, FUNDS, timeout_s=5)
    clock.advance(6)
    real_void_in = Ledger.void_in
    deadlocks = [OperationalError("UPDATE accounts", None,
                                  psycopg.errors.DeadlockDetected("deadlock detected"))]

    def void_in_deadlocking_once(self, *args, **kwargs):
        if deadlocks:
            raise deadlocks.pop()
        return real_void_in(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Ledger, "void_in", void_in_deadlocking_once)
        with pytest.raises(HoldClosed, match="expired"):
            ledger.capture("c", held.hold_id, FUNDS)
    assert deadlocks == []  # the deadlock happened, and was run again
    assert ledger.balance(alice).available_atomic == TRANSFERS * FUNDS
    assert check_balances(ledger).ok
