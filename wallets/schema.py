"""Schema management: Alembic migrations shipped in each package, run at start-up.

Each package keeps its own migration folder and version table (`wallets/migrations`,
`marketplace/migrations`), so wallets never depends on the marketplace. `upgrade` takes a lock
first (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so processes starting together
migrate once. To add a migration after changing a table: `python -m wallets.schema revision
wallets "what changed"` (or `marketplace`), then review the generated file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, MetaData, text
from sqlmodel import SQLModel

_LOCK_ID = 0x61676D6B  # "agmk": the advisory lock migrations take on PostgreSQL


def package_metadata(package: str) -> MetaData:
    """The tables one package declares (`<package>.tables`), on a MetaData of their own."""
    module = __import__(f"{package}.tables", fromlist=["_"])
    names = {cls.__tablename__ for cls in vars(module).values()
             if isinstance(cls, type) and getattr(cls, "__module__", "") == module.__name__
             and hasattr(cls, "__table__")}
    metadata = MetaData()
    for table in SQLModel.metadata.sorted_tables:
        if table.name in names:
            table.to_metadata(metadata)
    return metadata


def _config(package: str) -> Config:
    root = Path(__import__(package).__file__).resolve().parent
    config = Config()
    config.set_main_option("script_location", str(root / "migrations"))
    config.attributes["metadata"] = package_metadata(package)
    config.attributes["version_table"] = f"agentmarket_{package}_version"
    return config


def upgrade(engine: Engine, package: str) -> None:
    """Bring `package`'s tables to the newest migration."""
    config = _config(package)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        config.attributes["connection"] = conn
        command.upgrade(config, "heads")  # every branch: parallel migrations need no merge


def run_migrations() -> None:
    """The body of each package's migrations/env.py: connection, metadata and version table
    come from `config.attributes`, set by `upgrade` and `revision`."""
    from alembic import context

    config = context.config
    context.configure(connection=config.attributes["connection"],
                      target_metadata=config.attributes["metadata"],
                      version_table=config.attributes["version_table"], compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def revision(package: str, message: str, db_url: str = "sqlite://") -> None:
    """Autogenerate a migration from the difference between the tables and the migrations."""
    from wallets.store import make_engine

    engine = make_engine(db_url)
    upgrade(engine, package)
    config = _config(package)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.revision(config, message=message, autogenerate=True)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "revision":
        raise SystemExit("usage: python -m wallets.schema revision wallets|marketplace MESSAGE")
    revision(sys.argv[2], sys.argv[3])
