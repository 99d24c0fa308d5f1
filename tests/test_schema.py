"""The shipped Alembic migrations build exactly the tables the code declares, on every backend,
and running them again is a no-op."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from wallets.schema import package_metadata, upgrade
from wallets.store import make_engine

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
