"""Market metrics through the OpenTelemetry metrics API (the SDK is set up by applications).

Instruments (all prefixed `agentmarket.`):
- `paid_calls` (counter): calls admitted with a valid voucher, by currency and skill;
- `volume` (counter, atomic units): money captured to sellers, by currency;
- `fees` (counter, atomic units): marketplace fees, by currency;
- `settlement.duration` (histogram, ms): escrow opened -> settled, by outcome;
- `verification.failures` (counter): outputs that failed verification, by method;
- `disputes` (counter): disputes opened;
- `refusals` (counter): requests refused, by reason (POLICY_DENIED, INVALID_VOUCHER, ...);
- `holds.open` and `holds.held` (observable gauges): open holds and the amount they hold,
  by currency, read from the ledger when a reader collects.
Amounts are integers of atomic units, never floats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

METER_NAME = "agentmarket"


class MarketMetrics:
    """The instruments of one component; cheap to call on hot paths. Uses the global meter
    provider unless given one: `marketplace.tracing.setup_metrics` installs it."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        meter = metrics.get_meter(METER_NAME, meter_provider=meter_provider)
        self._meter = meter
        self.paid_calls = meter.create_counter(
            "agentmarket.paid_calls", unit="{call}", description="Calls paid with a voucher")
        self.volume = meter.create_counter(
            "agentmarket.volume", unit="{atomic}", description="Money captured to sellers")
        self.fees = meter.create_counter(
            "agentmarket.fees", unit="{atomic}", description="Marketplace fees captured")
        self.settlement_duration = meter.create_histogram(
            "agentmarket.settlement.duration", unit="ms",
            description="From escrow opened to settled or refunded")
        self.verification_failures = meter.create_counter(
            "agentmarket.verification.failures", unit="{output}",
            description="Outputs that failed verification")
        self.disputes = meter.create_counter(
            "agentmarket.disputes", unit="{dispute}", description="Disputes opened")
        self.refusals = meter.create_counter(
            "agentmarket.refusals", unit="{request}", description="Requests refused, by reason")
        self._hold_sources: list[Callable[[], Iterable[tuple[str, int, int]]]] = []
        self._gauges = False

    def observe_holds(self, open_holds: Callable[[], Iterable[tuple[str, int, int]]]
                      ) -> Callable[[], None]:
        """Feed the hold gauges from `open_holds()` -> (currency, count, held_atomic) rows;
        returns a function that stops it (a node calls it when it stops)."""
        if not self._hold_sources and not self._gauges:
            self._gauges = True

            def rows() -> list[tuple[str, int, int]]:
                totals: dict[str, list[int]] = {}
                for source in list(self._hold_sources):
                    for code, n, amount in source():
                        total = totals.setdefault(code, [0, 0])
                        total[0] += n
                        total[1] += amount
                return [(code, n, amount) for code, (n, amount) in totals.items()]

            def count(_options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(n, {"currency": code}) for code, n, _ in rows()]

            def held(_options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(amount, {"currency": code}) for code, _, amount in rows()]

            self._meter.create_observable_gauge("agentmarket.holds.open", [count],
                                                unit="{hold}", description="Open holds")
            self._meter.create_observable_gauge("agentmarket.holds.held", [held],
                                                unit="{atomic}",
                                                description="Money held by open holds")
        self._hold_sources.append(open_holds)
        return lambda: self._hold_sources.remove(open_holds)

    def refused(self, reason: str, **attributes: Any) -> None:
        self.refusals.add(1, {"reason": reason, **attributes})


_default: MarketMetrics | None = None


def market_metrics() -> MarketMetrics:
    """The process-wide instruments (on the global meter provider)."""
    global _default
    if _default is None:
        _default = MarketMetrics()
    return _default
