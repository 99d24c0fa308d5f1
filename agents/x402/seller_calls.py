"""The gateway's waits on sellers, kept apart from its ledger work and bounded per party.

Opening a session asks the seller to countersign (Negotiate) and closing one asks it to finish:
blocking gRPC calls of up to 10 s each. On the event loop's default executor (6 threads on 2
cores) a seller that never answers held every thread that route builds, ledger checks, closes
and the facilitator's /verify and /settle also need: one free key's listing and a few cents
stalled every other buyer. So these waits run on a pool of their own, and at most
`OPENS_PER_SELLER` opens wait on one seller endpoint, `OPENS_PER_BUYER` for one buyer, at a
time; past that an open is refused (`seller_refused`: retry shortly), nothing held.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from agents.x402.reasons import Refused

SELLER_CALL_THREADS = 64  # waiting threads cost memory, not CPU
OPENS_PER_SELLER = 16
OPENS_PER_BUYER = 8  # a client with 40 calls at once opens 4 or 5 sessions together
T = TypeVar("T")


class SellerCalls:
    """The pool seller calls run on, and who is waiting on whom."""

    def __init__(self, threads: int = SELLER_CALL_THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="x402-seller-calls")
        self._lock = threading.Lock()
        self._by_seller: Counter[str] = Counter()
        self._by_buyer: Counter[str] = Counter()

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` on the pool, in this task's context (its trace, its caller)."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(context.run, call, *args))

    @contextmanager
    def opening(self, seller_endpoint: str, buyer_id: str) -> Iterator[None]:
        """Count an open waiting on `seller_endpoint` for `buyer_id`, or refuse it."""
        with self._lock:
            if self._by_seller[seller_endpoint] >= OPENS_PER_SELLER:
                raise Refused("seller_refused", f"{OPENS_PER_SELLER} sessions are already "
                                                "being opened with this seller; retry shortly")
            if self._by_buyer[buyer_id] >= OPENS_PER_BUYER:
                raise Refused("seller_refused", f"this buyer already has {OPENS_PER_BUYER} "
                                                "sessions being opened; retry shortly")
            self._by_seller[seller_endpoint] += 1
            self._by_buyer[buyer_id] += 1
        try:
            yield
        finally:
            with self._lock:
                for table, key in ((self._by_seller, seller_endpoint),
                                   (self._by_buyer, buyer_id)):
                    table[key] -= 1
                    if table[key] <= 0:
                        del table[key]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
