"""A lease one process of many holds: a PostgreSQL session-level advisory lock.

Whoever holds the lock on its own connection holds the lease, exactly as long as that
connection lives: a process that stops closes it; one killed with SIGKILL has its socket closed
by the kernel and PostgreSQL releases the lock at once; a machine that vanishes is noticed by
TCP keepalives within about 20 s. The others try for it on each round, so one of them takes
over on its next round. Keyed by a class name and the schema, so markets in other schemas of
the database do not share it. On SQLite (one host) every process holds it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from sqlalchemy import Engine

log = logging.getLogger("agentmarket.lease")
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 3,
              "keepalives_count": 3}


class AdvisoryLease:
    """`held()` answers whether this process holds the lease now, taking it when it is free."""

    def __init__(self, engine: Engine, holder: str, lock_class: str) -> None:
        """`holder`: names this process in `pg_stat_activity.application_name` (operators and
        tests see who holds it); `lock_class`: what the lease is for."""
        self.engine = engine
        self.lock_class = lock_class
        self.holder = holder[:63]
        self.shared = engine.dialect.name == "postgresql"
        self._conn: Any = None
        self._held = False
        self._lock = threading.Lock()

    def held(self) -> bool:
        """True when this process holds the lease (always on SQLite); never raises."""
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
                    (self.lock_class,)).fetchone()
                self._held = bool(row and row[0])
                if self._held:
                    log.info("%s now holds the lease %s", self.holder, self.lock_class)
                return self._held
            except Exception as error:  # the session is gone, and the lock with it
                if self._held:
                    log.warning("lost the lease %s: %s", self.lock_class, error)
                self._drop()
                return False

    @property
    def holding(self) -> bool:
        """Whether this process held the lease at its last check (without checking again)."""
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
        """Give the lease up (closing the session releases the lock): another takes it."""
        with self._lock:
            self._drop()
