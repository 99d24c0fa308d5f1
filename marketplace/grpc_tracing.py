"""W3C trace context across gRPC hops: one CLIENT span per call, one SERVER span per handler.

The propagator is a `TraceContextTextMapPropagator` held here rather than the global one, so a
trace crosses every hop even when the application configured no propagators. Baggage is not
propagated on purpose: peers are other people's agents, and baggage would leak our context to
them. Any non-OK status marks the span as an error on both sides: a refused payment matters.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_GRPC_STATUS_CODE,
    RPC_METHOD,
    RPC_SERVICE,
    RPC_SYSTEM,
)
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from marketplace._call_details import with_metadata
from wallets.errors import AgentmarketError

TRACER_NAME = "agentmarket.grpc"
_PROPAGATOR = TraceContextTextMapPropagator()
_PROPAGATED_KEYS = frozenset(_PROPAGATOR.fields)


def tracing_active(tracer_provider: trace.TracerProvider | None = None) -> bool:
    """Whether spans from `tracer_provider` (None: the global one) can be recorded: not the
    API's default no-op provider, nor an SDK provider that samples nothing (tracing off).
    Checked per call, so a global provider set later is seen; when off, the hot path skips
    building spans, context and attributes at all."""
    provider = tracer_provider if tracer_provider is not None else _global_provider()
    if provider is None:
        return False
    kind = type(provider)
    inert = _INERT_KINDS.get(kind)
    if inert is None:  # isinstance on these ABCs is slow: asked once per class
        inert = _INERT_KINDS[kind] = issubclass(kind, (trace.ProxyTracerProvider,
                                                       trace.NoOpTracerProvider))
    return not inert and getattr(provider, "sampler", None) is not ALWAYS_OFF


_INERT_KINDS: dict[type, bool] = {}  # provider class -> records nothing (the API's own)


def _global_provider() -> trace.TracerProvider | None:
    """The global provider once one was set (the API's getter re-reads the environment on
    every call until then, too slow for a per-call check)."""
    if hasattr(trace, "_TRACER_PROVIDER"):
        return trace._TRACER_PROVIDER  # type: ignore[attr-defined,no-any-return]
    return trace.get_tracer_provider()


_NO_SPAN = nullcontext(trace.INVALID_SPAN)


def span_if_active(tracer: trace.Tracer, tracer_provider: trace.TracerProvider | None,
                   name: str, attributes: Callable[[], Mapping[str, Any]] | None = None,
                   **kwargs: Any) -> Any:
    """`tracer.start_as_current_span(name, ...)`, or a context giving the invalid span (whose
    setters do nothing) when tracing is off or the current trace is not sampled (the SDK's
    default parent-based sampler would record nothing under it), for spans on hot paths.
    `attributes` is called only for a span that may be recorded, so the hot path builds
    nothing otherwise."""
    if not tracing_active(tracer_provider):
        return _NO_SPAN
    parent = trace.get_current_span().get_span_context()
    if parent.is_valid and not parent.trace_flags.sampled:
        return _NO_SPAN
    if attributes is not None:
        kwargs["attributes"] = attributes()
    return _span_keeping_text_out(tracer, name, kwargs)


@contextmanager
def _span_keeping_text_out(tracer: trace.Tracer, name: str, kwargs: dict[str, Any]
                           ) -> Iterator[Span]:
    """The span, an exception escaping it recorded by `record_error`."""
    with tracer.start_as_current_span(name, record_exception=False,
                                      set_status_on_exception=False, **kwargs) as span:
        try:
            yield span
        except BaseException as error:
            record_error(span, error)
            raise


def record_error(span: Span, error: BaseException) -> None:
    """An exception on a span: its type, and its message only when it is one of ours (what
    the caller is told anyway). Another exception's text and traceback may carry what a skill
    was given (a user's private input): they stay in the process's own log."""
    attributes = {"exception.type": type(error).__qualname__}
    if isinstance(error, AgentmarketError):
        attributes["exception.message"] = error.message
    span.add_event("exception", attributes)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


def _rpc_attributes(full_method: str | bytes) -> tuple[str, dict[str, str]]:
    """'/pkg.Service/Method' -> span name 'pkg.Service/Method' and the rpc.* attributes."""
    if isinstance(full_method, bytes):
        full_method = full_method.decode("utf-8", "replace")
    name = full_method.lstrip("/")
    service, _, method = name.rpartition("/")
    return name, {RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: method}


def _record_status(span: Span, code: grpc.StatusCode, details: str | None) -> None:
    span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details or ''}".rstrip(": ")))


class _ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, tracer: trace.Tracer, provider: trace.TracerProvider | None) -> None:
        self._tracer = tracer
        self._provider = provider

    def _intercept(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        if not tracing_active(self._provider):
            return continuation(details, request)
        name, attributes = _rpc_attributes(details.method)
        if otel_context.get_value(_UNTRACED):
            span: Span = _unsampled_span()
        else:
            span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        metadata = [
            (key, value)
            for key, value in (details.metadata or ())
            if key.lower() not in _PROPAGATED_KEYS
        ]
        metadata.extend(carrier.items())
        new_details = with_metadata(details, metadata)
        try:
            with _current(span):  # interceptors further in see the client span as parent
                outcome = continuation(new_details, request)
        except BaseException as error:
            record_error(span, error)
            span.end()
            raise

        def finish(call: Any) -> None:
            _record_status(span, call.code(), call.details())
            span.end()

        # Called at once for a finished blocking call, on completion for futures and streams.
        outcome.add_done_callback(finish)
        return outcome

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator)


_UNTRACED = otel_context.create_key("agentmarket-untraced")


@contextmanager
def untraced() -> Iterator[None]:
    """Calls made inside are not traced on either side (heartbeats, shutdown housekeeping):
    they carry an unsampled traceparent, so the server's parent-based sampler drops them too."""
    token = otel_context.attach(otel_context.set_value(_UNTRACED, True))
    try:
        yield
    finally:
        otel_context.detach(token)


def _unsampled_span() -> Span:
    context = SpanContext(trace_id=random.getrandbits(128) or 1,
                          span_id=random.getrandbits(64) or 1, is_remote=False,
                          trace_flags=TraceFlags(TraceFlags.DEFAULT))
    return trace.NonRecordingSpan(context)


def client_interceptors(
    tracer_provider: trace.TracerProvider | None = None,
) -> list[grpc.UnaryUnaryClientInterceptor | grpc.UnaryStreamClientInterceptor]:
    """Interceptors for `grpc.intercept_channel`: a CLIENT span per call, context in metadata.

    One object implements all four call shapes; it is returned in a list so callers can add
    their own interceptors (payment vouchers) after it, inside the client span.
    """
    interceptor = _ClientInterceptor(
        trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider), tracer_provider)
    return [interceptor]


class _ServerInterceptor(grpc.ServerInterceptor):
    def __init__(self, tracer: trace.Tracer, provider: trace.TracerProvider | None) -> None:
        self._tracer = tracer
        self._provider = provider

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not tracing_active(self._provider):
            return handler
        carrier = {
            key: value
            for key, value in (handler_call_details.invocation_metadata or ())
            if key in _PROPAGATED_KEYS and isinstance(value, str)
        }
        name, attributes = _rpc_attributes(handler_call_details.method)  # type: ignore[attr-defined]
        tracer = self._tracer

        def start() -> Span:
            parent = _PROPAGATOR.extract(carrier, context=otel_context.Context())
            return tracer.start_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=attributes
            )

        def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def traced(request: Any, context: grpc.ServicerContext) -> Any:
                span = start()
                try:
                    with _current(span):
                        response = behavior(request, context)
                except BaseException as error:
                    _server_failed(span, context, error)
                    raise
                else:
                    _server_done(span, context)
                    return response
                finally:
                    span.end()

            return traced

        def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
            # The span is current only while the servicer runs, never across a yield: the
            # generator may be closed from another thread when the client goes away.
            def traced(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                span = start()
                try:
                    with _current(span):
                        responses = iter(behavior(request, context))
                    while True:
                        with _current(span):
                            item = next(responses, _END)
                        if item is _END:
                            break
                        yield item
                except GeneratorExit:
                    _record_status(span, grpc.StatusCode.CANCELLED, "response stream closed")
                    raise
                except BaseException as error:
                    _server_failed(span, context, error)
                    raise
                else:
                    _server_done(span, context)
                finally:
                    span.end()

            return traced

        wrappers = {
            "unary_unary": (unary, grpc.unary_unary_rpc_method_handler),
            "stream_unary": (unary, grpc.stream_unary_rpc_method_handler),
            "unary_stream": (streaming, grpc.unary_stream_rpc_method_handler),
            "stream_stream": (streaming, grpc.stream_stream_rpc_method_handler),
        }
        for kind, (wrap, make_handler) in wrappers.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make_handler(
                    wrap(behavior),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


_END = object()


def _current(span: Span) -> Any:
    """Make `span` current without ending it or touching its status (we set that ourselves)."""
    return trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )


def _code_of(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    try:
        return context.code()  # type: ignore[attr-defined,no-any-return]
    except (AttributeError, NotImplementedError):
        return None


def _details_of(context: grpc.ServicerContext) -> str | None:
    try:
        details = context.details()  # type: ignore[attr-defined]
    except (AttributeError, NotImplementedError):
        return None
    return details.decode("utf-8", "replace") if isinstance(details, bytes) else details


def _server_done(span: Span, context: grpc.ServicerContext) -> None:
    _record_status(span, _code_of(context) or grpc.StatusCode.OK, _details_of(context))


def _server_failed(span: Span, context: grpc.ServicerContext, error: BaseException) -> None:
    """An abort sets the code then raises; anything else reaches the client as UNKNOWN."""
    code = _code_of(context)
    if code is None or code is grpc.StatusCode.OK:
        record_error(span, error)
        _record_status(span, grpc.StatusCode.UNKNOWN, type(error).__name__)
    else:
        _record_status(span, code, _details_of(context))


def server_interceptor(
    tracer_provider: trace.TracerProvider | None = None,
) -> grpc.ServerInterceptor:
    """An interceptor for `grpc.server(interceptors=...)`: a SERVER span current in the servicer."""
    return _ServerInterceptor(
        trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider), tracer_provider)
