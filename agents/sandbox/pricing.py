"""Sellers' pricing strategies and the FX quotes that move between rounds.

A seller lists its ceiling price and signs nothing below its cost (`Limits`, outside the
strategy). Between them its strategy sets the asking price: `fixed` asks the list price and
does not move; `concession` opens at the list price and concedes towards its cost over the
negotiation's rounds (Faratin's time-dependent tactic, `ConcessionStrategy`); `demand` moves
its asking level between rounds, up when last round's orders filled its capacity, down when they
did not, and concedes from there. Levels change only between rounds, so every negotiation of a
round sees the same prices whatever order they run in.
"""

from __future__ import annotations

import itertools
import random
from fractions import Fraction
from typing import Any

from agents.negotiation import ConcessionStrategy
from wallets.fx import FxQuote

STEP = Fraction(1, 20)  # a demand-driven level moves 5% a round
BUSY, IDLE = Fraction(4, 5), Fraction(1, 2)


class Pricing:
    """One seller's strategy state; `strategy` is the SellerAgent's per-negotiation factory."""

    def __init__(self, kind: str, list_price_atomic: int, cost_atomic: int) -> None:
        self.kind = kind
        self.list_price_atomic, self.cost_atomic = list_price_atomic, cost_atomic
        self.level = Fraction(1)  # share of the list price asked (demand)

    @property
    def reservation_fraction(self) -> tuple[int, int]:
        """The SellerAgent's floor as a share of the list price: its cost."""
        if self.kind == "fixed":
            return 1, 1
        return self.cost_atomic, self.list_price_atomic

    def ask_atomic(self) -> int:
        if self.kind != "demand":
            return self.list_price_atomic
        return max(self.cost_atomic, int(self.list_price_atomic * self.level))

    def strategy(self, skill: Any = None, currency: Any = None) -> ConcessionStrategy:
        ask = self.ask_atomic()
        if self.kind == "fixed":
            return ConcessionStrategy(ask, ask)
        return ConcessionStrategy(ask, self.cost_atomic, Fraction(1, 2))

    def after_round(self, orders: int, capacity: int) -> None:
        """Move a demand-driven level after a round with `orders` of `capacity` taken."""
        if self.kind != "demand":
            return
        used = Fraction(orders, max(capacity, 1))
        floor = Fraction(self.cost_atomic, self.list_price_atomic)
        if used >= BUSY:
            self.level = min(Fraction(1), self.level + STEP)
        elif used < IDLE:
            self.level = max(floor, self.level - STEP)


class MovingRates:
    """An FX provider for the node whose rates take a seeded random walk, one step a round.

    Rates are exact fractions (units per USD, rounded to 1/10,000), a function of the seed and
    the round only; quote ids count up. A node in another process follows the rounds through
    `round_source` (a shared integer the run sets)."""

    name = "sandbox-moving"

    def __init__(self, units_per_usd: dict[str, Fraction], step_bps: int, seed: int,
                 quote_ttl_s: int = 600, round_source: Any = None) -> None:
        self.walk = [dict(units_per_usd)]  # rates of round 0, 1, ...
        self.step_bps, self.seed, self.quote_ttl_s = step_bps, seed, quote_ttl_s
        self.round_source = round_source
        self._ids = itertools.count(1)  # next() is atomic: quotes may be asked concurrently
        self.round = 0

    @property
    def units_per_usd(self) -> dict[str, Fraction]:
        if self.round_source is not None:
            self.round = self.round_source.value
        while len(self.walk) <= self.round:
            self.walk.append(self._step(self.walk[-1], len(self.walk)))
        return self.walk[self.round]

    def move(self, round_index: int) -> None:
        """Take the rates of a round."""
        self.round = round_index

    def _step(self, rates: dict[str, Fraction], round_index: int) -> dict[str, Fraction]:
        """Each non-USD rate steps up or down by up to step_bps."""
        rng = random.Random(f"{self.seed}:fx:{round_index}")
        moved = dict(rates)
        for code in sorted(rates):
            if code in ("USD", "USDC"):
                continue
            step = Fraction(rng.randint(-self.step_bps, self.step_bps), 10_000)
            moved[code] = Fraction(round(rates[code] * (1 + step) * 10_000), 10_000)
        return moved

    def rate(self, from_code: str, to_code: str) -> Fraction:
        rates = self.units_per_usd
        return rates[to_code] / rates[from_code]

    def quote(self, from_code: str, to_code: str, now_ms: int) -> FxQuote:
        from wallets.errors import NotFound

        rates = self.units_per_usd
        for code in (from_code, to_code):
            if code not in rates:
                raise NotFound(f"{self.name} has no rate for {code}")
        rate = rates[to_code] / rates[from_code]
        return FxQuote(f"fx-{self.round:05d}-{next(self._ids):08d}", from_code, to_code,
                       rate.numerator, rate.denominator, self.name, now_ms,
                       now_ms + self.quote_ttl_s * 1000)
