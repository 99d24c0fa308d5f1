"""Which node of a market runs the background sweep: the one holding a PostgreSQL advisory lock.

Several nodes over one PostgreSQL each run a sweeper thread, but only the one whose own
connection holds the session-level advisory lock (`pg_try_advisory_lock`, keyed by the schema,
so markets in other schemas of the database do not share it) sweeps: hold expiry, settlement
deadlines and dispute windows, delayed withdrawals and payouts, listing purges, checkpoints. The
lock lives exactly as long as that connection: a node that stops closes it; a node killed with
SIGKILL has its socket closed by the kernel and PostgreSQL releases the lock at once; a machine
that vanishes is noticed by TCP keepalives within about 20 s. Each other node tries for the lock
on every round, so one of them takes over the sweep on its next round.

The sweep steps are each safe to run twice (idempotency keys, conditional updates), so a moment
of two sweepers (a lock lost while a round runs) costs work, not money; the lease keeps it to
that moment. On SQLite (one host, typically one node) the node always sweeps.
"""

from __future__ import annotations

from sqlalchemy import Engine

from wallets.lease import AdvisoryLease

__all__ = ["SweepLease"]

_LEASE_CLASS = "agentmarket-sweeper"  # hashed to the lock's first key; the schema is the second


class SweepLease(AdvisoryLease):
    """`held()` answers whether this node should sweep now, taking the lease when it is free
    (`wallets.lease`)."""

    def __init__(self, engine: Engine, holder: str) -> None:
        """`holder`: names this node in `pg_stat_activity.application_name` (operators and
        tests see which node sweeps)."""
        super().__init__(engine, holder, _LEASE_CLASS)
