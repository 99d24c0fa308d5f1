"""Group commit: concurrent ledger writes share one transaction and one durable commit.

Callers hand their mutation to one writer thread and wait. The writer drains whatever is queued
(up to `max_batch`), runs each item inside its own savepoint in a single transaction (an item
alone needs none), commits once, and only then wakes the callers: an acknowledged write is
always durable, and one fsync pays for the whole batch. Each item runs in its caller's
`contextvars` context, so the OpenTelemetry span of the request is current while its postings
are written.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("agentmarket.ledger")


class WorkItem:
    __slots__ = ("context", "done", "error", "result", "run")

    def __init__(self, run: Callable[[Any], Any]) -> None:
        self.run = run
        self.context = contextvars.copy_context()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitter:
    """One writer thread; `submit` blocks until the caller's work is committed (or failed)."""

    def __init__(self, run_batch: Callable[[list[WorkItem]], None], *, max_batch: int = 512,
                 max_queue: int = 10_000) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._queue: queue.Queue[WorkItem | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name="ledger-writer", daemon=True)
        self._thread.start()

    def submit(self, run: Callable[[Any], Any]) -> Any:
        item = WorkItem(run)
        self._queue.put(item)  # bounded: a full queue pushes back on callers
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            try:
                self._run_batch(batch)
            except BaseException as error:  # never let the writer die: fail the batch instead
                log.exception("ledger batch failed")
                for item in batch:
                    if not item.done.is_set():
                        item.error = error
            for item in batch:
                item.done.set()
