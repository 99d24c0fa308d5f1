"""What the SDK's methods return: plain, typed, exact values instead of protobuf messages.

    buyer.balance("USD")           Money: 0.99 USD (an int of atomic units and its currency)
    buyer.wallet("USD")            Wallet: account id, posted, held, available
    buyer.hire(deal)               Escrow: the agreement's hold and what became of it
    buyer.finish(deal)             Escrow: captured (and fee), refunded, state
    buyer.invoke(deal, args)       CallResult: output, Usage (tokens, charge), the signed receipt

Field names are the wire contract's (`captured_atomic`, `fee_atomic`, `available_atomic` ...),
so code written against the protobuf messages keeps working; each amount also has a `Money`
view (`escrow.captured`, `wallet.available`) that prints exactly, with its currency.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from agents._inputs import shown
from marketplace.v1 import agreement_pb2, settlement_pb2
from wallets.currencies import CURRENCIES
from wallets.currencies import currency as _currency
from wallets.errors import InvalidAmount, InvalidArgument, UnknownCurrency
from wallets.models import Leg, Posting
from wallets.v1 import wallet_pb2


@functools.total_ordering
@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: `amount_atomic` units of `currency`'s atomic scale (USD: 1e-9).

    `str(money)` is exact ("0.00853125 USD"); `money.amount` is the Decimal; sums and
    comparisons work within one currency and refuse to mix two. The code is kept as the
    currency's own ("usd" is USD), so equal amounts compare equal however they were named."""

    amount_atomic: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.amount_atomic, bool) or not isinstance(self.amount_atomic, int):
            raise InvalidAmount(f"Money takes an int of atomic units, got "
                                f"{shown(self.amount_atomic)} (Money.of reads a decimal)")
        if not isinstance(self.currency, str):
            raise InvalidArgument(f"a currency is a code such as 'USD', got "
                                  f"{shown(self.currency)}")
        object.__setattr__(self, "currency", _code(self.currency))

    @classmethod
    def of(cls, amount: str | int | Decimal, currency_code: str) -> Money:
        """From a decimal amount: Money.of("0.25", "USD") (refuses what is not exact)."""
        cur = _currency(currency_code)
        return cls(cur.atomic(amount), cur.code)

    @property
    def amount(self) -> Decimal:
        return Decimal(self.amount_atomic).scaleb(-_currency(self.currency).scale)

    def __str__(self) -> str:
        """Exact in its currency; in atomic units where the code names no currency here (an
        escrow that never said its currency), so printing a result never fails."""
        if self.currency in CURRENCIES:
            return CURRENCIES[self.currency].format(self.amount_atomic)
        return f"{self.amount_atomic} atomic units" + (f" of {self.currency}"
                                                       if self.currency else "")

    def _same(self, other: object) -> Money:
        if not isinstance(other, Money):
            raise InvalidArgument(f"Money combines only with Money, not "
                                  f"{type(other).__name__} {shown(other)}")
        if other.currency != self.currency:
            raise InvalidArgument(f"cannot combine {self.currency} with {other.currency}")
        return other

    def __add__(self, other: Money) -> Money:
        return Money(self.amount_atomic + self._same(other).amount_atomic, self.currency)

    def __radd__(self, other: object) -> Money:
        """0 + money is money, so `sum(amounts)` works; any other left operand is refused."""
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self
        return self + self._same(other)

    def __sub__(self, other: Money) -> Money:
        return Money(self.amount_atomic - self._same(other).amount_atomic, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_atomic, self.currency)

    def __lt__(self, other: Money) -> bool:
        return self.amount_atomic < self._same(other).amount_atomic

    def __bool__(self) -> bool:
        return self.amount_atomic != 0


def _code(code: str) -> str:
    """A known currency's own code (case and aliases as `wallets.currencies.currency` reads
    them); any other code upper-cased, kept for printing."""
    try:
        return _currency(code).code
    except UnknownCurrency:
        return code.strip().upper()


class AgreementState(enum.IntEnum):
    """Where an agreement is in its life (equal to the wire enum's numbers)."""

    UNSPECIFIED = settlement_pb2.AGREEMENT_STATE_UNSPECIFIED
    ACTIVE = settlement_pb2.AGREEMENT_STATE_ACTIVE
    DELIVERED = settlement_pb2.AGREEMENT_STATE_DELIVERED
    SETTLED = settlement_pb2.AGREEMENT_STATE_SETTLED
    REFUNDED = settlement_pb2.AGREEMENT_STATE_REFUNDED
    DISPUTED = settlement_pb2.AGREEMENT_STATE_DISPUTED
    EXPIRED = settlement_pb2.AGREEMENT_STATE_EXPIRED
    VERIFIED = settlement_pb2.AGREEMENT_STATE_VERIFIED

    def __str__(self) -> str:
        return self.name.lower()

    @property
    def ended(self) -> bool:
        """No more calls: the seller redeemed or the agreement closed."""
        return self not in (AgreementState.UNSPECIFIED, AgreementState.ACTIVE)


@dataclass(frozen=True, slots=True)
class Wallet:
    """A wallet account and its balances (atomic units of `currency`)."""

    account_id: str
    owner: str
    currency: str
    posted_credits_atomic: int = 0
    posted_debits_atomic: int = 0
    pending_debits_atomic: int = 0
    pending_credits_atomic: int = 0
    available_atomic: int = 0
    credit_limit_atomic: int = 0

    @classmethod
    def from_message(cls, m: wallet_pb2.Account) -> Wallet:
        return cls(m.account_id, m.owner, m.currency, m.posted_credits_atomic,
                   m.posted_debits_atomic, m.pending_debits_atomic, m.pending_credits_atomic,
                   m.available_atomic, m.credit_limit_atomic)

    @property
    def posted_atomic(self) -> int:
        return self.posted_credits_atomic - self.posted_debits_atomic

    @property
    def posted(self) -> Money:
        """Everything booked to the wallet, held money included."""
        return Money(self.posted_atomic, self.currency)

    @property
    def held(self) -> Money:
        """Held in escrow and other open holds: booked, not spendable."""
        return Money(self.pending_debits_atomic, self.currency)

    @property
    def available(self) -> Money:
        """What can be spent now: posted minus held."""
        return Money(self.available_atomic, self.currency)

    def __str__(self) -> str:
        return f"{self.available} available ({self.held} held)"


@dataclass(frozen=True, slots=True)
class Escrow:
    """An agreement's escrow: what the hold reserved and what became of it (atomic units of
    `currency`). `captured_atomic` went to the seller before the marketplace's `fee_atomic`;
    the seller's net is `seller_net`."""

    agreement_id: str
    state: AgreementState
    hold_id: str = ""
    currency: str = ""
    held_atomic: int = 0
    captured_atomic: int = 0
    fee_atomic: int = 0
    refunded_atomic: int = 0
    verified_outputs: int = 0
    failed_outputs: int = 0
    earned_atomic: int = 0
    verifier_fee_atomic: int = 0
    release_at_ms: int = 0

    @classmethod
    def from_message(cls, m: settlement_pb2.Escrow) -> Escrow:
        return cls(m.agreement_id, AgreementState(m.state), m.hold_id, m.currency,
                   m.held_atomic, m.captured_atomic, m.fee_atomic, m.refunded_atomic,
                   m.verified_outputs, m.failed_outputs, m.earned_atomic,
                   m.verifier_fee_atomic, m.release_at_ms)

    def _money(self, amount_atomic: int) -> Money:
        return Money(amount_atomic, self.currency)

    @property
    def held(self) -> Money:
        return self._money(self.held_atomic)

    @property
    def captured(self) -> Money:
        return self._money(self.captured_atomic)

    @property
    def fee(self) -> Money:
        return self._money(self.fee_atomic)

    @property
    def refunded(self) -> Money:
        return self._money(self.refunded_atomic)

    @property
    def seller_net(self) -> Money:
        """What the seller received: captured minus the marketplace's fee."""
        return self._money(self.captured_atomic - self.fee_atomic)

    def __str__(self) -> str:
        if not self.currency:
            return f"{self.state}"
        return (f"{self.state}: seller paid {self.seller_net} (fee {self.fee}), "
                f"refunded {self.refunded} of {self.held} held")


@dataclass(frozen=True, slots=True)
class Usage:
    """What one paid call used and cost (the receipt's figures)."""

    currency: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    units: int = 0
    charged_atomic: int = 0
    reserved_atomic: int = 0
    unspent_atomic: int = 0

    @classmethod
    def from_message(cls, m: Any, currency_code: str) -> Usage:
        return cls(currency_code, m.calls, m.input_tokens, m.output_tokens, m.units,
                   m.charged_atomic, m.reserved_atomic, m.unspent_atomic)

    @property
    def charged(self) -> Money:
        return Money(self.charged_atomic, self.currency)


@dataclass(frozen=True, slots=True)
class CallResult:
    """One paid call: the output (checked against the skill's output schema), its usage and
    the seller's receipt (the signed wire message: evidence for a dispute); `trace_id` the
    call's trace (empty unless tracing is set up)."""

    output: Any
    usage: Usage
    receipt: agreement_pb2.Receipt
    verified: bool
    problem: str = ""
    trace_id: str = ""


def posting_from_message(m: wallet_pb2.Posting) -> Posting:
    """A ledger posting as `wallets.models.Posting` (the one type for postings everywhere)."""
    return Posting(sequence=m.sequence, idempotency_key=m.idempotency_key, kind=m.kind,
                   legs=tuple(Leg(e.account_id, e.currency, e.amount_atomic)
                              for e in m.entries),
                   created_at_ms=m.created_at_ms, hold_id=m.hold_id, memo=m.memo,
                   trace_id=m.trace_id, span_id=m.span_id, hash=m.hash)


__all__ = ["AgreementState", "CallResult", "Escrow", "Money", "Posting", "Usage", "Wallet",
           "posting_from_message"]
