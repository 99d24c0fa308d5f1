"""The gRPC edge of the error hierarchy: one table from error to status code.

Servicers wrap each method with `@grpc_method`: a domain `AgentmarketError` becomes its status
code with the message as details and a google.rpc.ErrorInfo (reason, domain) in the rich status;
anything else becomes INTERNAL with a request id, logged, never the exception text.
"""

from __future__ import annotations

import functools
import logging
import sys
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from wallets import attributes
from wallets.errors import AgentmarketError, DatabaseUnavailable
from wallets.metrics import market_metrics
from wallets.store import connection_lost

ERROR_DOMAIN = "agentmarket.dev"
TRACE_ID_KEY = "trace_id"  # ErrorInfo metadata: the failed request's trace
log = logging.getLogger("agentmarket.grpc")
F = TypeVar("F", bound=Callable[..., Any])

STATUS_CODES: dict[str, grpc.StatusCode] = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "UNIMPLEMENTED": grpc.StatusCode.UNIMPLEMENTED,
}


def status_for(error: AgentmarketError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status, grpc.StatusCode.UNKNOWN)


def _rich_status(code: grpc.StatusCode, message: str, reason: str,
                 metadata: dict[str, str] | None = None, *, domain: str = ERROR_DOMAIN) -> Any:
    """The status with an ErrorInfo: reason, domain, details, and the trace id of the request
    (when it is traced), so whoever gets the error can find its trace."""
    metadata = dict(metadata or {})
    span = trace.get_current_span().get_span_context()
    if span.is_valid and span.trace_flags.sampled:
        metadata.setdefault(TRACE_ID_KEY, format(span.trace_id, "032x"))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain,
                                            metadata=metadata))
    return rpc_status.to_status(
        status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[detail])
    )


def abort(context: grpc.ServicerContext, error: AgentmarketError) -> None:
    """Answer with the error's status; count it, and name its reason on the request's span
    (the span store then answers "refusals by reason" for the operator console)."""
    market_metrics().refused(error.reason)
    trace.get_current_span().set_attribute(attributes.REFUSAL_REASON, error.reason)
    context.abort_with_status(_rich_status(status_for(error), error.message, error.reason,
                                           error.metadata, domain=error.domain))


def abort_internal(context: grpc.ServicerContext, where: str) -> None:
    """INTERNAL with a request id; the exception being handled goes to the log, not the
    caller. The database going away is not the server's fault nor the caller's: UNAVAILABLE,
    so the caller sends the same request again (its idempotency key makes that safe)."""
    handled = sys.exc_info()[1]
    if handled is not None and connection_lost(handled):
        log.warning("database connection lost in %s: %s", where, handled)
        abort(context, DatabaseUnavailable(
            "the marketplace's database did not answer; send the same request again "
            "(with the same idempotency key)"))
        return
    request_id = uuid.uuid4().hex[:12]
    log.exception("unexpected error in %s (request %s)", where, request_id)
    context.abort_with_status(_rich_status(
        grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})", "INTERNAL"))


def grpc_method(method: F) -> F:
    """Map domain errors to their status; never leak an unexpected exception's text."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except AgentmarketError as error:
            abort(context, error)
        except Exception:
            abort_internal(context, method.__qualname__)

    return wrapper  # type: ignore[return-value]


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a failed call (client side); empty if the server sent none."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except Exception:  # a status that disagrees with its details: no ErrorInfo to trust
        return error_details_pb2.ErrorInfo()
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return error_details_pb2.ErrorInfo()


def error_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call (client side), or '' if none."""
    return error_info(error).reason


class _Undecodable:
    """Stands in for a request the deserializer could not parse, so the handler can refuse it
    with INVALID_ARGUMENT (grpc itself would answer INTERNAL for a caller's bad bytes)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def nul_field(message: Any, prefix: str = "") -> str:
    """The path of the first string field holding a NUL character ('' if none). No field of
    ours has a use for one, and PostgreSQL's text columns refuse it (a bare DataError).
    Walks only the fields that can hold a string (`_nul_plan`), in field-number order."""
    for name, kind in _nul_plan(message.DESCRIPTOR):
        value = getattr(message, name)
        if kind == _STRING:
            if "\x00" in value:
                return f"{prefix}{name}"
        elif kind == _STRINGS:
            if any("\x00" in text for text in value):
                return f"{prefix}{name}"
        elif kind == _MAP:
            found = next((f"{prefix}{name}[{k!r}]" for k, v in value.items()
                          if "\x00" in str(k) or (isinstance(v, str) and "\x00" in v)), "")
            if found:
                return found
        elif kind == _MESSAGE:
            if message.HasField(name):
                found = nul_field(value, f"{prefix}{name}.")
                if found:
                    return found
        else:  # _MESSAGES
            for item in value:
                found = nul_field(item, f"{prefix}{name}.")
                if found:
                    return found
    return ""


_STRING, _STRINGS, _MAP, _MESSAGE, _MESSAGES = range(5)
_NUL_PLANS: dict[Any, tuple[tuple[str, int], ...]] = {}


def _nul_plan(descriptor: Any, visiting: frozenset[Any] = frozenset()
              ) -> tuple[tuple[str, int], ...]:
    """(field name, kind) of the fields of a message type that can hold a string, itself or
    in a message inside it, by field number; made once per type. A type met again while its
    own plan is being made (a recursive type) is taken to hold strings."""
    plan = _NUL_PLANS.get(descriptor)
    if plan is not None:
        return plan
    entries = []
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        if field.type == field.TYPE_STRING:
            entries.append((field.name, _STRINGS if field.is_repeated else _STRING))
        elif field.type == field.TYPE_MESSAGE:
            inner = field.message_type
            if inner.GetOptions().map_entry:
                entries.append((field.name, _MAP))
            elif inner in visiting or inner is descriptor or \
                    _nul_plan(inner, visiting | {descriptor}):
                entries.append((field.name, _MESSAGES if field.is_repeated else _MESSAGE))
    plan = tuple(entries)
    if not visiting:  # a plan made inside a cycle may have assumed its way out: not kept
        _NUL_PLANS[descriptor] = plan
    return plan


class WrappedHandlers:
    """An interceptor's wrapped handler per method, made once by `wrap(handler, method)`: the
    servers' handlers are the same objects call after call, and wrapping one costs a closure
    and a handler per call. A method whose inner handler changed (an interceptor further in
    wraps per call) is wrapped anew. Bounded by the methods that have handlers: an unknown
    method has none."""

    def __init__(self, wrap: Callable[[Any, str], Any]) -> None:
        self._wrap = wrap
        self._made: dict[str, tuple[Any, Any]] = {}

    def get(self, method: str, inner: Any) -> Any:
        made = self._made.get(method)
        if made is not None and made[0] is inner:
            return made[1]
        wrapped = self._wrap(inner, method)
        self._made[method] = (inner, wrapped)
        return wrapped


class MalformedRequestInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuse requests whose bytes are not a valid message, or whose strings hold a NUL
    character, with INVALID_ARGUMENT."""

    def __init__(self) -> None:
        self._wrapped = WrappedHandlers(_guarded)

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return self._wrapped.get(details.method, handler)


def _guarded(handler: Any, method: str) -> Any:
    """`handler` refusing undecodable requests and strings holding NUL."""
    parse = handler.request_deserializer

    def deserialize(data: bytes) -> Any:
        try:
            message = parse(data)
        except Exception as error:
            return _Undecodable(error)
        if isinstance(data, bytes) and b"\x00" not in data:
            return message  # a string holding NUL would have put a 0 byte in the encoding
        path = nul_field(message) if hasattr(message, "ListFields") else ""
        return _Undecodable(ValueError(f"field {path} holds a NUL character")) if path \
            else message

    def guard(behaviour):  # type: ignore[no-untyped-def]
        def run(request, context):  # type: ignore[no-untyped-def]
            if isinstance(request, _Undecodable):
                context.abort_with_status(_rich_status(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid {method} message: "
                    f"{str(request.error)[:200]}", "MALFORMED_REQUEST"))
            return behaviour(request, context)
        return run

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            guard(handler.unary_unary), request_deserializer=deserialize,
            response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            guard(handler.unary_stream), request_deserializer=deserialize,
            response_serializer=handler.response_serializer)
    return handler  # client-streaming requests are parsed by the handler as it reads
