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

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext

from wallets.errors import InvalidAmount, UnknownCurrency

# What a person writes for an amount: ASCII digits, a point, more digits (" 1", "1e3", "1_000"
# or "١٢" is not one; a minus sign is, so that a negative amount is refused as negative).
_PLAIN_DECIMAL = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)")
MAX_AMOUNT_ATOMIC = 2**62  # far below int64 overflow even after summing many legs
INT64_MAX = 2**63 - 1  # the BIGINT columns' limit: running totals stop there
MAX_INTEGER_DIGITS = 19  # 10**19 is past MAX_AMOUNT_ATOMIC in any currency
MAX_DIGITS = 64  # significant digits of a decimal amount we read


def _shown(amount: object) -> str:
    """An amount as a person typed it, cut short (it goes into a one-line message)."""
    text = repr(amount) if isinstance(amount, str) else str(amount)
    return text if len(text) <= 40 else text[:37] + "..."


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
        """Exact conversion from a decimal amount ('0.01') to atomic units. Refuses, with
        InvalidAmount naming the value: what is not a plain decimal ("abc", "1,00", floats,
        which are not exact), NaN and infinities, negatives, amounts finer than one atomic unit
        and amounts past the ledger's limit."""
        if isinstance(amount, bool) or not isinstance(amount, str | int | Decimal):
            hint = " (floats are not exact)" if isinstance(amount, float) else ""
            raise InvalidAmount(f"an amount of {self.code} is a decimal string, int or Decimal, "
                                f"not {type(amount).__name__} {_shown(amount)}{hint}")
        if isinstance(amount, str) and not _PLAIN_DECIMAL.fullmatch(amount):
            raise InvalidAmount(f"{_shown(amount)} is not a plain decimal amount of {self.code} "
                                "(write it like 1.25: ASCII digits only, no spaces, exponent, "
                                "separator or sign)")
        try:
            value = Decimal(amount)
        except (InvalidOperation, ValueError):
            raise InvalidAmount(f"{_shown(amount)} is not a decimal amount of {self.code} "
                                "(write it like 1.25)") from None
        if not value.is_finite():
            raise InvalidAmount(f"{_shown(amount)} is not a finite amount of {self.code}")
        if value < 0:
            raise InvalidAmount(f"{_shown(amount)} {self.code} is negative")
        if value and (value.adjusted() > MAX_INTEGER_DIGITS
                      or len(value.as_tuple().digits) > MAX_DIGITS):
            raise InvalidAmount(f"{_shown(amount)} {self.code} is past the largest amount "
                                f"({self.format(MAX_AMOUNT_ATOMIC)})")
        with localcontext() as exact:
            exact.prec = 2 * MAX_DIGITS  # no rounding: every digit above fits
            scaled = value.scaleb(self.scale)
        if scaled != scaled.to_integral_value():
            raise InvalidAmount(f"{_shown(amount)} {self.code} is finer than 1e-{self.scale}")
        if scaled > MAX_AMOUNT_ATOMIC:
            raise InvalidAmount(f"{_shown(amount)} {self.code} is past the largest amount "
                                f"({self.format(MAX_AMOUNT_ATOMIC)})")
        return int(scaled)

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


def format_amount(amount_atomic: int, code: str) -> str:
    """An amount as people read it in a message: in its currency (exact), or in atomic units
    where the code names no currency here."""
    found = CURRENCIES.get(code)
    return found.format(amount_atomic) if found else f"{amount_atomic} atomic units"


def currency(code: str) -> Currency:
    """Look a currency up by code (case-insensitive; 'e-CNY' is ECNY)."""
    key = code.strip().upper() if isinstance(code, str) else None
    found = CURRENCIES.get(_ALIASES.get(key, key)) if key else None
    if found is None:
        known = ", ".join(sorted(CURRENCIES))
        raise UnknownCurrency(f"unknown currency {_shown(code)}; known: {known}")
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
