"""Metering: what one call used (calls, LLM tokens, units) and what it costs, exactly.

A seller's skill runs inside a `Meter`; `agents.llm.complete` records litellm's reported usage
on it, and a per-unit skill adds its units itself:

    @skill(price=per_unit("0.0005", "USD", "gpu_second"), max_units=600)
    def train(steps: int) -> Result:
        ...
        current_meter().add_units(seconds)

Money and rounding:
- What a call costs is the marketplace's function of the agreed terms and the metered usage
  (`marketplace.pricing.charge_atomic`), which settlement checks every receipt against, so the
  rule is stated once for the whole market and agents never round a charge themselves. Per
  call: the price; per unit: price x units; per 1k tokens:
  ``ceil((input_tokens * input_price_per_1k + output_tokens * output_price_per_1k) / 1000)``,
  one exact integer sum rounded up once per call (the seller is never paid less than the agreed
  price for the usage, and at most one atomic unit more).
- litellm's per-token model cost is a float USD; `model_price_per_1k_atomic` converts it once,
  through ``Decimal(str(cost))``, to an integer price per 1k tokens, markup included, rounded up
  (a list price: the seller never sells below its model cost).
- A call never costs more than it reserved from the buyer's prepayment (`reserve_atomic`): the
  receipt reports the real usage and charges its price or the reserve, whichever is less (a
  receipt may charge less than its usage's price, never more), so a model that reports more
  than the skill's bounds allow for costs the seller, not the buyer.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

from agents import _inputs
from agents._context import Scoped
from agents._tokens import count_tokens
from agents.errors import BudgetExceeded, InvalidArgument
from marketplace import pricing
from marketplace.v1 import agreement_pb2, registry_pb2

TOKENS = registry_pb2.PRICE_UNIT_1K_TOKENS
UNITS = registry_pb2.PRICE_UNIT_UNIT
CALLS = registry_pb2.PRICE_UNIT_CALL
BPS = 10_000


def token_charge_atomic(input_tokens: int, output_tokens: int, input_price_atomic_per_1k: int,
                        output_price_atomic_per_1k: int) -> int:
    """The charge for this token usage at these prices per 1k (marketplace/pricing.py's rule)."""
    return pricing.charge_atomic(agreement_pb2.Terms(
        unit=TOKENS, unit_price_atomic=input_price_atomic_per_1k,
        output_unit_price_atomic=output_price_atomic_per_1k),
        input_tokens=input_tokens, output_tokens=output_tokens)


def model_price_per_1k_atomic(cost_per_token_usd: float | str | Decimal, scale: int,
                              markup_bps: int = 0) -> int:
    """litellm's float USD per token -> atomic units per 1k tokens, markup included, rounded up.

    The float goes through `Decimal(str(cost))` (its shortest repr, e.g. 1.5e-07 -> 0.00000015),
    so a cost the cost map states exactly stays exact."""
    _inputs.count(markup_bps, "markup_bps (basis points)", minimum=0, maximum=100 * BPS)
    per_1k = Decimal(str(cost_per_token_usd)) * 1000 * (10**scale) * (BPS + markup_bps) / BPS
    return int(per_1k.to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class Tariff:
    """Agreed billing of one agreement: the unit, its price(s) and the per-call maximum."""

    unit: int
    unit_price_atomic: int
    output_unit_price_atomic: int = 0
    max_call_atomic: int = 0

    def terms(self) -> agreement_pb2.Terms:
        return agreement_pb2.Terms(unit=self.unit, unit_price_atomic=self.unit_price_atomic,
                                   output_unit_price_atomic=self.output_unit_price_atomic)

    def charge_atomic(self, *, input_tokens: int = 0, output_tokens: int = 0,
                      units: int = 0) -> int:
        """What a call with this usage costs (`marketplace.pricing.charge_atomic`)."""
        return pricing.charge_atomic(self._priced, units=units, input_tokens=input_tokens,
                                     output_tokens=output_tokens)

    @functools.cached_property
    def _priced(self) -> agreement_pb2.Terms:  # built once: every paid call is priced twice
        return self.terms()

    @property
    def call_max_atomic(self) -> int:
        """What a buyer prepays per call: the per-call maximum (per-call skills: the price)."""
        return self.max_call_atomic or self.unit_price_atomic


@dataclass
class Meter:
    """Usage of one call as it happens; `charge_atomic()` prices it under the tariff."""

    tariff: Tariff
    reserve_atomic: int
    max_input_tokens: int = 0
    max_output_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    units: int = 0
    model: str = ""
    stopped: int = 0  # why a stream stopped early: an agents.v1 StopReason (0: it did not)
    token_counter: Callable[[str], int] | None = None
    # litellm calls seen by the metering callback (agents._litellm_hooks), by litellm call id:
    # (prompt tokens counted before the call, already in input_tokens) until usage arrives
    llm_pending: dict[str, int] = field(default_factory=dict, repr=False)
    llm_unreported: int = 0  # calls billed by rule: usage never arrived
    usage_rule: str = ""  # how the usage was found when no model reported it ('' when one did)
    _closed: bool = field(default=False, repr=False)
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def add_tokens(self, input_tokens: int = 0, output_tokens: int = 0, model: str = "") -> None:
        """Record LLM usage (from litellm's response `usage`)."""
        if input_tokens < 0 or output_tokens < 0:
            raise InvalidArgument("token counts cannot be negative")
        with self._lock:
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
            self.model = model or self.model

    def begin_llm(self, call_id: str, prompt_tokens: int) -> None:
        """A litellm call started inside this call: its prompt (counted) is billed at once,
        so a stream's running charge includes it; the reported usage replaces the count."""
        with self._lock:
            if self._closed or call_id in self.llm_pending:
                return
            self.llm_pending[call_id] = prompt_tokens
            self.input_tokens += prompt_tokens

    def end_llm(self, call_id: str, input_tokens: int | None, output_tokens: int) -> None:
        """litellm reported a call's usage (None: the call failed; its prompt is not billed)."""
        with self._lock:
            counted = self.llm_pending.pop(call_id, None)
            if counted is None or self._closed:
                return
            if input_tokens is None:
                self.input_tokens -= counted
            else:
                self.input_tokens += max(0, input_tokens) - counted
                self.output_tokens += max(0, output_tokens)
            self._lock.notify_all()

    def settle_if_reported(self) -> bool:
        """Close the meter to litellm's callbacks if no call's usage is still awaited (then
        billing cannot wait: `settle_llm` returns at once); False leaves it open."""
        with self._lock:
            if self.llm_pending:
                return False
            self._closed = True
            return True

    def settle_llm(self, wait_s: float, *, streamed: bool = False) -> None:
        """Close the meter to litellm's callbacks. A unary call waits up to `wait_s` for the
        usage of calls still running (litellm reports it from a logging thread after the call
        returns); a call whose usage never arrives is billed by rule: its counted prompt and
        the skill's max_output_tokens. A stream bills its delivered text instead: nothing to
        wait for."""
        with self._lock:
            if not streamed:
                self._lock.wait_for(lambda: not self.llm_pending, timeout=wait_s)
                if self.llm_pending:
                    self.llm_unreported = len(self.llm_pending)
                    self.output_tokens += self.max_output_tokens * len(self.llm_pending)
                    self.usage_rule = "prompt counted, max_output_tokens billed"
            self.llm_pending.clear()
            self._closed = True

    def bill_silent_call(self, input_text: str, output_text: str) -> None:
        """The rule for a token-priced call in which no model reported any usage (the skill
        made no LLM call litellm saw, or made it where no meter is current, e.g. a thread of
        its own): its input and output are counted as a prompt and a completion with the
        skill's model's tokenizer and billed so, never answered free in silence."""
        with self._lock:
            if self.tariff.unit != TOKENS or self.input_tokens or self.output_tokens:
                return
            self.input_tokens = self.count_tokens(input_text)
            self.output_tokens = self.count_tokens(output_text)
            self.usage_rule = "no usage reported: input and output counted"

    def add_units(self, units: int) -> None:
        """Record units of a per-unit skill (gpu_seconds, pages ...); integers only."""
        if isinstance(units, bool) or not isinstance(units, int) or units < 0:
            raise InvalidArgument(f"units must be a non-negative integer, got {units!r}")
        with self._lock:
            self.units += units

    def check_input(self, input_tokens: int) -> None:
        """Refuse, before the model runs, a prompt the call's reserve or bounds cannot pay for."""
        if self.max_input_tokens and input_tokens > self.max_input_tokens:
            raise InvalidArgument(f"the input is {input_tokens} tokens; this skill takes at most "
                                  f"{self.max_input_tokens}")
        cost = self.tariff.charge_atomic(input_tokens=self.input_tokens + input_tokens,
                                         output_tokens=self.output_tokens, units=self.units)
        if self.tariff.unit == TOKENS and cost > self.reserve_atomic:
            raise BudgetExceeded(f"reading the input would cost {cost}, more than the "
                                 f"{self.reserve_atomic} prepaid for this call")

    def billed(self) -> tuple[int, int, int]:
        """(input_tokens, output_tokens, units) the receipt reports: the real usage."""
        return self.input_tokens, self.output_tokens, self.units

    def charge_atomic(self) -> int:
        """The call's charge: the usage's price under the tariff, at most the reserve."""
        return min(self.uncapped_charge_atomic(), self.reserve_atomic)

    def uncapped_charge_atomic(self, *, extra_output_tokens: int = 0) -> int:
        return self.tariff.charge_atomic(input_tokens=self.input_tokens,
                                         output_tokens=self.output_tokens + extra_output_tokens,
                                         units=self.units)

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` for this call's model (litellm's tokenizer for it)."""
        if self.token_counter is not None:
            return self.token_counter(text)
        return count_tokens(self.model, text)


_current: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("meter", default=None)


def current_meter() -> Meter:
    """The meter of the call being served (inside a skill); a throwaway one outside any call."""
    meter = _current.get()
    if meter is None:
        return Meter(Tariff(CALLS, 0), reserve_atomic=0)
    return meter


def metering(meter: Meter) -> Scoped[Meter | None]:
    """`with metering(meter):` the skill's LLM calls and units count on `meter`."""
    return Scoped(_current, meter)


def usage_of(response: Any) -> tuple[int, int]:
    """(input_tokens, output_tokens) from a litellm response's `usage`."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return 0, 0
    return int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)
