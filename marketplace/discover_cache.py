"""Discover answers kept for a moment: every buyer of a busy market asks the same few queries.

Each task begins with a Discover, and buyers of one skill ask the same question many times a
second; answering it is a search and a read of the listings (about a millisecond of the node's
CPU). An answer is reused for `ttl_ms` while nothing was written to this node's listings since
it was read (the registry's `version`: advertise, heartbeat, withdraw, expiry), so a seller
that advertises or leaves here is seen at once. What may lag by up to `ttl_ms`: reputation
(already folded into the ranking after each settlement, `marketplace.reputation`), and listings
written through another node sharing the database. A listing whose expiry passes while its
answer is kept is left out of it. At most `MAX_ANSWERS` answers of at most `MAX_ANSWER_BYTES`
each are kept, so no choice of queries or listings can make the cache grow past 64 MiB.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from marketplace.registry import Registry
from marketplace.v1 import registry_pb2

TTL_MS = 1000
MAX_ANSWERS = 256  # distinct queries kept (the least recently used go first)
MAX_ANSWER_BYTES = 256 * 1024  # a larger answer is not kept: at most 64 MiB in all


class DiscoverCache:
    def __init__(self, registry: Registry, *, ttl_ms: int = TTL_MS,
                 max_answers: int = MAX_ANSWERS,
                 clock_ms: Callable[[], int] | None = None) -> None:
        self.registry = registry
        self.ttl_ms = ttl_ms
        self.max_answers = max_answers
        self.clock_ms = clock_ms or (lambda: time.monotonic_ns() // 1_000_000)
        self._answers: OrderedDict[tuple[Any, ...], tuple[int, int, registry_pb2.
                                                          DiscoverResponse]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def answer(self, request: registry_pb2.DiscoverRequest) -> registry_pb2.DiscoverResponse:
        """The answer to `request`, kept or read now (never to be modified by the caller)."""
        if self.ttl_ms <= 0:
            return self._read(request)
        key = (request.skill, request.currency, request.max_price_atomic, request.limit,
               request.text, tuple(request.tags), request.min_reputation_permille,
               request.convert_currencies)
        version, now = self.registry.version, self.clock_ms()  # the version before reading
        with self._lock:
            kept = self._answers.get(key)
            if kept is not None and kept[0] == version and now - kept[1] < self.ttl_ms:
                self._answers.move_to_end(key)
                self.hits += 1
                return _live(kept[2], self.registry.clock_ms())
            self.misses += 1
        response = self._read(request)
        if response.ByteSize() > MAX_ANSWER_BYTES:  # listings may be large: not worth keeping
            return response
        with self._lock:
            self._answers[key] = (version, now, response)
            self._answers.move_to_end(key)
            while len(self._answers) > self.max_answers:
                self._answers.popitem(last=False)
        return response

    def _read(self, request: registry_pb2.DiscoverRequest) -> registry_pb2.DiscoverResponse:
        return registry_pb2.DiscoverResponse(listings=self.registry.discover(
            request.skill, request.currency, request.max_price_atomic, request.limit,
            text=request.text, tags=list(request.tags),
            min_reputation_permille=request.min_reputation_permille,
            convert_currencies=request.convert_currencies))


def _live(response: registry_pb2.DiscoverResponse, now_ms: int
          ) -> registry_pb2.DiscoverResponse:
    """`response` without the listings that expired since it was read."""
    if all(listing.expires_at_ms > now_ms for listing in response.listings):
        return response
    return registry_pb2.DiscoverResponse(
        listings=[listing for listing in response.listings if listing.expires_at_ms > now_ms])


__all__ = ["DiscoverCache"]
