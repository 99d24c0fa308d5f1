"""Marketplace errors: the wallets hierarchy (one table maps it to gRPC), plus their reasons.

    PermissionDenied
    ├── BadSignature            BAD_SIGNATURE            a signature does not verify
    └── InvalidVoucher          INVALID_VOUCHER          forged, replayed, another agreement's
    ResourceExhausted
    ├── BudgetExceeded          BUDGET_EXCEEDED          past the agreement's maximum
    ├── ReceiptLimit            RECEIPT_LIMIT            an answer a redeem could not carry
    └── RegistryBusy            REGISTRY_BUSY            callers' registry writes at their bound
    FailedPrecondition
    ├── IllegalTransition       ILLEGAL_TRANSITION       the agreement's state forbids it
    ├── OfferExpired            OFFER_EXPIRED            the accepted offer has lapsed
    ├── DeadlinePassed          DEADLINE_PASSED          a negotiation or completion deadline
    ├── CurrencyNotAccepted     CURRENCY_NOT_ACCEPTED    the seller does not price in it
    ├── VerificationNotOffered  VERIFICATION_NOT_OFFERED
    ├── TermsMismatch           TERMS_MISMATCH           terms disagree with listing or offer
    └── DisputeWindowClosed     DISPUTE_WINDOW_CLOSED
    NotFound
    └── UnknownSkill            UNKNOWN_SKILL
    InvalidArgument
    └── SchemaViolation         SCHEMA_VIOLATION         a document does not match its schema
    VerifierUnavailable         UNAVAILABLE              a judge or verifier could not answer;
                                                         nothing changed, retry later

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


class RegistryBusy(ResourceExhausted):
    """As many callers' registry writes run or wait as the node allows
    (`marketplace.registry_door`): nothing written; ask again after a short, growing pause."""

    reason = "REGISTRY_BUSY"


class ReceiptLimit(ResourceExhausted):
    """An answer whose receipt would not fit the agreement's redeem (its output past
    `MAX_OUTPUT_BYTES`, the chain past `MAX_RECEIPTS` receipts or `MAX_REDEEM_RECEIPTS_BYTES`):
    the seller refuses it before charging, so every charged call stays redeemable."""

    reason = "RECEIPT_LIMIT"


class IllegalTransition(FailedPrecondition):
    reason = "ILLEGAL_TRANSITION"


class OfferExpired(FailedPrecondition):
    reason = "OFFER_EXPIRED"


class DeadlinePassed(FailedPrecondition):
    reason = "DEADLINE_PASSED"


class CurrencyNotAccepted(FailedPrecondition):
    reason = "CURRENCY_NOT_ACCEPTED"


class VerificationNotOffered(FailedPrecondition):
    reason = "VERIFICATION_NOT_OFFERED"


class TermsMismatch(FailedPrecondition):
    reason = "TERMS_MISMATCH"


class DisputeWindowClosed(FailedPrecondition):
    reason = "DISPUTE_WINDOW_CLOSED"


class UnknownSkill(NotFound):
    reason = "UNKNOWN_SKILL"


class SchemaViolation(InvalidArgument):
    reason = "SCHEMA_VIOLATION"


class VerifierUnavailable(AgentmarketError):
    """An LLM judge or third-party verifier did not answer usably; the caller may retry."""

    status = "UNAVAILABLE"
    reason = "VERIFIER_UNAVAILABLE"


__all__ = [
    "AgentmarketError",
    "BadSignature",
    "BudgetExceeded",
    "CurrencyNotAccepted",
    "DeadlinePassed",
    "DisputeWindowClosed",
    "FailedPrecondition",
    "IllegalTransition",
    "InvalidArgument",
    "InvalidVoucher",
    "NotFound",
    "OfferExpired",
    "PermissionDenied",
    "ReceiptLimit",
    "ResourceExhausted",
    "SchemaViolation",
    "TermsMismatch",
    "Unauthenticated",
    "UnknownSkill",
    "VerificationNotOffered",
    "VerifierUnavailable",
]
