"""What a run shows a person: a summary table in the terminal, and one HTML file with the
summary and every plot inlined (base64 PNGs), readable offline and easy to mail."""

from __future__ import annotations

import base64
import html
from collections import Counter, defaultdict
from pathlib import Path

from rich.table import Table

from agents.sandbox.loop import RunResult
from agents.sandbox.plots import gini
from agents.sandbox.scenario import Scenario
from wallets.currencies import currency


def summary_rows(result: RunResult) -> list[tuple[str, str]]:
    """(figure, value) rows: counts of what happened, money per currency, the books' check."""
    events = result.events
    kinds = Counter(e.kind for e in events)
    resolved = Counter(e.detail for e in events if e.kind == "resolve")
    unnoticed = sum(int(e.detail.rsplit("=", 1)[1]) for e in events
                    if e.kind == "settle" and "unnoticed_forgeries=" in e.detail)
    rows = [
        ("agents (sellers, buyers)", f"{result.agents} ({len(result.sellers)}, "
                                     f"{result.agents - len(result.sellers)})"),
        ("cheating sellers", str(sum(result.sellers.values()))),
        ("tasks", str(result.tasks)),
        ("agreements", str(kinds["agreement"])),
        ("no agreement", str(kinds["no_deal"])),
        ("refused (wallet policy, funds, e-CNY caps ...)", str(kinds["refused"])),
        ("paid calls / failed calls", f"{kinds['call']} / {kinds['call_failed']}"),
        ("settled (confirmed)", str(kinds["settle"])),
        ("disputes: refunded to buyer / paid to seller",
         f"{resolved['buyer']} / {resolved['seller']}"),
        ("forged calls paid unnoticed (not verified)", str(unnoticed)),
        ("FX conversions", str(kinds["fx"])),
    ]
    value: dict[str, int] = defaultdict(int)
    fees: dict[str, int] = defaultdict(int)
    for e in events:
        if e.kind in ("settle", "resolve"):
            value[e.currency] += e.amount_atomic
            fees[e.currency] += e.fee_atomic
    for code in sorted(value):
        fmt = currency(code).format
        rows.append((f"{code}: settled to sellers / fees", f"{fmt(value[code])} / "
                                                            f"{fmt(fees[code])}"))
    wallets: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e.kind == "balance":
            wallets[e.currency].append(e.amount_atomic)
    for code in sorted(wallets):
        rows.append((f"{code}: Gini of wallet balances", f"{gini(wallets[code]):.3f}"))
    sums = ", ".join(f"{code} {total}" for code, total in sorted(result.sums.items()))
    rows.append(("sum over all accounts (atomic)", sums))
    rows.append(("ledger", f"{result.postings} postings, " +
                 ("hash chain and balances verified" if not result.problems
                  else f"PROBLEMS: {'; '.join(result.problems[:3])}")))
    rows.append(("simulated tasks per second (wall clock)",
                 f"{result.tasks / result.wall_s:.1f}" if result.wall_s else "-"))
    return rows


def summary_table(scenario: Scenario, seed: int, result: RunResult) -> Table:
    table = Table("figure", "value", title=f"{scenario.name} (seed {seed}, "
                                           f"{scenario.rounds} rounds)")
    for name, value in summary_rows(result):
        table.add_row(name, value)
    return table


def _groups_html(scenario: Scenario) -> str:
    """The scenario's seller and buyer groups as two small tables."""
    def money(amount_atomic: int, code: str) -> str:
        return currency(code).format(amount_atomic)

    def table(head: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
                        + "</tr>" for row in rows)
        return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{cells}"
                "</table>")

    sellers = table(("sellers", "count", "skill", "priced", "list", "cost", "strategy",
                     "capacity/round", "failure rate", "cheaters"),
                    [(g.group, g.count, g.skill, g.kind, money(g.list_price_atomic, g.currency),
                      money(g.cost_atomic, g.currency), g.strategy, g.capacity, g.failure_rate,
                      f"{g.cheat_fraction:.0%}, forging {g.forgery_rate:.0%} of calls"
                      if g.cheat_fraction else "none")
                     for g in scenario.sellers])
    buyers = table(("buyers", "count", "skill", "deposit", "budget/task", "reservation",
                    "demand", "calls", "verify rate", "min reputation"),
                   [(g.group, g.count, g.skill, money(g.deposit_atomic, g.currency),
                     money(g.task_budget_atomic, g.currency),
                     money(g.reservation_atomic, g.currency), g.demand,
                     f"{g.calls[0]}-{g.calls[1]}", g.verify_rate, g.min_reputation_permille)
                    for g in scenario.buyers])
    return sellers + "<br>" + buyers


def write_html(path: Path, scenario: Scenario, seed: int, result: RunResult,
               plots: list[Path]) -> None:
    """One self-contained page: the summary, then each plot as an inline image."""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                   for k, v in summary_rows(result))
    rules = ("; e-CNY wallet rules" if scenario.ecny else "") + \
        ("; USDC on a chain, buyers funded by token transfers" if scenario.usdc_chain else "")
    images = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></figure>' for p in plots)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(scenario.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:4px 10px;
text-align:left}}
img{{max-width:100%}}figure{{margin:1.5em 0}}</style></head><body>
<h1>{html.escape(scenario.name)}</h1>
<p>{html.escape(scenario.description)}</p>
<p>Seed {seed}; {scenario.rounds} rounds of {scenario.round_s} simulated seconds; fee
{scenario.fee_bps} bps{rules}. Every trade went through
a marketplace node, seller and buyer agents over gRPC and the double-entry ledger.</p>
{_groups_html(scenario)}
<h2>Summary</h2>
<table>{rows}</table>
{images}
</body></html>
"""
    Path(path).write_text(page)
