"""A bounded cache of connections, one per endpoint.

The endpoints a party dials come from listings that strangers advertise, so the connections it
keeps open must be capped: otherwise anyone with a few free keys could make a gateway (or a
buyer, or the node's verifier client) open a channel, its socket and its buffers, per listing
until it runs out. The least recently used connection goes first. An evicted connection is not
cut at once, since a call may still be running on it: it lingers until `linger_s` has passed
and is closed at a later lookup (or at `close`), and no more than `limit` linger at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

Entry = TypeVar("Entry")

MAX_CHANNELS = 64
# How long an evicted connection stays open for the calls still running on it: past the
# longest unary deadline a party sets (30 s)
LINGER_S = 60.0


class ChannelCache(Generic[Entry]):
    """`get(endpoint)`: the endpoint's entry (made by `open_` on first use); at most `limit`
    kept, each evicted one given to `close` once it has lingered. Thread-safe."""

    def __init__(self, open_: Callable[[str], Entry], close: Callable[[Entry], None], *,
                 limit: int | None = None, linger_s: float = LINGER_S) -> None:
        """`limit`: MAX_CHANNELS when not given."""
        limit = MAX_CHANNELS if limit is None else limit
        if limit < 1:
            raise ValueError("a channel cache keeps at least one connection")
        self._open, self._close = open_, close
        self.limit, self.linger_s = limit, linger_s
        self._live: OrderedDict[str, Entry] = OrderedDict()
        self._lingering: deque[tuple[float, Entry]] = deque()
        self._lock = threading.Lock()

    def get(self, endpoint: str) -> Entry:
        with self._lock:
            found = self._live.get(endpoint)
            if found is not None:
                self._live.move_to_end(endpoint)
                if not self._lingering:
                    return found
            else:
                found = self._live[endpoint] = self._open(endpoint)
                now = time.monotonic()
                while len(self._live) > self.limit:
                    evicted = self._live.popitem(last=False)[1]
                    self._lingering.append((now + self.linger_s, evicted))
            due = self._due()
        for entry in due:
            self._close(entry)
        return found

    def __len__(self) -> int:
        return len(self._live)

    def lingering(self) -> int:
        """How many evicted connections are still open."""
        return len(self._lingering)

    def drain(self) -> list[Entry]:
        """Every entry, live and lingering, taken out of the cache (the owner closes them)."""
        with self._lock:
            entries = [*self._live.values(), *(entry for _, entry in self._lingering)]
            self._live.clear()
            self._lingering.clear()
        return entries

    def close(self) -> None:
        """Close every connection now (the owner is done)."""
        for entry in self.drain():
            self._close(entry)

    def _due(self) -> list[Entry]:
        """The lingering entries to close now: those past their time, and the oldest beyond
        `limit` (so that churning endpoints cannot keep more than twice `limit` open)."""
        now = time.monotonic()
        due = []
        while self._lingering and (self._lingering[0][0] <= now
                                   or len(self._lingering) > self.limit):
            due.append(self._lingering.popleft()[1])
        return due


class GracefulClose:
    """grpc.aio channels evicted from a cache, each closed by grpc.aio as soon as its running
    calls end (LINGER_S at most); `aclose` closes those still closing at once. Used on the
    event loop the channels serve."""

    def __init__(self) -> None:
        self._closing: dict[asyncio.Task[None], tuple[Any, ...]] = {}

    def retire(self, *channels: Any) -> None:
        task = asyncio.get_running_loop().create_task(close_channels(channels, LINGER_S))
        self._closing[task] = channels
        task.add_done_callback(lambda done: self._closing.pop(done, None))

    async def aclose(self, *channels: Any) -> None:
        """Close `channels`, and those still closing, now (their owner is done)."""
        closing = list(self._closing.items())
        for task, _channels in closing:
            task.cancel()
        await close_channels([*channels, *(c for _task, retired in closing for c in retired)])


async def close_channels(channels: Iterable[Any], grace: float | None = None) -> None:
    """Close grpc.aio channels together (`grace`: let their running calls end first)."""
    await asyncio.gather(*(c.close(grace) for c in channels), return_exceptions=True)


__all__ = ["LINGER_S", "MAX_CHANNELS", "ChannelCache", "GracefulClose", "close_channels"]
