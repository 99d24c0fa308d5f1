"""Negotiation strategies and the limits no strategy can break.

A strategy only *proposes* prices. Whether a price may be agreed is decided by `Limits`, in code
outside the strategy: a buyer never signs above its reservation price or budget, a seller never
below its reservation price, whatever the strategy (or an LLM behind one) says.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Protocol

from marketplace.errors import FailedPrecondition


class Strategy(Protocol):
    """How prices move. Optional hooks: `hear(note)` receives the other side's free-text note
    (untrusted), `say() -> str` gives a note to send with the next offer (`LLMStrategy` uses
    both). A seller may take a factory `(skill, currency) -> Strategy` for per-negotiation
    state."""

    def propose(self, round_index: int, max_rounds: int, opponent_price_atomic: int | None) -> int:
        """The unit price to offer in this round."""

    def accepts(self, round_index: int, max_rounds: int, opponent_price_atomic: int) -> bool:
        """Whether the opponent's price is good enough to accept now."""


@dataclass(frozen=True)
class Limits:
    """Hard bounds checked before anything is signed."""

    reservation_price_atomic: int
    is_buyer: bool
    budget_atomic: int | None = None

    def check(self, unit_price_atomic: int, max_total_atomic: int) -> None:
        if self.is_buyer and unit_price_atomic > self.reservation_price_atomic:
            raise FailedPrecondition(
                f"unit price {unit_price_atomic} is above the buyer's reservation price "
                f"{self.reservation_price_atomic}")
        if not self.is_buyer and unit_price_atomic < self.reservation_price_atomic:
            raise FailedPrecondition(
                f"unit price {unit_price_atomic} is below the seller's reservation price "
                f"{self.reservation_price_atomic}")
        if self.budget_atomic is not None and max_total_atomic > self.budget_atomic:
            raise FailedPrecondition(
                f"total {max_total_atomic} is above the budget {self.budget_atomic}")

    def clamp(self, unit_price_atomic: int) -> int:
        """The nearest price the limits allow."""
        if self.is_buyer:
            return min(unit_price_atomic, self.reservation_price_atomic)
        return max(unit_price_atomic, self.reservation_price_atomic)


@dataclass(frozen=True)
class ConcessionStrategy:
    """Time-dependent concession (Faratin et al. 1998): the target moves from `initial` to
    `reservation` as rounds pass, following (t/T)^(1/beta). beta < 1 concedes late
    (Boulware), beta > 1 concedes early (conceder), beta = 1 is linear."""

    initial_price_atomic: int
    reservation_price_atomic: int
    beta: Fraction = Fraction(1)

    def target(self, round_index: int, max_rounds: int) -> int:
        progress = Fraction(min(round_index, max_rounds), max(max_rounds, 1))
        power = Decimal(progress.numerator) / Decimal(progress.denominator)
        exponent = Decimal(self.beta.denominator) / Decimal(self.beta.numerator)
        weight = Fraction(power**exponent if power else Decimal(0))
        gap = self.reservation_price_atomic - self.initial_price_atomic
        return self.initial_price_atomic + int(gap * weight)  # int() truncates toward zero

    def propose(self, round_index: int, max_rounds: int, opponent_price_atomic: int | None) -> int:
        return self.target(round_index, max_rounds)

    def accepts(self, round_index: int, max_rounds: int, opponent_price_atomic: int) -> bool:
        mine = self.target(round_index, max_rounds)
        buyer = self.reservation_price_atomic > self.initial_price_atomic
        return opponent_price_atomic <= mine if buyer else opponent_price_atomic >= mine
