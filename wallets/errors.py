"""Every error agentmarket raises on purpose, and the one table that maps each to the wire.

    AgentmarketError                  (base; never raised itself)
    ├── InvalidArgument               INVALID_ARGUMENT     the request itself is wrong
    │   ├── InvalidAmount
    │   └── UnknownCurrency
    ├── NotFound                      NOT_FOUND            it names something that does not exist
    ├── FailedPrecondition            FAILED_PRECONDITION  valid, but the state forbids it
    │   ├── InsufficientFunds
    │   └── HoldClosed
    ├── IdempotencyConflict           ALREADY_EXISTS       a key reused for a different request
    ├── PermissionDenied              PERMISSION_DENIED    the caller may not do this
    ├── Unauthenticated               UNAUTHENTICATED      the caller could not be identified
    └── ResourceExhausted             RESOURCE_EXHAUSTED   a limit was reached

Domain code raises these; the gRPC edge (`wallets.grpc_errors`) turns `status` into a status code
and `reason` into a google.rpc.ErrorInfo. The marketplace and agents packages subclass them.
"""

from __future__ import annotations


class AgentmarketError(Exception):
    """Base error: `status` names the gRPC status code, `reason` is a stable UPPER_SNAKE tag."""

    status = "UNKNOWN"
    reason = "AGENTMARKET_ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(AgentmarketError):
    status = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"


class InvalidAmount(InvalidArgument):
    reason = "INVALID_AMOUNT"


class UnknownCurrency(InvalidArgument):
    reason = "UNKNOWN_CURRENCY"


class NotFound(AgentmarketError):
    status = "NOT_FOUND"
    reason = "NOT_FOUND"


class FailedPrecondition(AgentmarketError):
    status = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"


class InsufficientFunds(FailedPrecondition):
    reason = "INSUFFICIENT_FUNDS"


class HoldClosed(FailedPrecondition):
    reason = "HOLD_CLOSED"


class IdempotencyConflict(AgentmarketError):
    status = "ALREADY_EXISTS"
    reason = "IDEMPOTENCY_KEY_REUSED"


class PermissionDenied(AgentmarketError):
    status = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class Unauthenticated(AgentmarketError):
    status = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class ResourceExhausted(AgentmarketError):
    status = "RESOURCE_EXHAUSTED"
    reason = "RESOURCE_EXHAUSTED"
