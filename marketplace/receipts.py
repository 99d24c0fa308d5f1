"""Signed settlement receipts: what the node states about each settlement, provable offline.

Every transaction that settles money for an agreement (capture on release or confirm, refund,
expiry, a dispute's freeze and its resolution) or a payment-versus-payment leg (`marketplace.pvp`)
issues, inside that same transaction, a receipt the node signs with its ed25519 key: the
subject (agreement or payment id), what kind of settlement, the parties, the amounts (held,
paid to the seller, fee, verifier fee, refunded), every posting the transaction made (their
full content and chain hashes) and the chain position (the last posting's sequence and hash).
So a receipt exists exactly when its settlement committed, and a retry replays the settlement
without issuing another. On PostgreSQL postings are linked into the hash chain after they
commit (`wallets.sealer`): the receipt is then stored in the settlement's transaction naming
its postings, and signed with their chain hashes once they are sealed (`complete`: when it is
read, and by the sweeper), so what it states is the same.

`receipt_file` completes a receipt with the inclusion proof of its postings against a signed
checkpoint (`marketplace.checkpoints`; one is cut on demand when none covers them yet): the file
anyone checks with `agentmarket receipt verify FILE` or the few lines in PROTOCOL.md, without
access to the node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, Engine, bindparam, insert, select, update

from marketplace import agreement_states as st
from marketplace.checkpoints import Checkpoints
from marketplace.errors import FailedPrecondition, NotFound
from marketplace.escrows import find_row
from marketplace.identity import AgentKey
from marketplace.receipt_verify import RECEIPT_DOMAIN, VERSION, canonical
from marketplace.tables import ReceiptRow
from wallets import _sqlite_hot as hot
from wallets._mutation import transaction_sealed
from wallets.ledger import ENTRIES, POSTINGS, transaction_postings
from wallets.sealer import seal
from wallets.store import begin_in_turn

RECEIPTS = ReceiptRow.__table__  # type: ignore[attr-defined]
_INSERT_RECEIPT = insert(RECEIPTS)
T = TypeVar("T")
KIND_OF_STATE = {st.SETTLED: "capture", st.REFUNDED: "refund", st.EXPIRED: "expiry",
                 st.DISPUTED: "dispute_freeze", st.RESOLVED: "dispute_resolution"}


def written_postings(conn: Connection, since: int = 0) -> list[int]:
    """The sequences of the postings this write transaction has made (after the first
    `since` of them) that stand: a rolled-back savepoint's are gone."""
    mine = transaction_postings(conn)[since:]
    if not mine:
        return []
    return list(conn.execute(select(POSTINGS.c.sequence).where(POSTINGS.c.sequence.in_(mine))
                             .order_by(POSTINGS.c.sequence)).scalars())


def sealed_postings(conn: Connection, sequences: list[int]) -> list[dict[str, Any]] | None:
    """These postings as receipts state them, in sequence order; None while one of them is
    not sealed into the chain yet."""
    rows = conn.execute(select(POSTINGS).where(POSTINGS.c.sequence.in_(sequences))
                        .order_by(POSTINGS.c.sequence)).all()
    if any(r.position is None for r in rows):
        return None
    legs: dict[int, list[dict[str, str]]] = {}
    for e in conn.execute(select(ENTRIES).where(ENTRIES.c.sequence.in_(sequences))
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


def sealed_written(conn: Connection, since: int = 0) -> list[dict[str, Any]] | None:
    """On SQLite, where postings are sealed as they are written: `sealed_postings` of
    `written_postings`, from what the ledger kept of them (`transaction_sealed`), each checked
    to stand (its hash in the chain) in one statement. None when that cannot be done
    (PostgreSQL, or a posting the ledger did not keep or that does not stand): read them."""
    if conn.dialect.name != "sqlite":
        return None
    mine = sorted(set(transaction_postings(conn)[since:]))
    kept = transaction_sealed(conn)
    if not mine or any(sequence not in kept for sequence in mine):
        return [] if not mine else None
    standing = dict(hot.execute(conn, "SELECT sequence, hash FROM ledger_postings WHERE "
                                      f"sequence IN ({', '.join('?' * len(mine))})", mine))
    if any(standing.get(sequence) != kept[sequence][0].hash for sequence in mine):
        return None
    return [_stated(*kept[sequence]) for sequence in mine]


def _stated(posting: Any, prev_hash: str) -> dict[str, Any]:
    """A posting as `sealed_postings` states it."""
    return {"created_at_ms": posting.created_at_ms, "hash": posting.hash,
            "hold_id": posting.hold_id, "idempotency_key": posting.idempotency_key,
            "kind": posting.kind,
            "legs": [{"account_id": leg.account_id, "currency": leg.currency,
                      "pending_credit_atomic": str(leg.pending_credit_atomic),
                      "pending_debit_atomic": str(leg.pending_debit_atomic),
                      "posted_atomic": str(leg.posted_atomic)} for leg in posting.legs],
            "memo": posting.memo, "prev_hash": prev_hash, "sequence": posting.sequence,
            "span_id": posting.span_id, "trace_id": posting.trace_id}


_UNSIGNED = hot.Statement(select(RECEIPTS.c.receipt_id).where(RECEIPTS.c.signature == "")
                          .limit(1))
_UNSIGNED_OF = hot.Statement(select(RECEIPTS.c.receipt_id).where(
    RECEIPTS.c.signature == "", RECEIPTS.c.subject == bindparam("subject")).limit(1))
_LATEST_SIGNED = hot.Statement(select(RECEIPTS.c.body_json, RECEIPTS.c.signature).where(
    RECEIPTS.c.subject == bindparam("subject"), RECEIPTS.c.signature != "")
    .order_by(RECEIPTS.c.last_sequence.desc()).limit(1))


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
                 sequences: list[int], receipt_id: str = "",
                 sealed: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
        """Store the receipt of these postings (by sequence), signed now if they are sealed
        (SQLite), else once they are (`complete`); `receipt_id` defaults to subject:kind.
        `sealed`: these postings as `sealed_postings` states them, when the caller has them."""
        if not sequences or self.key is None:
            return None
        body: dict[str, Any] = {
            "amounts": {k: str(v) for k, v in amounts.items()}, "currency": currency,
            "issued_at_ms": self.clock_ms(), "kind": kind, "node": self.key.agent_id,
            "parties": parties, "postings": sorted(sequences), "subject": subject,
            "subject_kind": subject_kind}
        signature = self._sign(conn, body, sealed)
        hot.insert(conn, RECEIPTS, dict(
            receipt_id=receipt_id or f"{subject}:{kind}", subject=subject, kind=kind,
            last_sequence=max(sequences), body_json=orjson.dumps(body).decode(),
            signature=signature, issued_at_ms=body["issued_at_ms"]), _INSERT_RECEIPT)
        return body if signature else None

    def _sign(self, conn: Connection, body: dict[str, Any],
              sealed: list[dict[str, Any]] | None = None) -> str:
        """Put the sealed postings (named by sequence; `sealed` if given) and the chain
        position into `body` and sign it; '' (body unchanged) while one is not sealed yet."""
        assert self.key is not None
        postings = sealed if sealed is not None else sealed_postings(conn, body["postings"])
        if not postings:
            return ""
        body["postings"] = postings
        body["chain"] = {"head_hash": postings[-1]["hash"],
                         "sequence": postings[-1]["sequence"]}
        return self.key.sign(RECEIPT_DOMAIN + canonical(body)).hex()

    def complete(self, subject: str | None = None, *, limit: int = 1000) -> int:
        """Sign the receipts stored before their postings were sealed (of `subject`, or any),
        sealing what has committed first; returns how many were signed."""
        if self.key is None:
            return 0
        query = select(RECEIPTS).where(RECEIPTS.c.signature == "")
        if subject is not None:
            query = query.where(RECEIPTS.c.subject == subject)
        with hot.reading(self.engine) as reader:  # any unsigned at all (the sweeper asks
            if (_UNSIGNED.first(reader, {}) if subject is None  # every round)
                    else _UNSIGNED_OF.first(reader, {"subject": subject})) is None:
                return 0
        seal(self.engine)  # usually done already by the sealer: the lag is bounded, not zero
        signed = 0
        with begin_in_turn(self.engine) as conn:
            for row in conn.execute(query.order_by(RECEIPTS.c.last_sequence).limit(limit)
                                    ).all():
                body = orjson.loads(row.body_json)
                signature = self._sign(conn, body)
                if signature:
                    signed += conn.execute(update(RECEIPTS).where(
                        RECEIPTS.c.receipt_id == row.receipt_id, RECEIPTS.c.signature == ""
                    ).values(body_json=orjson.dumps(body).decode(), signature=signature)
                    ).rowcount
        return signed

    def for_agreement(self, agreement: str, apply: Callable[[Connection], T]
                      ) -> Callable[[Connection], T]:
        """`apply` (a settlement step of `agreement`), then, in its transaction, the receipt of
        the money it moved, named after the state it left the agreement in."""

        def run(conn: Connection) -> T:
            before = len(transaction_postings(conn))
            result = apply(conn)
            row = find_row(conn, agreement)
            kind = KIND_OF_STATE.get(row.state) if row is not None else None
            if kind is None:
                return result
            sealed = sealed_written(conn, before)
            sequences = ([p["sequence"] for p in sealed] if sealed is not None
                         else written_postings(conn, before))
            if kind == "expiry" and not sequences:
                # the ledger's own timeout returned the hold earlier: receipt that posting
                expired = conn.execute(select(POSTINGS.c.sequence).where(
                    POSTINGS.c.hold_id == row.hold_id, POSTINGS.c.kind == "expire")).scalar()
                sequences = [expired] if expired else []
                sealed = None
            parties = {"buyer": row.buyer_id, "seller": row.seller_id}
            if row.verifier_id:
                parties["verifier"] = row.verifier_id
            self.issue_in(conn, subject=agreement, subject_kind="agreement", kind=kind,
                          currency=row.currency, parties=parties, sequences=sequences,
                          sealed=sealed,
                          amounts={"held": row.held_atomic, "earned": row.earned_atomic,
                                   "seller": row.captured_atomic - row.fee_atomic,
                                   "fee": row.fee_atomic,
                                   "verifier": row.verifier_paid_atomic,
                                   "refunded": row.refunded_atomic})
            return result

        return run

    # ---- reading and proving ---------------------------------------------------------------

    def receipts(self, subject: str) -> list[dict[str, Any]]:
        """The signed receipts of a subject, oldest first ({"body", "signature"}); those whose
        postings are not sealed yet are signed first (without the node's key: left out)."""
        self.complete(subject)
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            rows = conn.execute(select(RECEIPTS).where(RECEIPTS.c.subject == subject,
                                                       RECEIPTS.c.signature != "")
                                .order_by(RECEIPTS.c.last_sequence)).all()
        return [{"body": orjson.loads(r.body_json), "signature": r.signature} for r in rows]

    def latest(self, subject: str) -> dict[str, Any] | None:
        """The subject's newest signed receipt (as `receipts` gives it), or None."""
        self.complete(subject)
        with hot.reading(self.engine) as reader:
            row = _LATEST_SIGNED.first(reader, {"subject": subject})
        return None if row is None else {"body": orjson.loads(row.body_json),
                                         "signature": row.signature}

    def receipt_file(self, subject: str, kind: str = "", *, party: str | None = None) -> bytes:
        """The verifiable file of the subject's receipt (its latest, or of `kind`); `party`:
        only among the receipts that name it (a party is given its own, never another's)."""
        found = [r for r in self.receipts(subject) if (not kind or r["body"]["kind"] == kind)
                 and (party is None or party in r["body"]["parties"].values())]
        if not found:
            raise NotFound(f"no {kind + ' ' if kind else ''}receipt for {subject[:16]}…")
        signed = found[-1]
        sequences = [p["sequence"] for p in signed["body"]["postings"]]
        positions = self.checkpoints.positions(sequences)
        checkpoint = self.checkpoints.covering(max(positions))
        if checkpoint is None and self.key is not None:
            self.checkpoints.cut()
            checkpoint = self.checkpoints.covering(max(positions))
        if checkpoint is None:
            raise FailedPrecondition("no checkpoint covers this receipt yet; the node signs "
                                     "one at its next checkpoint interval",
                                     reason="NO_CHECKPOINT")
        document = {"checkpoint": checkpoint.signed(),
                    "proofs": self.checkpoints.proofs(checkpoint, sequences, positions),
                    "receipt": signed, "version": VERSION}
        return canonical(document) + b"\n"
