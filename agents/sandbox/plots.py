"""The run's plots, drawn from its events with matplotlib (the Agg backend: no display).

Each plot is one PNG; a plot with nothing to show (no FX in a one-currency market) still says
so in its image, so every run writes the same set of files.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from agents.sandbox.events import Event
from wallets.currencies import currency

SIZE = (7.0, 3.6)
DPI = 90
CHEATER, HONEST = "#d62728", "#1f77b4"
SETTLED = ("settle", "resolve")


def units(amount_atomic: int, code: str) -> float:
    """An amount in whole units of its currency, for drawing only (never for money)."""
    return amount_atomic / 10 ** currency(code).scale if code else float(amount_atomic)


def _figure(title: str) -> tuple[Figure, plt.Axes]:
    figure, axes = plt.subplots(figsize=SIZE, dpi=DPI)
    axes.set_title(title, fontsize=11)
    axes.grid(alpha=0.3)
    return figure, axes


def _empty(axes: plt.Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="grey")


def clearing_prices(events: list[Event]) -> Figure:
    """The median agreed unit price of each skill, round by round, with its quartiles."""
    figure, axes = _figure("Clearing price per skill (median agreed unit price, quartiles)")
    prices: dict[tuple[str, str], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for e in events:
        if e.kind == "agreement":
            prices[(e.skill, e.currency)][e.round].append(e.unit_price_atomic)
    for (skill, code), rounds in sorted(prices.items()):
        xs = sorted(rounds)
        line = axes.plot(xs, [units(int(statistics.median(rounds[x])), code) for x in xs],
                         marker="o", markersize=3,
                         label=f"{skill} ({code} per {_unit(events, skill)})")
        low, high = zip(*(_quartiles(rounds[x]) for x in xs), strict=True)
        axes.fill_between(xs, [units(v, code) for v in low], [units(v, code) for v in high],
                          color=line[0].get_color(), alpha=0.2)
    if not prices:
        _empty(axes, "no agreements")
    else:
        axes.legend(fontsize=8)
    axes.set_xlabel("round")
    axes.set_ylabel("price per unit")
    return figure


def _quartiles(values: list[int]) -> tuple[int, int]:
    if len(values) < 2:
        return values[0], values[0]
    cuts = statistics.quantiles(values, n=4)
    return int(cuts[0]), int(cuts[2])


def _unit(events: list[Event], skill: str) -> str:
    """What a skill's unit price is per, read from its calls' usage."""
    for e in events:
        if e.kind == "call" and e.skill == skill:
            if not e.detail.endswith("units=0"):
                return "GPU-second"
            return "call" if e.detail.startswith("in=0 out=0") else "1k input tokens"
    return "unit"


def volume_value(events: list[Event]) -> Figure:
    """Calls made and value settled to sellers per currency, round by round."""
    figure, (calls_axes, value_axes) = plt.subplots(1, 2, figsize=(SIZE[0], SIZE[1]), dpi=DPI)
    figure.suptitle("Volume and value per currency", fontsize=11)
    calls: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    value: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for e in events:
        if e.kind == "call":
            calls[e.currency][e.round] += 1
        elif e.kind in SETTLED:
            value[e.currency][e.round] += e.amount_atomic
    for code in sorted(calls):
        xs = sorted(calls[code])
        calls_axes.plot(xs, [calls[code][x] for x in xs], label=code)
    for code in sorted(value):
        xs = sorted(value[code])
        value_axes.plot(xs, [units(value[code][x], code) for x in xs], label=code)
    calls_axes.set_title("paid calls", fontsize=9)
    value_axes.set_title("value settled", fontsize=9)
    for axes in (calls_axes, value_axes):
        axes.set_xlabel("round")
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
        else:
            _empty(axes, "none")
    figure.tight_layout()
    return figure


def settlement_latency(events: list[Event]) -> Figure:
    """How long from agreement to settled money: confirmed quickly, or after arbitration."""
    figure, axes = _figure("Settlement latency (simulated seconds, agreement to payout)")
    confirmed = [e.latency_ms / 1000 for e in events if e.kind == "settle"]
    arbitrated = [e.latency_ms / 1000 for e in events if e.kind == "resolve"]
    if confirmed or arbitrated:
        top = max(confirmed + arbitrated)
        bins = [0.5 * 2 ** (i / 2) for i in range(60) if 0.5 * 2 ** ((i - 2) / 2) <= top]
        axes.hist([confirmed, arbitrated], bins=bins, stacked=True, color=[HONEST, CHEATER],
                  label=[f"confirmed ({len(confirmed)})", f"arbitrated ({len(arbitrated)})"])
        axes.set_xscale("log")
        axes.legend(fontsize=8)
    else:
        _empty(axes, "nothing settled")
    axes.set_xlabel("seconds")
    axes.set_ylabel("tasks")
    return figure


def fee_income(events: list[Event]) -> Figure:
    """The marketplace's cumulative fee income per currency."""
    figure, axes = _figure("Marketplace fee income (cumulative)")
    totals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    running: dict[str, int] = defaultdict(int)
    for e in sorted((e for e in events if e.kind in SETTLED), key=lambda e: e.t_ms):
        running[e.currency] += e.fee_atomic
        totals[e.currency].append((e.t_ms / 60_000, units(running[e.currency], e.currency)))
    for code, points in sorted(totals.items()):
        axes.step([p[0] for p in points], [p[1] for p in points], where="post", label=code)
    if totals:
        axes.legend(fontsize=8)
    else:
        _empty(axes, "no fees")
    axes.set_xlabel("simulated minutes")
    axes.set_ylabel("fees")
    return figure


def reputations(events: list[Event]) -> Figure:
    """Earned reputation round by round: honest sellers' mean, and every cheater's own line."""
    figure, axes = _figure("Reputation: honest sellers (mean) and each cheater")
    honest: dict[int, list[int]] = defaultdict(list)
    cheaters: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for e in events:
        if e.kind != "reputation" or not e.quantity:  # unrated sellers have no reputation yet
            continue
        if e.detail == "cheats":
            cheaters[e.seller].append((e.round, e.amount_atomic))
        else:
            honest[e.round].append(e.amount_atomic)
    xs = sorted(honest)
    if xs:
        axes.plot(xs, [statistics.mean(honest[x]) for x in xs], color=HONEST, linewidth=2,
                  label="honest sellers, mean")
    for index, (_name, points) in enumerate(sorted(cheaters.items())):
        axes.plot([p[0] for p in points], [p[1] for p in points], color=CHEATER, linewidth=2.5,
                  marker="x", label="cheaters" if index == 0 else None)
    if not xs and not cheaters:
        _empty(axes, "no seller rated yet")
    else:
        axes.legend(fontsize=8)
    axes.set_ylim(-30, 1030)
    axes.set_xlabel("round")
    axes.set_ylabel("reputation (per mille)")
    return figure


def gini(values: list[int]) -> float:
    """The Gini coefficient of non-negative amounts (0: all equal; near 1: one holds all)."""
    ordered = sorted(max(v, 0) for v in values)
    total = sum(ordered)
    if not ordered or not total:
        return 0.0
    weighted = sum((i + 1) * v for i, v in enumerate(ordered))
    return (2 * weighted) / (len(ordered) * total) - (len(ordered) + 1) / len(ordered)


def balances(events: list[Event]) -> Figure:
    """Lorenz curves of the agents' final wallet balances, per currency, with their Gini."""
    figure, axes = _figure("Wallet balance distribution (Lorenz curves)")
    per_currency: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e.kind == "balance":
            per_currency[e.currency].append(e.amount_atomic)
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="equality")
    for code, values in sorted(per_currency.items()):
        ordered = sorted(max(v, 0) for v in values)
        total = sum(ordered) or 1
        shares, running = [0.0], 0
        for value in ordered:
            running += value
            shares.append(running / total)
        axes.plot([i / len(ordered) for i in range(len(ordered) + 1)], shares,
                  label=f"{code}: Gini {gini(values):.2f} ({len(values)} wallets)")
    axes.legend(fontsize=8)
    axes.set_xlabel("share of wallets (poorest first)")
    axes.set_ylabel("share of money")
    return figure


def fx_flows(events: list[Event]) -> Figure:
    """Money converted across currencies per round (in the currency sold), and the FX rates."""
    figure, axes = _figure("Cross-currency flows (converted per round) and FX rates")
    flows: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for e in events:
        if e.kind == "fx":
            flows[f"{e.currency} -> {e.to_currency}"][e.round] += e.amount_atomic
    for index, (pair, rounds) in enumerate(sorted(flows.items())):
        xs = sorted(rounds)
        axes.bar([x + 0.4 * index for x in xs], [units(rounds[x], pair.split()[0]) for x in xs],
                 width=0.4, label=f"{pair} (sold)")
    rates: dict[str, list[tuple[int, float]]] = defaultdict(list)
    traded = {pair.split()[-1] for pair in flows} | {pair.split()[0] for pair in flows}
    for e in events:
        if e.kind == "fx_rate" and e.to_currency in traded:
            rates[e.to_currency].append((e.round, e.unit_price_atomic / 10**9))
    if flows:
        axes.legend(fontsize=8, loc="upper left")
        axes.set_ylabel("amount sold")
    else:
        _empty(axes, "no cross-currency trades in this scenario")
    moving = {code: points for code, points in rates.items()
              if len({p[1] for p in points}) > 1}  # a pegged rate is a flat line at 1
    if moving and flows:
        twin = axes.twinx()
        for code, points in sorted(moving.items()):
            twin.plot([p[0] for p in points], [p[1] for p in points], color="black",
                      linewidth=1, label=f"{code} per USD")
        twin.legend(fontsize=8, loc="upper right")
        twin.set_ylabel("rate")
    axes.set_xlabel("round")
    return figure


PLOTS: dict[str, Callable[[list[Event]], Figure]] = {
    "clearing_price.png": clearing_prices,
    "volume_value.png": volume_value,
    "settlement_latency.png": settlement_latency,
    "fee_income.png": fee_income,
    "reputation.png": reputations,
    "balances_gini.png": balances,
    "fx_flows.png": fx_flows,
}


def draw_all(events: list[Event], out: Path) -> list[Path]:
    """Write every plot into `out`; returns the files."""
    written = []
    for name, draw in PLOTS.items():
        figure = draw(events)
        path = Path(out) / name
        figure.savefig(path, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written
