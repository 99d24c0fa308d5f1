"""Every error agentmarket raises on purpose, and the one table that maps each to the wire.

    AgentmarketError                  (base; never raised itself)
    ├── InvalidArgument               INVALID_ARGUMENT     the request itself is wrong
    │   ├── InvalidAmount
    │   └── UnknownCurrency
    ├── NotFound                      NOT_FOUND            it names something that does not exist
    ├── FailedPrecondition            FAILED_PRECONDITION  valid, but the state forbids it
    │   ├── InsufficientFunds
    │   ├── HoldClosed
    │   ├── HoldExceeded              (a capture larger than what the hold still holds)
    │   ├── HoldLocked                (a hash-locked hold: only its preimage captures it)
    │   ├── ApprovalRequired          (APPROVAL_REQUIRED: a person must approve; not final)
    │   ├── ApprovalExpired
    │   ├── WalletFrozen              (WALLET_FROZEN: an operator must unfreeze; not final)
    │   └── QuoteExpired
    ├── IdempotencyConflict           ALREADY_EXISTS       a key reused for a different request
    ├── PermissionDenied              PERMISSION_DENIED    the caller may not do this
    │   ├── PolicyDenied              (the wallet owner's policy forbids this spend)
    │   ├── ApprovalDenied
    │   ├── MandateDenied             (outside the mandate: MANDATE_DENIED/_REVOKED/_EXPIRED)
    │   ├── InvalidSignature
    │   └── Forbidden                 (FORBIDDEN: the authenticated caller's role may not;
    │                                  ErrorInfo metadata `rule` names the rule)
    ├── Unauthenticated               UNAUTHENTICATED      the caller could not be identified
    ├── ResourceExhausted             RESOURCE_EXHAUSTED   a limit was reached
    │   └── TooManyApprovals          (TOO_MANY_APPROVALS: one spender's pending approvals
    │                                  on one wallet; not final)
    └── Unavailable                   UNAVAILABLE          try again later: nothing changed
        ├── Contended                 (concurrent duplicates of one key kept colliding)
        └── DatabaseUnavailable       (the database went away: send the same request again)

Domain code raises these; the gRPC edge (`wallets.grpc_errors`) turns `status` into a status code
and `reason` into a google.rpc.ErrorInfo. The marketplace and agents packages subclass them.
"""

from __future__ import annotations


class AgentmarketError(Exception):
    """Base error: `status` names the gRPC status code, `reason` is a stable UPPER_SNAKE tag,
    `message` is one line for a person; `trace_id` names the trace of the call that failed
    (set by the SDK when the error came back from a server; '' when there was none)."""

    status = "UNKNOWN"
    reason = "AGENTMARKET_ERROR"
    domain = "agentmarket.dev"  # the ErrorInfo domain (A2A's own errors: a2a-protocol.org)
    trace_id = ""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    @property
    def metadata(self) -> dict[str, str]:
        """Machine-readable details sent in the ErrorInfo (e.g. the approval to decide)."""
        return {}


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


class HoldExceeded(FailedPrecondition):
    """A capture of more than the hold still holds: well formed, refused by the hold's state."""

    reason = "HOLD_EXCEEDED"


class HoldLocked(FailedPrecondition):
    """A capture without the preimage, or a void, of a hash-locked hold (`wallets.conditional`)."""

    reason = "HOLD_LOCKED"


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


class Unavailable(AgentmarketError):
    """Nothing changed and the same request may succeed later (an outage, contention)."""

    status = "UNAVAILABLE"
    reason = "UNAVAILABLE"


class Contended(Unavailable):
    """Concurrent duplicates of one idempotency key kept colliding; retry the same request."""

    reason = "IDEMPOTENCY_KEY_CONTENDED"


class DatabaseUnavailable(Unavailable):
    """The database went away mid-request (a dropped connection, a commit whose answer never
    came): what the request did is unknown, never half-done; send the same request again, with
    the same idempotency key, to learn its outcome."""

    reason = "DATABASE_UNAVAILABLE"


# ---- programmable wallets and FX ---------------------------------------------------------------


class PolicyDenied(PermissionDenied):
    """A spend the wallet's policy forbids (a cap, an allow or a deny list)."""

    reason = "POLICY_DENIED"


class ApprovalRequired(FailedPrecondition):
    """A spend above the approval threshold: a pending approval now waits for a person.

    Not recorded as the idempotency key's outcome: the same request, retried with the same key
    once the approval is granted, goes through. `approval_id` names the approval (empty when the
    error is rebuilt from elsewhere)."""

    reason = "APPROVAL_REQUIRED"

    def __init__(self, message: str, *, reason: str | None = None, approval_id: str = "") -> None:
        super().__init__(message, reason=reason)
        self.approval_id = approval_id

    @property
    def metadata(self) -> dict[str, str]:
        return {"approval_id": self.approval_id} if self.approval_id else {}


class TooManyApprovals(ResourceExhausted):
    """A spender already has as many approvals pending on the wallet as it may: a person
    decides those first. Not recorded as the key's outcome (the same request goes on once
    some are decided or expire)."""

    reason = "TOO_MANY_APPROVALS"


class ApprovalDenied(PermissionDenied):
    reason = "APPROVAL_DENIED"


class ApprovalExpired(FailedPrecondition):
    reason = "APPROVAL_EXPIRED"


class WalletFrozen(FailedPrecondition):
    """Debits of a frozen wallet are refused until an operator unfreezes it (not recorded as
    the key's outcome either: the same request may be retried after the unfreeze)."""

    reason = "WALLET_FROZEN"


class MandateDenied(PermissionDenied):
    """A spend outside the mandate it claims (reason MANDATE_DENIED, MANDATE_REVOKED or
    MANDATE_EXPIRED)."""

    reason = "MANDATE_DENIED"


class InvalidSignature(PermissionDenied):
    """A signature that does not verify against the key it must come from."""

    reason = "BAD_SIGNATURE"


class QuoteExpired(FailedPrecondition):
    reason = "QUOTE_EXPIRED"


class Forbidden(PermissionDenied):
    """The authenticated caller may not do this: `rule` names the rule it broke (see
    `wallets.access` and `marketplace.access`). Refused before anything is read for writing."""

    reason = "FORBIDDEN"

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"rule {rule}: {message}")
        self.rule = rule

    @property
    def metadata(self) -> dict[str, str]:
        return {"rule": self.rule}
