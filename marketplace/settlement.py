"""Escrow and settlement: hold the buyer's money for an agreement, pay verified work, refund
the rest.

    active --redeem--> settled | refunded            (SCHEMA / CHECKER: verified at redeem)
    active --redeem--> delivered --confirm / timeout--> settled
                       delivered --dispute--> disputed
    active --deadline passes--> expired               (the whole hold goes back)

Every transition and the postings it causes commit in one transaction, keyed by the request's
idempotency key (`Ledger.mutate`), so a retry never pays twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from jsonschema import ValidationError
from jsonschema.validators import validator_for
from opentelemetry import trace
from sqlalchemy import Connection, Engine, insert, select, update

from marketplace import agreements as ag
from marketplace.errors import (
    BudgetExceeded,
    FailedPrecondition,
    IllegalTransition,
    InvalidArgument,
    InvalidVoucher,
    NotFound,
    PermissionDenied,
)
from marketplace.identity import verify
from marketplace.payword import verify_word
from marketplace.registry import Registry
from marketplace.reputation import ESCROWS
from marketplace.v1 import agreement_pb2, registry_pb2
from wallets import attributes as attr
from wallets.currencies import split
from wallets.ledger import Ledger

MARKETPLACE_OWNER = "marketplace"
HOLD_GRACE_S = 3600
MAX_RECEIPTS = 10_000


class Settlement:
    def __init__(self, ledger: Ledger, registry: Registry, *, fee_bps: int = 250,
                 clock_ms: Callable[[], int] | None = None,
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("agentmarket.settlement", tracer_provider=tracer_provider)
        self.ledger = ledger
        self.registry = registry
        self.fee_bps = fee_bps
        self.clock_ms = clock_ms or ledger.clock_ms
        self.engine: Engine = ledger.engine

    def fees_account(self, currency_code: str) -> str:
        return self.ledger.open_account(MARKETPLACE_OWNER, currency_code, "fees").account_id

    # ---- open -----------------------------------------------------------------------------

    def open_escrow(self, key: str, signed: agreement_pb2.SignedAgreement) -> dict[str, Any]:
        """Check both signatures, the seller's listing and the buyer's funds; hold max_total."""
        body = ag.parse_body(signed)
        ag.check_signatures(signed, body)
        agreement = ag.agreement_id(signed.body)
        terms = body.terms
        now = self.clock_ms()
        if terms.completion_deadline_ms <= now:
            raise FailedPrecondition("the agreement's completion deadline has already passed")
        skill = self._listed_skill(body)
        buyer = self.ledger.find_account(body.buyer_id, terms.currency)
        if buyer is None:
            raise FailedPrecondition(f"the buyer has no {terms.currency} wallet")
        seller = self.ledger.open_account(body.seller_id, terms.currency)
        self.fees_account(terms.currency)  # opened now: settlement runs inside a transaction
        timeout_s = (terms.completion_deadline_ms - now) // 1000 + terms.dispute_window_s \
            + HOLD_GRACE_S
        with self._tracer.start_as_current_span("escrow.hold", attributes={
            attr.AGREEMENT_ID: agreement, attr.AMOUNT_ATOMIC: terms.max_total_atomic,
            attr.CURRENCY: terms.currency, attr.PAYER: body.buyer_id, attr.PAYEE: body.seller_id,
        }) as span:

            def apply(conn: Connection) -> dict[str, Any]:
                if conn.execute(select(ESCROWS.c.agreement_id)
                                .where(ESCROWS.c.agreement_id == agreement)).first():
                    raise FailedPrecondition(f"agreement {agreement[:12]}… already has escrow")
                hold = self.ledger.hold_in(conn, key, buyer.account_id, seller.account_id,
                                           terms.max_total_atomic, timeout_s=int(timeout_s))
                conn.execute(insert(ESCROWS).values(
                    agreement_id=agreement, signed_agreement=signed.SerializeToString(),
                    buyer_id=body.buyer_id, seller_id=body.seller_id, skill=terms.skill,
                    currency=terms.currency, verification=terms.verification, state="active",
                    hold_id=hold.hold_id, held_atomic=terms.max_total_atomic,
                    earned_atomic=0, captured_atomic=0, fee_atomic=0, refunded_atomic=0,
                    verified_outputs=0, failed_outputs=0,
                    output_schema_json=skill.output_schema_json,
                    deadline_ms=terms.completion_deadline_ms, delivered_at_ms=0,
                    dispute_reason="", created_at_ms=now,
                ))
                return self._escrow(conn, agreement)

            result = self.ledger.mutate(key, "open_escrow", {"agreement": agreement}, apply,
                                        _same, _same)
            span.set_attribute(attr.HOLD_ID, result["hold_id"])
            return result

    def _listed_skill(self, body: agreement_pb2.AgreementBody) -> registry_pb2.Skill:
        listing = self.registry.get(body.seller_id)
        for skill in listing.skills:
            if skill.name == body.terms.skill:
                if body.terms.verification not in skill.verification_methods:
                    raise FailedPrecondition(
                        f"skill {skill.name} does not offer the agreed verification method")
                return skill
        raise NotFound(f"the seller does not list skill {body.terms.skill!r}")

    # ---- redeem ---------------------------------------------------------------------------

    def redeem(self, key: str, agreement: str, voucher: agreement_pb2.Voucher,
               receipts: list[agreement_pb2.Receipt]) -> dict[str, Any]:
        """The seller presents its latest voucher and one receipt per call; pay what verifies."""
        row = self._row(agreement)
        signed = agreement_pb2.SignedAgreement.FromString(row.signed_agreement)
        body = agreement_pb2.AgreementBody.FromString(signed.body)
        earned, verified, failed = self._verify_delivery(row, body, voucher, receipts)
        with self._tracer.start_as_current_span("settlement.redeem", attributes={
            attr.AGREEMENT_ID: agreement, attr.AMOUNT_ATOMIC: earned, attr.CURRENCY: row.currency,
            attr.PAYER: row.buyer_id, attr.PAYEE: row.seller_id,
            "agentmarket.verified_outputs": verified, "agentmarket.failed_outputs": failed,
        }):

            def apply(conn: Connection) -> dict[str, Any]:
                current = self._locked_row(conn, agreement)
                if current.state != "active":
                    raise IllegalTransition(f"agreement is {current.state}; it cannot be redeemed")
                conn.execute(update(ESCROWS).where(ESCROWS.c.agreement_id == agreement).values(
                    earned_atomic=earned, verified_outputs=verified, failed_outputs=failed,
                    delivered_at_ms=self.clock_ms(), state="delivered"))
                if row.verification in (registry_pb2.VERIFICATION_METHOD_SCHEMA,
                                        registry_pb2.VERIFICATION_METHOD_CHECKER):
                    self._settle_in(conn, key, agreement)
                return self._escrow(conn, agreement)

            return self.ledger.mutate(key, "redeem", {"agreement": agreement,
                                                      "voucher": voucher.SerializeToString().hex(),
                                                      "receipts": len(receipts)},
                                      apply, _same, _same)

    def _verify_delivery(self, row, body, voucher, receipts):  # type: ignore[no-untyped-def]
        """(earned, verified, failed): the voucher bounds what the buyer authorised; receipts
        that fail verification are not paid."""
        if voucher.agreement_id != row.agreement_id:
            raise InvalidVoucher("the voucher is for a different agreement")
        if voucher.payword_index > body.payword_length or not verify_word(
                voucher.payword, voucher.payword_index, body.payword_root, 0):
            raise InvalidVoucher("the voucher's payword does not hash to the agreement's root")
        authorised = voucher.payword_index * body.link_value_atomic
        if voucher.cumulative_atomic != authorised:
            raise InvalidVoucher("cumulative_atomic does not match the payword index")
        if authorised > row.held_atomic:
            raise BudgetExceeded("the voucher authorises more than the agreement holds")
        if len(receipts) > MAX_RECEIPTS:
            raise InvalidArgument(f"at most {MAX_RECEIPTS} receipts per redeem")
        schema = json.loads(row.output_schema_json) if row.output_schema_json else {}
        validator = validator_for(schema)(schema)
        charged = verified = failed = 0
        seen: set[int] = set()
        for receipt in receipts:
            if receipt.agreement_id != row.agreement_id or receipt.sequence in seen:
                raise InvalidArgument(f"receipt {receipt.sequence} is duplicated or misfiled")
            seen.add(receipt.sequence)
            ag.check_receipt(receipt, row.seller_id)
            if receipt.charged_atomic < 0:
                raise InvalidArgument("a receipt cannot charge a negative amount")
            if self._output_ok(validator, receipt.output_json):
                verified += 1
                charged += receipt.charged_atomic
            else:
                failed += 1
        return min(charged, authorised), verified, failed

    @staticmethod
    def _output_ok(validator, output_json: str) -> bool:  # type: ignore[no-untyped-def]
        try:
            validator.validate(json.loads(output_json))
        except (ValueError, ValidationError):
            return False
        return True

    def _settle_in(self, conn: Connection, key: str, agreement: str) -> None:
        """Capture what was earned (seller + fee, one posting) and release the rest."""
        row = self._locked_row(conn, agreement)
        seller_part, fee = split(row.earned_atomic, self.fee_bps)
        seller = self.ledger.find_account(row.seller_id, row.currency)
        fees = self.ledger.find_account(MARKETPLACE_OWNER, row.currency, "fees")
        assert seller is not None and fees is not None, "opened with the escrow"
        splits = [(seller.account_id, seller_part), (fees.account_id, fee)]
        with self._tracer.start_as_current_span("escrow.capture", attributes={
            attr.AGREEMENT_ID: agreement, attr.AMOUNT_ATOMIC: row.earned_atomic,
            attr.CURRENCY: row.currency, attr.FEE_ATOMIC: fee, attr.HOLD_ID: row.hold_id,
            attr.PAYER: row.buyer_id, attr.PAYEE: row.seller_id,
        }):
            self.ledger.capture_in(conn, f"{key}:capture", row.hold_id, row.earned_atomic,
                                   [s for s in splits if s[1]] or None, final=True)
        refunded = row.held_atomic - row.earned_atomic
        with self._tracer.start_as_current_span("escrow.release", attributes={
            attr.AGREEMENT_ID: agreement, attr.AMOUNT_ATOMIC: refunded,
            attr.CURRENCY: row.currency, attr.HOLD_ID: row.hold_id, attr.PAYEE: row.buyer_id,
        }):
            conn.execute(update(ESCROWS).where(ESCROWS.c.agreement_id == agreement).values(
                state="settled" if row.earned_atomic else "refunded",
                captured_atomic=row.earned_atomic, fee_atomic=fee, refunded_atomic=refunded))

    # ---- buyer ----------------------------------------------------------------------------

    def confirm(self, key: str, agreement: str, buyer_signature: bytes) -> dict[str, Any]:
        row = self._row(agreement)
        if not verify(row.buyer_id, ag.request_message("confirm", agreement), buyer_signature):
            raise PermissionDenied("only the agreement's buyer can confirm it")

        def apply(conn: Connection) -> dict[str, Any]:
            if self._locked_row(conn, agreement).state != "delivered":
                raise IllegalTransition("only delivered work can be confirmed")
            self._settle_in(conn, key, agreement)
            return self._escrow(conn, agreement)

        return self.ledger.mutate(key, "confirm", {"agreement": agreement}, apply, _same, _same)

    def dispute(self, key: str, agreement: str, reason: str,
                buyer_signature: bytes) -> dict[str, Any]:
        if len(reason) > 2000:
            raise InvalidArgument("reason is longer than 2,000 characters")
        row = self._row(agreement)
        message = ag.request_message("dispute", agreement, reason)
        if not verify(row.buyer_id, message, buyer_signature):
            raise PermissionDenied("only the agreement's buyer can dispute it")

        def apply(conn: Connection) -> dict[str, Any]:
            current = self._locked_row(conn, agreement)
            if current.state != "delivered":
                raise IllegalTransition(f"agreement is {current.state}; only delivered work "
                                        "can be disputed")
            body = agreement_pb2.AgreementBody.FromString(
                agreement_pb2.SignedAgreement.FromString(current.signed_agreement).body)
            if self.clock_ms() > current.delivered_at_ms + body.terms.dispute_window_s * 1000:
                raise FailedPrecondition("the dispute window has closed")
            conn.execute(update(ESCROWS).where(ESCROWS.c.agreement_id == agreement).values(
                state="disputed", dispute_reason=reason))
            return self._escrow(conn, agreement)

        return self.ledger.mutate(key, "dispute", {"agreement": agreement, "reason": reason},
                                  apply, _same, _same)

    # ---- sweeps ---------------------------------------------------------------------------

    def sweep(self) -> int:
        """Expire undelivered agreements past their deadline; auto-release accepted-by-silence
        work past its dispute window. Returns how many agreements moved."""
        now = self.clock_ms()
        moved = 0
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            rows = conn.execute(select(ESCROWS).where(ESCROWS.c.state.in_(("active",
                                                                           "delivered")))).all()
        for row in rows:
            body = agreement_pb2.AgreementBody.FromString(
                agreement_pb2.SignedAgreement.FromString(row.signed_agreement).body)
            if row.state == "active" and now > row.deadline_ms:
                self.ledger.mutate(f"expire-agreement:{row.agreement_id}", "expire_agreement",
                                   {"agreement": row.agreement_id},
                                   lambda c, r=row: self._expire_in(c, r), _same, _same)
                moved += 1
            elif (row.state == "delivered"
                  and now > row.delivered_at_ms + body.terms.dispute_window_s * 1000):
                key = f"auto-release:{row.agreement_id}"
                self.ledger.mutate(key, "auto_release", {"agreement": row.agreement_id},
                                   lambda c, r=row, k=key: self._settle_in(c, k, r.agreement_id),
                                   _same, _same)
                moved += 1
        return moved

    def _expire_in(self, conn: Connection, row) -> None:  # type: ignore[no-untyped-def]
        if self._locked_row(conn, row.agreement_id).state != "active":
            return
        hold = self.ledger._hold_row(conn, row.hold_id)
        if hold.status == "open":
            self.ledger.void_in(conn, f"expire-agreement:{row.agreement_id}:void", row.hold_id)
        conn.execute(update(ESCROWS).where(ESCROWS.c.agreement_id == row.agreement_id).values(
            state="expired", refunded_atomic=row.held_atomic))

    # ---- reading --------------------------------------------------------------------------

    def get(self, agreement: str) -> dict[str, Any]:
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            self._row(agreement)
            return self._escrow(conn, agreement)

    def agreements(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(ESCROWS.c.agreement_id).order_by(ESCROWS.c.created_at_ms.desc())
        if state:
            query = query.where(ESCROWS.c.state == state)
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            ids = [r.agreement_id for r in conn.execute(query.limit(limit))]
            return [self._escrow(conn, i) for i in ids]

    def _row(self, agreement: str):  # type: ignore[no-untyped-def]
        if not isinstance(agreement, str) or len(agreement) != 64:
            raise InvalidArgument("agreement_id must be 64 hex characters")
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            row = conn.execute(select(ESCROWS).where(ESCROWS.c.agreement_id == agreement)).first()
        if row is None:
            raise NotFound(f"agreement {agreement[:12]}… has no escrow")
        return row

    @staticmethod
    def _locked_row(conn: Connection, agreement: str):  # type: ignore[no-untyped-def]
        return conn.execute(select(ESCROWS).where(ESCROWS.c.agreement_id == agreement)
                            .with_for_update()).one()

    @staticmethod
    def _escrow(conn: Connection, agreement: str) -> dict[str, Any]:
        row = conn.execute(select(ESCROWS).where(ESCROWS.c.agreement_id == agreement)).one()
        return {k: row._mapping[k] for k in (
            "agreement_id", "state", "hold_id", "currency", "held_atomic", "captured_atomic",
            "fee_atomic", "refunded_atomic", "verified_outputs", "failed_outputs",
            "buyer_id", "seller_id", "skill", "earned_atomic")}


def _same(value: Any) -> Any:
    return value


