"""The ledger's hot statements on SQLite, run on the DB-API connection of the transaction.

A posting executes about ten statements; through SQLAlchemy each costs far more Python than
SQLite takes to run it. These are the same statements (the balance UPDATE is compiled from the
one `wallets.ledger` runs on PostgreSQL), prepared once and executed on the sqlite3 connection
inside the caller's SQLAlchemy transaction, so atomicity, savepoints and rollback are unchanged.
sqlite3 errors are raised as SQLAlchemy's (`IntegrityError`, `OperationalError`), as the
statements through SQLAlchemy would. `Prepared` and `Statement` do the same for any statement
built once with SQLAlchemy (escrow, hold, receipt and sweep statements); `reading` gives reads a
pooled DB-API connection without a SQLAlchemy Connection around it.

Only for SQLite, where writers are serialised by BEGIN IMMEDIATE: what a transaction reads stays
true until it commits, so reading a wallet's controls with its balance needs no row lock.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, NoResultFound

from wallets.errors import InvalidArgument, NotFound
from wallets.models import Balance, Leg

_ACCOUNT_COLUMNS = ("id, owner, currency, kind, posted_credits_atomic, posted_debits_atomic, "
                    "pending_debits_atomic, pending_credits_atomic, credit_limit_atomic")
_KEY_COLUMNS = "scope, operation, request_digest, outcome, result_json"
LOOKUP_KEY = (f"SELECT {_KEY_COLUMNS} FROM idempotency_keys "
              "WHERE scope = ? AND operation = ? AND key = ?")
LOOKUP_KEY_WITH_LEGACY = (f"SELECT {_KEY_COLUMNS} FROM idempotency_keys "
                          "WHERE scope IN (?, 'legacy') AND operation = ? AND key = ?")
RECORD_KEY = ("INSERT INTO idempotency_keys (scope, key, operation, request_digest, outcome, "
              "result_json, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)")
HEAD = "SELECT sequence, hash FROM ledger_head WHERE id = 1"
MOVE_HEAD = "UPDATE ledger_head SET sequence = ?, hash = ? WHERE id = 1"
INSERT_POSTING = ("INSERT INTO ledger_postings (sequence, idempotency_key, kind, hold_id, "
                  "created_at_ms, trace_id, span_id, memo, prev_hash, hash, position) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_ENTRY = ("INSERT INTO ledger_entries (sequence, account_id, currency, posted_atomic, "
                "pending_debit_atomic, pending_credit_atomic) VALUES (?, ?, ?, ?, ?, ?)")


class KeyRow(NamedTuple):
    """An idempotency row, as `wallets._idempotency.stored_outcome` reads it."""

    scope: str
    operation: str
    request_digest: str
    outcome: str
    result_json: str


def _translated(statement: str, error: sqlite3.Error) -> DBAPIError:
    return DBAPIError.instance(statement, None, error, sqlite3.Error)


def execute(conn: Connection, statement: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
    try:
        return conn.connection.driver_connection.execute(statement, params)  # type: ignore
    except sqlite3.Error as error:
        raise _translated(statement, error) from error


def executemany(conn: Connection, statement: str, rows: Iterable[Sequence[Any]]) -> None:
    try:
        conn.connection.driver_connection.executemany(statement, rows)  # type: ignore
    except sqlite3.Error as error:
        raise _translated(statement, error) from error


# ---- idempotency keys -----------------------------------------------------------------------


def key_rows(conn: Connection, scope: str, operation: str, key: str, *,
             legacy: bool) -> list[KeyRow]:
    statement = LOOKUP_KEY_WITH_LEGACY if legacy else LOOKUP_KEY
    return [KeyRow(*row) for row in execute(conn, statement, (scope, operation, key))]


def record_key(conn: Connection, values: dict[str, Any]) -> None:
    execute(conn, RECORD_KEY, (values["scope"], values["key"], values["operation"],
                               values["request_digest"], values["outcome"],
                               values["result_json"], values["created_at_ms"]))


class Savepoint:
    """A savepoint on the DB-API connection, as `Connection.begin_nested` makes one (the
    statements it runs are the same), for the group committer's one per item."""

    __slots__ = ("conn", "is_active")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        execute(conn, "SAVEPOINT group_item")
        self.is_active = True

    def commit(self) -> None:
        self.is_active = False
        execute(self.conn, "RELEASE SAVEPOINT group_item")

    def rollback(self) -> None:
        self.is_active = False
        execute(self.conn, "ROLLBACK TO SAVEPOINT group_item")
        execute(self.conn, "RELEASE SAVEPOINT group_item")


# ---- accounts ---------------------------------------------------------------------------------


@cache
def _accounts_with_controls(n: int) -> str:
    return (f"SELECT {', '.join('a.' + c for c in _ACCOUNT_COLUMNS.split(', '))}, "
            "p.account_id IS NOT NULL FROM ledger_accounts a "
            "LEFT JOIN wallet_policies p ON p.account_id = a.id "
            f"WHERE a.id IN ({', '.join('?' * n)})")


def accounts_with_controls(conn: Connection, account_ids: Iterable[str]
                           ) -> tuple[dict[str, Balance], set[str]]:
    """The accounts (NotFound if one is missing; one currency, as `Ledger._accounts_for`), and
    which of them have a control row (`wallets.policies`), in one statement."""
    ids = sorted(set(account_ids))
    found: dict[str, Balance] = {}
    controlled: set[str] = set()
    for row in execute(conn, _accounts_with_controls(len(ids)), ids):
        found[row[0]] = Balance(*row[:9])
        if row[9]:
            controlled.add(row[0])
    for account_id in ids:
        if account_id not in found:
            raise NotFound(f"account {account_id!r} does not exist")
    if len({b.currency for b in found.values()}) > 1:
        codes = ", ".join(sorted({b.currency for b in found.values()}))
        raise InvalidArgument(f"accounts are in different currencies ({codes}); use FX")
    return found, controlled


# ---- postings ---------------------------------------------------------------------------------


class CompiledUpdate(NamedTuple):
    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]  # the statement's own literals (bound as parameters)

    def values(self, params: dict[str, Any]) -> list[Any]:
        """The parameters in the statement's order, its own literals where `params` has none."""
        return [params[name] if name in params else self.defaults[name] for name in self.names]


def compile_for_sqlite(statement: Any) -> CompiledUpdate:
    """A SQLAlchemy statement with bind parameters, as SQLite text and its parameter order."""
    compiled = statement.compile(dialect=sqlite.dialect())
    return CompiledUpdate(str(compiled), tuple(compiled.positiontup),
                          {k: v for k, v in compiled.params.items() if v is not None})


class Prepared:
    """A SQLAlchemy statement compiled once for SQLite and run on the DB-API connection: the
    same statement (the same rows, attributes and `_mapping` on them), without SQLAlchemy's
    Python per call. For statements on immutable or write-serialised rows on SQLite only."""

    __slots__ = ("_row", "compiled")

    def __init__(self, statement: Any) -> None:
        self.compiled = compile_for_sqlite(statement)
        if "POSTCOMPILE" in self.compiled.sql:
            raise ValueError("an expanding IN cannot be prepared: spell its values out")
        self._row: Any = None

    def run(self, conn: Connection, params: dict[str, Any]) -> sqlite3.Cursor:
        return execute(conn, self.compiled.sql, self.compiled.values(params))

    def rows(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        cursor = self.run(conn, params)
        row = self._row
        if row is None:
            row = self._row = _row_type(tuple(d[0] for d in cursor.description))
        return [row._make(values) for values in cursor]

    def first(self, conn: Connection, params: dict[str, Any]) -> Any | None:
        found = self.rows(conn, params)
        return found[0] if found else None


class Statement:
    """A statement built once, run through SQLAlchemy on PostgreSQL and `Prepared` on SQLite
    (so code shared by both backends names one statement)."""

    __slots__ = ("prepared", "statement")

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self.prepared = Prepared(statement)

    def first(self, conn: Connection, params: dict[str, Any]) -> Any | None:
        if conn.dialect.name == "sqlite":
            return self.prepared.first(conn, params)
        return conn.execute(self.statement, params).first()

    def one(self, conn: Connection, params: dict[str, Any]) -> Any:
        """The one row, as `Result.one` gives it (`NoResultFound` without one)."""
        if conn.dialect.name == "sqlite":
            row = self.prepared.first(conn, params)
            if row is None:
                raise NoResultFound("No row was found when one was required")
            return row
        return conn.execute(self.statement, params).one()

    def all(self, conn: Connection, params: dict[str, Any]) -> list[Any]:
        if conn.dialect.name == "sqlite":
            return self.prepared.rows(conn, params)
        return list(conn.execute(self.statement, params).all())

    def run(self, conn: Connection, params: dict[str, Any]) -> int:
        """Execute; how many rows it changed."""
        if conn.dialect.name == "sqlite":
            return self.prepared.run(conn, params).rowcount
        return conn.execute(self.statement, params).rowcount


def insert(conn: Connection, table: Any, row: dict[str, Any], statement: Any = None) -> None:
    """INSERT one row (every column given) into `table`: on SQLite prepared, else through
    SQLAlchemy (`statement`, by default `table.insert()`)."""
    if conn.dialect.name == "sqlite":
        insert_row(conn, table.name, row)
    else:
        conn.execute(table.insert() if statement is None else statement, row)


class _Reader:
    """A pooled DB-API connection, read by `Statement` like a SQLAlchemy one."""

    __slots__ = ("connection", "dialect")

    def __init__(self, connection: Any, dialect: Any) -> None:
        self.connection, self.dialect = connection, dialect


@contextmanager
def reading(engine: Engine) -> Iterator[Any]:
    """A connection to read `Statement`s with: on SQLite a pooled DB-API connection, with no
    SQLAlchemy Connection around it (each statement reads in its own transaction); elsewhere a
    SQLAlchemy read connection."""
    if engine.dialect.name != "sqlite":
        with engine.connect().execution_options(agentmarket_read=True) as conn:
            yield conn
        return
    connection = engine.raw_connection()
    try:
        yield _Reader(connection, engine.dialect)
    finally:
        connection.close()


def _row_type(columns: tuple[str, ...]) -> Any:
    """A row class read like SQLAlchemy's: by attribute, by index, and as `_mapping`."""
    base = namedtuple("HotRow", columns)  # type: ignore[misc]
    return type("HotRow", (base,), {"__slots__": (), "_mapping": property(base._asdict)})


@cache
def insert_sql(table: str, columns: tuple[str, ...]) -> str:
    return (f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})")


def insert_row(conn: Connection, table: str, row: dict[str, Any]) -> None:
    """INSERT one row, every column given (`row`'s keys, in order)."""
    execute(conn, insert_sql(table, tuple(row)), tuple(row.values()))


def apply_leg(conn: Connection, update: CompiledUpdate, params: dict[str, Any]) -> int:
    """Run the balance UPDATE (`wallets.ledger._APPLY_LEG`); how many rows it changed."""
    return execute(conn, update.sql, update.values(params)).rowcount


def head(conn: Connection) -> tuple[int, str]:
    row = execute(conn, HEAD).fetchone()
    if row is None:
        raise RuntimeError("the ledger has no chain head row")
    return row[0], row[1]


def append_sealed(conn: Connection, fields: dict[str, Any], prev_hash: str, digest: str,
                  legs: Sequence[Leg]) -> None:
    """Insert a posting sealed at position = sequence, its entries, and move the head."""
    sequence = fields["sequence"]
    execute(conn, INSERT_POSTING, (
        sequence, fields["idempotency_key"], fields["kind"], fields["hold_id"],
        fields["created_at_ms"], fields["trace_id"], fields["span_id"], fields["memo"],
        prev_hash, digest, sequence))
    executemany(conn, INSERT_ENTRY, [
        (sequence, leg.account_id, leg.currency, leg.posted_atomic, leg.pending_debit_atomic,
         leg.pending_credit_atomic) for leg in legs])
    execute(conn, MOVE_HEAD, (sequence, digest))
