"""Pacing a usage journal's commits by the calls a gRPC server has accepted.

The server's worker pool announces each call it accepts (`JournalPacedExecutor`); the journal's
writer lets a batch wait a little while announced calls have neither recorded nor ended, so
their records share one commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.usage_journal import UsageJournal

# The announcement (`_Announced`) of the call this worker thread is running, if any.
_running = threading.local()


class _Announced:
    """A call announced to a journal, wrapped: running it makes it the thread's call; it
    settles its announcement when it records or returns."""

    __slots__ = ("call", "generation", "journal")

    def __init__(self, journal: UsageJournal, generation: int, call: Callable[[], Any]) -> None:
        self.journal, self.generation, self.call = journal, generation, call

    def __call__(self) -> Any:
        _running.announced = self
        try:
            return self.call()
        finally:
            if getattr(_running, "announced", None) is self:  # it ended without a record
                _running.announced = None
                self.cancel()

    def cancel(self) -> None:
        with self.journal._lock:
            self.journal._settle(self.generation)


class JournalPacedExecutor(futures.ThreadPoolExecutor):
    """A gRPC server's worker pool that announces each call it accepts to the usage journal
    (`UsageJournal.expecting`), so the writer commits running calls' records together."""

    def __init__(self, journal: UsageJournal, max_workers: int) -> None:
        super().__init__(max_workers=max_workers)
        self._journal = journal

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        call = self._journal.expecting(lambda: fn(*args, **kwargs))
        try:
            return super().submit(call)
        except BaseException:  # shut down: the call never runs
            call.cancel()
            raise


__all__ = ["JournalPacedExecutor"]
