"""Reputation is earned, never declared: the share of a seller's finished agreements that
settled without dispute or refund, in per mille (0 with no history)."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from marketplace.tables import EscrowRow

ESCROWS = EscrowRow.__table__  # type: ignore[attr-defined]
_GOOD = ("settled",)
_BAD = ("refunded", "disputed", "expired")


def reputation_permille(engine: Engine, seller_id: str) -> int:
    query = (select(ESCROWS.c.state, func.count())
             .where(ESCROWS.c.seller_id == seller_id,
                    ESCROWS.c.state.in_(_GOOD + _BAD))
             .group_by(ESCROWS.c.state))
    with engine.connect().execution_options(agentmarket_read=True) as conn:
        counts = dict(conn.execute(query).all())
    good = sum(counts.get(s, 0) for s in _GOOD)
    total = good + sum(counts.get(s, 0) for s in _BAD)
    return good * 1000 // total if total else 0
