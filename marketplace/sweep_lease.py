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

import contextlib
import logging
import threading
from typing import Any

from sqlalchemy import Engine

__all__ = ["SweepLease"]

log = logging.getLogger("agentmarket.sweeper")
_LEASE_CLASS = "agentmarket-sweeper"  # hashed to the lock's first key; the schema is the second
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 3,
              "keepalives_count": 3}


class SweepLease:
    """`held()` answers whether this node should sweep now, taking the lease when it is free."""

    def __init__(self, engine: Engine, holder: str) -> None:
        """`holder`: names this node in `pg_stat_activity.application_name` (operators and
        tests see which node sweeps)."""
        self.engine = engine
        self.holder = holder[:63]
        self.shared = engine.dialect.name == "postgresql"
        self._conn: Any = None
        self._held = False
        self._lock = threading.Lock()

    def held(self) -> bool:
        """True when this node holds the lease (always on SQLite); never raises."""
        if not self.shared:
            return True
        with self._lock:
            try:
                if self._held:
                    self._conn.execute("SELECT 1")  # the lock lives as long as this session
                    return True
                if self._conn is None:
                    self._conn = self._connect()
                row = self._conn.execute(
                    "SELECT pg_try_advisory_lock(hashtext(%s), hashtext(current_schema()))",
                    (_LEASE_CLASS,)).fetchone()
                self._held = bool(row and row[0])
                if self._held:
                    log.info("this node (%s) now runs the market's sweep", self.holder)
                return self._held
            except Exception as error:  # the session is gone, and the lock with it
                if self._held:
                    log.warning("lost the sweep lease: %s", error)
                self._drop()
                return False

    @property
    def holding(self) -> bool:
        """Whether this node held the lease at its last check (without checking again)."""
        return self._held if self.shared else True

    def _connect(self) -> Any:
        import psycopg

        url = self.engine.url.set(drivername="postgresql")
        return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True,
                               application_name=self.holder, connect_timeout=5, **_KEEPALIVE)

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing more to release
                conn.close()

    def release(self) -> None:
        """Give the lease up (closing the session releases the lock): another node sweeps."""
        with self._lock:
            self._drop()
