"""Marketplace errors: the wallets hierarchy (one table maps it to gRPC), plus a few reasons.

See `wallets.errors` for the tree and `wallets.grpc_errors` for the wire mapping.
"""

from __future__ import annotations

from wallets.errors import (
    AgentmarketError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)


class BadSignature(PermissionDenied):
    reason = "BAD_SIGNATURE"


class InvalidVoucher(PermissionDenied):
    """A voucher that does not prove payment: forged, replayed, or for another agreement."""

    reason = "INVALID_VOUCHER"


class BudgetExceeded(ResourceExhausted):
    """A call that would take the agreement past its maximum total."""

    reason = "BUDGET_EXCEEDED"


class IllegalTransition(FailedPrecondition):
    reason = "ILLEGAL_TRANSITION"


__all__ = [
    "AgentmarketError",
    "BadSignature",
    "BudgetExceeded",
    "FailedPrecondition",
    "IllegalTransition",
    "InvalidArgument",
    "InvalidVoucher",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
]
