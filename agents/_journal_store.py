"""How a usage journal's batches reach its tables, and how a restarting seller reads them back.

The common batch (calls, opens, redeems) is written with prepared statements on the writer's
own DB-API connection, one executemany per run of calls and one commit; anything else (forget,
rechain, a row the database refused) goes through SQLAlchemy, with a savepoint per row when a
row must fail alone.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError

from agents._call_log import CallLog, fits, path_beside, read_rows
from agents._journal_batches import (
    _CALL,
    _CALL_COLUMNS,
    _DROPPED,
    _FORGET,
    _OPEN,
    _RECHAIN,
    _REDEEM,
    AGREEMENTS,
    CALLS,
    JournalError,
    _Batch,
    _call_params,
)
from agents.errors import NotFound

log = logging.getLogger("agentmarket.seller")


@dataclass(frozen=True, slots=True)
class JournalCall:
    """One answered paid call, as recorded."""

    call_id: str
    position: int
    sequence: int
    voucher: bytes
    receipt: bytes
    response: bytes


@dataclass(frozen=True, slots=True)
class JournalAgreement:
    """An agreement and its calls (ordered by position), enough to rebuild the seller's state.

    `closed` and `escrow`: open (False, None); a redeem in flight (True, None); redeemed
    (True, the marketplace's serialized Escrow)."""

    agreement_id: str
    seller_id: str
    body: bytes
    opened_at_ms: int
    closed: bool
    escrow: bytes | None
    calls: tuple[JournalCall, ...]


class JournalStore:
    """The statements of a `UsageJournal` (mixed in): its writes and its reads."""

    _engine: Engine
    _raw: Any
    _dbapi: Any
    # `UsageJournal`'s writer state: the lock whoever writes a batch holds, and what the
    # writer thread waits on
    _write_lock: threading.Lock
    _lock: threading.Lock
    _wakeup: threading.Condition
    _blocked: bool
    _idle: bool
    _queue: deque[_Batch]

    def _prepare_statements(self) -> None:
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        self._insert_call = insert(CALLS).on_conflict_do_nothing()
        marker = "?" if self._engine.dialect.paramstyle == "qmark" else "%s"
        self._insert_calls_sql = (
            f"INSERT INTO {CALLS.name} ({', '.join(_CALL_COLUMNS)}) VALUES "
            f"({', '.join([marker] * len(_CALL_COLUMNS))}) ON CONFLICT DO NOTHING")
        self._sqlite = self._engine.dialect.name == "sqlite"
        self._raw = None  # the writer thread's own DBAPI connection (from the pool)
        self._insert_agreement = insert(AGREEMENTS).on_conflict_do_nothing()
        # An open takes the next opening order in the same statement (load() replays in it).
        self._open_sql = (
            f"INSERT INTO {AGREEMENTS.name} (agreement_id, seller_id, body, opened_at_ms, "
            f"closed, opened_seq) SELECT {', '.join([marker] * 5)}, "
            f"COALESCE(MAX(opened_seq), 0) + 1 FROM {AGREEMENTS.name} WHERE TRUE "
            "ON CONFLICT DO NOTHING")
        self._redeem_sql = (f"UPDATE {AGREEMENTS.name} SET closed = {marker}, "
                            f"escrow = {marker} WHERE agreement_id = {marker}")

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every record queued so far is written (`UsageJournal.flush`)."""

    def _write_rows(self, batch: _Batch) -> None:
        """Write `batch` (with the write lock held). A row the database refuses (a call of an
        unknown agreement, a number past its columns): the batch is written again with a
        savepoint per row, so only that row's caller gets the error and nobody else's record
        waits on it."""
        try:
            if batch.mixed:
                self._apply(batch, careful=False)
            else:
                self._write_plain(batch)
        except (IntegrityError, DataError, OverflowError, self._dbapi.IntegrityError,
                self._dbapi.DataError):
            self._apply(batch, careful=True)

    def _release_write_lock(self) -> None:
        """Release the write lock a caller took, and wake the writer if it waits for it, or
        idles while a batch is queued (a caller that found the lock taken left its batch to
        whoever held it)."""
        self._write_lock.release()
        with self._lock:
            if self._blocked or (self._idle and self._queue):
                self._wakeup.notify()

    def _write_plain(self, batch: _Batch) -> None:
        """Calls, opens and redeems (the common batches): prepared statements, one executemany
        per run of calls and one commit, on the writer's own DBAPI connection."""
        rows, call_log = batch.rows, self._log
        if call_log is not None and rows and not call_log.due and all(
                kind == _CALL and row[0] in self._known and fits(row) for kind, row in rows):
            call_log.append([row for _, row in rows])  # the tables would take them: logged
            batch.errors = None
            return
        if self._raw is None:
            self._raw = self._engine.raw_connection()
        raw = self._raw
        errors: dict[int, BaseException] = {}
        try:
            cursor = raw.cursor()
            try:
                if self._sqlite:  # autocommit mode (see wallets.store): open it ourselves
                    cursor.execute("BEGIN IMMEDIATE")
                if call_log is not None and call_log.rows:  # what the log holds goes first
                    cursor.executemany(self._insert_calls_sql, call_log.rows)
                start = 0
                while start < len(rows):
                    kind, row = rows[start]
                    if kind == _CALL:
                        end = start + 1
                        while end < len(rows) and rows[end][0] == _CALL:
                            end += 1
                        cursor.executemany(self._insert_calls_sql,
                                           [row for _, row in rows[start:end]])
                        start = end
                        continue
                    if kind == _OPEN:
                        cursor.execute(self._open_sql, (*row, False))
                    else:  # _REDEEM
                        agreement_id, closed, escrow = row
                        cursor.execute(self._redeem_sql, (closed, escrow, agreement_id))
                        if cursor.rowcount == 0:
                            errors[start] = NotFound(
                                f"no agreement {agreement_id!r} in the journal")
                    start += 1
            finally:
                cursor.close()
            raw.commit()
        except BaseException:
            try:
                raw.rollback()
            except Exception:  # the connection is broken: the next batch opens another
                self._drop_raw(invalidate=True)
            raise
        batch.errors = errors or None
        self._written(rows, errors)

    def _drop_raw(self, *, invalidate: bool) -> None:
        raw, self._raw = self._raw, None
        if raw is None:
            return
        try:
            if invalidate:
                raw.invalidate()
            else:
                raw.close()  # back to the pool, which dispose() then closes
        except Exception as error:
            log.warning("usage journal: closing the writer's connection failed: %s", error)

    def _apply(self, batch: _Batch, *, careful: bool) -> None:
        rows = batch.rows
        errors: dict[int, BaseException] = {}
        results: dict[int, Any] = {}
        with self._engine.begin() as conn:
            if self._log is not None and self._log.rows:  # what the log holds goes first
                if careful:
                    self._move_logged_carefully(conn)
                else:
                    conn.execute(self._insert_call,
                                 [_call_params(row) for row in self._log.rows])
            start = 0
            while start < len(rows):  # runs of one kind, in order
                kind = rows[start][0]
                end = start + 1
                while end < len(rows) and rows[end][0] == kind:
                    end += 1
                if kind == _CALL and not careful:
                    conn.execute(self._insert_call,
                                 [_call_params(row) for _, row in rows[start:end]])
                else:
                    for index in range(start, end):
                        self._apply_one(conn, index, rows[index], careful, errors, results)
                start = end
        batch.errors = errors or None
        batch.results = results or None
        self._written(rows, errors)

    # ---- the call log ------------------------------------------------------------------------

    def _open_log(self) -> None:
        """Open the call log beside a SQLite journal (`agents._call_log`) and move what a
        restart found in it into the tables: rows of an agreement the tables no longer hold
        (forgotten after they were moved, before the log was emptied) are dropped."""
        self._known: set[str] = set()  # agreements in the tables: their calls may be logged
        self._log: CallLog | None = None
        self._log_path = path_beside(self._engine.url.database) if self._sqlite else None
        if self._log_path is None:
            return
        call_log = CallLog.take(self._log_path)
        if call_log is None:  # another journal writes it: load() reads it
            return
        try:
            found = call_log.recover()
            with self._engine.begin() as conn:
                self._known = set(conn.execute(select(AGREEMENTS.c.agreement_id)).scalars())
                kept = [row for row in found if row[0] in self._known]
                if kept:
                    conn.execute(self._insert_call, [_call_params(row) for row in kept])
            if found:
                log.info("usage journal: moved %d call records from the call log", len(kept))
                call_log.clear()
        except BaseException:
            call_log.close()
            raise
        self._log = call_log

    def _move_log_now(self, timeout_s: float) -> None:
        """Move the call log into the tables (`flush`: after it, the tables hold every
        record); `JournalError` if that fails or waits over `timeout_s`."""
        if self._log is None or not self._log.rows:
            return
        if not self._write_lock.acquire(timeout=timeout_s):
            raise JournalError(f"the usage journal did not commit within {timeout_s:g} s")
        try:
            self._move_log()
        except Exception as error:
            raise JournalError(f"the usage journal could not move its call log into its "
                               f"tables: {error}") from error
        finally:
            self._release_write_lock()

    def _move_logged_carefully(self, conn: Any) -> None:
        """The log's rows one by one: one the tables refuse can only be of an agreement they
        no longer hold (another journal on the file forgot it), settled for good: it is
        dropped, with an error logged, rather than failing every later batch."""
        assert self._log is not None
        for row in self._log.rows:
            try:
                with conn.begin_nested():
                    conn.execute(self._insert_call, _call_params(row))
            except (IntegrityError, DataError, OverflowError) as error:
                log.error("usage journal: the tables refuse the logged record of call %r of "
                          "agreement %r (%s); dropped", row[1], row[0],
                          getattr(error, "orig", error))

    def _close_log(self) -> None:
        """At close, the writer gone: move the log into the tables (a restart would, too)."""
        if self._log is None:
            return
        with self._write_lock:
            try:
                self._move_log()
            except Exception as error:
                log.warning("usage journal: moving the call log into its tables at close "
                            "failed (%s); the next start moves it", error)
            finally:
                self._drop_raw(invalidate=False)
        if self._log is not None:
            self._log.close(remove_empty=True)

    def _move_log(self) -> None:
        """Move what the log holds into the tables (with the write lock held)."""
        if self._log is not None and self._log.rows:
            self._write_rows(_Batch(self))  # type: ignore[arg-type]

    def _written(self, rows: list[tuple[int, Any]], errors: dict[int, BaseException]) -> None:
        """After a commit to the tables: the log's rows are in them, and which agreements
        the tables hold changed with the batch's opens and forgets."""
        if self._log is None:
            return
        for index, (kind, row) in enumerate(rows):
            if kind == _OPEN and index not in errors:
                self._known.add(row[0])
            elif kind == _FORGET:
                self._known.difference_update(row)
        if self._log.rows:
            try:
                self._log.clear()
            except OSError as error:  # in the tables already: a restart moves them again
                log.error("usage journal: emptying the call log failed (%s); call records "
                          "go to SQLite only from now on", error)
                self._log.close()
                self._log = None

    def _apply_one(self, conn: Any, index: int, entry: tuple[int, Any], careful: bool,
                   errors: dict[int, BaseException], results: dict[int, Any]) -> None:
        kind, row = entry
        if not careful:
            self._apply_row(conn, index, kind, row, errors, results)
            return
        try:
            with conn.begin_nested():
                self._apply_row(conn, index, kind, row, errors, results)
        except (IntegrityError, DataError, OverflowError) as error:
            what = (f"call {row[1]!r} of agreement {row[0]!r}"
                    if kind == _CALL else "an agreement change")
            errors[index] = JournalError(f"the usage journal refused {what}: "
                                         f"{getattr(error, 'orig', error)}")

    def _apply_row(self, conn: Any, index: int, kind: int, row: Any,
                   errors: dict[int, BaseException], results: dict[int, Any]) -> None:
        if kind == _CALL:
            conn.execute(self._insert_call, _call_params(row))
        elif kind == _DROPPED:
            errors[index] = JournalError(
                f"call {row[1]!r} was not recorded: an earlier record of its agreement failed")
        elif kind == _RECHAIN:
            agreement_id, calls = row
            for call in calls:
                conn.execute(update(CALLS).where(CALLS.c.agreement_id == agreement_id,
                                                 CALLS.c.call_id == call.call_id)
                             .values(position=call.position, receipt=call.receipt,
                                     response=call.response))
        elif kind == _OPEN:
            agreement_id, seller_id, body, opened_at_ms = row
            last = conn.execute(select(func.coalesce(func.max(AGREEMENTS.c.opened_seq), 0))
                                ).scalar_one()
            conn.execute(self._insert_agreement, {
                "agreement_id": agreement_id, "seller_id": seller_id, "body": body,
                "opened_at_ms": opened_at_ms, "closed": False, "escrow": None,
                "opened_seq": last + 1})
        elif kind == _REDEEM:
            agreement_id, closed, escrow = row
            changed = conn.execute(
                update(AGREEMENTS).where(AGREEMENTS.c.agreement_id == agreement_id)
                .values(closed=closed, escrow=escrow)).rowcount
            if changed == 0:
                errors[index] = NotFound(f"no agreement {agreement_id!r} in the journal")
        else:  # _FORGET
            conn.execute(delete(CALLS).where(CALLS.c.agreement_id.in_(row)))
            results[index] = conn.execute(
                delete(AGREEMENTS).where(AGREEMENTS.c.agreement_id.in_(row))).rowcount

    # ---- reads -------------------------------------------------------------------------------

    def load(self) -> list[JournalAgreement]:
        """Every agreement (in the order opened) with its calls (by position): what a seller
        restarting on this journal rebuilds its payment state from."""
        self.flush()
        # another journal's log (one this journal does not hold), read before the tables: a
        # record it moves into them meanwhile is then found in one or the other
        logged = read_rows(self._log_path) if self._log is None and self._log_path else []
        with self._engine.connect().execution_options(agentmarket_read=True) as conn:
            agreements = conn.execute(
                select(AGREEMENTS).order_by(AGREEMENTS.c.opened_seq, AGREEMENTS.c.agreement_id)
            ).all()
            rows = conn.execute(
                select(CALLS.c.agreement_id, CALLS.c.call_id, CALLS.c.position,
                       CALLS.c.sequence, CALLS.c.voucher, CALLS.c.receipt, CALLS.c.response)
                .order_by(CALLS.c.agreement_id, CALLS.c.position, CALLS.c.call_id)).all()
        calls: dict[str, list[JournalCall]] = {}
        for agreement_id, call_id, position, sequence, voucher, receipt, response in rows:
            calls.setdefault(agreement_id, []).append(JournalCall(
                call_id, position, sequence, bytes(voucher), bytes(receipt), bytes(response)))
        if logged:
            _merge_logged(calls, logged, {a.agreement_id for a in agreements})
        return [
            JournalAgreement(
                agreement_id=a.agreement_id, seller_id=a.seller_id, body=bytes(a.body),
                opened_at_ms=a.opened_at_ms, closed=bool(a.closed),
                escrow=None if a.escrow is None else bytes(a.escrow),
                calls=tuple(calls.get(a.agreement_id, ())))
            for a in agreements
        ]


def _merge_logged(calls: dict[str, list[JournalCall]], logged: list[Any],
                  agreements: set[str]) -> None:
    """Add the log's records of `agreements` not in the tables (a call id's first record
    wins: the tables' rows are older than the log's), each agreement's calls by position."""
    seen = {(agreement_id, call.call_id) for agreement_id, known in calls.items()
            for call in known}
    touched = set()
    for agreement_id, call_id, position, sequence, voucher, receipt, response in logged:
        if agreement_id not in agreements or (agreement_id, call_id) in seen:
            continue
        seen.add((agreement_id, call_id))
        touched.add(agreement_id)
        calls.setdefault(agreement_id, []).append(
            JournalCall(call_id, position, sequence, voucher, receipt, response))
    for agreement_id in touched:
        calls[agreement_id].sort(key=lambda call: (call.position, call.call_id))
