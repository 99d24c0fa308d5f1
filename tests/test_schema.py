"""The shipped Alembic migrations build exactly the tables the code declares, on every backend,
and running them again is a no-op."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from wallets._chain import GENESIS_HASH
from wallets.schema import package_metadata, upgrade
from wallets.store import enable_wal, make_engine

PACKAGES = ["wallets", "marketplace", "agents"]


@pytest.mark.parametrize("package", PACKAGES)
def test_migrations_match_the_models(db_url: str, package: str):
    if not (__import__(package).__file__ and _has_migrations(package)):
        pytest.skip(f"{package} ships no migrations")
    engine = make_engine(db_url)
    try:
        upgrade(engine, package)
        upgrade(engine, package)  # idempotent
        with engine.connect() as conn:
            diff = [d for d in compare_metadata(MigrationContext.configure(conn),
                                                package_metadata(package))
                    if d[0] != "remove_table"]  # other packages' tables share the database
        assert diff == [], f"models and migrations differ: {diff}"
        tables = set(inspect(engine).get_table_names())
        assert set(package_metadata(package).tables) <= tables
        assert f"agentmarket_{package}_version" in tables
    finally:
        engine.dispose()


def _has_migrations(package: str) -> bool:
    from pathlib import Path

    root = Path(__import__(package).__file__).resolve().parent / "migrations" / "versions"
    return any(root.glob("*.py"))


def test_wal_mode_waits_for_a_writer_holding_a_new_file(tmp_path):
    """Switching a new SQLite file to WAL while another connection writes to it fails at once
    in SQLite (no busy handler); `enable_wal` waits for the writer instead."""
    path = tmp_path / "new.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE t (a)")
    release = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    release.start()
    opener = sqlite3.connect(path, isolation_level=None)
    try:
        enable_wal(opener, timeout_s=10)
        assert opener.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        release.join()
        opener.close()
        writer.close()


def test_ledgers_opened_together_on_a_new_database_all_start(db_url: str, monkeypatch):
    """Nodes of one market start together: each seeds the ledger's chain head after the
    migrations, and a look-then-insert let two of them insert it (duplicate key, a node down)."""
    from wallets import ledger as ledger_module

    opening = 4
    migrated = threading.Barrier(opening, timeout=30)
    real_create_schema = ledger_module.create_schema

    def create_schema_then_wait(engine):
        real_create_schema(engine)
        migrated.wait()  # every opener past the migrations before any seeds the head

    monkeypatch.setattr(ledger_module, "create_schema", create_schema_then_wait)
    engines = [make_engine(db_url) for _ in range(opening)]
    opened, failed = [], []

    def open_one(engine):
        try:
            opened.append(ledger_module.Ledger(engine, sealer=False))
        except Exception as error:  # every opener's failure is reported
            failed.append(error)

    threads = [threading.Thread(target=open_one, args=(engine,)) for engine in engines]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failed == [] and len(opened) == opening
        with engines[0].connect() as conn:
            heads = conn.execute(text("SELECT id, sequence, hash FROM ledger_head")).all()
        assert heads == [(1, 0, GENESIS_HASH)]
    finally:
        for ledger in opened:
            ledger.close()
        for engine in engines:
            engine.dispose()
