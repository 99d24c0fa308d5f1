"""Price models: per call, per 1k input + output tokens, per named unit, with volume tiers.

The most a receipt may charge is a pure function of the agreed terms and the metered usage it
reports (`charge_atomic`), so the marketplace checks every receipt at redeem:

    PRICE_UNIT_CALL       unit_price_atomic per call
    PRICE_UNIT_UNIT       unit_price_atomic * units                (e.g. per GPU-second)
    PRICE_UNIT_1K_TOKENS  ceil((input_tokens * unit_price_atomic
                                + output_tokens * output_unit_price_atomic) / 1000)

The token charge is the one rounding of a call's price in the whole market (the agent SDK meters
with this function): *up*, once per call, so the seller is never paid less than the agreed price
for the usage, and at most one atomic unit more (1e-9 of a currency unit). A receipt may charge
less (a per-call cap, a discount), never more. Token terms without an output price cannot be bounded
by usage; their receipts are bounded by the buyer's voucher only.

Volume tiers are list prices: a buyer expecting `quantity` units is quoted the tier that
quantity reaches (all units at that tier's price). Negotiation then settles one unit price in the
terms; tiers do not change what a receipt charges.
"""

from __future__ import annotations

import re

from marketplace.errors import InvalidArgument
from marketplace.v1 import agreement_pb2, registry_pb2
from wallets.currencies import MAX_AMOUNT_ATOMIC, currency

MAX_TIERS = 8
MAX_PRICES = 8
_UNIT_NAME = re.compile(r"^[a-z0-9_]{1,32}\Z")
CALL = registry_pb2.PRICE_UNIT_CALL
TOKENS = registry_pb2.PRICE_UNIT_1K_TOKENS
UNIT = registry_pb2.PRICE_UNIT_UNIT


def _positive(amount: int, what: str) -> None:
    if not 0 < amount <= MAX_AMOUNT_ATOMIC:
        raise InvalidArgument(f"{what} must be 1..{MAX_AMOUNT_ATOMIC} atomic units")


def check_price(price: registry_pb2.Price, where: str) -> None:
    """Validate one list price in place (the currency code is normalised)."""
    price.currency = currency(price.currency).code
    if price.unit not in (CALL, TOKENS, UNIT):
        raise InvalidArgument(f"{where}: price unit is required")
    _positive(price.amount_atomic, f"{where}: amount_atomic")
    if price.unit == TOKENS:
        _positive(price.output_amount_atomic, f"{where}: output_amount_atomic")
        if ranking_price_atomic(price) > MAX_AMOUNT_ATOMIC:  # discovery ranks on the sum
            raise InvalidArgument(f"{where}: amount_atomic + output_amount_atomic must be at "
                                  f"most {MAX_AMOUNT_ATOMIC} atomic units")
    elif price.output_amount_atomic:
        raise InvalidArgument(f"{where}: output_amount_atomic is only for token prices")
    if price.unit == UNIT and not _UNIT_NAME.match(price.unit_name):
        raise InvalidArgument(f"{where}: a per-unit price needs a unit_name of [a-z0-9_]{{1,32}}")
    if price.unit != UNIT and price.unit_name:
        raise InvalidArgument(f"{where}: unit_name is only for per-unit prices")
    if len(price.tiers) > MAX_TIERS:
        raise InvalidArgument(f"{where}: at most {MAX_TIERS} tiers")
    last, dearest = 1, (price.amount_atomic, price.output_amount_atomic)
    for tier in price.tiers:
        if tier.min_quantity <= last:
            raise InvalidArgument(f"{where}: tier quantities must start above 1 and increase")
        last = tier.min_quantity
        _positive(tier.amount_atomic, f"{where}: tier amount_atomic")
        if price.unit == TOKENS:
            _positive(tier.output_amount_atomic, f"{where}: tier output_amount_atomic")
        elif tier.output_amount_atomic:
            raise InvalidArgument(f"{where}: tier output_amount_atomic is only for tokens")
        # a tier is a volume discount: never dearer than the price before it, or the list
        # price discovery ranks and filters on would hide what larger orders are quoted
        if tier.amount_atomic > dearest[0] or tier.output_amount_atomic > dearest[1]:
            raise InvalidArgument(f"{where}: a tier's prices are at most the prices below it "
                                  "(volume discounts)")
        dearest = (tier.amount_atomic, tier.output_amount_atomic)


def quote(price: registry_pb2.Price, quantity: int = 1) -> tuple[int, int]:
    """(unit price, output unit price) the list quotes for `quantity` units (volume tiers)."""
    amount, output = price.amount_atomic, price.output_amount_atomic
    for tier in price.tiers:
        if quantity >= tier.min_quantity:
            amount, output = tier.amount_atomic, tier.output_amount_atomic
    return amount, output


def ranking_price_atomic(price: registry_pb2.Price) -> int:
    """The one number discovery filters and ranks on: the price of one unit at list (for
    tokens, 1k input plus 1k output)."""
    return price.amount_atomic + (price.output_amount_atomic if price.unit == TOKENS else 0)


def charge_atomic(terms: agreement_pb2.Terms, *, units: int = 0, input_tokens: int = 0,
                  output_tokens: int = 0) -> int:
    """What one call with this metered usage costs under the terms (module docstring)."""
    if terms.unit == UNIT:
        return terms.unit_price_atomic * units
    if terms.unit == TOKENS:
        total = (input_tokens * terms.unit_price_atomic
                 + output_tokens * terms.output_unit_price_atomic)
        return -(-total // 1000)
    return terms.unit_price_atomic


def receipt_ceiling_atomic(terms: agreement_pb2.Terms,
                           receipt: agreement_pb2.Receipt) -> int | None:
    """The most a receipt may charge: the price of the usage it reports; None when the terms
    cannot price it (token terms without an output price, and output tokens)."""
    if terms.unit == TOKENS and receipt.output_tokens and not terms.output_unit_price_atomic:
        return None
    return charge_atomic(terms, units=receipt.units, input_tokens=receipt.input_tokens,
                         output_tokens=receipt.output_tokens)


def price_in(skill: registry_pb2.Skill, currency_code: str) -> registry_pb2.Price | None:
    """The skill's list price in a currency, or None when it does not accept that currency."""
    return next((p for p in skill.prices if p.currency == currency_code), None)
