"""The gRPC edge of the error hierarchy: one table from error to status code.

Servicers wrap each method with `@grpc_method`: a domain `AgentmarketError` becomes its status
code with the message as details and a google.rpc.ErrorInfo (reason, domain) in the rich status;
anything else becomes INTERNAL with a request id, logged, never the exception text.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from wallets.errors import AgentmarketError

ERROR_DOMAIN = "agentmarket.dev"
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
}


def status_for(error: AgentmarketError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status, grpc.StatusCode.UNKNOWN)


def _rich_status(code: grpc.StatusCode, message: str, reason: str) -> Any:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    return rpc_status.to_status(
        status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[detail])
    )


def abort(context: grpc.ServicerContext, error: AgentmarketError) -> None:
    context.abort_with_status(_rich_status(status_for(error), error.message, error.reason))


def grpc_method(method: F) -> F:
    """Map domain errors to their status; never leak an unexpected exception's text."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except AgentmarketError as error:
            abort(context, error)
        except Exception:
            request_id = uuid.uuid4().hex[:12]
            log.exception("unexpected error in %s (request %s)", method.__qualname__, request_id)
            context.abort_with_status(_rich_status(
                grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})", "INTERNAL"
            ))

    return wrapper  # type: ignore[return-value]


def error_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call (client side), or '' if none."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""
