"""Disputes: the buyer freezes delivered money inside the dispute window; an arbiter decides.

    open     (buyer-signed, before the window closes; delivered or verified agreements only)
             one posting: the earned amount moves from the hold into the marketplace's dispute
             account (kind "escrow"), a consulted verifier is paid, the unearned rest goes back to
             the buyer. The money is then frozen: neither party can touch it, and the hold's
             timeout no longer matters. The buyer's evidence is stored with the dispute, next to
             what the marketplace recorded at redeem (voucher, signed receipts with output hashes
             and outputs, verification results).
    resolve  (signed by an arbiter key the node trusts) to the seller, the buyer, or a split:
             one transaction of two postings on the dispute account (a hold for the frozen
             amount, then its final capture split between seller, marketplace fee and buyer).
             The seller's reputation takes the share it was awarded.

Over gRPC only an operator or a configured arbiter may send the decision (`marketplace.access`),
besides the arbiter's signature in it; key custody, audit and multi-party approval are not
covered yet (SECURITY.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select, update

from marketplace import agreements as ag
from marketplace.agreement_states import next_state
from marketplace.errors import (
    BadSignature,
    DisputeWindowClosed,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from marketplace.escrows import (
    DISPUTES,
    EVIDENCE,
    escrow_dict,
    locked_row,
    read_row,
    same,
    set_values,
)
from marketplace.identity import check_agent_id, verify
from marketplace.reputation import record_outcome
from marketplace.v1 import agreement_pb2, dispute_pb2, settlement_pb2
from wallets import attributes as attr
from wallets.currencies import split
from wallets.guard import SpendContext

if TYPE_CHECKING:
    from marketplace.settlement import Settlement

MAX_REASON = 2000
MAX_EVIDENCE = 20
MAX_EVIDENCE_BYTES = 64 * 1024
RESOLVE_HOLD_S = 3600
Outcome = dispute_pb2.DisputeOutcome


def check_evidence(evidence: list[settlement_pb2.Evidence]) -> None:
    if len(evidence) > MAX_EVIDENCE:
        raise InvalidArgument(f"at most {MAX_EVIDENCE} evidence items")
    for item in evidence:
        if not 1 <= len(item.kind) <= 32 or len(item.description) > 500:
            raise InvalidArgument("evidence needs a kind (1..32) and a description (<= 500)")
        if len(item.content) > MAX_EVIDENCE_BYTES:
            raise InvalidArgument(f"an evidence item holds at most {MAX_EVIDENCE_BYTES} bytes")


class Disputes:
    def __init__(self, settlement: Settlement, arbiters: Iterable[str] = ()) -> None:
        self.settlement = settlement
        self.arbiters = frozenset(check_agent_id(a, "arbiter") for a in arbiters)
        self._tracer = settlement._tracer

    # ---- the buyer ------------------------------------------------------------------------

    def open(self, key: str, agreement: str, reason: str, buyer_signature: bytes,
             evidence: list[settlement_pb2.Evidence]) -> dict[str, Any]:
        if not 1 <= len(reason) <= MAX_REASON:
            raise InvalidArgument(f"a dispute needs a reason of 1..{MAX_REASON} characters")
        check_evidence(evidence)
        s = self.settlement
        row = read_row(s.engine, agreement)
        if not verify(row.buyer_id, ag.dispute_message(agreement, reason, evidence),
                      buyer_signature):
            raise BadSignature("only the agreement's buyer can dispute it")
        parties = s.accounts.parties(row)
        stored = dispute_pb2.DisputeRecord(buyer_evidence=evidence).SerializeToString()

        def apply(conn: Connection) -> dict[str, Any]:
            current = locked_row(conn, agreement)
            state = next_state(current.state, "dispute")
            now = s.clock_ms()
            if now >= current.release_at_ms:
                raise DisputeWindowClosed("the dispute window has closed")
            frozen, fee = current.earned_atomic, current.verifier_fee_atomic
            splits = [(parties["dispute"], frozen)] + ([(parties["verifier"], fee)] if fee else [])
            with self._tracer.start_as_current_span("escrow.freeze", attributes={
                attr.AGREEMENT_ID: agreement, attr.AMOUNT_ATOMIC: frozen,
                attr.CURRENCY: current.currency, attr.HOLD_ID: current.hold_id,
                attr.PAYER: current.buyer_id, attr.PAYEE: current.seller_id,
            }):
                s.ledger.capture_in(conn, f"{key}:freeze", current.hold_id, frozen + fee, splits,
                                    final=True)
            set_values(conn, agreement, state=state, verifier_paid_atomic=fee, updated_at_ms=now,
                       refunded_atomic=current.held_atomic - frozen - fee)
            conn.execute(insert(DISPUTES).values(
                agreement_id=agreement, status="open", reason=reason, buyer_evidence=stored,
                frozen_atomic=frozen, currency=current.currency, opened_at_ms=now, outcome=0,
                seller_atomic=0, buyer_atomic=0, arbiter_id="", note="", resolved_at_ms=0))
            return escrow_dict(conn, agreement)

        return s.ledger.mutate(key, "dispute", {"agreement": agreement, "reason": reason,
                                                "evidence": ag.evidence_digest(evidence)},
                               s._receipted(agreement, apply), same, same)

    # ---- the arbiter ----------------------------------------------------------------------

    def resolve(self, key: str, agreement: str, outcome: int, seller_atomic: int, note: str,
                arbiter_id: str, arbiter_signature: bytes) -> dict[str, Any]:
        """Pay the frozen amount out as the arbiter decided (see the module docstring)."""
        if not self.arbiters:
            raise FailedPrecondition("this marketplace has no arbiter configured",
                                     reason="NO_ARBITER")
        if arbiter_id not in self.arbiters:
            raise PermissionDenied("only an arbiter of this marketplace can resolve disputes")
        if len(note) > MAX_REASON:
            raise InvalidArgument(f"note is longer than {MAX_REASON} characters")
        if outcome not in (Outcome.DISPUTE_OUTCOME_SELLER, Outcome.DISPUTE_OUTCOME_BUYER,
                           Outcome.DISPUTE_OUTCOME_SPLIT):
            raise InvalidArgument("outcome must be SELLER, BUYER or SPLIT")
        if not verify(arbiter_id, ag.resolve_message(agreement, outcome, seller_atomic, note),
                      arbiter_signature):
            raise BadSignature("the decision is not signed by the arbiter")
        s = self.settlement
        row = read_row(s.engine, agreement)
        frozen = row.earned_atomic
        if outcome == Outcome.DISPUTE_OUTCOME_SPLIT and not 0 < seller_atomic < frozen:
            raise FailedPrecondition(f"a split gives the seller 1..{frozen - 1} atomic units of "
                                     f"the {frozen} frozen", reason="SPLIT_OUT_OF_RANGE")
        seller_gross = {Outcome.DISPUTE_OUTCOME_SELLER: frozen,
                        Outcome.DISPUTE_OUTCOME_BUYER: 0}.get(outcome, seller_atomic)
        parties = s.accounts.parties(row)

        def apply(conn: Connection) -> dict[str, Any]:
            current = locked_row(conn, agreement)
            state = next_state(current.state, "resolve")
            seller_part, fee = split(seller_gross, s.fee_bps)
            buyer_part = frozen - seller_gross
            splits = [(parties["seller"], seller_part), (parties["fees"], fee),
                      (parties["buyer"], buyer_part)]
            with self._tracer.start_as_current_span("dispute.resolve", attributes={
                attr.AGREEMENT_ID: agreement, attr.AMOUNT_ATOMIC: seller_gross,
                attr.FEE_ATOMIC: fee, attr.CURRENCY: current.currency,
                attr.PAYER: current.buyer_id, attr.PAYEE: current.seller_id,
                "agentmarket.dispute.outcome": Outcome.Name(outcome),
            }):
                hold = s.ledger.hold_in(conn, f"{key}:hold", parties["dispute"],
                                        parties["seller"], frozen, timeout_s=RESOLVE_HOLD_S,
                                        spend=SpendContext(current.seller_id, current.skill))
                s.ledger.capture_in(conn, f"{key}:capture", hold.hold_id, frozen,
                                    [p for p in splits if p[1]], final=True)
            now = s.clock_ms()
            set_values(conn, agreement, state=state, captured_atomic=seller_gross,
                       fee_atomic=fee, refunded_atomic=current.refunded_atomic + buyer_part,
                       updated_at_ms=now)
            conn.execute(update(DISPUTES).where(DISPUTES.c.agreement_id == agreement).values(
                status="resolved", outcome=outcome, seller_atomic=seller_gross,
                buyer_atomic=buyer_part, arbiter_id=arbiter_id, note=note, resolved_at_ms=now))
            record_outcome(conn, current.seller_id, seller_gross * 1000 // frozen)
            return escrow_dict(conn, agreement)

        return s.ledger.mutate(key, "resolve_dispute", {
            "agreement": agreement, "outcome": outcome, "seller_atomic": seller_gross,
            "note": note, "arbiter": arbiter_id}, s._receipted(agreement, apply), same, same)

    # ---- reading --------------------------------------------------------------------------

    def get(self, agreement: str) -> dispute_pb2.DisputeRecord:
        """The dispute with the buyer's and the marketplace's evidence."""
        row = read_row(self.settlement.engine, agreement)
        with self.settlement.engine.connect().execution_options(agentmarket_read=True) as conn:
            found = conn.execute(select(DISPUTES).where(
                DISPUTES.c.agreement_id == agreement)).first()
            delivery = conn.execute(select(EVIDENCE.c.delivery).where(
                EVIDENCE.c.agreement_id == agreement)).scalar()
        if found is None:
            raise NotFound(f"agreement {agreement[:12]}… has no dispute")
        record = dispute_pb2.DisputeRecord.FromString(found.buyer_evidence)
        record.MergeFrom(dispute_pb2.DisputeRecord(
            agreement_id=agreement, status=found.status, reason=found.reason,
            frozen_atomic=found.frozen_atomic, currency=found.currency,
            opened_at_ms=found.opened_at_ms, outcome=found.outcome,
            seller_atomic=found.seller_atomic, buyer_atomic=found.buyer_atomic,
            arbiter_id=found.arbiter_id, note=found.note, resolved_at_ms=found.resolved_at_ms,
            agreement=agreement_pb2.SignedAgreement.FromString(row.signed_agreement)))
        if delivery:
            record.delivery.CopyFrom(dispute_pb2.DeliveryEvidence.FromString(delivery))
        return record
