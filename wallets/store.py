"""Database engines: SQLite (WAL, one writer) embedded by default, PostgreSQL by URL.

The same SQLAlchemy Core code runs on both. On SQLite every write transaction starts with
BEGIN IMMEDIATE, so writers queue on the database lock instead of failing half-way; on
PostgreSQL the ledger takes row locks itself (see `wallets.ledger`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, PendingRollbackError

from wallets.errors import InvalidArgument
from wallets.writer_turns import turns_of

DEFAULT_DB_URL = "sqlite:///agentmarket.db"
SQLITE_BUSY_TIMEOUT_S = 30.0
# A pooled PostgreSQL connection unused for longer than this is pinged before it is handed out,
# so a restart or a failover while it sat idle is found there, not by a caller's statement. One
# back sooner is used as it is: a ping per checkout cost a quarter of a small transaction's CPU
# (about 25 us of 120), and a backend lost under load fails only the request that meets it, as
# a lost connection (`connection_lost`: UNAVAILABLE, sent again with its key).
PING_AFTER_IDLE_S = 1.0


def enable_wal(connection: sqlite3.Connection, timeout_s: float = SQLITE_BUSY_TIMEOUT_S
               ) -> None:
    """Put a SQLite database in WAL mode. Switching needs an exclusive lock, and SQLite refuses
    it at once, without its busy handler, while another connection is opening the same new
    file: retry until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path)}"


def make_engine(url: str = DEFAULT_DB_URL) -> Engine:
    """An engine with the pragmas and transaction behaviour the ledger relies on."""
    if not url.startswith(("sqlite", "postgresql")):
        what = url.split("://")[0] + "://" if "://" in url else repr(url[:60])  # no password
        raise InvalidArgument(f"{what} is not a database URL agentmarket runs on: use "
                              "sqlite:///FILE or postgresql://...")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if not url.startswith("sqlite"):
        engine = create_engine(url, pool_size=10, max_overflow=20)
        _ping_when_idle(engine)
        return engine
    engine = create_engine(url, connect_args={"check_same_thread": False,
                                              "timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        enable_wal(dbapi_connection)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        reading = conn.get_execution_options().get("agentmarket_read", False)
        statement = "BEGIN" if reading else "BEGIN IMMEDIATE"
        try:  # straight to sqlite3: through SQLAlchemy it cost more than a posting's rows
            conn.connection.driver_connection.execute(statement)
        except sqlite3.Error as error:  # e.g. "database is locked": as SQLAlchemy raises it
            raise DBAPIError.instance(statement, None, error, sqlite3.Error) from error

    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection at checkout only when it has been idle `PING_AFTER_IDLE_S`
    (SQLAlchemy's `pool_pre_ping` pings every checkout); a ping that fails makes the pool
    discard the connection and hand out another."""
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, _proxy) -> None:  # type: ignore[no-untyped-def]
        idle_since = record.info.get("idle_since")  # None: a new connection, just made
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # gone: the pool retries with a new connection
            raise DisconnectionError(f"a pooled connection failed its ping: {error}") from error


def shown_url(url: str) -> str:
    """A database URL for a message or a log line, its password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing in it to hide
        return url[:200]


def connection_lost(error: BaseException) -> bool:
    """Whether `error` is the database going away rather than refusing: a dropped or reset
    connection (PostgreSQL restarted, the backend terminated, a commit whose answer never
    came), or SQLite busy past its timeout. What the failed request did is unknown or undone,
    never half-done (a transaction commits whole or not at all): the same request, with the
    same idempotency key, may be sent again."""
    if isinstance(error, DisconnectionError | PendingRollbackError):
        return True
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        if isinstance(error, OperationalError):
            if isinstance(error.orig, sqlite3.OperationalError):
                return "locked" in str(error.orig) or "busy" in str(error.orig)
            return True  # psycopg: every OperationalError is about the connection
    return False


def create_schema(engine: Engine) -> None:
    """Bring the wallets tables to the newest migration (`wallets.schema`)."""
    from wallets.schema import upgrade

    upgrade(engine, "wallets")


def insert_unless_present(conn: Connection, table: Table, **values: object) -> None:
    """Insert a row unless one with its key exists (ON CONFLICT DO NOTHING): processes starting
    together over one database each seed the same row, and a look first would let two insert."""
    dialect = postgresql_dialect if conn.dialect.name == "postgresql" else sqlite_dialect
    conn.execute(dialect.insert(table).values(**values).on_conflict_do_nothing())


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def begin_in_turn(engine: Engine) -> Iterator[Connection]:
    """`engine.begin()` for a writer that is not money (receipts, checkpoints, sealing, audit
    rows): on SQLite inside a non-urgent turn of the engine's writers (`wallets.writer_turns`),
    so it waits behind the ledger's postings on a condition, not at SQLite's file lock, whose
    busy handler sleeps in steps of up to 100 ms and would make a posting wait behind it."""
    if not is_sqlite(engine):
        with engine.begin() as conn:
            yield conn
        return
    with turns_of(engine).turn(urgent=False), engine.begin() as conn:
        yield conn


class WriteSerializer:
    """One writer at a time inside this process on SQLite, taking turns on one connection (no
    pool round trip per transaction: a fifth of a posting's Python); a no-op on PostgreSQL.
    Every serializer of one engine shares its turns (`wallets.writer_turns`): an `urgent` one
    (money) goes before the others waiting."""

    def __init__(self, engine: Engine, *, urgent: bool = True) -> None:
        self._turns = turns_of(engine) if is_sqlite(engine) else None
        self._urgent = urgent
        self._engine = engine
        self._connection: Connection | None = None
        if self._turns is not None:  # disposing the engine closes every connection, this too
            event.listen(engine, "engine_disposed", lambda _engine: self.close())

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self._turns is None:
            yield
            return
        with self._turns.turn(urgent=self._urgent):
            yield

    def connection(self) -> Connection:
        """The writers' connection (SQLite; call while holding the turn)."""
        conn = self._connection
        if conn is None or conn.closed or conn.invalidated:
            conn = self._connection = self._engine.connect()
        return conn

    def close(self) -> None:
        """Give the writers' connection back to the pool (the next writer takes one again)."""
        if self._turns is None:
            return
        with self._turns.turn(urgent=self._urgent):
            if self._connection is not None:
                self._connection.close()
                self._connection = None
