"""Who waits on the A2A door's SubscribeToTask. Each waiting subscription holds a server
worker thread, so at most `limit` wait at once; and none is refused, so that nothing a party
does with its own tasks (or its own wallet) keeps another's subscription out.

A new subscription to a task someone already waits on takes its place (usually the same
caller again, after a hang-up). Past the limit it takes the place of the oldest subscription of
whoever holds the most (the tasks of one agreement count as one holder; an unpaid task is its
own). The subscription it replaces ends at once with the task as it stands, as one does when
its wait runs out, and its caller may poll GetTask or subscribe again: a crowd of one party's
subscriptions gives way first, and a party with one subscription keeps it unless every holder
has one.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(eq=False)
class Waiting:
    """One waiting subscription; `ended` once another took its place."""

    task_id: str
    holder: str
    ended: bool = False


class Subscriptions:
    def __init__(self, limit: int, wake: Callable[[], None]) -> None:
        """`wake`: wakes the waiting subscriptions, so that an ended one stops waiting."""
        self.limit = limit
        self._wake = wake
        self._lock = threading.Lock()
        self._waiting: list[Waiting] = []

    def enter(self, task_id: str, holder: str) -> Waiting:
        with self._lock:
            for other in self._waiting:
                if other.task_id == task_id:
                    other.ended = True
            live = [w for w in self._waiting if not w.ended]
            if len(live) >= self.limit:
                held = Counter(w.holder for w in live)
                most = max(held.values())
                next(w for w in live if held[w.holder] == most).ended = True  # its oldest
            me = Waiting(task_id, holder)
            self._waiting.append(me)
        self._wake()
        return me

    def leave(self, me: Waiting) -> None:
        with self._lock:
            self._waiting.remove(me)

    @property
    def waiting(self) -> int:
        """Subscriptions still waiting (not ended)."""
        with self._lock:
            return sum(not w.ended for w in self._waiting)
