"""The ledger's reads for operators and gauges: an account's history, postings by filter,
holds, and the rows they are made of. `wallets.ledger.Ledger` inherits them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, func, or_, select

from wallets.errors import InvalidArgument, NotFound
from wallets.models import Balance, Hold, Leg, Posting
from wallets.tables import AccountRow, EntryRow, HoldRow, PostingRow

ACCOUNTS = AccountRow.__table__  # type: ignore[attr-defined]
POSTINGS = PostingRow.__table__  # type: ignore[attr-defined]
ENTRIES = EntryRow.__table__  # type: ignore[attr-defined]
HOLDS = HoldRow.__table__  # type: ignore[attr-defined]


def balance_from_row(row: Any) -> Balance:
    return Balance(
        account_id=row.id,
        owner=row.owner,
        currency=row.currency,
        kind=row.kind,
        posted_credits_atomic=int(row.posted_credits_atomic),  # NUMERIC with unfolded credits
        posted_debits_atomic=row.posted_debits_atomic,
        pending_debits_atomic=row.pending_debits_atomic,
        pending_credits_atomic=int(row.pending_credits_atomic),
        credit_limit_atomic=row.credit_limit_atomic,
    )


def hold_from_row(row: Any) -> Hold:
    return Hold(
        hold_id=row.id,
        debit_account_id=row.debit_account_id,
        credit_account_id=row.credit_account_id,
        currency=row.currency,
        amount_atomic=row.amount_atomic,
        captured_atomic=row.captured_atomic,
        voided_atomic=row.voided_atomic,
        status=row.status,
        expires_at_ms=row.expires_at_ms,
    )


class LedgerReads:
    """Reads over the ledger's engine, each on a connection of its own."""

    engine: Engine

    def _read(self) -> Connection:
        return self.engine.connect().execution_options(agentmarket_read=True)

    def history(self, account_id: str, *, limit: int = 100,
                before_sequence: int = 0) -> list[Posting]:
        """Postings touching an account, newest first."""
        if not 1 <= limit <= 1000:
            raise InvalidArgument("limit must be 1..1000")
        seq_query = select(ENTRIES.c.sequence).where(ENTRIES.c.account_id == account_id)
        if before_sequence:
            seq_query = seq_query.where(ENTRIES.c.sequence < before_sequence)
        seq_query = seq_query.order_by(ENTRIES.c.sequence.desc()).limit(limit)
        with self._read() as conn:
            if conn.execute(select(ACCOUNTS.c.id).where(ACCOUNTS.c.id == account_id)).first() \
                    is None:
                raise NotFound(f"account {account_id!r} does not exist")
            sequences = [row.sequence for row in conn.execute(seq_query)]
            return self._postings(conn, sequences)

    def postings(self, *, trace_id: str | None = None, hold_id: str | None = None,
                 account_id: str | None = None, kind: str | None = None,
                 since_ms: int | None = None, limit: int = 1000,
                 newest_first: bool = False,
                 before_sequence: int | None = None) -> list[Posting]:
        """Postings matching every filter given (the operator's view of the ledger);
        `before_sequence` pages back from a sequence number."""
        order = POSTINGS.c.sequence.desc() if newest_first else POSTINGS.c.sequence
        query = select(POSTINGS.c.sequence).order_by(order).limit(limit)
        if before_sequence is not None:
            query = query.where(POSTINGS.c.sequence < before_sequence)
        if trace_id:
            query = query.where(POSTINGS.c.trace_id == trace_id)
        if hold_id:
            query = query.where(POSTINGS.c.hold_id == hold_id)
        if kind:
            query = query.where(POSTINGS.c.kind == kind)
        if since_ms is not None:
            query = query.where(POSTINGS.c.created_at_ms >= since_ms)
        if account_id:
            query = query.where(POSTINGS.c.sequence.in_(
                select(ENTRIES.c.sequence).where(ENTRIES.c.account_id == account_id)))
        with self._read() as conn:
            return self._postings(conn, [row.sequence for row in conn.execute(query)])

    def open_hold_totals(self) -> list[tuple[str, int, int]]:
        """(currency, open holds, amount still held) for the metrics gauges."""
        still_held = HOLDS.c.amount_atomic - HOLDS.c.captured_atomic - HOLDS.c.voided_atomic
        query = (select(HOLDS.c.currency, func.count(), func.coalesce(func.sum(still_held), 0))
                 .where(HOLDS.c.status == "open").group_by(HOLDS.c.currency))
        with self._read() as conn:
            return [(code, int(n), int(amount)) for code, n, amount in conn.execute(query)]

    def holds(self, *, account_id: str | None = None, status: str | None = None,
              limit: int = 1000) -> list[Hold]:
        """Holds on an account (either side), newest expiry first."""
        query = select(HOLDS).order_by(HOLDS.c.expires_at_ms.desc()).limit(limit)
        if account_id:
            query = query.where(or_(HOLDS.c.debit_account_id == account_id,
                                    HOLDS.c.credit_account_id == account_id))
        if status:
            query = query.where(HOLDS.c.status == status)
        with self._read() as conn:
            return [hold_from_row(row) for row in conn.execute(query)]

    def _postings(self, conn: Connection, sequences: list[int]) -> list[Posting]:
        if not sequences:
            return []
        legs: dict[int, list[Leg]] = {}
        for e in conn.execute(select(ENTRIES).where(ENTRIES.c.sequence.in_(sequences))
                              .order_by(ENTRIES.c.id)):
            legs.setdefault(e.sequence, []).append(Leg(
                e.account_id, e.currency, e.posted_atomic, e.pending_debit_atomic,
                e.pending_credit_atomic))
        rows = conn.execute(select(POSTINGS).where(POSTINGS.c.sequence.in_(sequences))).all()
        by_seq = {
            r.sequence: Posting(
                sequence=r.sequence, idempotency_key=r.idempotency_key, kind=r.kind,
                legs=tuple(legs.get(r.sequence, ())), created_at_ms=r.created_at_ms,
                hold_id=r.hold_id, memo=r.memo, trace_id=r.trace_id, span_id=r.span_id,
                hash=r.hash)
            for r in rows
        }
        return [by_seq[s] for s in sequences if s in by_seq]
