"""The events file: every agreement, call, settlement, dispute and FX conversion of a run.

One CSV row per event, in simulated time. Nothing in it comes from the wall clock or from
random ids (agents appear by their scenario names, tasks by their sequence numbers), so the same
scenario and seed give the same file, byte for byte.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path

KINDS = ("fund", "agreement", "no_deal", "fx", "refused", "call", "call_failed", "settle",
         "dispute", "resolve", "reputation", "balance", "fx_rate")


@dataclass(frozen=True)
class Event:
    """One thing that happened. Amounts are atomic units of `currency` (`to_*`: the other side
    of an FX conversion); `t_ms` is simulated time since the run began."""

    t_ms: int
    round: int
    kind: str
    task: str = ""
    buyer: str = ""
    seller: str = ""
    skill: str = ""
    currency: str = ""
    amount_atomic: int = 0
    fee_atomic: int = 0
    unit_price_atomic: int = 0
    quantity: int = 0
    to_currency: str = ""
    to_amount_atomic: int = 0
    latency_ms: int = 0
    detail: str = ""


COLUMNS = tuple(f.name for f in fields(Event))


def write(path: Path, events: list[Event]) -> None:
    with Path(path).open("w", newline="") as out:
        writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
        writer.writeheader()
        for event in events:
            writer.writerow(asdict(event))


def read(path: Path) -> list[Event]:
    """The events of a file `write` made."""
    ints = {f.name for f in fields(Event) if f.type in ("int", int)}
    with Path(path).open(newline="") as source:
        return [Event(**{k: int(v) if k in ints else v for k, v in row.items()})  # type: ignore[arg-type]
                for row in csv.DictReader(source)]
