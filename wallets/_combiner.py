"""Flat combining: callers that arrive while one of them is writing go together next time.

A caller alone runs its own request on its own thread, at once (no hand-off to a writer
thread, no wait). Callers that arrive while a batch is running queue; when the batch ends, the
first of them becomes the next leader and runs everything queued as one batch, while the rest
wait for their results. So concurrent writers share round trips and commits, and a lone one
pays nothing for it. Nothing here knows what a request is: `run_batch` gets the requests and
returns one result each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


class _Waiter:
    __slots__ = ("done", "error", "lead", "request", "result", "wake")

    def __init__(self, request: Any) -> None:
        self.request = request
        self.wake = threading.Event()
        self.done = self.lead = False
        self.result: Any = None
        self.error: BaseException | None = None


class Combiner:
    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], *,
                 max_batch: int = 64) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._busy = False

    def submit(self, request: Any) -> Any:
        """`request`'s result, from a batch this caller or another one ran."""
        me = _Waiter(request)
        with self._lock:
            if self._busy:
                self._queue.append(me)
            else:
                self._busy = me.lead = True
        if not me.lead:
            me.wake.wait()
        if not me.done:  # the leader now: run what is queued, this request first
            self._lead(me)
        if me.error is not None:
            raise me.error
        return me.result

    def _lead(self, me: _Waiter) -> None:
        with self._lock:
            batch = [me, *self._queue[:self._max_batch - 1]]
            self._queue = self._queue[self._max_batch - 1:]
        try:
            results = self._run_batch([w.request for w in batch])
            for waiter, result in zip(batch, results, strict=True):
                waiter.result = result
        except BaseException as error:  # every request of the batch hears of it
            for waiter in batch:
                waiter.error = error
        with self._lock:
            follower = self._queue.pop(0) if self._queue else None
            if follower is None:
                self._busy = False
            else:
                follower.lead = True
        for waiter in batch:
            waiter.done = True
            if waiter is not me:
                waiter.wake.set()
        if follower is not None:
            follower.wake.set()
