"""Currencies and exact money arithmetic.

Amounts are `int` atomic units of a currency's internal scale. Every built-in currency keeps 9
decimals internally, so a price of a thousandth of a fen per token (1e-5 CNY = 10_000 atomic) is
exact, while the settlement rail carries fewer (e-CNY and USD: 2, USDC: 6).

Rounding happens in exactly three places, two here:
- `to_rail`: an amount leaving through a rail is rounded *down* to the rail's precision; the
  remainder stays in the wallet (never lost, never created).
- `split`: a fee in basis points is rounded *down* (in the seller's favour); the seller gets
  `total - fee`, so the parts always sum to the total.
- FX (`wallets.fx.convert_amount`): the amount bought is rounded *down* to an atomic unit of the
  target currency; the amount sold moves exactly, and each currency's posting sums to zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from wallets.errors import InvalidAmount, UnknownCurrency

MAX_AMOUNT_ATOMIC = 2**62  # far below int64 overflow even after summing many legs


@dataclass(frozen=True, slots=True)
class Currency:
    code: str
    scale: int
    rail_scale: int

    @property
    def rail_step_atomic(self) -> int:
        """Atomic units in the smallest amount the rail can move (1 fen = 10_000_000 atomic)."""
        return 10 ** (self.scale - self.rail_scale)

    def atomic(self, amount: str | int | Decimal) -> int:
        """Exact conversion from a decimal amount ('0.01') to atomic units; refuses sub-atomic."""
        value = Decimal(amount) * (10**self.scale)
        if value != value.to_integral_value():
            raise InvalidAmount(f"{amount} {self.code} is finer than 1e-{self.scale}")
        return int(value)

    def format(self, amount_atomic: int) -> str:
        """Human text, exact: at least the rail's decimals, more where the amount has them
        (1_230_000_000 -> '1.23 USD', 1_000_000 -> '0.001 USD')."""
        value = Decimal(amount_atomic).scaleb(-self.scale)
        places = max(self.rail_scale, -value.normalize().as_tuple().exponent)
        return f"{value:.{places}f} {self.code}"

    def to_rail(self, amount_atomic: int) -> tuple[int, int]:
        """Split an amount into (what the rail can carry, remainder that stays), rounding down."""
        step = self.rail_step_atomic
        return amount_atomic - amount_atomic % step, amount_atomic % step


CURRENCIES: dict[str, Currency] = {
    c.code: c
    for c in (
        Currency("USD", scale=9, rail_scale=2),
        Currency("USDC", scale=9, rail_scale=6),
        Currency("ECNY", scale=9, rail_scale=2),
    )
}
_ALIASES = {"E-CNY": "ECNY", "CNY": "ECNY"}


def currency(code: str) -> Currency:
    """Look a currency up by code (case-insensitive; 'e-CNY' is ECNY)."""
    key = code.strip().upper()
    found = CURRENCIES.get(_ALIASES.get(key, key))
    if found is None:
        known = ", ".join(sorted(CURRENCIES))
        raise UnknownCurrency(f"unknown currency {code!r}; known: {known}")
    return found


def check_amount(amount_atomic: int, *, allow_zero: bool = False) -> int:
    """Refuse non-integers, negatives, zero (unless allowed) and amounts past the ledger's limit."""
    if isinstance(amount_atomic, bool) or not isinstance(amount_atomic, int):
        raise InvalidAmount(f"amount must be an integer of atomic units, got {amount_atomic!r}")
    if amount_atomic < 0 or (amount_atomic == 0 and not allow_zero):
        raise InvalidAmount(f"amount must be positive, got {amount_atomic}")
    if amount_atomic > MAX_AMOUNT_ATOMIC:
        raise InvalidAmount(f"amount {amount_atomic} exceeds the limit of {MAX_AMOUNT_ATOMIC}")
    return amount_atomic


def split(total_atomic: int, fee_bps: int) -> tuple[int, int]:
    """(seller, fee) with fee = floor(total * bps / 10_000); the two always sum to total."""
    if not 0 <= fee_bps <= 10_000:
        raise InvalidAmount(f"fee must be 0..10000 basis points, got {fee_bps}")
    fee = total_atomic * fee_bps // 10_000
    return total_atomic - fee, fee
