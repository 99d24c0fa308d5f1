"""Escrow and settlement: hold the buyer's money for an agreement, pay verified work once the
dispute window closes, refund the rest.

The states and events are in `marketplace.agreement_states` (one table). In short:

    open     checks both signatures, that the accepted offer has not lapsed, that the terms fit
             the seller's live listing (skill, currency, unit, verification method) and that this
             node can verify them; then holds max_total on the buyer's wallet.
    redeem   the seller, signing the request, presents its latest voucher and receipts; each
             receipt is checked (seller-signed output hash, charge = price of its usage) and
             verified (marketplace.verification). The earned amount is fixed, and *stays in the
             hold*: verified (or delivered, for buyer acceptance). Nothing verified: refunded.
    confirm  the buyer accepts now: capture.
    sweep    when the dispute window closes: capture (auto-release); past the completion deadline
             and its redeem grace (REDEEM_GRACE_S) without redeem: expire (void the hold).
    dispute  inside the window (marketplace.disputes): the earned amount is frozen.

Why capture waits for the dispute window (the design decision): capturing at redeem and
clawing back on dispute would take money back from a seller who may have withdrawn it; a
payments engineer keeps the money where the buyer's claim can still reach it. So verified money
is paid only when the window closes, or earlier when the buyer confirms (waiving its window), and
a dispute moves it into the marketplace's dispute account, out of reach of both parties and of
the hold's timeout, until an arbiter resolves it. A dispute window of 0 captures at redeem.

The capture is one posting: seller's part, the marketplace fee (rounded down, in
`wallets.currencies.split`) and any verifier fee, with the unearned rest voided back to the buyer
in the same posting. Every transition and the postings it causes commit in one transaction,
keyed by the request's idempotency key (`Ledger.mutate`), so a retry never pays twice; external
verification (an LLM judge, a verifier agent) runs before that transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import trace
from sqlalchemy import Connection, Engine, and_, bindparam, case, insert, or_, select

from marketplace import agreement_states as st
from marketplace import agreements as ag
from marketplace.agreement_states import next_state
from marketplace.disputes import Disputes
from marketplace.errors import (
    DeadlinePassed,
    InvalidArgument,
    PermissionDenied,
)
from marketplace.escrow_payouts import Payouts
from marketplace.escrows import (
    ESCROWS,
    EVIDENCE,
    AgreementFacts,
    Facts,
    Opened,
    OpenedAgreements,
    Pending,
    body_of,
    escrow_dict,
    escrow_message,
    escrow_of,
    locked_row,
    opened_of,
    read_row,
    same,
)
from marketplace.escrows import set_values as _set
from marketplace.grpc_tracing import span_if_active
from marketplace.identity import verify
from marketplace.receipts import ReceiptBook
from marketplace.registry import Registry
from marketplace.settlement_accounts import SettlementAccounts
from marketplace.settlement_checks import check_open, check_receipts, check_voucher, listed_skill
from marketplace.v1 import agreement_pb2, dispute_pb2, registry_pb2, settlement_pb2
from marketplace.verification import Verification
from wallets import _sqlite_hot as hot
from wallets import attributes as attr
from wallets.caller import NODE_SCOPE
from wallets.currencies import split
from wallets.errors import AgentmarketError, InsufficientFunds
from wallets.guard import SpendContext
from wallets.ledger import Ledger
from wallets.metrics import MarketMetrics, market_metrics

HOLD_GRACE_S = 3600
# Work delivered by the completion deadline may still be redeemed for a while after it (a
# seller restarting, a node outage at the deadline): a tenth of the agreement's span (open to
# deadline), at most REDEEM_GRACE_S; then the hold is voided to the buyer. Well inside
# HOLD_GRACE_S, so a redeem at the end of the grace still finds the hold for its dispute window.
REDEEM_GRACE_S = 600
REDEEM_GRACE_DIVISOR = 10


def redeem_grace_ms(created_at_ms: int, deadline_ms: int) -> int:
    """How long after its deadline an agreement may still be redeemed."""
    return min(REDEEM_GRACE_S * 1000, max(0, deadline_ms - created_at_ms) // REDEEM_GRACE_DIVISOR)
MAX_RECEIPTS = ag.MAX_RECEIPTS
MAX_BATCH = 100
SWEEP_LIMIT = 1000
BUYER_ACCEPTANCE = registry_pb2.VERIFICATION_METHOD_BUYER_ACCEPTANCE
# Verified by calling out (a judge, a verifier agent, maybe for a fee): only once the escrow's
# state, read first, says the redeem can be taken.
CALLED_OUT = frozenset({registry_pb2.VERIFICATION_METHOD_LLM_JUDGE,
                        registry_pb2.VERIFICATION_METHOD_THIRD_PARTY})
log = logging.getLogger("agentmarket.settlement")
_OPENED = hot.Statement(select(ESCROWS.c.agreement_id).where(
    ESCROWS.c.agreement_id == bindparam("agreement")))
_STATE = hot.Statement(select(ESCROWS.c.state).where(
    ESCROWS.c.agreement_id == bindparam("agreement")))
_INSERT_ESCROW = insert(ESCROWS)
_INSERT_EVIDENCE = insert(EVIDENCE)


def _due() -> hot.Statement:
    """The sweep's query: agreements past their deadline and redeem grace, and delivered or
    verified ones whose dispute window has closed (built once: the sweeper runs it often)."""
    now = bindparam("now")
    span = ESCROWS.c.deadline_ms - ESCROWS.c.created_at_ms
    grace = case((span // REDEEM_GRACE_DIVISOR < REDEEM_GRACE_S * 1000,
                  span // REDEEM_GRACE_DIVISOR), else_=REDEEM_GRACE_S * 1000)
    due = or_(and_(ESCROWS.c.state == st.ACTIVE, ESCROWS.c.deadline_ms + grace < now),
              and_(or_(*(ESCROWS.c.state == state for state in st.AWAITING_RELEASE)),
                   ESCROWS.c.release_at_ms <= now))
    after = ESCROWS.c.agreement_id > bindparam("after")  # a page past the ones swept
    return hot.Statement(select(ESCROWS).where(due, after).order_by(ESCROWS.c.agreement_id)
                         .limit(SWEEP_LIMIT))


_DUE = _due()


class Settlement:
    def __init__(self, ledger: Ledger, registry: Registry, *, fee_bps: int = 250,
                 clock_ms: Callable[[], int] | None = None,
                 tracer_provider: trace.TracerProvider | None = None,
                 verification: Verification | None = None, arbiters: Iterable[str] = (),
                 metrics: MarketMetrics | None = None, receipts: ReceiptBook | None = None
                 ) -> None:
        """`arbiters`: agent ids whose signed decisions resolve disputes; `receipts`: signs a
        receipt of every settlement, in its transaction (`marketplace.receipts`)."""
        split(0, fee_bps)  # validates fee_bps
        self._tracer = trace.get_tracer("agentmarket.settlement", tracer_provider=tracer_provider)
        self._tracer_provider = tracer_provider
        self.ledger = ledger
        self.registry = registry
        self.fee_bps = fee_bps
        self.clock_ms = clock_ms or ledger.clock_ms
        self.engine: Engine = ledger.engine
        self.verification = verification or Verification(tracer_provider=tracer_provider)
        self.disputes = Disputes(self, arbiters)
        self.metrics = metrics or market_metrics()
        self.receipts = receipts
        self.facts = AgreementFacts(self.engine)
        self._opened = OpenedAgreements()
        self.accounts = SettlementAccounts(ledger)
        self.payouts = Payouts(ledger, fee_bps=fee_bps, clock_ms=self.clock_ms,
                               metrics=self.metrics, span=self._span)

    def _receipted(self, agreement: str, apply: Callable[[Connection], Any]
                   ) -> Callable[[Connection], Any]:
        """`apply`, then in its transaction the signed receipt of the money it moved."""
        return apply if self.receipts is None else self.receipts.for_agreement(agreement, apply)

    def _span(self, name: str, attributes: Callable[[], dict[str, Any]]) -> Any:
        """A current span, built only if it can be recorded (`span_if_active`)."""
        return span_if_active(self._tracer, self._tracer_provider, name, attributes)

    # ---- accounts -------------------------------------------------------------------------

    def fees_account(self, currency_code: str) -> str:
        return self.accounts.fees(currency_code)

    def dispute_account(self, currency_code: str) -> str:
        return self.accounts.dispute(currency_code)

    def account(self, owner: str, currency_code: str) -> str:
        return self.accounts.wallet(owner, currency_code)

    # ---- open -----------------------------------------------------------------------------

    def open_escrow(self, key: str, signed: agreement_pb2.SignedAgreement) -> dict[str, Any]:
        """Check signatures, offer expiry, the listing and the verifier; hold max_total."""
        body = ag.parse_body(signed)
        ag.check_signatures(signed, body)
        agreement = ag.agreement_id(signed.body)
        terms = body.terms
        now = self.clock_ms()
        with hot.reading(self.engine) as conn:
            opened = _OPENED.first(conn, {"agreement": agreement}) is not None
            if not opened:
                check_open(body, now)
                skill = listed_skill(self.registry.get_in(conn, body.seller_id), body.terms)
                self.verification.check_terms(terms)
                buyer = self.accounts.buyer_wallet(conn, body.buyer_id, terms.currency)
        if opened:  # a retry replays its first answer; any other request is an illegal open
            return self.ledger.mutate(key, "open_escrow", {"agreement": agreement}, lambda conn:
                                      next_state(locked_row(conn, agreement).state, "open"),
                                      same, same)
        if (buyer.posted_credits_atomic - buyer.posted_debits_atomic
                - buyer.pending_debits_atomic < terms.max_total_atomic
                and self.ledger.balance(buyer.id).available_atomic < terms.max_total_atomic):
            # (holds past their timeout count only until expired: the second look expires them)
            raise InsufficientFunds(f"the buyer's wallet cannot cover the agreement's maximum "
                                    f"of {terms.max_total_atomic} atomic {terms.currency}")
        seller = self.account(body.seller_id, terms.currency)
        self.fees_account(terms.currency)  # every account settlement may pay is opened now
        self.dispute_account(terms.currency)
        if terms.HasField("verifier"):
            self.account(terms.verifier.agent_id, terms.currency)
        timeout_s = ((terms.completion_deadline_ms - now) // 1000 + terms.dispute_window_s
                     + HOLD_GRACE_S)
        with self._span("escrow.hold", lambda: {
            attr.AGREEMENT_ID: agreement, attr.AMOUNT_ATOMIC: terms.max_total_atomic,
            attr.CURRENCY: terms.currency, attr.PAYER: body.buyer_id, attr.PAYEE: body.seller_id,
            attr.SKILL: terms.skill,
        }) as span:

            inserted: dict[str, Any] = {}

            def apply(conn: Connection) -> dict[str, Any]:
                existing = _STATE.first(conn, {"agreement": agreement})
                state = next_state(existing.state if existing else st.PROPOSED, "open")
                hold = self.ledger.hold_in(conn, key, buyer.id, seller,
                                           terms.max_total_atomic, timeout_s=int(timeout_s),
                                           spend=SpendContext(body.seller_id, terms.skill))
                row = dict(
                    agreement_id=agreement, signed_agreement=signed.SerializeToString(),
                    buyer_id=body.buyer_id, seller_id=body.seller_id,
                    verifier_id=terms.verifier.agent_id, skill=terms.skill,
                    currency=terms.currency, verification=terms.verification, state=state,
                    hold_id=hold.hold_id, held_atomic=terms.max_total_atomic, earned_atomic=0,
                    captured_atomic=0, fee_atomic=0, refunded_atomic=0, verifier_fee_atomic=0,
                    verifier_paid_atomic=0, verified_outputs=0, failed_outputs=0,
                    output_schema_json=skill.output_schema_json,
                    deadline_ms=terms.completion_deadline_ms,
                    dispute_window_s=terms.dispute_window_s, delivered_at_ms=0, release_at_ms=0,
                    created_at_ms=now, updated_at_ms=now)
                hot.insert(conn, ESCROWS, row, _INSERT_ESCROW)
                inserted.update(row)
                return escrow_of(row)

            result = self.ledger.mutate(key, "open_escrow", {"agreement": agreement}, apply,
                                        same, same)
            span.set_attribute(attr.HOLD_ID, result["hold_id"])
            self.facts.remember(Facts(agreement, body.buyer_id, body.seller_id,
                                      terms.verifier.agent_id, terms.currency, terms.skill))
            if inserted.get("hold_id") == result["hold_id"]:  # this open's row, not a replay
                self._opened.remember(Opened(
                    agreement, body.buyer_id, body.seller_id, terms.verifier.agent_id,
                    terms.currency, terms.max_total_atomic, terms.completion_deadline_ms,
                    inserted["created_at_ms"], skill.output_schema_json, signed, body))
            return result

    # ---- redeem ---------------------------------------------------------------------------

    def redeem(self, key: str, agreement: str, voucher: agreement_pb2.Voucher,
               receipts: list[agreement_pb2.Receipt],
               seller_signature: bytes = b"", buyer_confirmation: bytes = b"") -> dict[str, Any]:
        """The seller presents its latest voucher and one receipt per call; verify and hold
        what was earned until the dispute window closes. With the buyer's confirmation (its
        signature of "confirm|agreement", passed on by the seller) delivered or verified work
        is paid in the same transaction, as Confirm would."""
        if not key:
            raise InvalidArgument("idempotency_key is required on every mutating request")
        if len(receipts) > MAX_RECEIPTS:
            raise InvalidArgument(f"at most {MAX_RECEIPTS} receipts per redeem")
        row = self._opened.get(agreement)  # what never changes, when this node knows it
        state = st.ACTIVE  # as far as known here: the transaction checks it again
        if row is None or not self._redeemable_unread(row):
            read = read_row(self.engine, agreement)  # a retry replays, a late one is refused
            self.facts.remember(read)
            state, row = read.state, row or opened_of(read)
            if state == st.ACTIVE:
                self._opened.remember(row)
        if not verify(row.seller_id, ag.redeem_message(agreement, voucher, receipts),
                      seller_signature):
            raise PermissionDenied("only the agreement's seller can redeem it (sign the "
                                   "request)", reason="BAD_SIGNATURE")
        if buyer_confirmation and not verify(row.buyer_id, ag.request_message("confirm", agreement),
                                             buyer_confirmation):
            raise PermissionDenied("buyer_confirmation is not the agreement's buyer's signature "
                                   "of its confirm", reason="BAD_SIGNATURE")
        request = {"agreement": agreement, "voucher": voucher.SerializeToString().hex(),
                   "receipts": ag.receipts_digest(receipts)}
        with self._span("settlement.redeem", lambda: {
            attr.AGREEMENT_ID: agreement, attr.CURRENCY: row.currency,
            attr.PAYER: row.buyer_id, attr.PAYEE: row.seller_id,
        }) as span:
            if state != st.ACTIVE:  # a retry replays; anything else is refused
                return self._confirmed(key, agreement, buyer_confirmation, self.ledger.mutate(
                    key, "redeem", request, lambda conn: next_state(
                        locked_row(conn, agreement).state, "redeem_verify"), same, same))
            grace_ms = redeem_grace_ms(row.created_at_ms, row.deadline_ms)
            if self.clock_ms() > row.deadline_ms + grace_ms:
                raise DeadlinePassed(f"the completion deadline, and the {grace_ms} ms grace for "
                                     "redeeming after it, have passed; the hold goes back")
            signed, body = row.signed, row.body
            authorised = check_voucher(row, body, voucher)
            check_receipts(row, body.terms, voucher, receipts)
            outcome = self.verification.verify(agreement, signed, body.terms,
                                                row.output_schema_json, receipts)
            verifier_fee = body.terms.verifier.fee_atomic if outcome.verifier_consulted else 0
            earned = min(outcome.passed_atomic, authorised, row.held_atomic - verifier_fee)
            span.set_attributes({attr.AMOUNT_ATOMIC: earned,
                                 "agentmarket.verified_outputs": outcome.verified,
                                 "agentmarket.failed_outputs": outcome.failed})
            if outcome.failed:
                self.metrics.verification_failures.add(
                    outcome.failed, {"method": int(body.terms.verification)})
            event = ("redeem_fail" if earned == 0 else
                     "redeem_accept" if body.terms.verification == BUYER_ACCEPTANCE else
                     "redeem_verify")
            evidence = dispute_pb2.DeliveryEvidence(voucher=voucher, receipts=receipts,
                                                    verification_json=outcome.to_json())
            parties = self.accounts.parties(row)

            def apply(conn: Connection) -> dict[str, Any]:
                now = self.clock_ms()
                current = locked_row(conn, agreement)
                if current.state != st.ACTIVE:  # settled meanwhile, or a retry of one
                    next_state(current.state, "redeem_verify")
                changes = dict(state=next_state(current.state, event), earned_atomic=earned,
                               verified_outputs=outcome.verified, failed_outputs=outcome.failed,
                               verifier_fee_atomic=verifier_fee, delivered_at_ms=now,
                               updated_at_ms=now,
                               release_at_ms=now + body.terms.dispute_window_s * 1000)
                hot.insert(conn, EVIDENCE, {"agreement_id": agreement, "created_at_ms": now,
                                            "delivery": evidence.SerializeToString()},
                           _INSERT_EVIDENCE)
                release = ("confirm" if buyer_confirmation  # the buyer waived its window
                           else "release" if body.terms.dispute_window_s == 0 else "")
                if changes["state"] != st.REFUNDED and release:  # one UPDATE for both steps
                    return self.payouts.release_in(conn, key, agreement, release, parties,
                                           pending=Pending(current._mapping, changes))
                _set(conn, agreement, **changes)
                if changes["state"] == st.REFUNDED:
                    self.payouts.refund_in(conn, key, agreement, parties)
                    return escrow_dict(conn, agreement)
                return escrow_of(current._mapping, **changes)

            return self._confirmed(key, agreement, buyer_confirmation, self.ledger.mutate(
                key, "redeem", request, self._receipted(agreement, apply), same, same))

    def _confirmed(self, key: str, agreement: str, buyer_confirmation: bytes,
                   escrow: dict[str, Any]) -> dict[str, Any]:
        """A redeem's outcome, confirmed when it came with the buyer's confirm and is still
        waiting for the buyer: a retry of a redeem whose answer was lost, now carrying the
        confirm (a Finish), replays the first outcome and then applies the confirm."""
        if buyer_confirmation and escrow.get("state") in (st.DELIVERED, st.VERIFIED):
            return self.confirm(f"{key}:confirm", agreement, buyer_confirmation)
        return escrow

    def _redeemable_unread(self, opened: Opened) -> bool:
        """Whether a redeem may go ahead on what never changes, its state checked only in its
        transaction: verified here (no call out) and before its deadline's grace is over
        (after it, the state decides between a replay and DEADLINE_EXCEEDED)."""
        grace_ms = redeem_grace_ms(opened.created_at_ms, opened.deadline_ms)
        return (opened.body.terms.verification not in CALLED_OUT
                and self.clock_ms() <= opened.deadline_ms + grace_ms)

    def redeem_batch(self, requests: list[settlement_pb2.RedeemRequest]
                     ) -> list[settlement_pb2.RedeemResult]:
        """Each redeem on its own (own key, own transaction); failures are reported per item."""
        if not 1 <= len(requests) <= MAX_BATCH:
            raise InvalidArgument(f"a batch holds 1..{MAX_BATCH} redeems")
        results = []
        for request in requests:
            result = settlement_pb2.RedeemResult(agreement_id=request.agreement_id)
            try:
                found = self.redeem(request.idempotency_key, request.agreement_id,
                                    request.voucher, list(request.receipts),
                                    request.seller_signature, request.buyer_confirmation)
                result.escrow.CopyFrom(escrow_message(found))
            except AgentmarketError as error:
                result.error_code, result.error_reason = error.status, error.reason
                result.error_message = error.message
            results.append(result)
        return results

    # ---- buyer ----------------------------------------------------------------------------

    def confirm(self, key: str, agreement: str, buyer_signature: bytes) -> dict[str, Any]:
        """The buyer accepts delivered or verified work: pay it now (waives the window)."""
        facts = self.facts.get(agreement)
        if not verify(facts.buyer_id, ag.request_message("confirm", agreement),
                      buyer_signature):
            raise PermissionDenied("only the agreement's buyer can confirm it",
                                   reason="BAD_SIGNATURE")
        parties = self.accounts.parties(facts)

        def apply(conn: Connection) -> dict[str, Any]:
            return self.payouts.release_in(conn, key, agreement, "confirm", parties)

        return self.ledger.mutate(key, "confirm", {"agreement": agreement},
                                  self._receipted(agreement, apply), same, same)

    def dispute(self, key: str, agreement: str, reason: str, buyer_signature: bytes,
                evidence: list[settlement_pb2.Evidence] | None = None) -> dict[str, Any]:
        """The buyer disputes inside the window (marketplace.disputes)."""
        result = self.disputes.open(key, agreement, reason, buyer_signature, evidence or [])
        self.metrics.disputes.add(1, {"currency": result.get("currency", "")})
        return result

    def resolve_dispute(self, key: str, agreement: str, outcome: int, seller_atomic: int,
                        note: str, arbiter_id: str, arbiter_signature: bytes) -> dict[str, Any]:
        """An arbiter's decision (marketplace.disputes)."""
        return self.disputes.resolve(key, agreement, outcome, seller_atomic, note, arbiter_id,
                                     arbiter_signature)

    # ---- sweeps ---------------------------------------------------------------------------

    def sweep(self) -> int:
        """Expire undelivered agreements past their deadline; release delivered and verified
        work whose dispute window has closed. Returns how many agreements moved. Every due
        agreement is reached, a page of SWEEP_LIMIT at a time in id order: one that cannot move
        (its payee's wallet refuses the credit, say) stays due for the next sweep without
        keeping any other from moving, however many of them one party makes."""
        moved, after, now = 0, "", self.clock_ms()
        while True:
            with hot.reading(self.engine) as conn:
                rows = _DUE.all(conn, {"now": now, "after": after})
            for row in rows:
                try:
                    self._sweep_one(row)
                    moved += 1
                except AgentmarketError as error:  # e.g. settled meanwhile: the next one
                    log.warning("sweep of agreement %s: %s", row.agreement_id, error.message)
            if len(rows) < SWEEP_LIMIT:
                return moved
            after = rows[-1].agreement_id

    def _sweep_one(self, row: Any) -> None:
        """Its key is the node's own (NODE_SCOPE): no party can have used it first."""
        parties = self.accounts.parties(row)
        expire = row.state == st.ACTIVE
        key = f"{'expire-agreement' if expire else 'auto-release'}:{row.agreement_id}"

        def apply(conn: Connection) -> None:
            if expire:
                self.payouts.expire_in(conn, key, row.agreement_id)
            else:
                self.payouts.release_in(conn, key, row.agreement_id, "release", parties)

        self.ledger.mutate(key, "sweep", {"agreement": row.agreement_id},
                           self._receipted(row.agreement_id, apply), same, same,
                           scope=NODE_SCOPE)

    # ---- reading --------------------------------------------------------------------------

    def get(self, agreement: str) -> dict[str, Any]:
        return escrow_of(read_row(self.engine, agreement)._mapping)

    def agreements(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(ESCROWS.c.agreement_id).order_by(ESCROWS.c.created_at_ms.desc())
        if state:
            query = query.where(ESCROWS.c.state == state)
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            ids = [r.agreement_id for r in conn.execute(query.limit(limit))]
            return [escrow_dict(conn, i) for i in ids]

    def body(self, agreement: str) -> agreement_pb2.AgreementBody:
        return body_of(read_row(self.engine, agreement))

