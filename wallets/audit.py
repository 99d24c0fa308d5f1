"""Proof that the books are sound: maintained balances equal the sum of their entries, every
currency sums to zero, holds never resolve more than they held, and the hash chain is intact."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, func, literal_column, select

from wallets._chain import GENESIS_HASH, posting_hash
from wallets._credits import accounts_select
from wallets._totals import lifetime
from wallets.ledger import ENTRIES, HEAD, HOLDS, POSTINGS, Ledger
from wallets.models import CheckReport, Leg

_LOW_BITS = 31
_LOW_MASK = 2**_LOW_BITS - 1


def _snapshot(ledger: Ledger) -> Connection:
    """A connection reading one snapshot throughout (PostgreSQL: REPEATABLE READ), so writers
    and the sealer going on meanwhile cannot make the books look unbalanced."""
    conn = ledger.engine.connect()
    if ledger.engine.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


def check_balances(ledger: Ledger) -> CheckReport:
    """Recompute every balance from entries and compare with the maintained one."""
    report = CheckReport()
    e = ENTRIES.c

    def halves(amount: Any, where: Any, name: str) -> list[Any]:
        """A lifetime sum may pass int64 (SQLite's sum() then fails): sum its high and low
        31 bits apart (each entry is at most 2^62), to be added up in Python."""
        high = amount.op(">>")(literal_column(str(_LOW_BITS)))
        low = amount.op("&")(literal_column(str(_LOW_MASK)))
        return [func.coalesce(func.sum(high).filter(where), 0).label(f"{name}_high"),
                func.coalesce(func.sum(low).filter(where), 0).label(f"{name}_low")]

    sums = (
        select(
            e.account_id,
            *halves(e.posted_atomic, e.posted_atomic > 0, "cr"),
            *halves(-e.posted_atomic, e.posted_atomic < 0, "dr"),
            func.coalesce(func.sum(e.pending_debit_atomic), 0).label("pdr"),
            func.coalesce(func.sum(e.pending_credit_atomic), 0).label("pcr"),
        )
        .group_by(e.account_id)
    )
    zero: dict[str, int] = defaultdict(int)
    with _snapshot(ledger) as conn:
        derived = {row.account_id: row for row in conn.execute(sums)}
        for acct in conn.execute(accounts_select(conn)):  # unfolded credits counted
            report.accounts += 1
            d = derived.get(acct.id)
            want = ((int(d.cr_high) << _LOW_BITS) + int(d.cr_low),
                    (int(d.dr_high) << _LOW_BITS) + int(d.dr_low), d.pdr, d.pcr) \
                if d else (0, 0, 0, 0)
            have = (lifetime(int(acct.posted_credits_atomic), acct.totals_rewinds),
                    lifetime(acct.posted_debits_atomic, acct.totals_rewinds),
                    acct.pending_debits_atomic, acct.pending_credits_atomic)
            if tuple(int(x) for x in want) != have:
                report.problems.append(f"account {acct.id}: balances {have} != entries {want}")
            zero[acct.currency] += acct.posted_credits_atomic - acct.posted_debits_atomic
            if acct.kind == "wallet" and (acct.posted_credits_atomic - acct.posted_debits_atomic
                                          - acct.pending_debits_atomic
                                          + acct.credit_limit_atomic) < 0:
                report.problems.append(f"account {acct.id}: available balance below its limit")
        for code, total in zero.items():
            if total:
                report.problems.append(f"{code}: accounts sum to {total}, not zero")
        for hold in conn.execute(select(HOLDS)):
            if hold.captured_atomic + hold.voided_atomic > hold.amount_atomic:
                report.problems.append(f"hold {hold.id}: resolved more than it held")
            if hold.status == "open" and hold.captured_atomic + hold.voided_atomic == \
                    hold.amount_atomic:
                report.problems.append(f"hold {hold.id}: fully resolved but still open")
    return report


def verify_chain(ledger: Ledger, *, batch: int = 5000) -> CheckReport:
    """Recompute the hash chain from its first position; report the first break. Postings
    committed but not sealed yet (PostgreSQL's sealer links them shortly after commit) are
    counted in `unsealed`, not as problems."""
    report = CheckReport()
    prev = GENESIS_HASH
    last = 0
    p = POSTINGS.c
    with _snapshot(ledger) as conn:
        head = conn.execute(select(HEAD)).one()
        while True:
            rows = conn.execute(select(POSTINGS).where(p.position > last)
                                .order_by(p.position).limit(batch)).all()
            if not rows:
                break
            seqs = [r.sequence for r in rows]
            legs: dict[int, list[Leg]] = defaultdict(list)
            for en in conn.execute(select(ENTRIES).where(ENTRIES.c.sequence.in_(seqs))
                                   .order_by(ENTRIES.c.id)):
                legs[en.sequence].append(Leg(en.account_id, en.currency, en.posted_atomic,
                                             en.pending_debit_atomic, en.pending_credit_atomic))
            for r in rows:
                report.postings += 1
                if r.position != last + 1:
                    report.problems.append(f"position {last + 1} of the chain is missing")
                want = posting_hash(
                    prev, sequence=r.sequence, idempotency_key=r.idempotency_key, kind=r.kind,
                    hold_id=r.hold_id, created_at_ms=r.created_at_ms, memo=r.memo,
                    trace_id=r.trace_id, span_id=r.span_id, legs=legs[r.sequence])
                if r.prev_hash != prev or r.hash != want:
                    report.problems.append(f"posting {r.sequence}: hash chain broken")
                    return report
                prev, last = r.hash, r.position
        report.unsealed = int(conn.execute(select(func.count()).where(
            p.position.is_(None))).scalar() or 0)
        if (head.sequence, head.hash) != (last, prev):
            report.problems.append("ledger head does not match the last posting")
    return report
