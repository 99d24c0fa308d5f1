"""Agreements for the console: a page of the list, and one agreement with everything an
operator judges a dispute on (terms, receipts, verification results, evidence, postings).

The list is keyset-paginated newest first on (created_at_ms, agreement_id), served by the
`ix_escrows_created` indexes, so a page costs the same at 10 or 10 million agreements; only the
columns a row shows are read (never the signed agreement blob).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select

from marketplace.agreement_states import STATES
from marketplace.console.reads import PAGE, ConsoleReads, postings_in_traces
from marketplace.errors import NotFound
from marketplace.escrows import ESCROWS, EVIDENCE, body_of, read_row
from marketplace.settlement import Settlement
from marketplace.spanstore import TraceSummary
from marketplace.v1 import agreement_pb2, dispute_pb2, registry_pb2
from wallets.models import Posting

LIST_COLUMNS = ("agreement_id", "state", "skill", "currency", "buyer_id", "seller_id",
                "held_atomic", "earned_atomic", "captured_atomic", "fee_atomic",
                "refunded_atomic", "created_at_ms", "verified_outputs", "failed_outputs")


@dataclass
class AgreementPage:
    rows: list[Any]
    total: int
    by_state: dict[str, int]
    next_cursor: str = ""
    names: dict[str, str] = field(default_factory=dict)


@dataclass
class ReceiptView:
    receipt: agreement_pb2.Receipt
    passed: bool | None
    reason: str


@dataclass
class AgreementDetail:
    row: Any
    body: agreement_pb2.AgreementBody
    verification: str
    receipts: list[ReceiptView]
    verification_details: dict[str, Any]
    voucher: agreement_pb2.Voucher | None
    dispute: dispute_pb2.DisputeRecord | None
    postings: list[Posting]
    traces: list[TraceSummary]
    owners: dict[str, tuple[str, str]]
    names: dict[str, str]


def query_int(text: str) -> int | None:
    """A query string's whole number: ASCII digits that fit a database integer (`str.isdigit`
    takes "²" and any length), else None."""
    if not text or not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def parse_cursor(cursor: str, id_chars: int = 64) -> tuple[int, str] | None:
    """(time, id) of a page cursor `<ms>:<id>` the console wrote; None for anything else."""
    created, _, row_id = (cursor or "").partition(":")
    when = query_int(created)
    if when is None or len(row_id) != id_chars:
        return None
    return when, row_id


def method_name(method: int) -> str:
    name = registry_pb2.VerificationMethod.Name(method) if method in \
        registry_pb2.VerificationMethod.values() else str(method)
    return name.removeprefix("VERIFICATION_METHOD_").replace("_", " ").lower()


class AgreementReads:
    def __init__(self, reads: ConsoleReads, settlement: Settlement) -> None:
        self.reads = reads
        self.settlement = settlement
        self.engine = reads.engine

    def page(self, *, state: str = "", cursor: str = "", party: str = "",
             limit: int = PAGE) -> AgreementPage:
        c = ESCROWS.c
        query = (select(*(getattr(c, name) for name in LIST_COLUMNS))
                 .order_by(c.created_at_ms.desc(), c.agreement_id.desc()).limit(limit + 1))
        count = select(func.count()).select_from(ESCROWS)
        if state in STATES:
            query = query.where(c.state == state)
            count = count.where(c.state == state)
        if party:
            who = or_(c.buyer_id == party, c.seller_id == party)
            query, count = query.where(who), count.where(who)
        after = parse_cursor(cursor)
        if after is not None:
            query = query.where(or_(c.created_at_ms < after[0],
                                    and_(c.created_at_ms == after[0],
                                         c.agreement_id < after[1])))
        with self.reads._read() as conn:
            rows = conn.execute(query).all()
            total = int(conn.execute(count).scalar() or 0)
            by_state = {s: int(n) for s, n in conn.execute(
                select(c.state, func.count()).group_by(c.state))}
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if rows and more else None
        return AgreementPage(rows, total, by_state,
                             f"{last.created_at_ms}:{last.agreement_id}" if last else "",
                             self.reads.names({r.seller_id for r in rows}
                                              | {r.buyer_id for r in rows}))

    def detail(self, agreement_id: str) -> AgreementDetail:
        row = read_row(self.engine, agreement_id)
        body = body_of(row)
        with self.reads._read() as conn:
            delivery_bytes = conn.execute(select(EVIDENCE.c.delivery).where(
                EVIDENCE.c.agreement_id == agreement_id)).scalar()
        delivery = (dispute_pb2.DeliveryEvidence.FromString(delivery_bytes)
                    if delivery_bytes else None)
        results = json.loads(delivery.verification_json) if delivery and \
            delivery.verification_json else {}
        by_sequence = {r.get("sequence"): r for r in results.get("receipts", [])}
        receipts = [ReceiptView(r, by_sequence.get(r.sequence, {}).get("passed"),
                                by_sequence.get(r.sequence, {}).get("reason", ""))
                    for r in (delivery.receipts if delivery else [])]
        try:
            dispute: dispute_pb2.DisputeRecord | None = self.settlement.disputes.get(
                agreement_id)
        except NotFound:
            dispute = None
        traces = (self.reads.spans.traces(limit=20, agreement_id=agreement_id)
                  if self.reads.spans else [])
        postings = postings_in_traces(self.reads, [t.trace_id for t in traces])
        known = {p.sequence for p in postings}
        postings += [p for p in self.reads.ledger.postings(hold_id=row.hold_id, limit=200)
                     if p.sequence not in known]
        postings.sort(key=lambda p: p.sequence)
        owners = self.reads.owners({leg.account_id for p in postings for leg in p.legs})
        return AgreementDetail(
            row=row, body=body, verification=method_name(body.terms.verification),
            receipts=receipts, verification_details=results.get("details", {}),
            voucher=delivery.voucher if delivery else None, dispute=dispute,
            postings=postings, traces=traces, owners=owners,
            names=self.reads.names([row.buyer_id, row.seller_id, row.verifier_id]))

