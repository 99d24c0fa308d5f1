"""Wait in a serving process's main thread for SIGTERM or SIGINT, without a lock.

A handler that sets a `threading.Event` the main thread waits on can deadlock: Python runs the
handler in the main thread between two of its bytecodes, and if those are inside `Event.wait`
while it holds the event's (non-reentrant) lock, `Event.set` waits for that lock forever. A
loaded machine made `agentmarket gateway` hang so on SIGTERM. Here the handler does nothing:
the interpreter writes each signal's number to a pipe (`signal.set_wakeup_fd`) at C level, and
the main thread reads it. A signal that arrives before `wait` stays in the pipe, so none is lost
from the moment `StopSignals` is made.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import Any

STOPPING = (signal.SIGTERM, signal.SIGINT)


def _record_only(signum: int, frame: Any) -> None:
    """The wakeup pipe records the signal; replacing the default handler (which ends the
    process, or raises KeyboardInterrupt) lets the process stop in order."""


class StopSignals:
    """Made in the main thread before serving starts; `wait()` once serving."""

    def __init__(self, signums: Iterable[int] = STOPPING) -> None:
        self.signums = frozenset(int(s) for s in signums)
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)  # set_wakeup_fd requires it
        self._previous_fd = signal.set_wakeup_fd(self._write)
        for signum in self.signums:
            signal.signal(signum, _record_only)

    def wait(self) -> int:
        """Block until one of the signals arrives (or arrived); returns its number."""
        try:
            while True:
                received = os.read(self._read, 1)[0]
                if received in self.signums:
                    return received
        finally:
            self.close()

    def close(self) -> None:
        """Close the pipe. The signals stay handled: a second one while the process stops
        changes nothing, as before."""
        if self._read < 0:
            return
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read)
        os.close(self._write)
        self._read = self._write = -1
