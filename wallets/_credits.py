"""Credits appended, and folded into their accounts after the commit (PostgreSQL).

A leg that only adds to an account (a payee's posted credit, a pending credit coming or going)
needs no guard: it can never take the account below its limit. Yet as an UPDATE it locks the
account's row until the commit, and the market's fee account is paid by every settlement, a
busy seller by each of its own: with several nodes their settlements queued behind those rows
(SCALING.md, "Hot rows"). On PostgreSQL such a leg is appended to `ledger_account_credits`
instead (an INSERT: no lock anybody else waits for), and added to the account's row

- right after its transaction commits (`wallets._mutation.after_commit`), by a short
  transaction that skips accounts another fold holds (that one, or the next, takes them);
- by the sweep, for what a node that died in between left (`fold_pending`);
- inside a transaction about to refuse a debit for too little money, so that money credited
  is spendable at once (`fold_in(..., wait=True)`).

Every read of balances counts unfolded credits in the same statement (`accounts_select`), so
balances, the audit and the console are exact at every moment; a debit's guard, which reads
the row alone, can only err on the side of refusing, and then folds first. The posting's
entries, and so the hash chain, are written with it as before. SQLite, whose writers take
turns anyway, applies every leg at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Numeric, Select, cast, func, select, text

from wallets import _totals
from wallets._ledger_reads import ACCOUNTS
from wallets._mutation import after_commit
from wallets.currencies import INT64_MAX
from wallets.errors import ResourceExhausted
from wallets.models import Leg
from wallets.tables import AccountCreditRow

CREDITS = AccountCreditRow.__table__  # type: ignore[attr-defined]
SWEEP_ACCOUNTS = 200  # accounts one sweep folds at most
log = logging.getLogger("agentmarket.ledger")

_LOCK = "SELECT id FROM ledger_accounts WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"
_LOCK_FREE = text(_LOCK + " SKIP LOCKED")
_LOCK_WAIT = text(_LOCK)
_CLAIM = text(
    "WITH claimed AS (DELETE FROM ledger_account_credits WHERE account_id = ANY(:ids) "
    "RETURNING account_id, posted_credits_atomic, pending_credits_atomic) "
    "SELECT account_id, sum(posted_credits_atomic), sum(pending_credits_atomic), count(*) "
    "FROM claimed GROUP BY account_id ORDER BY account_id")
_ADD = text(
    "UPDATE ledger_accounts SET posted_credits_atomic = posted_credits_atomic + :credits, "
    "pending_credits_atomic = pending_credits_atomic + :pending WHERE id = :id "
    "AND posted_credits_atomic <= :max - :credits AND pending_credits_atomic + :pending <= :max")

_APPEND = text(
    "INSERT INTO ledger_account_credits (account_id, posted_credits_atomic, "
    "pending_credits_atomic) SELECT l.id, l.c, l.p "
    "FROM unnest(CAST(:ids AS text[]), CAST(:credits AS bigint[]), CAST(:pending AS bigint[])) "
    "AS l(id, c, p) JOIN ledger_accounts a ON a.id = l.id WHERE "
    "a.posted_credits_atomic::numeric + l.c + coalesce((SELECT sum(x.posted_credits_atomic) "
    "FROM ledger_account_credits x WHERE x.account_id = l.id), 0) <= :max AND "
    "a.pending_credits_atomic::numeric + l.p + coalesce((SELECT sum(x.pending_credits_atomic) "
    "FROM ledger_account_credits x WHERE x.account_id = l.id), 0) <= :max RETURNING id")
_UNDO = text("DELETE FROM ledger_account_credits WHERE id = ANY(:ids)")


def defers(leg: Leg) -> bool:
    """Whether this leg only adds to its account (no debit, no pending debit)."""
    return leg.posted_atomic >= 0 and leg.pending_debit_atomic == 0 and (
        leg.posted_atomic > 0 or leg.pending_credit_atomic != 0)


def append(conn: Connection, legs: Sequence[Leg]) -> None:
    """Append these legs' credits; fold them right after the commit when `conn` is a ledger
    write transaction (else a later fold or the sweep does). A credit that would take the
    account's running totals past int64, counting those not folded, first has the account's
    appended credits folded and its totals rewound (`wallets._totals`); if that leaves no room,
    it is refused, as the UPDATE would refuse it (two such credits racing each other near the
    limit stay unfolded: reads still count them, in NUMERIC)."""
    ids = [leg.account_id for leg in legs]
    params = {"ids": ids, "credits": [leg.posted_atomic for leg in legs],
              "pending": [leg.pending_credit_atomic for leg in legs], "max": INT64_MAX}
    added = conn.execute(_APPEND, params).scalars().all()
    if len(added) != len(legs):  # undo the part appended, make room, append again
        conn.execute(_UNDO, {"ids": added})
        fold_in(conn, ids, wait=True)
        for account_id in sorted(set(ids)):
            _totals.rewind(conn, account_id)
        added = conn.execute(_APPEND, params).scalars().all()
    if len(added) != len(legs):
        raise ResourceExhausted(
            f"the balance or holds of account(s) {', '.join(sorted(set(ids)))} would pass "
            f"{INT64_MAX} atomic; move part of it to a new account",
            reason="ACCOUNT_TOTALS_EXHAUSTED")
    accounts = sorted(set(ids))
    after_commit(conn, lambda folding: fold_in(folding, accounts))


def fold(engine: Engine, account_ids: Iterable[str]) -> int:
    """Fold these accounts' appended credits in a transaction of its own, skipping accounts
    another transaction holds; returns how many credits."""
    with engine.begin() as conn:
        return fold_in(conn, account_ids)


def fold_in(conn: Connection, account_ids: Iterable[str], *, wait: bool = False) -> int:
    """Fold in `conn`'s transaction. `wait`: lock the accounts even if that means waiting
    (a debit about to be refused); else skip those locked elsewhere."""
    ids = sorted(set(account_ids))
    locked = list(conn.execute(_LOCK_WAIT if wait else _LOCK_FREE, {"ids": ids}).scalars())
    if not locked:
        return 0
    folded = 0
    for account_id, credits, pending, count in conn.execute(_CLAIM, {"ids": locked}).all():
        params = {"id": account_id, "credits": int(credits), "pending": int(pending),
                  "max": INT64_MAX}
        if conn.execute(_ADD, params).rowcount != 1 and not (
                _totals.rewind(conn, account_id) and conn.execute(_ADD, params).rowcount == 1):
            raise ResourceExhausted(
                f"account {account_id}'s balance or holds would pass {INT64_MAX} atomic; move "
                "part of it to a new account", reason="ACCOUNT_TOTALS_EXHAUSTED")
        folded += count
    return folded


def fold_pending(engine: Engine) -> int:
    """The sweep: fold the credits nobody folded (their node died after the commit)."""
    if engine.dialect.name != "postgresql":
        return 0
    with engine.connect() as conn:
        accounts = list(conn.execute(select(CREDITS.c.account_id).distinct()
                                     .limit(SWEEP_ACCOUNTS)).scalars())
    if not accounts:
        return 0
    try:
        return fold(engine, accounts)
    except ResourceExhausted as error:  # left appended, still counted by every read
        log.error("credits not folded: %s", error.message)
        return 0


def accounts_select(engine_or_conn: Any) -> Select[Any]:
    """SELECT of the accounts' rows with their unfolded credits added (one statement, one
    snapshot: a fold committing meanwhile is counted once); the rows alone on SQLite."""
    if engine_or_conn.dialect.name != "postgresql":
        return select(ACCOUNTS)
    c, mine = ACCOUNTS.c, CREDITS.c.account_id == ACCOUNTS.c.id

    def plus_unfolded(total: Any, credits: Any) -> Any:  # NUMERIC: never overflows
        return (cast(total, Numeric) + select(func.coalesce(func.sum(credits), 0))
                .where(mine).scalar_subquery()).label(total.name)

    return select(c.id, c.owner, c.currency, c.kind,
                  plus_unfolded(c.posted_credits_atomic, CREDITS.c.posted_credits_atomic),
                  c.posted_debits_atomic, c.pending_debits_atomic,
                  plus_unfolded(c.pending_credits_atomic, CREDITS.c.pending_credits_atomic),
                  c.credit_limit_atomic, c.created_at_ms, c.totals_rewinds)
