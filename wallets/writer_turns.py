"""Whose turn it is to write to one SQLite database in this process: money first.

SQLite has one writer. Each part of a node that writes (the ledger, the registry) used to
take turns on a lock of its own and then meet the others at SQLite's file lock, whose busy
handler sleeps in steps of up to 100 ms and lets whoever asks next win. A stranger's flood
of Advertise calls (free keys, each rewriting thousands of search rows) then held that lock
almost all the time: a buyer's OpenEscrow waited 76 ms at the median and up to 2 s.

Here every writer of one database takes its turn on one condition instead, and an urgent
writer (money: the ledger's postings) goes before every non-urgent one that is waiting: it
waits at most for the transaction under way, never for a queue of listings.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["WriterTurns", "turns_of"]


class WriterTurns:
    """One writer at a time; urgent writers first (see the module docstring). Re-entrant: a
    thread that holds the turn and asks again goes on (one thread never waits for itself)."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._holder: int | None = None
        self._depth = 0
        self._urgent_waiting = 0
        self._others_waiting = 0

    @contextmanager
    def turn(self, *, urgent: bool) -> Iterator[None]:
        me = threading.get_ident()
        with self._changed:
            if self._holder == me:
                self._depth += 1
            else:
                self._wait_for_turn(urgent)
                self._holder, self._depth = me, 1
        try:
            yield
        finally:
            with self._changed:
                self._depth -= 1
                if self._depth == 0:
                    self._holder = None
                    self._changed.notify_all()

    def _wait_for_turn(self, urgent: bool) -> None:
        """Called holding the condition's lock."""
        if urgent:
            self._urgent_waiting += 1
            try:
                while self._holder is not None:
                    self._changed.wait()
            finally:
                self._urgent_waiting -= 1
            return
        self._others_waiting += 1
        try:
            while self._holder is not None or self._urgent_waiting:
                self._changed.wait()
        finally:
            self._others_waiting -= 1

    def waiting(self) -> tuple[int, int]:
        """(urgent, other) writers waiting for their turn now."""
        with self._changed:
            return self._urgent_waiting, self._others_waiting


_TURNS: weakref.WeakKeyDictionary[Any, WriterTurns] = weakref.WeakKeyDictionary()
_TURNS_GUARD = threading.Lock()


def turns_of(engine: Any) -> WriterTurns:
    """The turns shared by every writer of `engine` in this process."""
    with _TURNS_GUARD:
        found = _TURNS.get(engine)
        if found is None:
            found = _TURNS[engine] = WriterTurns()
        return found
