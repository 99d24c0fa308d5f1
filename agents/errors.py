"""Every error the agent SDK raises: one tree, the project's own classes only.

    AgentmarketError                 .status .reason .message .trace_id (base; never raised)
    ├── InvalidArgument              INVALID_ARGUMENT     the input is wrong; nothing changed
    │   ├── InvalidAmount            INVALID_AMOUNT       "abc", "1,00", "NaN", "1e400", finer
    │   │                                                 than the currency's atomic unit
    │   ├── UnknownCurrency          UNKNOWN_CURRENCY
    │   └── SchemaViolation          SCHEMA_VIOLATION     input or output not as its schema
    ├── NotFound                     NOT_FOUND            no such wallet, agreement, listing
    ├── FailedPrecondition           FAILED_PRECONDITION  valid, but the state forbids it now
    │   ├── AgreementEnded           AGREEMENT_ENDED      the agreement is settled, refunded,
    │   │                                                 expired or disputed: no more calls
    │   ├── NegotiationFailed        NEGOTIATION_FAILED   no agreement within the limits
    │   ├── ApprovalRequired         APPROVAL_REQUIRED    the wallet wants a person's approval
    │   ├── InsufficientFunds        INSUFFICIENT_FUNDS
    │   ├── WalletFrozen             WALLET_FROZEN        an operator must unfreeze it first
    │   ├── IllegalTransition        ILLEGAL_TRANSITION   the agreement's state forbids it
    │   ├── OfferExpired             OFFER_EXPIRED        the accepted offer lapsed
    │   ├── DeadlinePassed           DEADLINE_PASSED      a negotiation or completion deadline
    │   └── ...                      (marketplace.errors, wallets.errors: more reasons)
    ├── IdempotencyConflict          ALREADY_EXISTS       a key reused for another request
    ├── PermissionDenied             PERMISSION_DENIED    the caller may not do this
    │   ├── Forbidden                FORBIDDEN            (ErrorInfo `rule` names the rule)
    │   ├── PolicyDenied             POLICY_DENIED        the wallet's policy forbids the spend
    │   ├── BadSignature             BAD_SIGNATURE        a signature does not verify
    │   └── InvalidVoucher           INVALID_VOUCHER      forged, replayed, another agreement's
    ├── Unauthenticated              UNAUTHENTICATED      the signature did not verify
    │   └── PaymentRequired          PAYMENT_REQUIRED     a paid method without a voucher
    ├── ResourceExhausted            RESOURCE_EXHAUSTED   a limit (rate, size, budget)
    │   └── BudgetExceeded           BUDGET_EXCEEDED      past what the agreement prepaid
    ├── Unavailable                  UNAVAILABLE          a party did not answer; retry later
    │   ├── SellerUnavailable        SELLER_UNAVAILABLE   no listed seller could be reached
    │   └── CallInProgress           CALL_IN_PROGRESS     a retried call id is still running
    ├── DeadlineExceeded             DEADLINE_EXCEEDED    no answer in time (it may have run)
    └── ServerError                  INTERNAL, UNKNOWN .. the other side failed; quote trace_id

Every public method of `BuyerAgent`, `AsyncBuyerAgent`, `SellerAgent` and `MarketplaceNode`
raises only these: a failed gRPC call comes back as the class its ErrorInfo reason names (or
its status code's class), with the server's one-line message and the trace id
(`agents._rpc.sdk_error`). Catch `AgentmarketError` for everything, a status class for a kind.
"""

from __future__ import annotations

from marketplace.errors import (
    AgentmarketError,
    BadSignature,
    BudgetExceeded,
    DeadlinePassed,
    FailedPrecondition,
    IllegalTransition,
    InvalidArgument,
    InvalidVoucher,
    NotFound,
    OfferExpired,
    PermissionDenied,
    ResourceExhausted,
    SchemaViolation,
    Unauthenticated,
)
from wallets.errors import (
    Forbidden,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    PolicyDenied,
    UnknownCurrency,
    WalletFrozen,
)


class PaymentRequired(Unauthenticated):
    """A paid method was called without a voucher."""

    reason = "PAYMENT_REQUIRED"


class NegotiationFailed(FailedPrecondition):
    reason = "NEGOTIATION_FAILED"


class AgreementEnded(FailedPrecondition):
    """The agreement is over (settled, refunded, expired, disputed): it takes no more calls;
    negotiate a new one. The message names the state."""

    reason = "AGREEMENT_ENDED"


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

    @property
    def metadata(self) -> dict[str, str]:
        return {"approval_id": self.approval_id} if self.approval_id else {}


class Unavailable(AgentmarketError):
    """A party (the marketplace, a seller, a journal) did not answer; nothing is known to have
    changed, and the same request may be retried."""

    status = "UNAVAILABLE"
    reason = "UNAVAILABLE"


class SellerUnavailable(Unavailable):
    """No seller listed for the skill could be reached (each one tried is named)."""

    reason = "SELLER_UNAVAILABLE"


class CallInProgress(Unavailable):
    """A retry arrived while the first attempt of the same call id is still running."""

    reason = "CALL_IN_PROGRESS"


class DeadlineExceeded(AgentmarketError):
    """No answer within the call's deadline; the request may still have been carried out (a
    paid call retried with the same call id is answered once and charged once)."""

    status = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXCEEDED"


class ServerError(AgentmarketError):
    """The other side failed in a way that is not the caller's doing (INTERNAL, UNKNOWN,
    UNIMPLEMENTED, DATA_LOSS ...); its message carries a request id, `trace_id` the trace."""

    status = "INTERNAL"
    reason = "INTERNAL"


__all__ = [
    "AgentmarketError",
    "AgreementEnded",
    "ApprovalRequired",
    "BadSignature",
    "BudgetExceeded",
    "CallInProgress",
    "DeadlineExceeded",
    "DeadlinePassed",
    "FailedPrecondition",
    "Forbidden",
    "IdempotencyConflict",
    "IllegalTransition",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidArgument",
    "InvalidVoucher",
    "NegotiationFailed",
    "NotFound",
    "OfferExpired",
    "PaymentRequired",
    "PermissionDenied",
    "PolicyDenied",
    "ResourceExhausted",
    "SchemaViolation",
    "SellerUnavailable",
    "ServerError",
    "Unauthenticated",
    "Unavailable",
    "UnknownCurrency",
    "WalletFrozen",
]
