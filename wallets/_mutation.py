"""How a ledger mutation runs: once per idempotency key, in a write transaction, alone or
group-committed with others.

`MutationRunner.mutate` is the entry point of every money operation (and of other packages'
ones, such as escrow, whose own rows commit with the postings they cause). A mutation alone in
its transaction runs without a savepoint: when its effect is refused, the whole transaction
rolls back and the refusal is recorded in the next one (a concurrent duplicate that recorded
first wins and is replayed). Group-committed mutations each run in a savepoint of the shared
transaction. On SQLite the idempotency statements run on the DB-API cursor
(`wallets._sqlite_hot`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from wallets import _idempotency
from wallets import _sqlite_hot as hot
from wallets._group_commit import GroupCommitter, WorkItem
from wallets.errors import AgentmarketError, Contended, DatabaseUnavailable
from wallets.store import connection_lost

if TYPE_CHECKING:
    from wallets.guard import SpendGuard
    from wallets.store import WriteSerializer

RETRIED_SQLSTATES = ("40P01", "40001")  # deadlock detected, serialization failure
POSTINGS_OF_TRANSACTION = "agentmarket_postings"  # conn.info: sequences written in this one
SEALED_OF_TRANSACTION = "agentmarket_sealed"  # conn.info (SQLite): what they were, by sequence
AFTER_COMMIT = "agentmarket_after_commit"  # conn.info: work to run once this one has committed
T = TypeVar("T")

log = logging.getLogger("agentmarket.ledger")


def after_commit(conn: Connection, work: Callable[[Connection], Any]) -> bool:
    """Run `work` once `conn`'s write transaction has committed, before its callers get their
    results, in one short transaction with the rest queued by it; False (and nothing queued)
    when `conn` is not a ledger write transaction. `work` must be safe to skip (a crash before
    it runs leaves it to a sweep), and may wait for a lock only if nothing that holds it waits
    for another."""
    queued = conn.info.get(AFTER_COMMIT)
    if queued is None:
        return False
    queued.append(work)
    return True


def transaction_postings(conn: Connection) -> list[int]:
    """The sequences of the postings written so far in `conn`'s write transaction, in order
    (some may belong to savepoints since rolled back: look them up to see)."""
    return conn.info.setdefault(POSTINGS_OF_TRANSACTION, [])


def transaction_sealed(conn: Connection) -> dict[int, tuple[Any, str]]:
    """SQLite, where postings are sealed as they are written: each posting of this write
    transaction by sequence, with the hash before it (the latest under its number: a
    rolled-back savepoint's number is used again). Lets a receipt state them unread."""
    return conn.info.setdefault(SEALED_OF_TRANSACTION, {})


def _retryable(error: OperationalError) -> bool:
    """A deadlock between row locks (PostgreSQL aborts one side) or the like, or a lost
    connection (the pool hands out a fresh one; if the lost commit landed, the key replays
    its outcome): run again. Not SQLite busy past its timeout: it waited long enough."""
    return getattr(error.orig, "sqlstate", None) in RETRIED_SQLSTATES or (
        connection_lost(error) and not isinstance(error.orig, sqlite3.Error))


class _Refused(Exception):
    """A mutation's effect was refused (`error`); the runner rolls the effect back, then
    records the refusal if it is a final one (`MutationRunner._record_refusal`)."""

    def __init__(self, error: AgentmarketError, scope: str, key: str, operation: str,
                 request_digest: str, decode: Callable[[Any], Any]) -> None:
        super().__init__(error)
        self.error, self.scope, self.key, self.operation = error, scope, key, operation
        self.request_digest, self.decode = request_digest, decode

    @property
    def recorded(self) -> bool:
        return (self.scope != _idempotency.NODE_SCOPE
                and _idempotency.is_recorded_failure(self.error))


class _Outcome:
    """A mutation's result or its recorded failure, raised only after the commit."""

    __slots__ = ("error", "result")

    def __init__(self, result: Any = None, *, error: AgentmarketError | None = None) -> None:
        self.result, self.error = result, error

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class _WriteTransaction:
    """`Ledger._write`: the process's write serialiser, a transaction, then the spend guard's
    effects of refused spends (approvals and freezes outlive the rollback)."""

    __slots__ = ("conn", "ctx", "ledger", "queued", "serial")

    def __init__(self, ledger: MutationRunner) -> None:
        self.ledger = ledger

    def __enter__(self) -> Connection:
        self.serial = self.ledger._serial()
        self.serial.__enter__()
        try:
            if self.ledger._sqlite:  # writers take turns on one connection
                conn = self.ledger._serial.connection()
                self.ctx = conn.begin()
                self.ctx.__enter__()
            else:
                self.ctx = self.ledger.engine.begin()
                conn = self.ctx.__enter__()
        except BaseException:
            self.serial.__exit__(None, None, None)
            raise
        # No lock on PostgreSQL until a row is touched: whatever a decision reads is read FOR
        # UPDATE (holds, guarded wallets) or guarded by the UPDATE itself.
        conn.info[POSTINGS_OF_TRANSACTION] = []
        conn.info[SEALED_OF_TRANSACTION] = {}
        self.queued = conn.info[AFTER_COMMIT] = []
        self.conn = conn
        return conn

    def __exit__(self, *exc: Any) -> None:
        queued = self.queued
        if not self.conn.invalidated:  # a lost connection's info is out of reach: no matter
            self.conn.info.pop(AFTER_COMMIT, None)
        try:
            self.ctx.__exit__(*exc)
        finally:
            self.serial.__exit__(*exc)
            self.ledger.spend_guard.after_transaction()  # spend-guard hook
        if exc[0] is None and queued:
            try:
                with self.ledger.engine.begin() as conn:
                    for work in queued:
                        work(conn)
            except Exception:  # committed already; a sweep does what this could not
                log.exception("work after a ledger commit failed")


class MutationRunner:
    """The mutation machinery `wallets.ledger.Ledger` inherits; it sets these attributes."""

    engine: Engine
    spend_guard: SpendGuard
    clock_ms: Callable[[], int]
    _serial: WriteSerializer
    _sqlite: bool
    _legacy_keys: bool
    _committer: GroupCommitter | None

    def _write(self) -> _WriteTransaction:
        """A write transaction (serialised per process on SQLite)."""
        return _WriteTransaction(self)

    def mutate(
        self,
        key: str,
        operation: str,
        request: dict[str, Any],
        apply: Callable[[Connection], T],
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
        *,
        scope: str | None = None,
    ) -> T:
        """Run `apply` once per (scope, operation, idempotency key), atomically with recording
        its outcome. `scope`: whose key it is (`wallets._idempotency`); by default the
        authenticated caller of the request being served, `NODE_SCOPE` for the node's own work.

        Also the entry point for other packages' money operations (escrow), so that their own
        state changes commit in the same transaction as the postings they cause.
        """
        _idempotency.check_key(key)
        scope = _idempotency.check_scope(scope or _idempotency.request_scope())
        request_digest = _idempotency.digest(operation, request)
        args = (scope, key, operation, request_digest, apply, encode, decode)
        if self._committer is not None:
            return self._committer.submit(
                lambda conn: self._run_item(conn, *args, isolated=False))
        return self._mutate_alone(*args)

    def _mutate_alone(self, *args: Any) -> Any:
        """One mutation in its own transaction, retried when a concurrent duplicate wins."""
        return self._run_alone(lambda conn: self._run_item(conn, *args, isolated=False),
                               key=args[1])

    def _run_alone(self, run: Callable[[Connection], _Outcome], *, key: str = "") -> Any:
        """Run `run` in a transaction of its own. No savepoint: a refused effect rolls the
        whole transaction back, and its refusal is recorded in the next one."""
        lost: OperationalError | None = None
        for _attempt in range(5):
            try:
                try:
                    with self._write() as conn:
                        outcome = run(conn)
                except _Refused as refused:
                    if not refused.recorded:
                        raise refused.error from None
                    with self._write() as conn:
                        outcome = self._record_refusal(conn, refused)
                return outcome.unwrap()
            except IntegrityError:
                continue  # a concurrent duplicate won the key; the next attempt replays it
            except OperationalError as error:
                if not _retryable(error):
                    raise
                lost = error if connection_lost(error) else None
        if lost is not None:
            raise DatabaseUnavailable("the database did not answer; send the same request "
                                      "again (with the same idempotency key)") from lost
        named = f" {key!r}" if key else ""
        raise Contended(f"idempotency key{named} is contended; retry the request")

    def _write_retried(self, run: Callable[[Connection], T]) -> T:
        """`run` in a write transaction of its own, run again (up to 5 times) after a deadlock
        or a lost connection: for the ledger's own upkeep, which has no idempotency key (an
        expiry checks the hold's state again inside its transaction)."""
        for attempt in range(5):
            try:
                with self._write() as conn:
                    return run(conn)
            except OperationalError as error:
                if not _retryable(error):
                    raise
                if attempt == 4:
                    if connection_lost(error):
                        raise DatabaseUnavailable("the database did not answer; try again"
                                                  ) from error
                    raise Contended("the ledger's upkeep kept deadlocking; try again"
                                    ) from error
        raise AssertionError("unreachable")

    def _run_batch(self, batch: list[WorkItem]) -> None:
        """Group commit: every item in its own savepoint, one transaction, one commit."""
        if len(batch) == 1:  # alone: its own transaction, no savepoint
            item = batch[0]
            try:
                item.result = item.context.run(self._run_alone, item.run)
            except Exception as error:
                item.error = error
            return
        outcomes: list[tuple[WorkItem, _Outcome]] = []
        alone: list[WorkItem] = []
        try:
            with self._write() as conn:
                for item in batch:
                    savepoint = self._savepoint(conn)
                    try:
                        try:
                            outcome = item.context.run(item.run, conn)
                        except _Refused as refused:  # its effect goes, its refusal stays
                            savepoint.rollback()
                            if not refused.recorded:
                                raise refused.error from None
                            savepoint = self._savepoint(conn)
                            outcome = item.context.run(self._record_refusal, conn, refused)
                        savepoint.commit()
                    except AgentmarketError as error:  # refused before recording: not stored
                        if savepoint.is_active:
                            savepoint.rollback()
                        item.error = error
                        continue
                    except Exception:  # a conflicting duplicate or the like: run it alone
                        if savepoint.is_active:
                            savepoint.rollback()
                        alone.append(item)
                        continue
                    outcomes.append((item, outcome))
        except Exception:
            alone = list(batch)  # nothing was committed: each item runs again on its own
            outcomes = []
        for item, outcome in outcomes:
            try:
                item.result = outcome.unwrap()
            except AgentmarketError as error:
                item.error = error
        for item in alone:
            item.error = None
            try:
                item.result = item.context.run(self._run_alone, item.run)
            except Exception as error:
                item.error = error

    def _savepoint(self, conn: Connection) -> Any:
        """A batch item's savepoint (on SQLite straight on the DB-API connection)."""
        return hot.Savepoint(conn) if self._sqlite else conn.begin_nested()

    def _run_item(self, conn: Connection, scope: str, key: str, operation: str,
                  request_digest: str, apply: Callable[[Connection], Any],
                  encode: Callable[[Any], Any], decode: Callable[[Any], Any], *,
                  isolated: bool = True) -> _Outcome:
        """Replay a stored outcome, or apply once and record the outcome with the effect.

        `isolated`: a refusal rolls back a savepoint around the effect and is recorded here;
        off, it raises `_Refused` for the caller to roll back the effect (whole transaction or
        its own savepoint) and record the refusal with `_record_refusal`."""
        stored = self._lookup(conn, scope, key, operation, request_digest)
        if stored is not None:
            return _Outcome(decode(stored))
        if not isolated:
            try:
                with _idempotency.running_in(scope):
                    result = apply(conn)
            except AgentmarketError as error:
                raise _Refused(error, scope, key, operation, request_digest, decode) from None
            self._record(conn, scope, key, operation, request_digest, result=encode(result))
            return _Outcome(result)
        savepoint = conn.begin_nested()
        try:
            with _idempotency.running_in(scope):
                result = apply(conn)
            savepoint.commit()
        except AgentmarketError as error:
            savepoint.rollback()
            if scope == _idempotency.NODE_SCOPE or not _idempotency.is_recorded_failure(error):
                raise
            self._record(conn, scope, key, operation, request_digest, error=error)
            return _Outcome(error=error)
        self._record(conn, scope, key, operation, request_digest, result=encode(result))
        return _Outcome(result)

    def _record_refusal(self, conn: Connection, refused: _Refused) -> _Outcome:
        """Record a refusal after its effect rolled back; a concurrent duplicate that recorded
        its outcome meanwhile wins, and its outcome is returned instead."""
        stored = self._lookup(conn, refused.scope, refused.key, refused.operation,
                              refused.request_digest)
        if stored is not None:
            return _Outcome(refused.decode(stored))
        self._record(conn, refused.scope, refused.key, refused.operation,
                     refused.request_digest, error=refused.error)
        return _Outcome(error=refused.error)

    def key_recorded(self, key: str, operation: str, *, scope: str | None = None) -> bool:
        """Whether (scope, operation, key) already has an outcome: a one-off payment's nonce,
        say, which must not be verified again once settled, after a restart included.
        `scope`: as `mutate`'s."""
        scope = _idempotency.check_scope(scope or _idempotency.request_scope())
        statement = _idempotency._LOOKUP_WITH_LEGACY if self._legacy_keys \
            else _idempotency._LOOKUP
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            return conn.execute(statement, {"i_scope": scope, "i_operation": operation,
                                            "i_key": key}).first() is not None

    def _lookup(self, conn: Connection, scope: str, key: str, operation: str,
                request_digest: str) -> Any | None:
        """`_idempotency.lookup`, on SQLite through the DB-API cursor (`wallets._sqlite_hot`)."""
        if not self._sqlite:
            return _idempotency.lookup(conn, scope, key, operation, request_digest,
                                       legacy=self._legacy_keys)
        row = _idempotency.pick(hot.key_rows(conn, scope, operation, key,
                                             legacy=self._legacy_keys), scope)
        if row is None:
            return None
        result, error = _idempotency.stored_outcome(row, key, request_digest)
        if error is not None:
            raise error
        return result

    def _record(self, conn: Connection, scope: str, key: str, operation: str,
                request_digest: str, *, result: Any = None,
                error: AgentmarketError | None = None) -> None:
        values = _idempotency.row_values(scope, key, operation, request_digest, self.clock_ms(),
                                         result=result, error=error)
        if self._sqlite:
            hot.record_key(conn, values)
        else:
            conn.execute(_idempotency._RECORD, [values])
