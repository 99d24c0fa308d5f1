"""FX: quotes from a provider, and conversions that execute atomically against them.

A quote says: 1 unit of `from_currency` = `rate_numerator / rate_denominator` units of
`to_currency`, until `expires_at_ms`. The rate is an exact rational of integers, never a float.
Providers implement `FxProvider`; the default, `FixedRateProvider`, prices from a configurable
table (a sandbox table, not market rates). Quotes are stored, so a conversion names one by id.

A conversion (`FxDesk.convert`) runs in one ledger transaction, as one posting per currency
through FX liquidity accounts (kind "fx", owner "fx", one per currency, with a credit line so
they can pay out before they have received):

    posting 1 (from currency):  from wallet  -amount      fx:FROM  +amount
    posting 2 (to currency):    fx:TO        -bought      to wallet +bought

Each posting sums to zero in its currency, so every currency still sums to zero; both commit or
neither does. The from wallet's debit goes through its policy and mandates like any spend (the
counterparty is the to wallet's owner; converting into one's own wallet is not restricted by
the counterparty lists, but counts toward the caps). An unknown quote is NOT_FOUND; an expired
one FAILED_PRECONDITION / QUOTE_EXPIRED; wallets whose currencies are not the quote's pair,
INVALID_ARGUMENT; a provider's malformed quote UNAVAILABLE / BAD_FX_QUOTE. A quote may be used
for several conversions until it expires.

Rounding (one of the documented places money is rounded; see `wallets.currencies`): the target
amount is rounded DOWN to an atomic unit of the target currency,

    bought = floor(amount x numerator x 10^to.scale / (denominator x 10^from.scale))

The seller's `amount` moves exactly; the sub-atomic rest of its value stays with the FX desk as
part of its spread. Nothing is created: no conversion can give more than the rate allows. An
amount whose conversion rounds to 0 is refused (INVALID_AMOUNT).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol

from sqlalchemy import Connection, insert, select

from wallets._idempotency import check_key
from wallets.currencies import MAX_AMOUNT_ATOMIC, check_amount, currency
from wallets.errors import (
    InvalidAmount,
    InvalidArgument,
    NotFound,
    QuoteExpired,
    Unavailable,
)
from wallets.guard import SpendContext
from wallets.ledger import Ledger
from wallets.models import Balance, Posting, Transfer
from wallets.tables import FxQuoteRow

QUOTES = FxQuoteRow.__table__  # type: ignore[attr-defined]
FX_OWNER = "fx"
MAX_RATE_TERM = 2**62  # numerator and denominator are stored as BIGINT
MAX_QUOTE_TTL_S = 3600

# Sandbox only: units of each currency per 1 USD. Not market rates; configure a real provider
# (or FixedRateProvider with your own table) for anything else.
SANDBOX_UNITS_PER_USD: dict[str, str] = {"USD": "1", "USDC": "1", "ECNY": "7.1"}


@dataclass(frozen=True, slots=True)
class FxQuote:
    quote_id: str
    from_currency: str
    to_currency: str
    rate_numerator: int
    rate_denominator: int
    provider: str
    created_at_ms: int
    expires_at_ms: int

    @property
    def rate(self) -> Fraction:
        return Fraction(self.rate_numerator, self.rate_denominator)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FxQuote:
        return cls(**data)


class FxProvider(Protocol):
    """Prices conversions. A real provider (a bank, an exchange) calls out here: it is asked
    outside any ledger transaction, and its quote is stored before anyone converts against it."""

    name: str

    def quote(self, from_code: str, to_code: str, now_ms: int) -> FxQuote:
        """A fresh quote for the pair (raise NotFound if the pair is not offered)."""
        ...


class FixedRateProvider:
    """Quotes from a fixed table of units per 1 USD (cross rates exact): the sandbox default.

    `units_per_usd` values are exact: strings ('7.1'), ints, Decimals or Fractions; a float is
    refused. Quotes live `quote_ttl_s` seconds."""

    name = "sandbox-fixed"

    def __init__(self, units_per_usd: Mapping[str, str | int | Decimal | Fraction] | None = None,
                 *, quote_ttl_s: int = 30) -> None:
        if not 1 <= quote_ttl_s <= MAX_QUOTE_TTL_S:
            raise InvalidArgument(f"quote_ttl_s must be 1..{MAX_QUOTE_TTL_S}, got {quote_ttl_s}")
        self.quote_ttl_s = quote_ttl_s
        self.units_per_usd: dict[str, Fraction] = {}
        for code, value in (units_per_usd or SANDBOX_UNITS_PER_USD).items():
            if isinstance(value, bool) or not isinstance(value, str | int | Decimal | Fraction):
                raise InvalidArgument(f"the rate of {code} must be exact (a string, int, Decimal "
                                      f"or Fraction), got {value!r}")
            try:
                rate = Fraction(value)
            except (ValueError, ZeroDivisionError):
                raise InvalidArgument(f"the rate of {code} is not a number: {value!r}") from None
            if rate <= 0:
                raise InvalidArgument(f"the rate of {code} must be positive, got {value!r}")
            self.units_per_usd[currency(code).code] = rate

    def quote(self, from_code: str, to_code: str, now_ms: int) -> FxQuote:
        for code in (from_code, to_code):
            if code not in self.units_per_usd:
                raise NotFound(f"{self.name} has no rate for {code}; it prices "
                               f"{', '.join(sorted(self.units_per_usd))}")
        rate = self.units_per_usd[to_code] / self.units_per_usd[from_code]
        return FxQuote(uuid.uuid4().hex, from_code, to_code, rate.numerator, rate.denominator,
                       self.name, now_ms, now_ms + self.quote_ttl_s * 1000)


def convert_amount(amount_atomic: int, quote: FxQuote) -> int:
    """What `amount_atomic` of the quote's from currency buys, exactly, rounded down (the rule
    in this module's docstring). Also for comparing prices across currencies."""
    check_amount(amount_atomic, allow_zero=True)
    source, target = currency(quote.from_currency), currency(quote.to_currency)
    return (amount_atomic * quote.rate_numerator * 10**target.scale) // (
        quote.rate_denominator * 10**source.scale)


@dataclass(frozen=True, slots=True)
class Conversion:
    quote_id: str
    from_account_id: str
    to_account_id: str
    from_currency: str
    to_currency: str
    sold_atomic: int
    bought_atomic: int
    postings: tuple[Posting, ...]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "postings": [p.to_json() for p in self.postings]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conversion:
        return cls(**{**data, "postings": tuple(Posting.from_json(p) for p in data["postings"])})


class FxDesk:
    """Quotes and conversions over one ledger."""

    def __init__(self, ledger: Ledger, provider: FxProvider | None = None, *,
                 liquidity_limit_atomic: int = MAX_AMOUNT_ATOMIC) -> None:
        self.ledger = ledger
        self.provider = provider or FixedRateProvider()
        self.liquidity_limit_atomic = check_amount(liquidity_limit_atomic, allow_zero=True)

    def liquidity_account(self, currency_code: str) -> Balance:
        """The FX account of a currency (opened, with its credit line, if it is missing)."""
        return self.ledger.open_account(FX_OWNER, currency_code, "fx",
                                        credit_limit_atomic=self.liquidity_limit_atomic)

    def get_quote(self, key: str, from_code: str, to_code: str) -> FxQuote:
        """A fresh quote, stored; a retry with the same key returns the same quote."""
        check_key(key)
        source, target = currency(from_code).code, currency(to_code).code
        if source == target:
            raise InvalidArgument(f"a quote converts between two currencies, not {source} to "
                                  "itself")
        quote = self.provider.quote(source, target, self.ledger.clock_ms())
        self._check_quote(quote, source, target)
        for code in (source, target):  # ready to trade the pair: a conversion opens nothing
            self.liquidity_account(code)

        def apply(conn: Connection) -> FxQuote:
            conn.execute(insert(QUOTES).values(
                id=quote.quote_id, from_currency=quote.from_currency,
                to_currency=quote.to_currency, rate_numerator=quote.rate_numerator,
                rate_denominator=quote.rate_denominator, provider=quote.provider,
                created_at_ms=quote.created_at_ms, expires_at_ms=quote.expires_at_ms))
            return quote

        return self.ledger.mutate(key, "fx_quote", {"from": source, "to": target}, apply,
                                  FxQuote.to_json, FxQuote.from_json)

    def _check_quote(self, quote: FxQuote, source: str, target: str) -> None:
        """A provider's quote must be well formed before anyone relies on it."""
        problems = [
            (quote.from_currency, quote.to_currency) != (source, target) and "the wrong pair",
            not 0 < len(quote.quote_id) <= 32 and "an id not of 1..32 characters",
            not all(isinstance(t, int) and not isinstance(t, bool) and 0 < t <= MAX_RATE_TERM
                    for t in (quote.rate_numerator, quote.rate_denominator))
            and "rate terms outside 1..2**62",
            quote.expires_at_ms <= quote.created_at_ms and "no time before it expires",
        ]
        found = [p for p in problems if p]
        if found:  # the provider's fault, not the caller's: retry later
            raise Unavailable(f"FX provider {self.provider.name} gave a quote with "
                              f"{', '.join(found)}", reason="BAD_FX_QUOTE")

    def quote(self, quote_id: str) -> FxQuote:
        with self.ledger.engine.connect().execution_options(agentmarket_read=True) as conn:
            return self._load(conn, quote_id)

    @staticmethod
    def _load(conn: Connection, quote_id: str) -> FxQuote:
        if not isinstance(quote_id, str) or not 0 < len(quote_id) <= 32:
            raise InvalidArgument("quote_id must be 1..32 characters")
        row = conn.execute(select(QUOTES).where(QUOTES.c.id == quote_id)).first()
        if row is None:
            raise NotFound(f"FX quote {quote_id!r} does not exist")
        return FxQuote(row.id, row.from_currency, row.to_currency, row.rate_numerator,
                       row.rate_denominator, row.provider, row.created_at_ms, row.expires_at_ms)

    def convert(self, key: str, quote_id: str, from_account_id: str, to_account_id: str,
                amount_atomic: int, *, spend: SpendContext | None = None) -> Conversion:
        """Sell `amount_atomic` from one wallet, buy at the quote into another, atomically."""
        check_key(key)
        check_amount(amount_atomic)
        if from_account_id == to_account_id:
            raise InvalidArgument("from and to accounts must differ")
        quote = self.quote(quote_id)
        source = self._wallet(from_account_id, quote.from_currency, "sells")
        target = self._wallet(to_account_id, quote.to_currency, "buys")
        bought = convert_amount(amount_atomic, quote)
        if bought == 0:
            raise InvalidAmount(f"{amount_atomic} atomic {source.currency} buys less than one "
                                f"atomic unit of {target.currency} at {quote.rate_numerator}/"
                                f"{quote.rate_denominator}")
        if bought > MAX_AMOUNT_ATOMIC:
            raise InvalidAmount(f"the conversion would give {bought} atomic, past the limit "
                                f"of {MAX_AMOUNT_ATOMIC}")
        spend = spend or SpendContext()
        if not spend.counterparty:
            spend = replace(spend, counterparty=target.owner)
        fx_in, fx_out = (self.liquidity_account(code).account_id
                         for code in (source.currency, target.currency))
        memo = (f"fx {amount_atomic} {source.currency} -> {bought} {target.currency} at "
                f"{quote.rate_numerator}/{quote.rate_denominator} (quote {quote_id})")[:256]
        request = {"quote": quote_id, "from": from_account_id, "to": to_account_id,
                   "amount": amount_atomic, "spend": spend.request()}

        def apply(conn: Connection) -> Conversion:
            now_ms = self.ledger.clock_ms()
            current = self._load(conn, quote_id)
            if current.expires_at_ms <= now_ms:
                raise QuoteExpired(f"FX quote {quote_id} expired at {current.expires_at_ms} ms "
                                   f"(now {now_ms}); ask for a new quote")
            sold_posting = self.ledger.post_linked_in(
                conn, key, [Transfer(from_account_id, fx_in, amount_atomic)], memo=memo,
                kind="fx", spend=spend)
            bought_posting = self.ledger.post_linked_in(
                conn, key, [Transfer(fx_out, to_account_id, bought)], memo=memo, kind="fx")
            return Conversion(quote_id, from_account_id, to_account_id, source.currency,
                              target.currency, amount_atomic, bought,
                              (sold_posting, bought_posting))

        return self.ledger.mutate(key, "convert", request, apply, Conversion.to_json,
                                  Conversion.from_json)

    def _wallet(self, account_id: str, code: str, side: str) -> Balance:
        account = self.ledger.balance(account_id)
        if account.kind != "wallet":
            raise InvalidArgument(f"account {account_id} is a {account.kind} account; "
                                  "conversions are between wallets")
        if account.currency != code:
            raise InvalidArgument(f"account {account_id} holds {account.currency}, but the quote "
                                  f"{side} {code}")
        return account
