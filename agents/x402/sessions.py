"""The gateway's sessions: an x402 buyer's agreement with a seller, paid call by call.

A session is the gRPC agreement, opened for an HTTP buyer: the buyer signs an agreement at the
list price (`agents.x402.client`), the gateway asks the seller to countersign it (Negotiate)
and opens its escrow at the node (`Settlement.open_escrow`: the same checks of both signatures,
the listing and the buyer's wallet policy as the gRPC OpenEscrow; one hold). Each call reveals
the next PayWord word, checked here in a few hashes against the last word seen and forwarded
to the seller, whose payment gate checks it again and meters the call. Closing relays the
buyer's signed finish: the seller redeems its voucher and receipts, the node captures what was
earned and voids the rest, in one posting with a signed settlement receipt. So 100 calls are
one hold and one capture on the ledger.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select

from agents.x402 import network as net
from agents.x402.forward import Channels
from agents.x402.reasons import Refused
from agents.x402.receipts import Chain
from agents.x402.seller_calls import ASKED, SellerAnswer, SellerCalls, asked
from marketplace import agreements as ag
from marketplace import escrow_proof
from marketplace.escrows import escrow_message
from marketplace.identity import AgentKey, verify
from marketplace.payword import CHEAP_CHECK_HASHES, verify_word
from marketplace.settlement import Settlement
from wallets import _sqlite_hot as hot
from wallets.caller import calling_as
from wallets.errors import AgentmarketError
from wallets.ledger import POSTINGS

MAX_SESSIONS = 100_000
# When the table is full, sessions idle this long make room, the longest idle first (at most
# EVICTED_AT_ONCE per pass): their sellers still redeem them, their buyers' clients open new
# ones on `session_unknown`; so sessions opened and left idle cannot shut others out.
IDLE_EVICT_MS = 60_000
EVICTED_AT_ONCE = 1_000
# The sequence of a session's hold posting (its PAYMENT-RESPONSE `transaction`)
_HOLD_POSTING = hot.Statement(select(POSTINGS.c.sequence).where(
    POSTINGS.c.hold_id == bindparam("hold"), POSTINGS.c.kind == "hold"))


@dataclass
class Session:
    """What the gateway knows of one open agreement."""

    agreement_id: str
    body: Any
    hold_posting: str
    reserve_atomic: int
    last_index: int = 0
    last_word: bytes = b""
    charged_atomic: int = 0
    calls: int = 0
    used_ms: int = 0  # when it was opened or last paid (the idlest make room when full)
    in_flight: int = 0  # calls paid and not yet charged: a session with any stays
    closed: dict[str, Any] | None = None
    finish_verified: bytes = b""  # the buyer's finish signature, once it verified
    receipts: Chain = field(default_factory=Chain)  # the fast path's chained receipts
    escrow_proof: bytes = b""  # the node's proof of the hold, sent with the first call
    # payment identifier -> the first answer (`agents.x402.answers`), oldest first
    answers: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Held across the seller's Finish (seconds), apart from `lock` (microseconds), so that a
    # close never makes a voucher check wait, nor ties up a gateway worker thread behind it.
    closing: threading.Lock = field(default_factory=threading.Lock)

    @property
    def link_value_atomic(self) -> int:
        return int(self.body.link_value_atomic)

    def prepaid_after(self, index: int) -> int:
        return index * self.link_value_atomic - self.charged_atomic


class SessionBook:
    """Open, pay under and close sessions; the facilitator scheme's half for the gateway."""

    def __init__(self, settlement: Settlement, key: AgentKey, *,
                 channels: Channels | None = None, node_key: AgentKey | None = None) -> None:
        """`node_key`: the node's, which signs each session's escrow proof (the seller knows
        it from its AdvertiseResponse and need not ask the node whether the hold is there)."""
        self.settlement = settlement
        self.key = key
        self.node_key = node_key
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._opening: set[str] = set()  # agreements being opened (a copy meanwhile: refused)
        # asks sellers to countersign and finish, on the event loop (`channels`: the
        # gateway's aio channels), the answers read here through `seller_calls.ASKED`
        self.seller_calls = SellerCalls(channels)

    # ---- checks (verify: nothing moves) ---------------------------------------------------

    def check_open(self, payment: net.OpenPayload, reserve_atomic: int, listing: Any) -> None:
        body = payment.body
        try:
            ag.parse_body(payment.agreement)
            ag.check_signatures(payment.agreement, body, require_seller=False)
        except AgentmarketError as error:
            raise Refused("invalid_signature" if "signed" in error.message
                          else "invalid_payload", error.message) from None
        if not body.rfq_id.startswith("list:"):
            raise Refused("invalid_payload", "a gateway agreement is at the list price "
                                             "(rfq_id list:...)")
        if body.seller_endpoint != listing.endpoint:
            raise Refused("invalid_pay_to", "the agreement names another seller endpoint")
        if body.offer_expires_at_ms <= _now_ms():
            raise Refused("payload_expired", "the agreement's offer has lapsed: pay again")
        agreement = ag.agreement_id(payment.agreement.body)
        if agreement in self.sessions or payment.voucher.agreement_id != agreement:
            raise Refused("payload_replayed", "this agreement is already open (or the voucher "
                                              "is another agreement's)")
        if payment.finish and not verify(body.buyer_id, ag.request_message("finish", agreement),
                                         payment.finish):  # refused before anything is held
            raise Refused("invalid_signature", "the one-call session's finish is not signed by "
                                               "the agreement's buyer")
        _check_cost(payment.voucher.payword_index)
        if payment.voucher.payword_index > body.payword_length or not verify_word(
                payment.voucher.payword, payment.voucher.payword_index, body.payword_root, 0):
            raise Refused("invalid_signature", "the voucher's word is not on the agreement's "
                                               "chain")
        if payment.voucher.payword_index * body.link_value_atomic < reserve_atomic:
            raise Refused("invalid_amount", f"the first voucher prepays less than the "
                                            f"{reserve_atomic} a call may cost")
        buyer = self.settlement.ledger.find_account(body.buyer_id, body.terms.currency)
        if buyer is None or self.settlement.ledger.balance(buyer.account_id).available_atomic \
                < body.terms.max_total_atomic:
            raise Refused("insufficient_funds", f"the buyer's {body.terms.currency} wallet "
                                                "cannot hold the agreement's maximum")

    def check_voucher(self, payment: net.VoucherPayload, reserve_atomic: int) -> Session:
        session = self.sessions.get(payment.agreement_id)
        if session is None:
            raise Refused("session_unknown", "no open session has this agreement: pay with "
                                             "an open payload")
        if session.closed is not None:
            raise Refused("session_ended", "the session is closed: open a new one")
        voucher = payment.voucher
        if voucher.payword_index <= session.last_index:
            raise Refused("payload_replayed", f"word {voucher.payword_index} was already "
                                              "spent")
        _check_cost(voucher.payword_index - session.last_index)
        if voucher.payword_index > session.body.payword_length or not verify_word(
                voucher.payword, voucher.payword_index, session.last_word, session.last_index):
            raise Refused("invalid_signature", "the voucher's word is not the agreement's "
                                               "chain")
        if session.prepaid_after(voucher.payword_index) < reserve_atomic:
            raise Refused("invalid_amount", f"the voucher leaves less than the "
                                            f"{reserve_atomic} a call may cost prepaid")
        return session

    # ---- moving money (settle) ------------------------------------------------------------

    def open(self, payment: net.OpenPayload, reserve_atomic: int) -> Session:
        """Countersigned by the seller, held at the node: the session's one hold. One open
        per agreement: a copy sent while it is being opened (a client's retry, a replay) is
        refused, as one sent after, so that no two calls are paid by its first word."""
        agreement = ag.agreement_id(payment.agreement.body)
        with self._lock:
            if agreement in self.sessions or agreement in self._opening:
                raise Refused("payload_replayed", "this agreement is already open, or being "
                                                  "opened")
            if len(self.sessions) >= MAX_SESSIONS:  # room first: nothing is countersigned
                self._make_room()  # or held without it
            self._opening.add(agreement)
        try:
            return self._open(agreement, payment, reserve_atomic)
        finally:
            with self._lock:
                self._opening.discard(agreement)

    def _open(self, agreement: str, payment: net.OpenPayload, reserve_atomic: int) -> Session:
        body = payment.body
        signed = _answer(agreement, "countersign").result()
        try:
            with calling_as(body.buyer_id):  # the buyer's keys, as over gRPC
                escrow = self.settlement.open_escrow(f"escrow:{agreement}", signed)
        except AgentmarketError as error:
            raise Refused(_ledger_reason(error), error.message) from None
        session = Session(agreement, body, self._hold_posting(escrow["hold_id"]),
                          reserve_atomic, last_index=0, last_word=body.payword_root,
                          used_ms=_now_ms())
        if self.node_key is not None:
            session.escrow_proof = escrow_proof.with_proof(
                self.node_key, escrow_message(escrow)).proof
        with self._lock:
            self.sessions[agreement] = session
        return session

    def spend(self, session: Session, voucher: Any) -> None:
        """The voucher is the session's latest (checked by `check_voucher` under the lock)."""
        session.last_index, session.last_word = voucher.payword_index, voucher.payword
        session.calls += 1
        session.used_ms = _now_ms()
        session.in_flight += 1

    def charged(self, session: Session, charged_atomic: int) -> None:
        with session.lock:
            session.charged_atomic += charged_atomic
            session.in_flight = max(0, session.in_flight - 1)

    @asynccontextmanager
    async def finishing(self, agreement_id: str, finish_signature: bytes
                        ) -> AsyncIterator[None]:
        """Ask the seller to finish the session (on the event loop: no thread waits on it)
        and hand its answer to the `close` run inside, on a worker thread. The session's
        `closing` is held throughout, so a second close meanwhile is told it is busy; the
        seller is asked only for the session's buyer (its finish signature checked here)."""
        session = self.sessions.get(agreement_id)
        if session is None or not _finish_signed(session, agreement_id, finish_signature):
            yield  # `close` refuses it: nothing to ask
            return
        held = session.closing.acquire(blocking=False)
        try:
            answer = None
            if not held:
                answer = SellerAnswer(agreement_id, refused=Refused(
                    "session_busy", "the session is being closed by another request; retry "
                                    "in a moment"))
            elif session.closed is None:
                answer = await self.seller_calls.finish(session.body.seller_endpoint,
                                                        agreement_id, finish_signature)
            token = ASKED.set(answer)
            try:
                yield
            finally:
                ASKED.reset(token)
        finally:
            if held:
                session.closing.release()

    def close(self, agreement_id: str, finish_signature: bytes) -> dict[str, Any]:
        """Relay the buyer's signed finish: the seller redeems (asked by `finishing`, which
        this runs inside), the node captures once."""
        session = self.sessions.get(agreement_id)
        if session is None:
            raise Refused("session_unknown", "no session has this agreement")
        if not _finish_signed(session, agreement_id, finish_signature):
            raise Refused("invalid_signature", "the finish is not signed by the session's "
                                               "buyer")
        if session.closed is not None:
            return session.closed
        _answer(agreement_id, "finish").result()
        escrow = self.settlement.get(agreement_id)
        last = self.settlement.receipts.latest(agreement_id) \
            if self.settlement.receipts else None
        closed = {"escrow": escrow, "receipt": last,
                  "transaction": str(last["body"]["postings"][-1]["sequence"])
                  if last else session.hold_posting}
        with session.lock:
            session.closed = closed
        return closed

    def _hold_posting(self, hold_id: str) -> str:
        with hot.reading(self.settlement.engine) as reader:
            found = _HOLD_POSTING.first(reader, {"hold": hold_id})
        return str(found.sequence) if found else ""

    def _make_room(self) -> None:
        """Forget closed sessions and those past their completion deadline (no call can be
        paid under them any more), then, if still full, the longest idle (`IDLE_EVICT_MS`)
        that no close is using."""
        now = _now_ms()
        for agreement in [a for a, s in self.sessions.items() if s.closed is not None
                          or s.body.terms.completion_deadline_ms < now]:
            del self.sessions[agreement]
        if len(self.sessions) >= MAX_SESSIONS:
            idle = sorted((s.used_ms, a) for a, s in self.sessions.items()
                          if s.used_ms <= now - IDLE_EVICT_MS and not s.in_flight
                          and not s.closing.locked())
            for _, agreement in idle[:EVICTED_AT_ONCE]:
                del self.sessions[agreement]
        if len(self.sessions) >= MAX_SESSIONS:
            raise Refused("seller_refused", "the gateway holds as many open sessions as it "
                                            "may, none of them idle; retry later")


def _finish_signed(session: Session, agreement_id: str, finish_signature: bytes) -> bool:
    """Whether the finish is the session's buyer's (no one else makes the seller finish),
    verified once: a close checks it before asking the seller and again before the ledger."""
    if agreement_id != session.agreement_id:
        return False
    if finish_signature and finish_signature == session.finish_verified:
        return True
    if not verify(session.body.buyer_id, ag.request_message("finish", agreement_id),
                  finish_signature):
        return False
    session.finish_verified = finish_signature
    return True


def _answer(agreement_id: str, what: str) -> SellerAnswer:
    """The seller's answer, asked on the event loop before this ledger work (`ASKED`)."""
    found = asked(agreement_id)
    if found is None:
        raise Refused("seller_refused", f"the seller was not asked to {what}; retry")
    return found


def check_terms(body: Any, requirements: Any) -> None:
    """An agreement pays what a requirement sells: its seller, skill, currency, list price."""
    extra = requirements.extra or {}
    if body.seller_id != requirements.pay_to:
        raise Refused("invalid_pay_to", "the agreement pays another seller")
    if body.terms.skill != extra.get("skill"):
        raise Refused("invalid_resource", "the agreement is for another skill")
    if body.terms.currency != requirements.asset:
        raise Refused("invalid_asset", "the agreement is in another currency")
    if body.terms.unit != extra.get("unit") or body.terms.unit_price_atomic < int(
            extra.get("unitPrice", 0)):
        raise Refused("invalid_amount", "the agreement does not pay the list price")


def _ledger_reason(error: AgentmarketError) -> str:
    return {"INSUFFICIENT_FUNDS": "insufficient_funds", "POLICY_DENIED": "policy_denied",
            "APPROVAL_REQUIRED": "approval_required", "WALLET_FROZEN": "wallet_frozen",
            "OFFER_EXPIRED": "payload_expired", "BAD_SIGNATURE": "invalid_signature",
            }.get(error.reason, "invalid_payload")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_cost(words: int) -> None:
    """A voucher reveals at most CHEAP_CHECK_HASHES words at once (a call's maximum is at most
    64 links in the chains buyers make), checked before any hashing: otherwise anyone who
    knew an agreement id could make the gateway hash up to the 100,000 words of a chain per
    request, under the session's lock and on the event loop, and stall every call."""
    if words > CHEAP_CHECK_HASHES:
        raise Refused("invalid_amount", f"a voucher reveals at most {CHEAP_CHECK_HASHES} "
                                        f"words at once; this one reveals {words}")
