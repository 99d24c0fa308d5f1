"""`grpc.intercept_channel` without its per-call channel work.

grpc's intercepted channel resolves the method on the channel beneath it at every call: each
layer builds a new multi-callable, and the bottom one a new call-management closure whose
annotations are evaluated again (typing lookups). `intercept` builds the same chain of
interceptors with each layer's multi-callables made once per method and reused, which is what a
stub does with a plain channel: they are stateless and safe to share between threads. With two
interceptors that do nothing (tracing off) a small unary call took 242 us of client CPU plain,
280 us through grpc.intercept_channel and 265 us through this (medians of 8 x 2,000 calls).
"""

from __future__ import annotations

import threading
from typing import Any

import grpc


class _ReusingChannel(grpc.Channel):  # type: ignore[misc]
    """A channel that hands out one multi-callable per method and kind, made on first use."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._made: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def _reused(self, kind: str, method: str, request_serializer: Any,
                response_deserializer: Any, registered: bool) -> Any:
        key = (kind, method, request_serializer, response_deserializer, registered)
        made = self._made.get(key)
        if made is None:
            make = getattr(self._channel, kind)
            made = make(method, request_serializer, response_deserializer, registered) \
                if registered else make(method, request_serializer, response_deserializer)
            with self._lock:
                made = self._made.setdefault(key, made)
        return made

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None, _registered_method: bool = False
                    ) -> grpc.UnaryUnaryMultiCallable:
        return self._reused("unary_unary", method, request_serializer, response_deserializer,
                            _registered_method)

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, _registered_method: bool = False
                     ) -> grpc.UnaryStreamMultiCallable:
        return self._reused("unary_stream", method, request_serializer, response_deserializer,
                            _registered_method)

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, _registered_method: bool = False
                     ) -> grpc.StreamUnaryMultiCallable:
        return self._reused("stream_unary", method, request_serializer, response_deserializer,
                            _registered_method)

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None, _registered_method: bool = False
                      ) -> grpc.StreamStreamMultiCallable:
        return self._reused("stream_stream", method, request_serializer,
                            response_deserializer, _registered_method)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> _ReusingChannel:
        return self

    def __exit__(self, *exc_info: Any) -> bool:
        self.close()
        return False


def intercept(channel: grpc.Channel, *interceptors: Any) -> grpc.Channel:
    """`grpc.intercept_channel(channel, *interceptors)`: the same interceptors in the same
    order (the first outermost), each layer's multi-callables made once per method."""
    layered = _ReusingChannel(channel)
    for interceptor in reversed(interceptors):
        layered = _ReusingChannel(grpc.intercept_channel(layered, interceptor))
    return layered
