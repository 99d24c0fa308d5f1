"""Agent SDK errors: the shared hierarchy (see `wallets.errors`) plus payment reasons.

    AgentmarketError
    ├── FailedPrecondition
    │   ├── NegotiationFailed       NEGOTIATION_FAILED   no agreement within the limits
    │   └── ApprovalRequired        APPROVAL_REQUIRED    the wallet wants a human's approval
    ├── Unauthenticated
    │   └── PaymentRequired         PAYMENT_REQUIRED     a paid method without a voucher
    ├── Unavailable
    │   └── CallInProgress          CALL_IN_PROGRESS     a retried call id is still running
    └── (InvalidVoucher, BudgetExceeded ... from `marketplace.errors`)
"""

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


class ApprovalRequired(FailedPrecondition):
    """The buyer's wallet policy holds this payment for a human's approval."""

    reason = "APPROVAL_REQUIRED"

    def __init__(self, message: str, *, approval_id: str = "", amount_atomic: int = 0,
                 currency: str = "", counterparty: str = "") -> None:
        super().__init__(message)
        self.approval_id = approval_id
        self.amount_atomic = amount_atomic
        self.currency = currency
        self.counterparty = counterparty


class Unavailable(AgentmarketError):
    status = "UNAVAILABLE"
    reason = "UNAVAILABLE"


class CallInProgress(Unavailable):
    """A retry arrived while the first attempt of the same call id is still running."""

    reason = "CALL_IN_PROGRESS"


__all__ = [
    "AgentmarketError",
    "ApprovalRequired",
    "BudgetExceeded",
    "CallInProgress",
    "FailedPrecondition",
    "InvalidArgument",
    "InvalidVoucher",
    "NegotiationFailed",
    "NotFound",
    "PaymentRequired",
    "PermissionDenied",
    "Unavailable",
]
