"""A usage journal's batches: the rows written in one transaction, and the `Pending`
outcome each record's caller waits on (a thread blocks, an event loop is woken once per batch).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any

from agents.errors import Unavailable
from agents.tables import SellerAgreementRow, SellerCallRow

if TYPE_CHECKING:
    from agents.usage_journal import UsageJournal

AGREEMENTS = SellerAgreementRow.__table__  # type: ignore[attr-defined]
CALLS = SellerCallRow.__table__  # type: ignore[attr-defined]

_CALL, _OPEN, _REDEEM, _FORGET, _DROPPED, _RECHAIN = range(6)
# A call's row, in this order (a tuple: no dict per call on the hot path).
_CALL_COLUMNS = ("agreement_id", "call_id", "position", "sequence", "voucher", "receipt",
                 "response")


class JournalError(Unavailable):
    """A record could not be made durable (the database failed, refused it, or was too slow):
    the seller must not answer the call it records, and the buyer may retry it."""

    reason = "JOURNAL_UNAVAILABLE"


class Done:
    """A batch's outcome being ready: set once by whoever wrote the batch, waited for by
    each of its callers. `threading.Event` does the same through a Condition, in Python:
    its setter notifies each waiter in a loop, and every woken waiter takes the Condition's
    lock again before it returns. Here the waiters queue on one lock, held until `set`
    releases it, and each passes it on as it wakes: they still wake one after another (all
    at once, a dozen threads would fight for the interpreter lock), with no Python between."""

    __slots__ = ("_gate", "_set")

    def __init__(self) -> None:
        self._set = False
        self._gate = threading.Lock()
        self._gate.acquire()  # held until set

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._gate.release()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Whether it was set, within `timeout_s` (None: however long it takes)."""
        if self._set:
            return True
        if timeout_s is not None and timeout_s <= 0:
            return False
        if self._gate.acquire(True, -1 if timeout_s is None else min(
                timeout_s, threading.TIMEOUT_MAX)):
            self._gate.release()  # to the next waiter
            return True
        return self._set


class _Batch:
    """Rows written in one transaction, and the outcome every caller of the batch waits on."""

    __slots__ = ("done", "eager", "error", "errors", "journal", "loops", "mixed", "owned",
                 "results", "rows", "since", "urgent")

    def __init__(self, journal: UsageJournal) -> None:
        self.journal = journal
        self.rows: list[tuple[int, Any]] = []
        self.mixed = False  # holds a row the plain path does not write (forget, rechain, ...)
        self.urgent = False  # holds a change someone waits for: written without lingering
        self.eager = False  # holds a row that is not lazy: written without `_LAZY_S`'s wait
        self.owned = False  # a paid call's worker, about to wait, may write it (`_write_own`)
        self.since = time.monotonic()
        self.done = Done()
        # Event loops with callers awaiting the batch: each caller's future, all resolved by
        # one call_soon_threadsafe per loop once written (None: none yet).
        self.loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] | None = None
        self.error: BaseException | None = None  # the whole batch failed
        self.errors: dict[int, BaseException] | None = None  # only these rows failed
        self.results: dict[int, Any] | None = None


class Pending:
    """A record on its way to the database: `wait()` before answering the call it records."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self._batch = batch
        self._index = index

    def done(self) -> bool:
        """Whether the record's batch has been written (or failed)."""
        return self._batch.done.is_set()

    def failed(self) -> bool:
        """Whether the record's batch has been written and the record did not commit."""
        batch = self._batch
        return batch.done.is_set() and (batch.error is not None or (
            batch.errors is not None and self._index in batch.errors))

    def wait(self, timeout_s: float = 10.0) -> None:
        """Block until the record committed; raise `JournalError` if it failed or did not
        commit within `timeout_s` (it may still commit later: a retry of the call is safe,
        records are idempotent). The waiting thread may write the record's batch itself
        (`UsageJournal._write_own`)."""
        batch = self._batch
        if not batch.done.is_set():
            batch.journal._write_own(batch)
        self._outcome(timeout_s)

    async def wait_async(self, timeout_s: float = 10.0) -> None:
        """`wait` for a caller on an event loop: the loop is woken once per batch (not once
        per record), and no thread blocks meanwhile."""
        batch = self._batch
        if not batch.done.is_set():
            batch.journal._kick()
            future = _loop_future(batch, asyncio.get_running_loop(), timeout_s)
            if future is not None:
                await future  # the caller's own: cancelling it leaves the others waiting
                if not batch.done.is_set():
                    raise JournalError(f"the usage journal did not commit within "
                                       f"{timeout_s:g} s")
        self._outcome(0)

    def _outcome(self, timeout_s: float) -> Any:
        batch = self._batch
        if timeout_s and not batch.done.is_set():
            batch.journal._kick()
        if not batch.done.wait(timeout_s):
            raise JournalError(f"the usage journal did not commit within {timeout_s:g} s")
        if batch.error is not None:
            cause = batch.error  # shared by the batch's callers: raise a fresh error each
            raise JournalError(f"the usage journal could not write: {cause}") from cause
        if batch.errors is not None and self._index in batch.errors:
            raise batch.errors[self._index]
        return None if batch.results is None else batch.results.get(self._index)


_LOOPS_LOCK = threading.Lock()  # a batch's loop futures against its completion


def _loop_future(batch: _Batch, loop: asyncio.AbstractEventLoop, timeout_s: float
                 ) -> asyncio.Future[None] | None:
    """A future of the caller's own on `loop` (None: `batch` is written already), resolved
    with the others of its loop when the batch is written, or after `timeout_s` (one timer
    per batch and loop). Not shared, so a cancelled caller cancels no one else's wait."""
    with _LOOPS_LOCK:
        if batch.done.is_set():
            return None
        if batch.loops is None:
            batch.loops = {}
        waiting = batch.loops.get(loop)
        if waiting is None:
            waiting = batch.loops[loop] = []
            loop.call_later(timeout_s, _resolve, waiting)
        future = loop.create_future()
        waiting.append(future)
        return future


def _resolve(waiting: list[asyncio.Future[None]]) -> None:
    """Wake the callers of one loop (on that loop)."""
    for future in waiting:
        if not future.done():  # a cancelled caller's
            future.set_result(None)


def _call_params(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(_CALL_COLUMNS, row, strict=True))


__all__ = ["JournalError", "Pending"]
