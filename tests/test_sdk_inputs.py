"""Bad options and values are refused where they are given, with the SDK's own errors: the
negotiation's options, a model price's markup, @skill's target and options, a seller's
settings, Money's amount and arithmetic, and the decimal strings amounts are read from."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from agents import (
    AgreementState,
    AsyncBuyerAgent,
    BuyerAgent,
    ConcessionStrategy,
    Escrow,
    InvalidAmount,
    InvalidArgument,
    Money,
    SellerAgent,
    model_price,
    per_call,
    skill,
)
from agents.metering import model_price_per_1k_atomic
from marketplace.v1 import registry_pb2
from wallets.currencies import currency

NOWHERE = "127.0.0.1:1"  # nothing is sent: each refusal comes before any call


class Echo(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def echo(text: str) -> Echo:
    """Echo a text."""
    return Echo(text=text)


def _listing() -> registry_pb2.Listing:
    return registry_pb2.Listing(agent_id="a" * 64, name="s", endpoint="127.0.0.1:2", skills=[
        registry_pb2.Skill(name="echo", prices=[per_call("0.01", "USD").message()])])


# ---- negotiation options (agents._bargain.rounds) -------------------------------------------

BAD_NEGOTIATION = [
    ({"max_rounds": -1}, "max_rounds"),
    ({"max_rounds": 2**70}, "max_rounds"),
    ({"max_rounds": True}, "max_rounds"),
    ({"deadline_s": 2**70}, "deadline_s"),
    ({"deadline_s": 1.5}, "deadline_s"),
    ({"verification": "x"}, "verification"),
    ({"verification": 99}, "verification"),
    ({"verification": True}, "verification"),
    ({"strategy": "x"}, "strategy"),
    ({"reservation_price_atomic": -1}, "reservation_price_atomic"),
    ({"reservation_price_atomic": 2**70}, "reservation_price_atomic"),
]


@pytest.fixture(scope="module")
def buyer() -> Iterator[BuyerAgent]:
    agent = BuyerAgent("inputs", marketplace=NOWHERE)
    yield agent
    agent.close()


@pytest.mark.parametrize(("options", "named"), BAD_NEGOTIATION)
def test_negotiate_refuses_bad_options(buyer: BuyerAgent, options: dict[str, Any],
                                       named: str) -> None:
    with pytest.raises(InvalidArgument, match=named):
        buyer.negotiate(_listing(), "echo", quantity=1, budget="1", currency="USD",
                        failover=False, **options)


@pytest.mark.parametrize(("options", "named"), BAD_NEGOTIATION)
def test_async_negotiate_refuses_bad_options(options: dict[str, Any], named: str) -> None:
    async def negotiate() -> None:
        agent = AsyncBuyerAgent("inputs", marketplace=NOWHERE)
        try:
            await agent.negotiate(_listing(), "echo", quantity=1, budget="1", currency="USD",
                                  failover=False, **options)
        finally:
            await agent.close()

    with pytest.raises(InvalidArgument, match=named):
        asyncio.run(negotiate())


# ---- a model price's markup (agents.metering) -----------------------------------------------

@pytest.mark.parametrize("markup", [1.5, -1, 10**9, True, "5", None])
def test_markup_is_whole_basis_points(markup: Any) -> None:
    with pytest.raises(InvalidArgument, match="markup_bps"):
        model_price_per_1k_atomic("0.00000015", 9, markup)


def test_model_price_refuses_a_fractional_markup() -> None:
    with pytest.raises(InvalidArgument, match="markup_bps"):
        model_price("gpt-4o-mini", "USD", markup_bps=1.5)
    assert model_price_per_1k_atomic("0.00000015", 9, 2_000) == 180_000


# ---- @skill ---------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [echo, int, 5, "echo"])
def test_skill_wraps_only_functions_and_graphs(target: Any) -> None:
    with pytest.raises(InvalidArgument, match="skill"):
        skill(target, price=per_call("0.001", "USD"))


@pytest.mark.parametrize(("options", "named"), [
    ({"max_concurrency": -1}, "max_concurrency"),
    ({"max_concurrency": 2**40}, "max_concurrency"),
    ({"typical_latency_ms": -5}, "typical_latency_ms"),
    ({"max_input_tokens": 1.5}, "max_input_tokens"),
    ({"warm_up": 5}, "warm_up"),
    ({"name": 5}, "name"),
    ({"name": ""}, "name"),
    ({"description": 5}, "description"),
    ({"tags": "a,b"}, "tags"),
    ({"verification": ["schema"]}, "verification"),
    ({"model": None}, "model"),
])
def test_skill_refuses_bad_options_when_decorating(options: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidArgument, match=named):
        skill(price=per_call("0.001", "USD"), **options)


def test_skill_keeps_good_options() -> None:
    made = skill(price=per_call("0.001", "USD"), name="shout", max_concurrency=4,
                 warm_up=lambda: None)(echo.handler)
    assert (made.name, made.max_concurrency) == ("shout", 4)
    assert made.message().max_concurrency == 4


# ---- SellerAgent's settings -----------------------------------------------------------------

@skill(price=per_call("0.002", "USD"), name="echo")
def other_echo(text: str) -> Echo:
    return Echo(text=text)


@pytest.mark.parametrize(("options", "named"), [
    ({"max_workers": 0}, "max_workers"),
    ({"rate_limit_per_s": -1}, "rate_limit_per_s"),
    ({"rate_limit_per_s": float("inf")}, "rate_limit_per_s"),
    ({"rate_limit_burst": 0}, "rate_limit_burst"),
    ({"ttl_s": -1}, "ttl_s"),
    ({"ttl_s": 0}, "ttl_s"),
    ({"settle_interval_s": 0}, "settle_interval_s"),
    ({"settle_interval_s": float("nan")}, "settle_interval_s"),
    ({"dispute_window_s": -1}, "dispute_window_s"),
    ({"dispute_window_s": 10**9}, "dispute_window_s"),
    ({"reservation_fraction": (5, 0)}, "reservation_fraction"),
    ({"reservation_fraction": (-1, 2)}, "reservation_fraction"),
    ({"reservation_fraction": (5, 4)}, "reservation_fraction"),
    ({"reservation_fraction": (0.5, 1)}, "reservation_fraction"),
    ({"completion_window_s": 2**70}, "completion_window_s"),
    ({"completion_window_s": 30 * 86_400}, "completion_window_s"),
    ({"redeem_margin_s": -1}, "redeem_margin_s"),
    ({"journal_retention_s": -1}, "journal_retention_s"),
    ({"port": -1}, "port"),
    ({"port": 70_000}, "port"),
    ({"card_port": 70_000}, "card_port"),
    ({"strategy": 5}, "strategy"),
    ({"skills": [echo, other_echo]}, "echo"),
])
def test_seller_refuses_bad_settings_before_starting_anything(
        options: dict[str, Any], named: str) -> None:
    before = set(threading.enumerate())  # an earlier test's threads may end meanwhile
    settings: dict[str, Any] = {"skills": [echo], "marketplace": NOWHERE, **options}
    with pytest.raises(InvalidArgument, match=named):
        SellerAgent("inputs", **settings)
    assert not set(threading.enumerate()) - before, "a refused seller started a thread"


def test_seller_takes_good_settings() -> None:
    seller = SellerAgent("inputs", skills=[echo], marketplace=NOWHERE, ttl_s=10,
                         settle_interval_s=0.1, dispute_window_s=0, reservation_fraction=(1, 1),
                         strategy=ConcessionStrategy(10, 5))
    try:
        assert seller.port > 0
    finally:
        seller.stop()


# ---- Money (agents.results) -----------------------------------------------------------------

@pytest.mark.parametrize("amount", [1.5, "5", True, None])
def test_money_is_an_int_of_atomic_units(amount: Any) -> None:
    with pytest.raises(InvalidAmount):
        Money(amount, "USD")


def test_money_names_its_currency_as_the_sdk_does() -> None:
    assert Money(5, "usd") == Money(5, "USD")
    assert Money(5, "usd").currency == "USD"
    assert hash(Money(5, "usd")) == hash(Money(5, "USD"))
    with pytest.raises(InvalidArgument):
        Money(5, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("combine", [
    lambda m: m + 1, lambda m: 1 + m, lambda m: m - 1, lambda m: m < 1, lambda m: m >= 1,
    lambda m: m + Money(1, "USDC"),
])
def test_money_combines_only_with_money_of_its_currency(combine: Any) -> None:
    with pytest.raises(InvalidArgument):
        combine(Money(5, "USD"))


def test_money_sums_and_negates() -> None:
    assert sum([Money(5, "USD"), Money(7, "USD")]) == Money(12, "USD")
    assert -Money(5, "USD") == Money(-5, "USD")
    assert Money(5, "USD") - Money(7, "USD") == -Money(2, "USD")


def test_money_of_an_unknown_currency_still_prints() -> None:
    escrow = Escrow("agreement", AgreementState.SETTLED, captured_atomic=5)
    assert str(escrow.captured) == "5 atomic units"
    assert str(Money(5, "xyz")) == "5 atomic units of XYZ"
    assert str(Money(1_230_000_000, "USD")) == "1.23 USD"


# ---- decimal amounts (wallets.currencies) ---------------------------------------------------

ARABIC_INDIC_12, FULLWIDTH_1 = "\u0661\u0662", "\uff11"


@pytest.mark.parametrize("text", [" 1 ", "1 ", "\t1", "12\n", ARABIC_INDIC_12, FULLWIDTH_1, "+1",
                                  "1e3", "1_000", "1,00", "1.2.3", "", ".", "-"])
def test_amounts_are_plain_ascii_decimals(buyer: BuyerAgent, text: str) -> None:
    with pytest.raises(InvalidAmount, match="plain decimal"):
        currency("USD").atomic(text)
    with pytest.raises(InvalidAmount):
        buyer.fund(text, "USD")


@pytest.mark.parametrize(("text", "atomic"), [
    ("1", 1_000_000_000), ("1.25", 1_250_000_000), (".5", 500_000_000), ("1.", 1_000_000_000),
    ("0", 0), ("0.000000001", 1),
])
def test_plain_decimals_still_read(text: str, atomic: int) -> None:
    assert currency("USD").atomic(text) == atomic
