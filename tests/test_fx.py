"""FX: exact quotes, and conversions that execute atomically against them through FX liquidity
accounts, one posting per currency; every currency keeps summing to zero. SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from fractions import Fraction

import pytest

from tests.conftest import FakeClock
from wallets import audit
from wallets.errors import (
    AgentmarketError,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
    NotFound,
    QuoteExpired,
    Unavailable,
    UnknownCurrency,
)
from wallets.fx import FixedRateProvider, FxDesk, FxQuote, convert_amount
from wallets.ledger import Ledger
from wallets.service import WalletService

USD_1 = 10**9  # one dollar (or yuan, or USDC) in atomic units


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


def quote(from_code: str, to_code: str, numerator: int, denominator: int) -> FxQuote:
    return FxQuote("q", from_code, to_code, numerator, denominator, "test", 0, 1)


# ---- exact arithmetic, no database -----------------------------------------------------------


def test_convert_amount_is_exact_and_rounds_down():
    assert convert_amount(USD_1, quote("USD", "ECNY", 71, 10)) == 7_100_000_000
    assert convert_amount(1, quote("USD", "ECNY", 71, 10)) == 7  # 7.1 atomic, down to 7
    assert convert_amount(7_100_000_000, quote("ECNY", "USD", 10, 71)) == USD_1
    assert convert_amount(7_100_000_001, quote("ECNY", "USD", 10, 71)) == USD_1  # no rounding up
    assert convert_amount(70, quote("ECNY", "USD", 10, 71)) == 9  # 9.859..., down
    assert convert_amount(0, quote("USD", "USDC", 1, 1)) == 0
    big = 2**62
    assert convert_amount(big, quote("USD", "ECNY", 71, 10)) == big * 71 // 10  # no overflow
    with pytest.raises(InvalidAmount):
        convert_amount(-1, quote("USD", "USDC", 1, 1))


def test_the_sandbox_table_gives_exact_cross_rates():
    provider = FixedRateProvider()
    q = provider.quote("ECNY", "USDC", 1000)
    assert (q.rate, q.provider, q.expires_at_ms) == (Fraction(10, 71), "sandbox-fixed", 31_000)
    custom = FixedRateProvider({"USD": 1, "ECNY": Decimal("7.25"), "USDC": Fraction(999, 1000)},
                               quote_ttl_s=5)
    assert custom.quote("USDC", "ECNY", 0).rate == Fraction(7250, 999)
    with pytest.raises(NotFound, match="no rate for USDC"):
        FixedRateProvider({"USD": "1", "ECNY": "7.1"}).quote("USD", "USDC", 0)


@pytest.mark.parametrize(("table", "ttl", "words"), [
    ({"USD": 7.1}, 30, "must be exact"),
    ({"USD": True}, 30, "must be exact"),
    ({"USD": "0"}, 30, "positive"),
    ({"USD": "-2"}, 30, "positive"),
    ({"USD": "seven"}, 30, "not a number"),
    ({"XAU": "1"}, 30, "unknown currency"),
    ({"USD": "1"}, 0, "quote_ttl_s"),
])
def test_a_bad_rate_table_is_refused(table: dict, ttl: int, words: str):
    with pytest.raises(InvalidArgument, match=words):
        FixedRateProvider(table, quote_ttl_s=ttl)


# ---- conversions -----------------------------------------------------------------------------


@pytest.fixture
def desk(wallets: WalletService) -> FxDesk:
    return wallets.fx


@pytest.fixture
def funded(wallets: WalletService) -> dict[str, str]:
    ledger = wallets.ledger
    ids = {code: ledger.open_account("alice", code).account_id
           for code in ("USD", "ECNY", "USDC")}
    ids["bob-ECNY"] = ledger.open_account("bob", "ECNY").account_id
    wallets.deposit(key(), ids["USD"], 100 * USD_1, "USD")
    wallets.deposit(key(), ids["ECNY"], 50 * USD_1, "ECNY")
    return ids


def sums(ledger: Ledger) -> dict[str, int]:
    totals: dict[str, int] = {}
    for b in ledger.accounts():
        totals[b.currency] = totals.get(b.currency, 0) + b.posted_atomic
    return totals


def books(ledger: Ledger) -> tuple[dict[str, tuple[int, ...]], int]:
    return ({b.account_id: (b.posted_credits_atomic, b.posted_debits_atomic,
                            b.pending_debits_atomic, b.pending_credits_atomic)
             for b in ledger.accounts()}, len(ledger.postings()))


def assert_sound(ledger: Ledger) -> None:
    assert set(sums(ledger).values()) == {0}, sums(ledger)
    balances, chain = audit.check_balances(ledger), audit.verify_chain(ledger)
    assert balances.ok and chain.ok, (balances.problems, chain.problems)


def test_a_conversion_moves_both_currencies_atomically_and_sums_stay_zero(
        desk: FxDesk, funded: dict[str, str]):
    ledger = desk.ledger
    q = desk.get_quote(key(), "USD", "ECNY")
    assert (q.rate_numerator, q.rate_denominator) == (71, 10)
    k = key()
    done = desk.convert(k, q.quote_id, funded["USD"], funded["bob-ECNY"], 3 * USD_1 + 1)
    assert (done.sold_atomic, done.bought_atomic) == (3 * USD_1 + 1, 21_300_000_007)
    sold, bought = done.postings
    assert (sold.kind, bought.kind) == ("fx", "fx")
    assert {leg.currency for leg in sold.legs} == {"USD"}
    assert {leg.currency for leg in bought.legs} == {"ECNY"}
    assert bought.sequence == sold.sequence + 1
    fx_usd = ledger.find_account("fx", "USD", "fx")
    fx_ecny = ledger.find_account("fx", "ECNY", "fx")
    assert fx_usd is not None and fx_ecny is not None
    assert ledger.balance(fx_usd.account_id).posted_atomic == 3 * USD_1 + 1
    assert ledger.balance(fx_ecny.account_id).posted_atomic == -21_300_000_007  # its credit line
    assert ledger.balance(funded["bob-ECNY"]).available_atomic == 21_300_000_007
    assert ledger.balance(funded["USD"]).available_atomic == 97 * USD_1 - 1
    assert desk.convert(k, q.quote_id, funded["USD"], funded["bob-ECNY"], 3 * USD_1 + 1) == done
    assert_sound(ledger)

    back = desk.get_quote(key(), "ECNY", "USD")
    desk.convert(key(), back.quote_id, funded["ECNY"], funded["USD"], 71 * USD_1 // 10)
    assert ledger.balance(funded["USD"]).available_atomic == 98 * USD_1 - 1
    assert_sound(ledger)


def test_a_quote_is_kept_and_a_retry_returns_the_same_one(desk: FxDesk):
    k = key()
    first = desk.get_quote(k, "usd", "e-CNY")
    assert desk.get_quote(k, "USD", "ECNY") == first
    assert desk.quote(first.quote_id) == first
    with pytest.raises(IdempotencyConflict):
        desk.get_quote(k, "USD", "USDC")


def test_an_expired_or_unknown_quote_is_refused_and_nothing_changes(
        desk: FxDesk, funded: dict[str, str], clock: FakeClock):
    ledger = desk.ledger
    q = desk.get_quote(key(), "USD", "USDC")
    clock.advance(30)  # the sandbox's quotes live 30 s
    before = books(ledger)
    with pytest.raises(QuoteExpired) as caught:
        desk.convert(key(), q.quote_id, funded["USD"], funded["USDC"], USD_1)
    assert (caught.value.reason, caught.value.status) == ("QUOTE_EXPIRED", "FAILED_PRECONDITION")
    assert q.quote_id in caught.value.message and "expired" in caught.value.message
    with pytest.raises(NotFound, match="does not exist"):
        desk.convert(key(), "0" * 32, funded["USD"], funded["USDC"], USD_1)
    assert books(ledger) == before


@pytest.mark.parametrize(("case", "error", "words"), [
    ("wrong-from-currency", InvalidArgument, "holds ECNY, but the quote sells USD"),
    ("wrong-to-currency", InvalidArgument, "holds USD, but the quote buys USDC"),
    ("same-account", InvalidArgument, "must differ"),
    ("zero", InvalidAmount, "positive"),
    ("negative", InvalidAmount, "positive"),
    ("too-small", InvalidAmount, "less than one atomic unit"),
    ("too-much", InsufficientFunds, "available"),
    ("not-a-wallet", InvalidArgument, "conversions are between wallets"),
    ("unknown-account", NotFound, "does not exist"),
    ("no-key", InvalidArgument, "idempotency_key"),
    ("bad-quote-id", InvalidArgument, "quote_id"),
])
def test_bad_conversions_say_what_is_wrong_and_change_nothing(
        desk: FxDesk, funded: dict[str, str], case: str, error: type[AgentmarketError],
        words: str):
    ledger = desk.ledger
    usd_usdc = desk.get_quote(key(), "USD", "USDC")
    ecny_usd = desk.get_quote(key(), "ECNY", "USD")
    fx_usd = desk.liquidity_account("USD").account_id
    args = {
        "wrong-from-currency": (key(), usd_usdc.quote_id, funded["ECNY"], funded["USDC"], 1),
        "wrong-to-currency": (key(), usd_usdc.quote_id, funded["USD"], funded["USD"] + "x", 1),
        "same-account": (key(), usd_usdc.quote_id, funded["USD"], funded["USD"], 1),
        "zero": (key(), usd_usdc.quote_id, funded["USD"], funded["USDC"], 0),
        "negative": (key(), usd_usdc.quote_id, funded["USD"], funded["USDC"], -5),
        "too-small": (key(), ecny_usd.quote_id, funded["ECNY"], funded["USD"], 7),
        "too-much": (key(), usd_usdc.quote_id, funded["USD"], funded["USDC"], 101 * USD_1),
        "not-a-wallet": (key(), usd_usdc.quote_id, fx_usd, funded["USDC"], USD_1),
        "unknown-account": (key(), usd_usdc.quote_id, "nope", funded["USDC"], USD_1),
        "no-key": ("", usd_usdc.quote_id, funded["USD"], funded["USDC"], USD_1),
        "bad-quote-id": (key(), "q" * 40, funded["USD"], funded["USDC"], USD_1),
    }[case]
    if case == "wrong-to-currency":
        args = (*args[:3], ledger.open_account("carol", "USD").account_id, args[4])
    before = books(ledger)
    with pytest.raises(error) as caught:
        desk.convert(*args)
    assert words in caught.value.message
    assert books(ledger) == before


def test_quote_requests_are_checked(desk: FxDesk):
    with pytest.raises(InvalidArgument, match="itself"):
        desk.get_quote(key(), "USD", "usd")
    with pytest.raises(UnknownCurrency):
        desk.get_quote(key(), "USD", "XAU")
    with pytest.raises(InvalidArgument, match="idempotency_key"):
        desk.get_quote("", "USD", "ECNY")


def test_a_misbehaving_provider_is_refused(wallets: WalletService):
    class Broken:
        name = "broken"

        def quote(self, from_code: str, to_code: str, now_ms: int) -> FxQuote:
            return FxQuote("b", from_code, to_code, 0, 2**63, self.name, now_ms, now_ms)

    with pytest.raises(Unavailable) as caught:  # the provider's fault: retry later
        FxDesk(wallets.ledger, Broken()).get_quote(key(), "USD", "ECNY")
    assert caught.value.reason == "BAD_FX_QUOTE" and "rate terms" in caught.value.message
