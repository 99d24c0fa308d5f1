"""Run async skills from the seller's gRPC worker threads on one background event loop.

One loop for the process (a daemon thread), so resources an async skill binds to its loop
(clients, sessions) stay valid across calls. The caller's context variables (the call's meter,
the trace context) are copied into each step, so metering and tracing work inside async skills.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="agentmarket-async-skills",
                             daemon=True).start()
            _loop = loop
        return _loop


def run(make: Callable[[], Awaitable[T]], timeout_s: float | None = None) -> T:
    """Await `make()` on the background loop with the caller's context; return its result."""
    context = contextvars.copy_context()

    async def step() -> T:
        for var, value in context.items():
            var.set(value)
        return await make()

    return asyncio.run_coroutine_threadsafe(step(), _background_loop()).result(timeout_s)


def iterate(agen: AsyncIterator[T]) -> Iterator[T]:
    """An async iterator as a plain one, each step on the background loop; closing the plain
    iterator closes the async one."""
    try:
        while True:
            try:
                yield run(agen.__anext__)
            except StopAsyncIteration:
                return
    finally:
        close = getattr(agen, "aclose", None)
        if close is not None:
            run(close)
