"""Agent SDK errors: the shared hierarchy (see `wallets.errors`) plus payment reasons."""

from __future__ import annotations

from marketplace.errors import (
    AgentmarketError,
    BudgetExceeded,
    FailedPrecondition,
    InvalidArgument,
    InvalidVoucher,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)


class PaymentRequired(Unauthenticated):
    """A paid method was called without a voucher."""

    reason = "PAYMENT_REQUIRED"


class NegotiationFailed(FailedPrecondition):
    reason = "NEGOTIATION_FAILED"


__all__ = [
    "AgentmarketError",
    "BudgetExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "InvalidVoucher",
    "NegotiationFailed",
    "NotFound",
    "PaymentRequired",
    "PermissionDenied",
]
