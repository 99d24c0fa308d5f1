"""Signed settlement receipts: what the node states about each settlement, provable offline.

Every transaction that settles money for an agreement (capture on release or confirm, refund,
expiry, a dispute's freeze and its resolution) or a payment-versus-payment leg (`marketplace.pvp`)
issues, inside that same transaction, a receipt the node signs with its ed25519 key: the
subject (agreement or payment id), what kind of settlement, the parties, the amounts (held,
paid to the seller, fee, verifier fee, refunded), every posting the transaction made (their
full content and chain hashes) and the chain position (the last posting's sequence and hash).
So a receipt exists exactly when its settlement committed, and a retry replays the settlement
without issuing another.

`receipt_file` completes a receipt with the inclusion proof of its postings against a signed
checkpoint (`marketplace.checkpoints`; one is cut on demand when none covers them yet): the file
anyone checks with `agentmarket receipt verify FILE` or the few lines in PROTOCOL.md, without
access to the node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, Engine, insert, select

from marketplace import agreement_states as st
from marketplace.checkpoints import Checkpoints
from marketplace.errors import FailedPrecondition, NotFound
from marketplace.escrows import ESCROWS
from marketplace.identity import AgentKey
from marketplace.receipt_verify import RECEIPT_DOMAIN, VERSION, canonical
from marketplace.tables import ReceiptRow
from wallets.ledger import ENTRIES, HEAD, POSTINGS

RECEIPTS = ReceiptRow.__table__  # type: ignore[attr-defined]
T = TypeVar("T")
KIND_OF_STATE = {st.SETTLED: "capture", st.REFUNDED: "refund", st.EXPIRED: "expiry",
                 st.DISPUTED: "dispute_freeze", st.RESOLVED: "dispute_resolution"}


def head_sequence(conn: Connection) -> int:
    return int(conn.execute(select(HEAD.c.sequence)).scalar() or 0)


def postings_after(conn: Connection, after_sequence: int, until_sequence: int | None = None
                   ) -> list[dict[str, Any]]:
    """The postings after `after_sequence` (up to `until_sequence`), as receipts state them."""
    last = until_sequence if until_sequence is not None else 2**62
    rows = conn.execute(select(POSTINGS).where(POSTINGS.c.sequence > after_sequence,
                                               POSTINGS.c.sequence <= last)
                        .order_by(POSTINGS.c.sequence)).all()
    if not rows:
        return []
    legs: dict[int, list[dict[str, str]]] = {}
    for e in conn.execute(select(ENTRIES).where(ENTRIES.c.sequence > after_sequence,
                                                ENTRIES.c.sequence <= last)
                          .order_by(ENTRIES.c.id)):
        legs.setdefault(e.sequence, []).append({
            "account_id": e.account_id, "currency": e.currency,
            "pending_credit_atomic": str(e.pending_credit_atomic),
            "pending_debit_atomic": str(e.pending_debit_atomic),
            "posted_atomic": str(e.posted_atomic)})
    return [{"created_at_ms": r.created_at_ms, "hash": r.hash, "hold_id": r.hold_id,
             "idempotency_key": r.idempotency_key, "kind": r.kind,
             "legs": legs.get(r.sequence, []), "memo": r.memo, "prev_hash": r.prev_hash,
             "sequence": r.sequence, "span_id": r.span_id, "trace_id": r.trace_id}
            for r in rows]


class ReceiptBook:
    """Issues, stores and proves the receipts of one node (`key=None`: read and prove only,
    for operator tools without the node's key; proving then needs a covering checkpoint)."""

    def __init__(self, engine: Engine, key: AgentKey | None, clock_ms: Callable[[], int]
                 ) -> None:
        self.engine = engine
        self.key = key
        self.clock_ms = clock_ms
        self.checkpoints = Checkpoints(engine, key, clock_ms)

    # ---- issuing, inside the settlement's transaction --------------------------------------

    def issue_in(self, conn: Connection, *, subject: str, subject_kind: str, kind: str,
                 currency: str, parties: dict[str, str], amounts: dict[str, int],
                 after_sequence: int, until_sequence: int | None = None,
                 receipt_id: str = "") -> dict[str, Any] | None:
        """Sign and store the receipt of the postings written since `after_sequence` (by
        default those of this transaction); `receipt_id` defaults to subject:kind."""
        postings = postings_after(conn, after_sequence, until_sequence)
        if not postings or self.key is None:
            return None
        body = {"amounts": {k: str(v) for k, v in amounts.items()},
                "chain": {"head_hash": postings[-1]["hash"],
                          "sequence": postings[-1]["sequence"]},
                "currency": currency, "issued_at_ms": self.clock_ms(), "kind": kind,
                "node": self.key.agent_id, "parties": parties, "postings": postings,
                "subject": subject, "subject_kind": subject_kind}
        signature = self.key.sign(RECEIPT_DOMAIN + canonical(body)).hex()
        conn.execute(insert(RECEIPTS).values(
            receipt_id=receipt_id or f"{subject}:{kind}", subject=subject, kind=kind,
            last_sequence=postings[-1]["sequence"], body_json=orjson.dumps(body).decode(),
            signature=signature, issued_at_ms=body["issued_at_ms"]))
        return body

    def for_agreement(self, agreement: str, apply: Callable[[Connection], T]
                      ) -> Callable[[Connection], T]:
        """`apply` (a settlement step of `agreement`), then, in its transaction, the receipt of
        the money it moved, named after the state it left the agreement in."""

        def run(conn: Connection) -> T:
            before = head_sequence(conn)
            result = apply(conn)
            row = conn.execute(select(ESCROWS).where(ESCROWS.c.agreement_id == agreement)
                               ).first()
            kind = KIND_OF_STATE.get(row.state) if row is not None else None
            until = None
            if kind == "expiry" and not postings_after(conn, before):
                # the ledger's own timeout returned the hold earlier: receipt that posting
                expired = conn.execute(select(POSTINGS.c.sequence).where(
                    POSTINGS.c.hold_id == row.hold_id, POSTINGS.c.kind == "expire")).scalar()
                before, until = (expired - 1, expired) if expired else (before, None)
            if kind is not None:
                parties = {"buyer": row.buyer_id, "seller": row.seller_id}
                if row.verifier_id:
                    parties["verifier"] = row.verifier_id
                self.issue_in(conn, subject=agreement, subject_kind="agreement", kind=kind,
                              currency=row.currency, parties=parties, after_sequence=before,
                              until_sequence=until,
                              amounts={"held": row.held_atomic, "earned": row.earned_atomic,
                                       "seller": row.captured_atomic - row.fee_atomic,
                                       "fee": row.fee_atomic,
                                       "verifier": row.verifier_paid_atomic,
                                       "refunded": row.refunded_atomic})
            return result

        return run

    # ---- reading and proving ---------------------------------------------------------------

    def receipts(self, subject: str) -> list[dict[str, Any]]:
        """The signed receipts of a subject, oldest first ({"body", "signature"})."""
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            rows = conn.execute(select(RECEIPTS).where(RECEIPTS.c.subject == subject)
                                .order_by(RECEIPTS.c.last_sequence)).all()
        return [{"body": orjson.loads(r.body_json), "signature": r.signature} for r in rows]

    def receipt_file(self, subject: str, kind: str = "") -> bytes:
        """The verifiable file of the subject's receipt (its latest, or of `kind`)."""
        found = [r for r in self.receipts(subject) if not kind or r["body"]["kind"] == kind]
        if not found:
            raise NotFound(f"no {kind + ' ' if kind else ''}receipt for {subject[:16]}…")
        signed = found[-1]
        sequences = [p["sequence"] for p in signed["body"]["postings"]]
        checkpoint = self.checkpoints.covering(sequences[-1])
        if checkpoint is None and self.key is not None:
            self.checkpoints.cut()
            checkpoint = self.checkpoints.covering(sequences[-1])
        if checkpoint is None:
            raise FailedPrecondition("no checkpoint covers this receipt yet; the node signs "
                                     "one at its next checkpoint interval",
                                     reason="NO_CHECKPOINT")
        document = {"checkpoint": checkpoint.signed(),
                    "proofs": self.checkpoints.proofs(checkpoint, sequences),
                    "receipt": signed, "version": VERSION}
        return canonical(document) + b"\n"
