"""A seller's settings, checked when given: a refused constructor starts nothing (no key read,
no journal, no server), and no setting fails later in serve() or inside a negotiation."""

from __future__ import annotations

import math
import os
from typing import Any

from agents import _inputs
from agents.errors import InvalidArgument
from agents.skills import Skill
from marketplace import agreements as ag
from marketplace.negotiation import MAX_NEGOTIATION_S
from marketplace.registry import TTL_MAX_S, TTL_MIN_S

MAX_PORT = 65_535
MAX_INTERVAL_S = 86_400
# An offer's completion deadline is the RFQ's deadline (up to MAX_NEGOTIATION_S ahead) plus the
# completion window, and the node opens no escrow whose deadline is past MAX_COMPLETION_S ahead
MAX_COMPLETION_WINDOW_S = ag.MAX_COMPLETION_S - MAX_NEGOTIATION_S


def checked_options(*, server: str | None, skills: Any, port: Any, card_port: Any,
                    max_workers: Any, rate_limit_per_s: Any, rate_limit_burst: Any, ttl_s: Any,
                    settle_interval_s: Any, completion_window_s: Any, dispute_window_s: Any,
                    redeem_margin_s: Any, journal_retention_s: Any, reservation_fraction: Any,
                    strategy: Any) -> tuple[str, tuple[int, int]]:
    """The server kind (`server`, else AGENTMARKET_SELLER_SERVER, else "threaded") and the
    reservation fraction; InvalidArgument naming the first setting that is wrong."""
    server = server or os.environ.get("AGENTMARKET_SELLER_SERVER", "threaded")
    if server not in ("threaded", "aio"):
        raise InvalidArgument('server must be "threaded" or "aio"')
    if not skills or not all(isinstance(s, Skill) for s in skills):
        raise InvalidArgument("a seller needs a list of skills made with @skill")
    named = [s.name for s in skills]
    twice = next((n for n in named if named.count(n) > 1), None)
    if twice is not None:
        raise InvalidArgument(f"two skills are named {twice!r}: each needs its own name")
    _inputs.count(port, "port", minimum=0, maximum=MAX_PORT)
    if card_port is not None:
        _inputs.count(card_port, "card_port", minimum=0, maximum=MAX_PORT)
    _inputs.count(max_workers, "max_workers")
    _positive(rate_limit_per_s, "rate_limit_per_s")
    _inputs.count(rate_limit_burst, "rate_limit_burst")
    _inputs.count(ttl_s, "ttl_s", minimum=TTL_MIN_S, maximum=TTL_MAX_S)
    _positive(settle_interval_s, "settle_interval_s", maximum=MAX_INTERVAL_S)
    _inputs.count(completion_window_s, "completion_window_s", maximum=MAX_COMPLETION_WINDOW_S)
    _inputs.count(dispute_window_s, "dispute_window_s", minimum=0,
                  maximum=ag.MAX_DISPUTE_WINDOW_S)
    _inputs.count(redeem_margin_s, "redeem_margin_s", minimum=0)
    if redeem_margin_s >= completion_window_s:
        raise InvalidArgument("redeem_margin_s must be below completion_window_s")
    _inputs.count(journal_retention_s, "journal_retention_s", minimum=0)
    if strategy is not None and not (callable(getattr(strategy, "propose", None))
                                     or callable(strategy)):
        raise InvalidArgument(f"strategy is a Strategy or a factory (skill, currency) -> "
                              f"Strategy, got {_inputs.shown(strategy)}")
    return server, _fraction(reservation_fraction)


def _positive(value: Any, what: str, *, maximum: float | None = None) -> float:
    """A rate or an interval: a finite number above zero (a zero interval would busy-spin)."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0 \
            or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise InvalidArgument(f"{what} must be a number above 0{bound}, got "
                              f"{_inputs.shown(value)}")
    return float(value)


def _fraction(value: Any) -> tuple[int, int]:
    """The reservation price as a fraction of the list price: (numerator, denominator) in
    [0, 1], so the seller never signs below zero nor insists on more than it lists."""
    if not isinstance(value, tuple | list) or len(value) != 2 or any(
            isinstance(n, bool) or not isinstance(n, int) for n in value) \
            or not 0 <= value[0] <= value[1] or value[1] <= 0:
        raise InvalidArgument(f"reservation_fraction is (numerator, denominator), a fraction "
                              f"of the list price in [0, 1] such as (3, 4), got "
                              f"{_inputs.shown(value)}")
    return value[0], value[1]
