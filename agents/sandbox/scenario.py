"""A market scenario: who trades what, at which prices, for how long; loaded from TOML.

Every field is checked when the file is read, and a bad one raises `ScenarioError` whose message
names it (`sellers[1].strategy: must be one of fixed, concession, demand, got 'greedy'`), so the
command prints one line instead of a traceback. Money is given as decimal strings and kept as
integers in atomic units of its currency; rates (failure, fraud, demand) are probabilities.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from agents.errors import InvalidArgument
from wallets.currencies import currency
from wallets.errors import AgentmarketError

KINDS = ("call", "token", "gpu")
STRATEGIES = ("fixed", "concession", "demand")
CURRENCIES = ("USD", "USDC", "ECNY")
MAX_AGENTS = 5_000
MAX_ROUNDS = 10_000


class ScenarioError(InvalidArgument):
    """A scenario file that cannot be run; the message names the field."""


@dataclass(frozen=True)
class SellerGroup:
    group: str
    count: int
    skill: str
    kind: str
    currency: str
    list_price_atomic: int  # per call, per 1k input tokens, or per unit
    output_price_atomic: int  # per 1k output tokens (token skills)
    cost_atomic: int  # the lowest unit price it signs
    strategy: str
    capacity: int  # tasks per round
    failure_rate: float
    cheat_fraction: float  # share of the group's sellers that cheat
    forgery_rate: float  # chance a cheater forges a given call's output


@dataclass(frozen=True)
class BuyerGroup:
    group: str
    count: int
    skill: str
    currency: str  # the wallet it is funded in
    deposit_atomic: int
    task_budget_atomic: int  # the most one task may cost, in the wallet's currency
    reservation_atomic: int  # highest unit price, in the wallet's currency
    demand: float  # chance of a task per round
    calls: tuple[int, int]
    verify_rate: float
    min_reputation_permille: int
    per_call_cap_atomic: int  # wallet policy: 0 = none
    ecny_category: int = 0  # e-CNY wallet category its identity is verified for; 0: default


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    rounds: int
    round_s: int
    fee_bps: int
    ecny: bool
    units_per_usd: dict[str, Fraction]
    fx_step_bps: int
    arbiter_delay_s: int
    sellers: tuple[SellerGroup, ...]
    buyers: tuple[BuyerGroup, ...]
    skills: dict[str, SellerGroup] = field(default_factory=dict)  # skill -> first group
    usdc_chain: bool = False  # USDC on an in-process EVM: buyers funded by token transfers

    @property
    def agents(self) -> int:
        return sum(g.count for g in self.sellers) + sum(g.count for g in self.buyers)


def load(path: str | Path) -> Scenario:
    """Read and check a scenario file."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise ScenarioError(f"cannot read {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{path} is not valid TOML: {error}") from None
    return parse(data)


def parse(data: dict[str, Any]) -> Scenario:
    """A scenario from a parsed TOML table."""
    top = _Fields(data, "")
    fx = _Fields(top.table("fx"), "fx.")
    rates = {"USD": Fraction(1)}
    for code, value in fx.table("units_per_usd").items():
        rates[_currency(code, f"fx.units_per_usd.{code}")] = _rate(value, code)
    sellers = tuple(_seller(_Fields(t, f"sellers[{i}].")) for i, t in
                    enumerate(top.tables("sellers")))
    buyers = tuple(_buyer(_Fields(t, f"buyers[{i}].")) for i, t in
                   enumerate(top.tables("buyers")))
    skills: dict[str, SellerGroup] = {}
    for i, group in enumerate(sellers):
        first = skills.setdefault(group.skill, group)
        if (first.kind, first.currency) != (group.kind, group.currency):
            raise ScenarioError(f"sellers[{i}].skill: {group.skill} is sold as {first.kind} in "
                                f"{first.currency} by another group")
    _check_groups(sellers, buyers, skills, rates)
    arbiter = _Fields(top.table("arbiter"), "arbiter.")
    scenario = Scenario(
        name=top.text("name"), description=top.text("description", ""),
        rounds=top.integer("rounds", 1, MAX_ROUNDS), round_s=top.integer("round_s", 1, 86_400,
                                                                        60),
        fee_bps=top.integer("fee_bps", 0, 10_000, 250), ecny=top.flag("ecny", False),
        units_per_usd=rates, fx_step_bps=fx.integer("step_bps", 0, 1_000, 0),
        arbiter_delay_s=arbiter.integer("delay_s", 0, 30 * 86_400, 3_600),
        sellers=sellers, buyers=buyers, skills=skills,
        usdc_chain=top.flag("usdc_chain", False))
    for i, group in enumerate(buyers):
        if group.ecny_category and (group.currency != "ECNY" or not scenario.ecny):
            raise ScenarioError(f"buyers[{i}].ecny_category: e-CNY wallet tiers need currency "
                                "ECNY and ecny = true")
    for fields in (top, fx, arbiter):
        fields.no_extra()
    if scenario.agents > MAX_AGENTS:
        raise ScenarioError(f"sellers, buyers: {scenario.agents} agents, at most {MAX_AGENTS}")
    return scenario


def _seller(f: _Fields) -> SellerGroup:
    code = _currency(f.text("currency"), f.where("currency"))
    kind = f.choice("kind", KINDS)
    list_price = f.money("list_price", code)
    cost = f.money("cost", code)
    if cost > list_price:
        raise ScenarioError(f"{f.where('cost')}: above list_price")
    group = SellerGroup(
        group=f.name("group"), count=f.integer("count", 1, MAX_AGENTS), skill=f.name("skill"),
        kind=kind, currency=code, list_price_atomic=list_price,
        output_price_atomic=f.money("output_price", code) if kind == "token" else 0,
        cost_atomic=cost, strategy=f.choice("strategy", STRATEGIES),
        capacity=f.integer("capacity", 1, 10_000),
        failure_rate=f.probability("failure_rate", 0.0),
        cheat_fraction=f.probability("cheat_fraction", 0.0),
        forgery_rate=f.probability("forgery_rate", 1.0))
    f.no_extra()
    return group


def _buyer(f: _Fields) -> BuyerGroup:
    code = _currency(f.text("currency"), f.where("currency"))
    calls = f.value("calls", [1, 1])
    if not (isinstance(calls, list) and len(calls) == 2 and all(
            isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 100 for c in calls)
            and calls[0] <= calls[1]):
        raise ScenarioError(f"{f.where('calls')}: must be [min, max] calls per task, "
                            f"1 <= min <= max <= 100, got {calls!r}")
    group = BuyerGroup(
        group=f.name("group"), count=f.integer("count", 1, MAX_AGENTS), skill=f.name("skill"),
        currency=code, deposit_atomic=f.money("deposit", code),
        task_budget_atomic=f.money("task_budget", code),
        reservation_atomic=f.money("reservation_price", code),
        demand=f.probability("demand", None), calls=(calls[0], calls[1]),
        verify_rate=f.probability("verify_rate", 1.0),
        min_reputation_permille=f.integer("min_reputation", 0, 1000, 0),
        per_call_cap_atomic=f.money("per_call_cap", code, "0", zero=True),
        ecny_category=f.integer("ecny_category", 0, 4, 0))
    f.no_extra()
    return group


def _check_groups(sellers: tuple[SellerGroup, ...], buyers: tuple[BuyerGroup, ...],
                  skills: dict[str, SellerGroup], rates: dict[str, Fraction]) -> None:
    if not sellers:
        raise ScenarioError("sellers: at least one [[sellers]] group is needed")
    if not buyers:
        raise ScenarioError("buyers: at least one [[buyers]] group is needed")
    names = [g.group for g in (*sellers, *buyers)]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ScenarioError(f"group: {name!r} is used twice")
    for i, group in enumerate(buyers):
        sold = skills.get(group.skill)
        if sold is None:
            raise ScenarioError(f"buyers[{i}].skill: no seller group sells {group.skill!r}")
        for code in (group.currency, sold.currency):
            if code not in rates:
                raise ScenarioError(f"fx.units_per_usd: buyers[{i}] needs a rate for {code}")


def _currency(code: Any, where: str) -> str:
    if not isinstance(code, str) or code.upper() not in CURRENCIES:
        raise ScenarioError(f"{where}: must be one of {', '.join(CURRENCIES)}, got {code!r}")
    return code.upper()


def _rate(value: Any, code: str) -> Fraction:
    where = f"fx.units_per_usd.{code}"
    if not isinstance(value, str):
        raise ScenarioError(f"{where}: must be a decimal string such as \"7.1\", got {value!r}")
    try:
        rate = Fraction(Decimal(value))
    except ArithmeticError:
        raise ScenarioError(f"{where}: not a number: {value!r}") from None
    if rate <= 0:
        raise ScenarioError(f"{where}: must be positive")
    return rate


class _Fields:
    """One TOML table, read field by field; each error names the field's full path."""

    def __init__(self, data: Any, prefix: str) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"{prefix.rstrip('.') or 'scenario'}: must be a table")
        self.data, self.prefix, self.seen = data, prefix, set[str]()

    def where(self, key: str) -> str:
        return self.prefix + key

    def value(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is None:
                raise ScenarioError(f"{self.where(key)}: missing")
            return default
        return self.data[key]

    def no_extra(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise ScenarioError(f"{self.where(extra[0])}: unknown field")

    def table(self, key: str) -> dict[str, Any]:
        value = self.value(key, {})
        if not isinstance(value, dict):
            raise ScenarioError(f"{self.where(key)}: must be a table")
        return value

    def tables(self, key: str) -> list[dict[str, Any]]:
        value = self.value(key, [])
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise ScenarioError(f"{self.where(key)}: must be an array of tables [[{key}]]")
        return value

    def text(self, key: str, default: str | None = None) -> str:
        value = self.value(key, default)
        if not isinstance(value, str) or len(value) > 2_000:
            raise ScenarioError(f"{self.where(key)}: must be a string, got {value!r}")
        return value

    def name(self, key: str) -> str:
        value = self.text(key)
        if not value or len(value) > 40 or not value.replace("-", "").replace("_", "").isalnum():
            raise ScenarioError(f"{self.where(key)}: must be 1..40 letters, digits, - or _, "
                                f"got {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.value(key, default)
        if not isinstance(value, bool):
            raise ScenarioError(f"{self.where(key)}: must be true or false, got {value!r}")
        return value

    def integer(self, key: str, low: int, high: int, default: int | None = None) -> int:
        value = self.value(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ScenarioError(f"{self.where(key)}: must be an integer in {low}..{high}, "
                                f"got {value!r}")
        return value

    def probability(self, key: str, default: float | None) -> float:
        value = self.value(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not 0 <= value <= 1:
            raise ScenarioError(f"{self.where(key)}: must be a number in 0..1, got {value!r}")
        return float(value)

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.value(key)
        if value not in options:
            raise ScenarioError(f"{self.where(key)}: must be one of {', '.join(options)}, "
                                f"got {value!r}")
        return str(value)

    def money(self, key: str, code: str, default: str | None = None, *,
              zero: bool = False) -> int:
        value = self.value(key, default)
        if not isinstance(value, str):
            raise ScenarioError(f"{self.where(key)}: must be a decimal string such as "
                                f"\"0.002\" (exact money, not a float), got {value!r}")
        try:
            amount = currency(code).atomic(value)
        except AgentmarketError as error:
            raise ScenarioError(f"{self.where(key)}: {error.message}") from None
        if amount < 0 or (amount == 0 and not zero):
            raise ScenarioError(f"{self.where(key)}: must be positive, got {value!r}")
        return amount
