"""Jinja filters: money exact from atomic units, times in UTC, ids shortened but whole on hover."""

from __future__ import annotations

import time
from typing import Any

from markupsafe import Markup

from wallets.currencies import currency
from wallets.errors import UnknownCurrency

DASH = "\u2013"  # an en dash for "no value"


def money(amount_atomic: Any, code: str) -> str:
    """'0.0125 USD', exact (never through float); unknown currencies shown raw."""
    if amount_atomic is None:
        return DASH
    try:
        return currency(code).format(int(amount_atomic))
    except UnknownCurrency:
        return f"{amount_atomic} atomic {code}"


def when(ms: Any) -> str:
    if not ms:
        return DASH
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(ms) / 1000))


def ago(ms: Any, now_ms: int | None = None) -> str:
    """'3 min ago', 'in 2 h' (relative to now)."""
    if not ms:
        return DASH
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    delta_s = (now - int(ms)) / 1000
    future = delta_s < 0
    delta_s = abs(delta_s)
    for unit_s, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if delta_s >= unit_s or unit == "s":
            text = f"{int(delta_s // unit_s)} {unit}"
            return f"in {text}" if future else f"{text} ago"
    return "now"


def short(value: Any, chars: int = 10) -> Markup:
    """The first characters of an id, the whole id in the title (copyable from the page)."""
    text = str(value or "")
    if len(text) <= chars + 1:
        return Markup('<span class="id">{}</span>').format(text)
    return Markup('<span class="id" title="{}">{}…</span>').format(text, text[:chars])


def duration_ms(ns: int) -> str:
    ms = ns / 1_000_000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


FILTERS = {"money": money, "when": when, "ago": ago, "short": short,
           "duration_ms": duration_ms}
