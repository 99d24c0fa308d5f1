"""Sellers that stop with their process: listings withdrawn at exit and on SIGTERM/SIGINT.

A listing outlives a seller that never called `stop()` by its TTL, and it ranks as before, so
buyers would keep choosing a dead endpoint. Each serving seller is registered here; at
interpreter exit (`atexit`, which also runs after Ctrl-C's KeyboardInterrupt) every one still
serving is stopped, which withdraws its listing. SIGTERM, whose default action kills the process
without running `atexit`, is turned into `SystemExit(143)` while sellers serve, so `finally`
blocks, context managers and `atexit` run; this is done only when the program left SIGTERM at
its default (a program with its own handler keeps it, and should call `stop()` itself), and
only from the main thread (where Python delivers signals).
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import weakref
from typing import Any, Protocol

log = logging.getLogger("agentmarket.seller")
EXIT_ON_SIGTERM = 128 + signal.SIGTERM


class _Stoppable(Protocol):
    def stop(self, grace_s: float = ...) -> None: ...


_serving: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.RLock()  # re-entered if SIGTERM lands while the main thread holds it
_installed = False


def serving(agent: _Stoppable) -> None:
    """`agent` now serves: stop it at exit and on SIGTERM unless it is stopped first."""
    global _installed
    with _lock:
        _serving.add(agent)
        if _installed:
            return
        _installed = True
    atexit.register(stop_all)
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def stopped(agent: _Stoppable) -> None:
    with _lock:
        _serving.discard(agent)


def stop_all(grace_s: float = 0.5) -> None:
    """Stop every seller still serving (withdrawing its listing); errors are logged."""
    with _lock:
        agents = list(_serving)
    for agent in agents:
        try:
            agent.stop(grace_s)
        except Exception:  # one seller's failure must not keep the others listed
            log.exception("stopping a seller at exit failed")


def _on_sigterm(signum: int, frame: Any) -> None:
    """Unwind as SystemExit, so the program's cleanup and stop_all (atexit) run."""
    with _lock:
        if not _serving:  # nothing of ours serves: behave as the default would
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
            return
    raise SystemExit(EXIT_ON_SIGTERM)
