"""Plain value objects the ledger returns: immutable, JSON-friendly, no database or gRPC."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MAX_LEGS = 64  # legs of one posting: transfers linked together, or a capture's splits


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: str
    owner: str
    currency: str
    kind: str
    posted_credits_atomic: int
    posted_debits_atomic: int
    pending_debits_atomic: int
    pending_credits_atomic: int
    credit_limit_atomic: int

    @property
    def posted_atomic(self) -> int:
        return self.posted_credits_atomic - self.posted_debits_atomic

    @property
    def available_atomic(self) -> int:
        """What may still be spent or held: posted credits - posted debits - pending debits."""
        return self.posted_atomic - self.pending_debits_atomic


@dataclass(frozen=True, slots=True)
class Leg:
    """One account's change in a posting: posted (credit +, debit -) and pending debit/credit."""

    account_id: str
    currency: str
    posted_atomic: int = 0
    pending_debit_atomic: int = 0
    pending_credit_atomic: int = 0


@dataclass(frozen=True, slots=True)
class Posting:
    sequence: int
    idempotency_key: str
    kind: str
    legs: tuple[Leg, ...]
    created_at_ms: int
    hold_id: str = ""
    memo: str = ""
    trace_id: str = ""
    span_id: str = ""
    hash: str = ""

    def to_json(self) -> dict[str, Any]:
        # written out rather than dataclasses.asdict: this runs once per posting on the hot path
        return {
            "sequence": self.sequence, "idempotency_key": self.idempotency_key,
            "kind": self.kind, "created_at_ms": self.created_at_ms, "hold_id": self.hold_id,
            "memo": self.memo, "trace_id": self.trace_id, "span_id": self.span_id,
            "hash": self.hash,
            "legs": [{"account_id": leg.account_id, "currency": leg.currency,
                      "posted_atomic": leg.posted_atomic,
                      "pending_debit_atomic": leg.pending_debit_atomic,
                      "pending_credit_atomic": leg.pending_credit_atomic} for leg in self.legs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Posting:
        return cls(**{**data, "legs": tuple(Leg(**leg) for leg in data["legs"])})


@dataclass(frozen=True, slots=True)
class Hold:
    hold_id: str
    debit_account_id: str
    credit_account_id: str
    currency: str
    amount_atomic: int
    captured_atomic: int
    voided_atomic: int
    status: str  # open | captured | voided | expired
    expires_at_ms: int

    @property
    def open_atomic(self) -> int:
        """Still held: neither captured nor released."""
        return self.amount_atomic - self.captured_atomic - self.voided_atomic

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Hold:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Transfer:
    """A request to move `amount_atomic` from `debit_account_id` to `credit_account_id`."""

    debit_account_id: str
    credit_account_id: str
    amount_atomic: int


@dataclass(slots=True)
class CheckReport:
    """The outcome of `Ledger.check()`: empty `problems` means the books are sound."""

    accounts: int = 0
    postings: int = 0
    problems: list[str] = field(default_factory=list)
    unsealed: int = 0  # committed postings the sealer has not linked into the chain yet

    @property
    def ok(self) -> bool:
        return not self.problems
