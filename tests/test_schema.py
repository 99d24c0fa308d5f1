"""The shipped Alembic migrations build exactly the tables the code declares, on every backend,
and running them again is a no-op."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

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
