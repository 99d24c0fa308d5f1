"""Running totals that never fill: rewinding an account's posted credits and debits together.

An account keeps its posted credits and debits as running BIGINT sums, and its balance is their
difference. Sums grow with every round trip, so an account that money passes through (an FX
desk's, a rail's) would reach 2^63 from flows that leave its balance where it was, and then
refuse everyone. Before refusing, the ledger takes the same whole number of REWIND_UNITs off
both sums (the balance does not change) and counts them in `totals_rewinds`: the lifetime
totals are the columns plus `totals_rewinds * REWIND_UNIT`, which the audit checks against
the entries. What still cannot pass is a balance itself beyond int64: money that is really
there.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

REWIND_UNIT = 2**40  # small against the largest amount (2^62): a rewind leaves room for it

_UNITS = ("(CASE WHEN posted_credits_atomic < posted_debits_atomic THEN posted_credits_atomic "
          "ELSE posted_debits_atomic END / :unit)")
_REWIND = text(
    f"UPDATE ledger_accounts SET posted_credits_atomic = posted_credits_atomic - :unit * {_UNITS}, "
    f"posted_debits_atomic = posted_debits_atomic - :unit * {_UNITS}, "
    f"totals_rewinds = totals_rewinds + {_UNITS} "
    "WHERE id = :id AND posted_credits_atomic >= :unit AND posted_debits_atomic >= :unit")


def rewind(conn: Connection, account_id: str) -> bool:
    """Take what both posted totals share, in whole units, off both (in `conn`'s transaction,
    which then holds the row); False when there was not a unit to take."""
    return conn.execute(_REWIND, {"id": account_id, "unit": REWIND_UNIT}).rowcount == 1


def rewound(credits: int, debits: int) -> tuple[int, int, int]:
    """`rewind` on values in memory: (credits, debits, units taken off both)."""
    units = min(credits, debits) // REWIND_UNIT
    return credits - units * REWIND_UNIT, debits - units * REWIND_UNIT, units


def lifetime(total: int, rewinds: int) -> int:
    """A posted total since the account opened."""
    return total + rewinds * REWIND_UNIT
