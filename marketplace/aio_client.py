"""grpc.aio client channels that sign and trace like the sync ones (`marketplace.auth`,
`marketplace.grpc_tracing`): for asyncio programs (`agents.AsyncBuyerAgent`).

Each call is signed with the agent's key (the same `signed_message` as the sync interceptor,
so a server cannot tell them apart) and carries W3C trace context under a CLIENT span.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from marketplace.auth import (
    _AUTH_KEYS,
    AGENT_KEY,
    NONCE_KEY,
    SIGNATURE_KEY,
    TIMESTAMP_KEY,
    _now_ms,
    signed_message,
)
from marketplace.grpc_tracing import (
    _PROPAGATED_KEYS,
    _PROPAGATOR,
    TRACER_NAME,
    _current,
    _record_status,
    _rpc_attributes,
    tracing_active,
)
from marketplace.identity import AgentKey


def _details(details: Any, metadata: list[tuple[str, Any]]) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(details.method, details.timeout,
                                      grpc.aio.Metadata(*metadata), details.credentials,
                                      details.wait_for_ready)


def _pairs(details: Any) -> list[tuple[str, Any]]:
    return list(details.metadata or ())


def _method(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class _Tracing(grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
               grpc.aio.UnaryStreamClientInterceptor):
    """A CLIENT span per call, its context in the call's metadata."""

    def __init__(self, provider: trace.TracerProvider | None) -> None:
        self._provider = provider
        self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=provider)

    def _outgoing(self, details: Any, _request: Any) -> Any:
        """The call's details as sent (`_Signing` signs them)."""
        return details

    def _start(self, details: Any) -> tuple[Any, grpc.aio.ClientCallDetails]:
        name, attributes = _rpc_attributes(_method(details))
        span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        metadata = [(k, v) for k, v in _pairs(details) if k.lower() not in _PROPAGATED_KEYS]
        return span, _details(details, [*metadata, *carrier.items()])

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        if not tracing_active(self._provider):
            return await continuation(self._outgoing(details, request), request)
        span, details = self._start(details)
        try:
            with _current(span):
                call = await continuation(self._outgoing(details, request), request)
                await call  # the answer, or the error it ended with
            _record_status(span, grpc.StatusCode.OK, None)
            return call
        except grpc.RpcError as error:
            _record_status(span, error.code(), error.details())
            raise
        finally:
            span.end()

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        if not tracing_active(self._provider):
            return await continuation(self._outgoing(details, request), request)
        span, details = self._start(details)
        with _current(span):
            call = await continuation(self._outgoing(details, request), request)
        call.add_done_callback(lambda _call: span.end())
        return call


class _Signing(_Tracing):
    """Trace (`_Tracing`) and sign each unary-request call with the agent's key (a fresh nonce
    each time): one interceptor, as grpc.aio runs each one as a task of its own per call."""

    def __init__(self, key: AgentKey, provider: trace.TracerProvider | None) -> None:
        super().__init__(provider)
        self.key = key

    def _outgoing(self, details: Any, request: Any) -> grpc.aio.ClientCallDetails:
        body = request if isinstance(request, bytes) else request.SerializeToString()
        timestamp_ms = _now_ms()
        nonce = os.urandom(16).hex()
        signature = self.key.sign(signed_message(_method(details), body, timestamp_ms, nonce))
        metadata = [(k, v) for k, v in _pairs(details) if k not in _AUTH_KEYS]
        metadata += [(AGENT_KEY, self.key.agent_id), (TIMESTAMP_KEY, str(timestamp_ms)),
                     (NONCE_KEY, nonce), (SIGNATURE_KEY, signature)]
        return _details(details, metadata)


class _StreamSide(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """`inner`'s unary-stream half on its own: grpc.aio files an interceptor under the first
    kind it is (unary-unary before unary-stream), so one that is both would never see a
    streamed call, which would then go out unsigned and untraced."""

    def __init__(self, inner: _Tracing) -> None:
        self._inner = inner

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await self._inner.intercept_unary_stream(continuation, details, request)


def bare_aio_channel(address: str, credentials: grpc.ChannelCredentials | None = None
                     ) -> grpc.aio.Channel:
    """A grpc.aio channel with no interceptor: for calls that need no signature while tracing
    is off (grpc.aio runs every intercepted call as one more task, which costs more than a
    small call's own work)."""
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials)
    return grpc.aio.insecure_channel(address)


def aio_channel(address: str, key: AgentKey | None,
                credentials: grpc.ChannelCredentials | None = None, *,
                tracer_provider: trace.TracerProvider | None = None,
                options: Iterable[tuple[str, Any]] = (),
                interceptors: Iterable[Any] = ()) -> grpc.aio.Channel:
    """A grpc.aio channel: traced, and signed by `key` (None: unsigned), TLS with
    `credentials`, plaintext without. Create it inside the event loop that will use it.
    `interceptors` run before tracing and signing (a retry: each attempt signed afresh)."""
    outgoing = _Tracing(tracer_provider) if key is None else _Signing(key, tracer_provider)
    interceptors = [*interceptors, outgoing, _StreamSide(outgoing)]
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=list(options),
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)
