"""gRPC's exceptions turned into the SDK's own (agents.errors), at every public method's edge.

A failed call carries a status code and, from our servers, a google.rpc.ErrorInfo whose reason
names the exact error and whose metadata holds details (the approval to decide, the rule
broken, the trace id of the failed request). `sdk_error` rebuilds the class that reason names,
or the status code's class when the reason is not one we know (another implementation of the
contract, a proxy, the network). `sdk_method` / `async_sdk_method` wrap a public method so
nothing but `AgentmarketError` leaves it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from opentelemetry import trace

from agents import errors
from marketplace import errors as market_errors
from wallets import errors as wallet_errors
from wallets.grpc_errors import TRACE_ID_KEY, error_info

F = TypeVar("F", bound=Callable[..., Any])
MAX_MESSAGE_CHARS = 500

_BY_STATUS: dict[str, type[errors.AgentmarketError]] = {
    "INVALID_ARGUMENT": errors.InvalidArgument,
    "OUT_OF_RANGE": errors.InvalidArgument,
    "NOT_FOUND": errors.NotFound,
    "FAILED_PRECONDITION": errors.FailedPrecondition,
    "ABORTED": errors.FailedPrecondition,
    "ALREADY_EXISTS": errors.IdempotencyConflict,
    "PERMISSION_DENIED": errors.PermissionDenied,
    "UNAUTHENTICATED": errors.Unauthenticated,
    "RESOURCE_EXHAUSTED": errors.ResourceExhausted,
    "UNAVAILABLE": errors.Unavailable,
    "CANCELLED": errors.Unavailable,
    "DEADLINE_EXCEEDED": errors.DeadlineExceeded,
}


def _reason_table() -> dict[str, type[errors.AgentmarketError]]:
    """reason -> class, from every error class of the three packages; where two share a
    reason, the SDK's (agents.errors) wins, then the marketplace's."""
    table: dict[str, type[errors.AgentmarketError]] = {}
    for module in (wallet_errors, market_errors, errors):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, errors.AgentmarketError) \
                    and value is not errors.AgentmarketError:
                table[value.reason] = value
    return table


_BY_REASON = _reason_table()


def _one_line(text: str) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[:MAX_MESSAGE_CHARS - 3] + "..."


def trace_id_of(span: trace.Span) -> str:
    """The span's trace id in hex, as errors and results name it; "" for no trace."""
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def _client_trace_id() -> str:
    return trace_id_of(trace.get_current_span())


def build(cls: type[errors.AgentmarketError], message: str, *, status: str = "",
          reason: str = "", trace_id: str = "", metadata: dict[str, str] | None = None
          ) -> errors.AgentmarketError:
    """An instance of `cls` with exactly these fields (constructors differ: Forbidden takes a
    rule, ApprovalRequired an approval; here every one is filled the same way)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.message = message
    if status:
        error.status = status
    if reason:
        error.reason = reason
    error.trace_id = trace_id
    metadata = metadata or {}
    if isinstance(error, errors.ApprovalRequired):
        error.approval_id = metadata.get("approval_id", "")
        error.amount_atomic, error.currency, error.counterparty = 0, "", ""
    if isinstance(error, wallet_errors.ApprovalRequired):
        error.approval_id = metadata.get("approval_id", "")
    if isinstance(error, wallet_errors.Forbidden):
        error.rule = metadata.get("rule", "")
    return error


def sdk_error(error: grpc.RpcError, peer: str = "") -> errors.AgentmarketError:
    """The SDK error a failed call stands for. `peer` ('the marketplace at host:port', 'seller
    ab12… at host:port') prefixes the message when the peer did not answer at all."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    details = error.details() if callable(getattr(error, "details", None)) else ""
    info = error_info(error)
    metadata = dict(info.metadata)
    cls = _BY_REASON.get(info.reason) if info.reason else None
    if cls is not None and cls.status != status:
        cls = None  # a reason we know under another status: trust the status
    if cls is None:
        cls = _BY_STATUS.get(status, errors.ServerError)
    message = _one_line(details) or status.lower().replace("_", " ")
    if status in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED") and not info.reason and peer:
        message = f"{peer} did not answer ({status}): {message}"
    return build(cls, message, status=status, reason=info.reason or cls.reason or status,
                 trace_id=metadata.get(TRACE_ID_KEY, "") or _client_trace_id(),
                 metadata=metadata)


def _check_open(args: tuple[Any, ...]) -> None:
    """A closed agent's channels are gone (grpc may even crash on one): say so instead."""
    if args and getattr(args[0], "_closed", False):
        raise errors.FailedPrecondition(f"this {type(args[0]).__name__} is closed (close(), or "
                                        "the end of its with block): make a new one")


def sdk_method(method: F) -> F:
    """Nothing but AgentmarketError leaves `method`: a grpc.RpcError becomes its SDK class;
    a closed agent's method refuses at once."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _check_open(args)
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as error:
            raise sdk_error(error) from None

    return wrapper  # type: ignore[return-value]


def async_sdk_method(method: F) -> F:
    """`sdk_method` for coroutine methods (grpc.aio raises AioRpcError, a grpc.RpcError)."""

    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        _check_open(args)
        check_loop = getattr(args[0], "_check_loop", None) if args else None
        if check_loop is not None:
            check_loop()
        try:
            return await method(*args, **kwargs)
        except grpc.RpcError as error:
            raise sdk_error(error) from None
        except asyncio.CancelledError:
            closed = closed_under_call()
            if closed is None:
                raise
            raise closed from None

    return wrapper  # type: ignore[return-value]


def closed_under_call() -> errors.Unavailable | None:
    """What a grpc.aio call's CancelledError means: None when the caller's own task was
    cancelled (asyncio.wait_for, a TaskGroup: the cancellation goes on), the project's
    Unavailable when the buyer was closed under the call (grpc.aio cancelled it)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return None
    return errors.Unavailable("the buyer was closed while the call ran; the seller may have "
                              "run it")
