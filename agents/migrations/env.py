"""Alembic environment: runs `wallets.schema.run_migrations` (shared by every package)."""

from wallets.schema import run_migrations

run_migrations()
