"""The seller's usage journal: what it could redeem, durable across a restart.

A seller's record of its paid calls (the latest voucher per agreement, one signed receipt per
call, and each answered call's first response, so a retried call id is answered again without
charging twice) would otherwise live only in memory (`agents.payments.PaymentGate`), and a
restart would lose money the seller earned. The journal writes it to SQLite (default) or
PostgreSQL, in the seller's own tables (`agents.tables`, migrated at start-up). On SQLite, a
batch of call records alone is appended to the call log beside the file instead
(`agents._call_log`: one write and one fdatasync, where a SQLite commit of the same rows cost
twice the CPU) and moved into the tables in bulk: with the next batch that is not calls alone,
once the log is due, on `flush` (so `load`, and any reader after a flush, finds every record in
the tables), at close, and at the next start after a crash.

Durability contract: the seller answers a paid call only after the call's record committed
(it waits on the `Pending` that `record_call` returned), so an acknowledged call is never lost
by a crash; a call whose record failed or timed out is refused with `JournalError` (UNAVAILABLE:
the buyer retries the same call id). A call record that failed is reported, on the writer
thread and before its caller wakes, to `on_failed_calls`: the seller's gate takes the call, and
every receipt chained after it, out of the chain, and drops those later records still queued
(`drop_queued`), so nothing that is not durable is charged and the journal never holds a hole.
Agreements are opened, closed for a redeem and marked redeemed synchronously: those methods
return only once the change is durable.

Cost: the journal sits on the paid-call hot path, so it never runs a transaction per call.
`record_call` only appends a row to an in-memory batch and returns; one writer thread takes whole
batches (up to `max_batch` rows) and writes each in one transaction with one executemany and one
commit, then releases every caller of the batch (group commit; they wake in turn,
`agents._journal_batches.Done`). While a commit is in progress, concurrent callers fill the next
batch, so one fsync pays for many calls. A batch of calls, opens and redeems (the common case) goes
through the writer's own DBAPI connection with prepared statements: SQLAlchemy's per-statement work
cost more CPU than the rows themselves. Writes reach the database in the order they were made (a
redeem recorded after a call commits after it). A record nobody waits for (an agreement's open,
which its first call's record follows; a redeem's outcome, which a restart would fetch again) can
be queued lazily: it waits up to `_LAZY_S` for another record and shares its commit, as a durable
commit (an fsync) costs more CPU than all the rest of a record. When the writer is idle and no
other call would join, a paid call's worker writes its own batch as it waits (`_write_own`):
handing it to the writer and being woken back would cost two thread switches per call.

Pacing: a commit costs far more than a row, and under the interpreter lock a call runs from
admission to its record without a switch, so few callers wait together. The seller's server
therefore announces every call it accepts (`JournalPacedExecutor`), and the writer lets a batch
wait, at most `max_linger_s`, while accepted calls have neither recorded nor finished: their
records join the same commit. With no call running, nothing waits. A call still running
`fast_call_s` (to twice that) after it was accepted is taken to be slow (a model call, a
stream) and no longer holds commits back; so is one whose announcement was somehow lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from agents._journal_batches import (
    _CALL,
    _DROPPED,
    _FORGET,
    _LOOPS_LOCK,
    _OPEN,
    _RECHAIN,
    _REDEEM,
    JournalError,
    Pending,
    _Batch,
    _resolve,
)
from agents._journal_pacing import JournalPacedExecutor, _Announced, _running
from agents._journal_store import JournalAgreement, JournalCall, JournalStore
from wallets.schema import upgrade
from wallets.store import make_engine

log = logging.getLogger("agentmarket.seller")

_CLOSE_JOIN_S = 60.0
# How long lazy rows (`lazy=True`: nobody waits for them) wait for a row that is not, so that
# they share its commit instead of taking one of their own.
_LAZY_S = 0.2
# How long a synchronous change (open, redeem, forget) waits for its commit: longer than a
# call's default, as it is rare and a seller would rather wait than fail an agreement.
_SYNC_TIMEOUT_S = 30.0
# How long an idle writer sleeps before it looks at the queue again: a paid call's worker that
# would write its own batch (`_write_own`) but never waits for it (its caller hung up, its
# coroutine was cancelled) does not wake the writer, which takes that batch within this time.
_IDLE_RECHECK_S = 0.1
# `group_wait_s` for a seller on an event loop: on a 2-core machine with 16 callers it made
# batches 2x larger and cut 87 us of the seller's CPU per paid echo (benchmarks.paid_call).
LOOP_GROUP_WAIT_S = 0.003


class UsageJournal(JournalStore):
    """The seller's durable record of agreements and paid calls, written in batches by one
    thread. Thread-safe: meant to be called from every thread of a gRPC server's pool."""

    def __init__(self, url: str, *, max_batch: int = 512, max_delay_s: float = 0.0,
                 max_linger_s: float = 0.006, fast_call_s: float = 0.005,
                 group_wait_s: float = 0.0) -> None:
        """Open the database at `url`, migrate the seller's tables and start the writer.

        `max_delay_s`: how long the writer waits for a batch to fill once it holds a row
        (0: write whatever is queued at once; concurrency alone fills batches, as callers
        queue while a commit is in progress).
        `max_linger_s`: how long, at most, a batch waits for the records of calls announced
        by `expecting` that are still running (0: never); only for calls announced within
        `fast_call_s` to twice that (older ones are taken to be slow).
        `group_wait_s`: how long, at most, a batch waits to hold as many records as the last
        one did (0: never): for callers that wait without a thread (an event loop), whose
        calls run from admission to record in one step and so cannot be announced ahead."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_linger_s < 0 or fast_call_s <= 0:
            raise ValueError("max_linger_s must be at least 0 and fast_call_s above 0")
        self._engine: Engine = make_engine(url)
        try:
            upgrade(self._engine, "agents")
        except BaseException:
            self._engine.dispose()
            raise
        self._max_batch = max_batch
        self._dbapi = self._engine.dialect.dbapi
        self._max_delay_s = max(0.0, max_delay_s)
        self._max_linger_s = max_linger_s
        self._group_wait_s = max(0.0, group_wait_s)
        self._group_target = 0  # the rows the last batch held: the next one waits for as many
        self.fast_call_s = fast_call_s
        self._prepare_statements()
        try:
            self._open_log()
        except BaseException:
            self._engine.dispose()
            raise
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._queue: deque[_Batch] = deque()
        self._tail: _Batch | None = None  # the batch callers append to (None: start one)
        self._last: _Batch | None = None  # the newest batch, queued or written: flush waits
        self._idle = False  # the writer waits for any row
        self._filling = False  # the writer waits for its batch to fill up
        self._lingering = False  # the writer waits for the records of running calls
        self._grouping = False  # the writer waits for as many rows as the last batch held
        self._blocked = False  # the writer waits for a caller writing its own batch
        # Held by whoever writes a batch: the writer thread, or a caller (`_write_own`).
        self._write_lock = threading.Lock()
        # Calls announced by `expecting` that neither recorded nor ended, in this generation
        # and the one before; a generation lasts `fast_call_s`, older ones are forgotten.
        self._announced = [0, 0]
        self._generation = 0
        self._generation_since = time.monotonic()
        self._closed = False
        # Told, on the writer thread and before their callers wake, of call records that failed
        # (agreement id, call id, position): the gate takes them out of the receipt chain.
        self.on_failed_calls: Callable[[list[tuple[str, str, int]]], None] | None = None
        self.batches_written = 0  # committed transactions
        self.records_written = 0  # rows (calls and agreement changes) they committed
        self._writer = threading.Thread(target=self._run, name="usage-journal-writer",
                                        daemon=True)
        self._writer.start()

    # ---- writes ------------------------------------------------------------------------------

    def record_call(self, agreement_id: str, call_id: str, position: int, sequence: int,
                    voucher: bytes, receipt: bytes, response: bytes) -> Pending:
        """Queue an answered call's record and return at once; wait on the result before
        answering. A call id already recorded for the agreement keeps its first record."""
        return self._enqueue(_CALL, (agreement_id, call_id, position, sequence, voucher,
                                     receipt, response))

    def open_agreement(self, agreement_id: str, seller_id: str, body: bytes) -> None:
        """Record an agreement before serving its first call; durable when it returns.
        Opening an agreement id again is a no-op (the first body stays)."""
        self.queue_open(agreement_id, seller_id, body)._outcome(_SYNC_TIMEOUT_S)

    def queue_open(self, agreement_id: str, seller_id: str, body: bytes, *,
                   lazy: bool = False) -> Pending:
        """`open_agreement` without the wait. `lazy`: written with the next row that is not
        (at most `_LAZY_S` later), so the open shares the commit of the agreement's first call:
        a call's record commits only with or after its agreement's (a foreign key), so no
        call is answered before the open is durable."""
        return self._enqueue(_OPEN, (agreement_id, seller_id, body,
                                     time.time_ns() // 1_000_000), lazy=lazy)

    def record_redeem(self, agreement_id: str, *, closed: bool, escrow: bytes | None) -> None:
        """Record where the agreement's redeem stands; durable when it returns: closed to calls
        while a redeem is in flight (closed, no escrow), redeemed (closed, the marketplace's
        Escrow), or reopened after a refused redeem (not closed, no escrow)."""
        self.queue_redeem(agreement_id, closed=closed, escrow=escrow).wait(_SYNC_TIMEOUT_S)

    def queue_redeem(self, agreement_id: str, *, closed: bool, escrow: bytes | None,
                     lazy: bool = False) -> Pending:
        """`record_redeem` without the wait: queued in order (under the caller's lock), waited
        on outside it. `lazy`: written with the next row that is not (see `queue_open`)."""
        return self._enqueue(_REDEEM, (agreement_id, closed, escrow), lazy=lazy)

    def rechain(self, agreement_id: str, calls: list[JournalCall]) -> None:
        """Rewrite recorded calls' positions, receipts and responses (a receipt chain repaired
        on restart, `agents._chain_repair`); durable when it returns."""
        if calls:
            self._enqueue(_RECHAIN, (agreement_id, list(calls))).wait(_SYNC_TIMEOUT_S)

    def drop_queued(self, agreement_id: str, from_position: int) -> int:
        """Fail the agreement's queued call records at `from_position` or later, unwritten:
        they follow a record that failed, and a receipt chain must have no hole. Called by
        `on_failed_calls`, before any later record of the agreement can be queued."""
        dropped = 0
        with self._lock:
            for batch in self._queue:
                for index, (kind, row) in enumerate(batch.rows):
                    if kind == _CALL and row[0] == agreement_id and row[2] >= from_position:
                        batch.rows[index] = (_DROPPED, row)
                        batch.mixed = True
                        dropped += 1
        return dropped

    def forget(self, agreement_ids: list[str]) -> int:
        """Delete agreements and their calls once settled for good (redeemed, nothing left to
        dispute), so the journal does not grow forever; returns how many agreements it deleted.
        The caller decides what is settled: an unredeemed agreement given here is lost."""
        if not agreement_ids:
            return 0
        return int(self._enqueue(_FORGET, list(agreement_ids))._outcome(_SYNC_TIMEOUT_S))

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until everything queued so far has been written (a failed record reports its
        error to its own `Pending`, not here); `JournalError` if that takes over `timeout_s`."""
        with self._lock:
            last = self._last
            if last is not None and not last.done.is_set():
                if not last.eager:  # lazy rows only: write them now
                    last.eager = last.urgent = True
                self._wakeup.notify()  # an owned batch whose owner never waits: take it
        if last is not None and not last.done.wait(timeout_s):
            raise JournalError(f"the usage journal did not commit within {timeout_s:g} s")
        self._move_log_now(timeout_s)

    def close(self) -> None:
        """Write what is queued, stop the writer and close the database; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wakeup.notify_all()
        self._writer.join(timeout=_CLOSE_JOIN_S)
        if self._writer.is_alive():
            log.error("usage journal writer still busy after %.0f s; closing anyway",
                      _CLOSE_JOIN_S)
        else:
            self._close_log()
        self._engine.dispose()

    def __enter__(self) -> UsageJournal:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def expecting(self, call: Callable[[], Any]) -> _Announced:
        """Announce a call that may record (the server accepted it) and return it wrapped:
        until it records or returns, the writer may let a batch wait for its record. Call the
        wrapper once, on the thread that will record, or `cancel` it if it never runs."""
        with self._lock:
            self._age(time.monotonic())
            self._announced[0] += 1
            return _Announced(self, self._generation, call)

    @property
    def expected_records(self) -> int:
        """Calls announced recently (see `fast_call_s`) that have neither recorded nor ended."""
        with self._lock:
            self._age(time.monotonic())
            return sum(self._announced)

    def _age(self, now: float) -> None:
        """Start a new generation each `fast_call_s` (under the lock)."""
        periods = int((now - self._generation_since) // self.fast_call_s)
        if periods > 0:
            self._generation += periods
            self._generation_since += periods * self.fast_call_s
            self._announced = [0, self._announced[0] if periods == 1 else 0]

    def _calls_running(self, now: float) -> bool:
        """Whether recently announced calls have yet to record or end (under the lock)."""
        self._age(now)
        return any(self._announced)

    def _settle(self, generation: int) -> None:
        """An announced call recorded or ended (under the lock)."""
        age = self._generation - generation
        if age < 2:
            self._announced[age] -= 1
            if self._lingering and not any(self._announced):
                self._wakeup.notify()

    def _enqueue(self, kind: int, row: Any, *, lazy: bool = False) -> Pending:
        # The hot path: one lock, one append. Rows join the newest batch until it is full or
        # the writer took it; the writer is woken only when it is waiting for this.
        with self._lock:
            if self._closed:
                raise JournalError("the usage journal is closed")
            batch = self._tail
            if batch is None or len(batch.rows) >= self._max_batch:
                batch = self._tail = self._last = _Batch(self)
                self._queue.append(batch)
            index = len(batch.rows)
            batch.rows.append((kind, row))
            if lazy:  # nobody waits: it joins whatever commit comes next
                return Pending(batch, index)
            batch.eager = True
            if kind != _CALL:
                batch.urgent = True
                if kind not in (_OPEN, _REDEEM):
                    batch.mixed = True
                if self._idle or self._filling or self._lingering:  # never waits to fill
                    self._wakeup.notify()
                return Pending(batch, index)
            own = False
            announced = getattr(_running, "announced", None)
            if announced is not None and announced.journal is self:  # a record it waits for
                _running.announced = None
                self._settle(announced.generation)  # wakes a lingering writer when the last
                # a worker that waits for its record writes it itself (`_write_own`) when the
                # writer is idle: no thread switch to the writer and back
                own = batch.owned = self._max_delay_s == 0
            if (self._idle and not own) or ((self._filling or self._lingering)
                                            and index + 1 >= self._max_batch) or \
                    (self._grouping and index + 1 >= self._group_target):
                self._wakeup.notify()
        return Pending(batch, index)

    def _kick(self) -> None:
        """Wake an idle writer: a record someone waits for may be queued unannounced to it."""
        with self._lock:
            if self._idle:
                self._wakeup.notify()

    def _write_own(self, batch: _Batch) -> None:
        """Write `batch` on the calling thread (which is about to wait for it) if it is next
        and no running call's record would join it (the writer would not linger): a commit
        handed to the writer thread costs two thread switches, each dearer under the
        interpreter lock than the payment's own work. Otherwise the writer takes it."""
        if not batch.owned or not self._write_lock.acquire(blocking=False):
            return  # a batch is being written: whoever writes it wakes the writer for this one
        try:  # batches are written one at a time, in order
            with self._lock:
                if batch.done.is_set() or self._closed or not self._queue or \
                        self._queue[0] is not batch or self._calls_running(time.monotonic()):
                    if self._idle:
                        self._wakeup.notify()
                    return
                self._queue.popleft()
                if batch is self._tail:
                    self._tail = None
            self._write(batch)
        finally:
            self._release_write_lock()

    # ---- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                batch = self._take()
                if batch is None:
                    return
                try:
                    self._write(batch)
                finally:
                    self._write_lock.release()
        finally:
            with self._write_lock:
                self._drop_raw(invalidate=False)

    def _take(self) -> _Batch | None:
        """The oldest batch, once it holds a row (and filled up, waited `max_delay_s` and, up
        to `max_linger_s`, for running calls' records, or holds a synchronous change), with
        the write lock held; None once closed and drained."""
        with self._lock:
            while True:
                head = self._ready_head()
                if head is None:
                    return None
                if self._write_lock.acquire(blocking=False):
                    if self._queue and self._queue[0] is head:
                        self._queue.popleft()
                        if head is self._tail:
                            self._tail = None
                        return head
                    self._write_lock.release()  # a caller wrote it meanwhile
                    continue
                self._blocked = True  # a caller writes its own batch: it wakes us when done
                self._wakeup.wait(0.05)
                self._blocked = False

    def _ready_head(self) -> _Batch | None:
        """`_take`'s waits (under the lock): the head batch once it is due; None once closed
        and drained."""
        while True:
            while not self._queue:
                if self._closed:
                    return None
                self._idle = True
                self._wakeup.wait(_IDLE_RECHECK_S)
                self._idle = False
            head = self._queue[0]
            lazy_left = head.since + _LAZY_S - time.monotonic()
            if head.eager or self._closed or lazy_left <= 0 or \
                    len(head.rows) >= self._max_batch:
                break
            self._idle = True  # lazy rows only: wait for one that is not, to share its commit
            self._wakeup.wait(lazy_left)
            self._idle = False
        start = time.monotonic()
        fill_until, linger_until = start + self._max_delay_s, start + self._max_linger_s
        group_until = start + self._group_wait_s
        while len(head.rows) < self._max_batch and not head.urgent and not self._closed:
            now = time.monotonic()
            if now < fill_until:
                self._filling = True
                self._wakeup.wait(fill_until - now)
                self._filling = False
            elif now < linger_until and self._calls_running(now):
                self._lingering = True
                self._wakeup.wait(linger_until - now)
                self._lingering = False
            elif now < group_until and len(head.rows) < self._group_target:
                self._grouping = True
                self._wakeup.wait(group_until - now)
                self._grouping = False
            else:
                break
        return head

    def _write(self, batch: _Batch) -> None:
        self._group_target = len(batch.rows)  # the next batch may wait for as many
        try:
            self._write_rows(batch)
        except BaseException as error:  # never let the writer die: fail the batch instead
            log.warning("usage journal: a batch of %d rows failed: %s", len(batch.rows), error)
            batch.error = error
        else:
            self.batches_written += 1
            self.records_written += len(batch.rows)
        self._report_failed(batch)
        batch.rows = []  # written: the callers need only the outcome
        with _LOOPS_LOCK:
            batch.done.set()
            loops, batch.loops = batch.loops, None
        for loop, waiting in (loops or {}).items():
            with contextlib.suppress(RuntimeError):  # a closed loop: no one awaits there
                loop.call_soon_threadsafe(_resolve, waiting)

    def _report_failed(self, batch: _Batch) -> None:
        """Tell `on_failed_calls` which call records failed, before their callers wake."""
        if self.on_failed_calls is None or (batch.error is None and batch.errors is None):
            return
        failed = [(row[0], row[1], row[2]) for index, (kind, row) in enumerate(batch.rows)
                  if kind == _CALL and (batch.error is not None or index in batch.errors)]
        if failed:
            try:
                self.on_failed_calls(failed)
            except Exception:  # the writer carries on; the callers still get their error
                log.exception("usage journal: reporting %d failed records failed", len(failed))


__all__ = ["LOOP_GROUP_WAIT_S", "JournalAgreement", "JournalCall", "JournalError",
           "JournalPacedExecutor", "Pending", "UsageJournal"]
