"""Bounds on the calls that hold a server thread for as long as their caller likes: streams.

Our gRPC servers run each call on a worker of a bounded pool (the aio seller runs its
synchronous handlers in one too). A response stream its caller reads slowly, a health Watch,
or a request stream its caller never sends on keeps its worker until it ends; unbounded, a
stranger with free keys, or with no key at all (reflection and health are public), could hold
every worker and stall every other agent's calls. So, on every server:

- streams together hold at most the pool's size less `reserve` workers: the rest are kept for
  unary calls (negotiations, paid calls, redeems, heartbeats);
- each kind of public introspection stream (reflection, health Watch) holds at most
  `INTROSPECTION_STREAMS` workers;
- a request stream (reflection) ends after `REQUEST_IDLE_S` without a request, and after
  `REQUEST_STREAM_LIFETIME_S` in all.

Past a bound a new stream is refused RESOURCE_EXHAUSTED (reason STREAMS_BUSY), its caller told
to try again; the calls already running are not touched.

A seller also keeps any one payer to a share of its stream slots (`PayerShares`, half by
default): a buyer running many slow streamed skills at once pays for each, but would otherwise
hold every slot for as long as they run, and another buyer's stream would be refused meanwhile.
The payer is known only once its payment checked out, so the share is taken after that, and a
stream refused for it gives its reserve back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from wallets.errors import ResourceExhausted
from wallets.grpc_errors import abort

INTROSPECTION_STREAMS = 4  # grpc's ProtoReflectionDescriptorDatabase keeps one open for its life
REQUEST_IDLE_S = 30.0
REQUEST_STREAM_LIFETIME_S = 300.0
_REFLECTION = "/grpc.reflection."
_WATCH = "/grpc.health.v1.Health/Watch"
_END = object()
PAYER_SHARE = 0.5  # of a seller's stream slots, the most one payer holds at once


def streams_allowed(workers: int, reserve: int | None = None) -> int:
    """How many workers of a pool of `workers` streams may hold: by default a quarter of the
    pool, at least 2, is kept for unary calls."""
    kept = max(2, workers // 4) if reserve is None else reserve
    return max(1, workers - kept)


class StreamLimits(grpc.ServerInterceptor):
    """The bounds above, for a server whose pool has `workers` threads (install it first, so
    that it counts every stream, refused ones included)."""

    def __init__(self, workers: int, *, reserve: int | None = None,
                 idle_s: float = REQUEST_IDLE_S,
                 lifetime_s: float = REQUEST_STREAM_LIFETIME_S) -> None:
        self.allowed = streams_allowed(workers, reserve)
        self._streams = threading.BoundedSemaphore(self.allowed)
        self._introspection = {_REFLECTION: threading.BoundedSemaphore(INTROSPECTION_STREAMS),
                               _WATCH: threading.BoundedSemaphore(INTROSPECTION_STREAMS)}
        self.idle_s, self.lifetime_s = idle_s, lifetime_s

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or handler.unary_unary is not None:
            return handler
        method = details.method
        kind = _REFLECTION if method.startswith(_REFLECTION) else method
        bounds = [self._streams, *([self._introspection[kind]]
                                   if kind in self._introspection else [])]
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary_answer(handler.stream_unary, bounds, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        streamed, make = ((handler.unary_stream, grpc.unary_stream_rpc_method_handler)
                          if handler.unary_stream is not None else
                          (handler.stream_stream, grpc.stream_stream_rpc_method_handler))
        return make(self._streamed(streamed, bounds, method,
                                   requests_streamed=handler.stream_stream is not None),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    def _streamed(self, behaviour: Callable[..., Any], bounds: list[threading.Semaphore],
                  method: str, *, requests_streamed: bool) -> Callable[..., Iterator[Any]]:
        def limited(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            held = _take(bounds, context, method)
            try:
                if requests_streamed:
                    request = self._timed(request, context)
                responses = behaviour(request, context)
                if responses is not None:
                    yield from responses
            finally:
                _give_back(held)
        return limited

    def _unary_answer(self, behaviour: Callable[..., Any], bounds: list[threading.Semaphore],
                      method: str) -> Callable[..., Any]:
        def limited(requests: Any, context: grpc.ServicerContext) -> Any:
            held = _take(bounds, context, method)
            try:
                return behaviour(self._timed(requests, context), context)
            finally:
                _give_back(held)
        return limited

    def _timed(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        """The caller's requests, the call cancelled if the next is not there in time."""
        ends = time.monotonic() + self.lifetime_s
        while (left := ends - time.monotonic()) > 0:
            timer = threading.Timer(min(self.idle_s, left), _cancel, (context,))
            timer.daemon = True
            timer.start()
            try:
                request = next(requests, _END)
            finally:
                timer.cancel()
            if request is _END:
                return
            yield request


class PayerShares:
    """At most `share` of `allowed` stream slots for any one payer (at least one each)."""

    def __init__(self, allowed: int, share: float = PAYER_SHARE) -> None:
        self.most = max(1, int(allowed * share))
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def held(self, payer: str) -> Iterator[None]:
        """One of `payer`'s slots while the block runs (raises ResourceExhausted, reason
        STREAMS_BUSY, when it holds its share already)."""
        with self._lock:
            holding = self._held.get(payer, 0)
            if holding >= self.most:
                raise ResourceExhausted(
                    f"this payer holds {holding} of this server's streams, its share; end one "
                    "or try again shortly", reason="STREAMS_BUSY")
            self._held[payer] = holding + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._held[payer] - 1
                if left:
                    self._held[payer] = left
                else:
                    del self._held[payer]

    def holding(self, payer: str) -> int:
        with self._lock:
            return self._held.get(payer, 0)


def _take(bounds: list[threading.Semaphore], context: grpc.ServicerContext,
          method: str) -> list[threading.Semaphore]:
    held: list[threading.Semaphore] = []
    for bound in bounds:
        if not bound.acquire(blocking=False):
            _give_back(held)
            abort(context, ResourceExhausted(
                f"this server has as many open streams as it takes ({method}); try again "
                "shortly", reason="STREAMS_BUSY"))
        held.append(bound)
    return held


def _give_back(held: list[threading.Semaphore]) -> None:
    for bound in held:
        bound.release()


def _cancel(context: Any) -> None:
    """End a call whose caller went quiet (the threaded server's context; the aio bridge ends
    a quiet request stream itself, `agents._aio_server`)."""
    cancel = getattr(context, "cancel", None)
    if cancel is not None:
        cancel()
