"""Paying per call with PayWord vouchers: the seller's gate (the buyer's session is
`agents.payment_session`).

Prepay, then charge what was used. Before each call the buyer's vouchers must leave at least the
call's maximum (`max_call_atomic`; per-call skills: the price) prepaid and not yet charged; the
seller reserves that much for the call, runs it, and charges the metered amount (never more than
the reserve), recorded in the signed receipt's `charged_atomic`. What was prepaid but not charged
carries over: the next voucher only tops the prepayment up (possibly revealing no new word), and
whatever is still unspent at the end is refunded, because the marketplace captures only the
receipts' charges (bounded by the latest voucher).

Buyer: `PaymentSession.plan(max_call_atomic)` -> (sequence, payword index) of the next voucher,
`voucher(sequence, index)` builds it (deterministic from the chain's seed, so a resumed buyer
re-sends the very same voucher), `settle(reserve, charged)` books the receipt.
Seller: `PaymentGate.admit(...)` checks a voucher locally (a few SHA-256s, no network), refusing
missing, forged, replayed and over-budget ones, and reserves the call's maximum; `complete()`
books the charge and keeps the response so a retry of the same call id gets it again, charged
once; `release()` returns the reserve of a call that failed.

PayWord words travel in clear metadata: run agents over TLS, as anyone who sees a word can spend
the prepaid balance it authorises.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents._chain_repair import repaired
from agents.errors import (
    AgreementEnded,
    BudgetExceeded,
    CallInProgress,
    FailedPrecondition,
    InvalidArgument,
    InvalidVoucher,
    NotFound,
    PaymentRequired,
)
from agents.usage_journal import JournalAgreement, JournalError, Pending, UsageJournal
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace.errors import ReceiptLimit
from marketplace.identity import AgentKey
from marketplace.payword import verify_word
from marketplace.v1 import agreement_pb2, settlement_pb2

VOUCHER_METADATA_KEY = "agentmarket-voucher-bin"
MAX_CALL_ID_CHARS = 128
_SYNC_WAIT_S = 30.0  # how long a redeem's record waits for the journal


@dataclass
class Admission:
    """A call the gate let through: its voucher sequence and the reserve it holds."""

    agreement_id: str
    call_id: str
    sequence: int
    reserve_atomic: int
    replay: Any = None  # the first response of this call id, to return instead of running
    durable: Pending | None = None  # its usage record on the way to the journal: wait first


@dataclass(slots=True)
class _Call:
    """One call id's payment. Kept for every answered call (retries are answered from it), so
    it holds bytes, not messages: compact and invisible to the garbage collector (as messages,
    a kept call took 5.5 KB and four tracked objects; as bytes, 1.8 KB and one)."""

    sequence: int
    payword: bytes
    reserve_atomic: int
    voucher: bytes = b""  # the serialized Voucher that paid it
    in_flight: bool = True
    response: bytes | None = None  # the first response, encoded (`_encode_response`)
    durable: Pending | None = None  # its record on the way to the journal (None: written)


@dataclass
class _Account:
    """What the seller knows of one agreement's payments."""

    body: agreement_pb2.AgreementBody
    anchor_word: bytes
    anchor_index: int = 0
    sequence: int = 0
    authorised_atomic: int = 0
    charged_atomic: int = 0
    reserved_atomic: int = 0
    latest: agreement_pb2.Voucher | None = None
    receipts: list[bytes] = field(default_factory=list)  # serialized Receipts, chain order
    chain_calls: list[str] = field(default_factory=list)  # the call id of each receipt
    chain_index: int = 0  # receipts chained so far
    chain_head: bytes = ag.CHAIN_GENESIS  # the last receipt's chain digest
    chain_bytes: int = 0  # what the receipts add to the redeem (ag.receipt_bytes)
    calls: dict[str, _Call] = field(default_factory=dict)
    closed: bool = False
    redeemed: Any = None
    opened: Pending | None = None  # its journal record, until seen written
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def available_atomic(self) -> int:
        return self.authorised_atomic - self.charged_atomic - self.reserved_atomic


class PaymentGate:
    """The seller's local voucher check, run before every paid call."""

    def __init__(self, key: AgentKey | None = None, journal: UsageJournal | None = None,
                 *, clock_ms: Callable[[], int] | None = None) -> None:
        """`key`: the seller's, signing every RECEIPT_SIGN_EVERY-th receipt of each chain;
        `journal`: where agreements, answered calls and redeems are made durable;
        `clock_ms`: the time calls are checked against agreements' deadlines (wall clock)."""
        self.key = key
        self.journal = journal
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._accounts: dict[str, _Account] = {}
        self._lock = threading.Lock()
        if journal is not None:
            journal.on_failed_calls = self._unchain_failed

    def open(self, agreement_id: str, body: agreement_pb2.AgreementBody) -> None:
        """Start taking calls under an agreement. Its journal record is queued lazily, to share
        the commit of its first call's record: that record cannot commit without it (a foreign
        key), so no call is answered before the open is durable."""
        if agreement_id in self._accounts:
            return
        opened = None if self.journal is None else self._queue_open(agreement_id, body)
        with self._lock:
            self._accounts.setdefault(agreement_id, _Account(
                body=body, anchor_word=body.payword_root, opened=opened))

    def _queue_open(self, agreement_id: str, body: agreement_pb2.AgreementBody, *,
                    lazy: bool = True) -> Pending:
        assert self.journal is not None
        return self.journal.queue_open(agreement_id, body.seller_id, body.SerializeToString(),
                                       lazy=lazy)

    def _ensure_opened(self, agreement_id: str, account: _Account) -> None:
        """Wait until the agreement's open is durable (queued again, and waited for, if its
        record failed): a redeem's record needs it, and may come before any call's."""
        opened = account.opened
        if opened is None:
            return
        try:
            opened.wait(_SYNC_WAIT_S)
        except JournalError:
            with account.lock:
                opened = account.opened = self._queue_open(agreement_id, account.body,
                                                           lazy=False)
            opened.wait(_SYNC_WAIT_S)  # raises JournalError (UNAVAILABLE): redeem again later
        if account.opened is opened:
            account.opened = None

    def _check_opened(self, agreement_id: str, account: _Account) -> None:
        """Queue the agreement's open again if its record failed (under the account's lock,
        before a call's record): the call would otherwise be refused for want of it."""
        opened = account.opened
        if opened is not None and opened.done():
            account.opened = self._queue_open(agreement_id, account.body) \
                if opened.failed() else None

    def restore(self, saved: list[JournalAgreement]) -> list[str]:
        """Rebuild the accounts a journal kept (a restarted seller); returns their ids."""
        for entry in saved:
            body = agreement_pb2.AgreementBody.FromString(entry.body)
            account = _Account(body=body, anchor_word=body.payword_root, closed=entry.closed)
            if entry.escrow is not None:
                account.redeemed = settlement_pb2.Escrow.FromString(entry.escrow)
            calls = entry.calls
            fixed = repaired(entry.agreement_id, calls, self.key) \
                if entry.escrow is None else []
            if fixed:  # a hole left by an older seller: re-linked, written back first
                if self.journal is not None:
                    self.journal.rechain(entry.agreement_id, fixed)
                calls = calls[:len(calls) - len(fixed)] + tuple(fixed)
            for call in calls:
                voucher = agreement_pb2.Voucher.FromString(call.voucher)
                receipt = agreement_pb2.Receipt.FromString(call.receipt)
                account.receipts.append(call.receipt)
                account.chain_calls.append(call.call_id)
                account.chain_bytes += ag.receipt_bytes(receipt)
                account.charged_atomic += receipt.charged_atomic
                account.chain_index, account.chain_head = call.position, receipt.chain_sha256
                account.calls[call.call_id] = _Call(
                    voucher.sequence, voucher.payword, 0, call.voucher, in_flight=False,
                    response=call.response)
                if voucher.sequence > account.sequence:
                    account.latest, account.sequence = voucher, voucher.sequence
                    account.anchor_word = voucher.payword
                    account.anchor_index = voucher.payword_index
                    account.authorised_atomic = voucher.cumulative_atomic
            with self._lock:
                self._accounts[entry.agreement_id] = account
        return [entry.agreement_id for entry in saved]

    def known(self, agreement_id: str) -> bool:
        return agreement_id in self._accounts

    def agreements(self) -> list[str]:
        with self._lock:
            return list(self._accounts)

    def body(self, agreement_id: str) -> agreement_pb2.AgreementBody:
        return self._account(agreement_id).body

    def _account(self, agreement_id: str) -> _Account:
        account = self._accounts.get(agreement_id)
        if account is None:
            raise NotFound(f"no agreement {agreement_id[:12]}… with this seller")
        return account

    def admit(self, voucher: agreement_pb2.Voucher | None, agreement_id: str,
              reserve_atomic: int, *, call_id: str = "", partial: bool = False,
              fresh_word_required: bool = False) -> Admission:
        """Check a voucher and reserve `reserve_atomic` of the prepayment for this call
        (`partial`: a stream takes what is prepaid, up to that, and at least one atomic unit).

        A retry of a call id with its first voucher returns that call's first response (or
        runs it again if it failed before completing). Holds the agreement's lock only for the
        check itself (microseconds)."""
        if voucher is None:
            raise PaymentRequired("this method is paid: attach a voucher "
                                  f"({VOUCHER_METADATA_KEY} metadata)")
        if voucher.agreement_id != agreement_id:
            raise InvalidVoucher("the voucher is for a different agreement than the request")
        if len(call_id) > MAX_CALL_ID_CHARS:
            raise InvalidArgument(f"call_id is longer than {MAX_CALL_ID_CHARS} characters")
        account = self._account(agreement_id)
        with account.lock:
            known = account.calls.get(call_id) if call_id else None
            if known is not None and (not account.closed or known.response is not None):
                # an answered call is answered again even once the agreement was redeemed:
                # its answer may have been lost, and it is charged once, in that redeem
                return self._retry(agreement_id, account, voucher, call_id, reserve_atomic,
                                   partial)
            if account.closed:
                raise AgreementEnded("the agreement was redeemed; it takes no more calls")
            if self.clock_ms() > account.body.terms.completion_deadline_ms:
                raise AgreementEnded("the agreement's completion deadline has passed; it takes "
                                     "no more calls (what was delivered is still redeemed)")
            if account.chain_index >= ag.MAX_RECEIPTS:  # before the voucher is taken
                raise ReceiptLimit(f"the agreement has had its {ag.MAX_RECEIPTS} calls, all one "
                                   "redeem can carry; it takes no more")
            self._check_new(account, voucher)
            self._check_opened(agreement_id, account)
            if fresh_word_required and voucher.payword_index <= account.anchor_index:
                raise InvalidVoucher("an unsigned call must reveal a new payword; sign calls "
                                     "that spend carried-over prepayment")
            unspent = voucher.cumulative_atomic - account.charged_atomic \
                - account.reserved_atomic
            reserve = min(reserve_atomic, unspent) if partial else reserve_atomic
            if unspent < reserve or reserve <= 0:
                if voucher.payword_index == account.anchor_index:
                    raise InvalidVoucher(f"voucher {voucher.sequence} reveals no new payword "
                                         "and the prepaid balance does not cover this call")
                if account.charged_atomic + account.reserved_atomic + reserve_atomic \
                        > account.body.terms.max_total_atomic:
                    raise BudgetExceeded("the agreement's budget is spent")
                raise InvalidVoucher("the voucher does not prepay this call's maximum")
            account.anchor_word, account.anchor_index = voucher.payword, voucher.payword_index
            account.sequence = voucher.sequence
            account.authorised_atomic = voucher.cumulative_atomic
            account.latest = voucher
            account.reserved_atomic += reserve
            key = call_id or f"#{voucher.sequence}"
            account.calls[key] = _Call(voucher.sequence, voucher.payword, reserve,
                                       voucher.SerializeToString())
            return Admission(agreement_id, key, voucher.sequence, reserve)

    @staticmethod
    def _check_new(account: _Account, voucher: agreement_pb2.Voucher) -> None:
        body = account.body
        if voucher.sequence <= account.sequence or voucher.payword_index < account.anchor_index:
            raise InvalidVoucher(f"voucher {voucher.sequence} was already used (replay)")
        if voucher.cumulative_atomic != voucher.payword_index * body.link_value_atomic:
            raise InvalidVoucher("cumulative_atomic does not match the payword index")
        if (voucher.payword_index > body.payword_length
                or voucher.cumulative_atomic > body.terms.max_total_atomic):
            raise BudgetExceeded("the voucher goes past the agreement's maximum")
        if not verify_word(voucher.payword, voucher.payword_index, account.anchor_word,
                           account.anchor_index):
            raise InvalidVoucher("the voucher's payword is forged")

    def _retry(self, agreement_id: str, account: _Account, voucher: agreement_pb2.Voucher,
               call_id: str, reserve_atomic: int, partial: bool) -> Admission:
        call = account.calls[call_id]
        if voucher.sequence != call.sequence or voucher.payword != call.payword:
            raise InvalidVoucher(f"call {call_id!r} was paid by another voucher; a retry must "
                                 "send the same one")
        if call.response is not None:  # answered: again, once its record is durable
            if call.durable is not None and call.durable.done():
                call.durable = None  # written (a failed record would have unchained the call)
            return Admission(agreement_id, call_id, call.sequence, 0,
                             replay=_decode_response(call.response), durable=call.durable)
        if call.in_flight:
            raise CallInProgress(f"call {call_id!r} is still running; retry shortly")
        unspent = account.available_atomic
        reserve = min(reserve_atomic, unspent) if partial else reserve_atomic
        if unspent < reserve or reserve <= 0:
            raise BudgetExceeded("the prepaid balance no longer covers this call")
        account.reserved_atomic += reserve
        call.in_flight, call.reserve_atomic = True, reserve
        return Admission(agreement_id, call_id, call.sequence, reserve)

    def complete(self, agreement_id: str, admission: Admission, receipt: agreement_pb2.Receipt,
                 respond: Callable[[agreement_pb2.Receipt], Any]) -> Any:
        """Place the call's receipt next in the agreement's receipt chain (signed every
        RECEIPT_SIGN_EVERY-th), book its charge, and keep `respond(receipt)`, the response,
        for retries; returns it. One lock, so the chain's order is the order of booking."""
        account = self._account(agreement_id)
        with account.lock:
            call = account.calls[admission.call_id]
            if not call.in_flight:
                raise FailedPrecondition(f"call {admission.call_id!r} is not running")
            if not 0 <= receipt.charged_atomic <= call.reserve_atomic:
                raise FailedPrecondition("a call cannot charge more than it reserved")
            index = account.chain_index + 1
            signer = self.key if index % ag.RECEIPT_SIGN_EVERY == 0 else None
            head = ag.chain_receipt(receipt, index, account.chain_head, signer)
            size = ag.receipt_bytes(receipt)
            if index > ag.MAX_RECEIPTS or \
                    account.chain_bytes + size > ag.MAX_REDEEM_RECEIPTS_BYTES:
                # refused before it is charged: every charged call stays redeemable
                raise ReceiptLimit(f"this answer's receipt would take the agreement past what "
                                   f"one redeem carries ({ag.MAX_RECEIPTS} receipts, "
                                   f"{ag.MAX_REDEEM_RECEIPTS_BYTES} bytes); not charged")
            account.chain_head, account.chain_index = head, index
            account.chain_bytes += size
            response = respond(receipt)
            account.reserved_atomic -= call.reserve_atomic
            account.charged_atomic += receipt.charged_atomic
            kept = receipt.SerializeToString()
            account.receipts.append(kept)
            account.chain_calls.append(admission.call_id)
            call.in_flight, call.response = False, _encode_response(response)
            if self.journal is not None:  # queued in chain order, so a crash keeps a prefix
                call.durable = admission.durable = self.journal.record_call(
                    agreement_id, admission.call_id, index, call.sequence, call.voucher, kept,
                    call.response)
            return response

    def _unchain_failed(self, failed: list[tuple[str, str, int]]) -> None:
        """Records the journal could not write (on its writer thread, before their callers
        wake): take each call, and every receipt chained after it, out of the chain. Nothing is
        charged or redeemed that is not durable, and no hole is left: the later records are
        dropped from the journal's queue under the same lock, and the next call takes the
        freed position. The calls are unanswered again: a retry of the call id runs anew."""
        by_agreement: dict[str, list[tuple[str, int]]] = {}
        for agreement_id, call_id, position in failed:
            by_agreement.setdefault(agreement_id, []).append((call_id, position))
        for agreement_id, calls in by_agreement.items():
            account = self._accounts.get(agreement_id)
            if account is None:
                continue
            with account.lock:
                chained = [position for call_id, position in calls
                           if 0 < position <= len(account.chain_calls)
                           and account.chain_calls[position - 1] == call_id]
                if not chained:  # already taken out with an earlier one
                    continue
                if self.journal is not None:
                    self.journal.drop_queued(agreement_id, min(chained))
                _truncate(account, min(chained))

    def release(self, agreement_id: str, admission: Admission) -> None:
        """A call that failed before completing: give its reserve back (nothing is charged)."""
        account = self._account(agreement_id)
        with account.lock:
            call = account.calls.get(admission.call_id)
            if call is not None and call.in_flight:
                account.reserved_atomic -= call.reserve_atomic
                call.in_flight = False

    def answered(self, agreement_id: str, call_id: str) -> Any:
        """The first response of an answered call (None: unknown, running or failed), for a
        door that looks a call up again (A2A GetTask after a lost answer)."""
        account = self._accounts.get(agreement_id)
        call = account.calls.get(call_id) if account is not None else None
        return _decode_response(call.response) if call is not None and call.response else None

    def paid_calls(self) -> list[tuple[str, str, bytes]]:
        """(agreement id, call id, payword) of every call kept: what a door indexes its own
        ids by after a restart."""
        with self._lock:
            accounts = list(self._accounts.items())
        return [(agreement_id, call_id, call.payword) for agreement_id, account in accounts
                for call_id, call in list(account.calls.items())]

    def unspent(self, agreement_id: str) -> int:
        return self._account(agreement_id).available_atomic

    def check_hashes(self, agreement_id: str, voucher: agreement_pb2.Voucher | None) -> int:
        """How many SHA-256s checking `voucher` would take (from the last word seen)."""
        if voucher is None:
            return 0
        return max(0, voucher.payword_index - self._account(agreement_id).anchor_index)

    def proves_payment(self, agreement_id: str, voucher: agreement_pb2.Voucher | None) -> bool:
        """Whether `voucher` reveals a genuine word the seller has not seen: a pure check,
        nothing is used (so a call can be rate-limited as the buyer's before it is admitted)."""
        if voucher is None or voucher.agreement_id != agreement_id:
            return False
        account = self._account(agreement_id)
        with account.lock:
            try:
                self._check_new(account, voucher)
            except (InvalidVoucher, BudgetExceeded):
                return False
            return voucher.payword_index > account.anchor_index

    def redeemable(self, agreement_id: str) -> tuple[agreement_pb2.Voucher | None,
                                                      list[agreement_pb2.Receipt]]:
        account = self._account(agreement_id)
        with account.lock:
            return account.latest, _receipts(account)

    def begin_redeem(self, agreement_id: str, wait_s: float = 5.0
                     ) -> tuple[agreement_pb2.Voucher, list[agreement_pb2.Receipt]]:
        """Stop taking calls, let running ones finish (up to `wait_s`), and return what to
        redeem: the latest voucher (a zero voucher, the chain's root, when none came) and the
        receipts."""
        account = self._account(agreement_id)
        self._ensure_opened(agreement_id, account)
        with account.lock:  # queued under the lock: no call records after it
            account.closed = True
            pending = None if self.journal is None else self.journal.queue_redeem(
                agreement_id, closed=True, escrow=None)
        deadline = time.monotonic() + wait_s
        while account.reserved_atomic and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.journal is not None and pending is not None:
            pending.wait(_SYNC_WAIT_S)
            self.journal.flush(_SYNC_WAIT_S)  # the running calls' records: written or unchained
        with account.lock:
            voucher = account.latest or agreement_pb2.Voucher(
                agreement_id=agreement_id, sequence=0, cumulative_atomic=0, payword_index=0,
                payword=account.body.payword_root)
            return voucher, _receipts(account)

    def end_redeem(self, agreement_id: str, escrow: Any) -> None:
        """Remember the marketplace's answer; `None` (the redeem failed) reopens the agreement,
        durably before it returns. An escrow is recorded lazily: should the record be lost, a
        restarted seller redeems the closed agreement again and gets the same answer."""
        account = self._account(agreement_id)
        with account.lock:
            pending = None if self.journal is None else self.journal.queue_redeem(
                agreement_id, closed=escrow is not None,
                escrow=None if escrow is None else escrow.SerializeToString(),
                lazy=escrow is not None)
        if pending is not None and escrow is None:
            pending.wait(_SYNC_WAIT_S)
        with account.lock:
            account.closed, account.redeemed = escrow is not None, escrow

    def redeemed(self, agreement_id: str) -> Any:
        return self._account(agreement_id).redeemed

    def due(self, now_ms: int, margin_ms: int) -> list[str]:
        """Open agreements with paid calls whose completion deadline is within `margin_ms`."""
        with self._lock:
            accounts = list(self._accounts.items())
        return [agreement for agreement, account in accounts
                if account.latest is not None and account.redeemed is None
                and (account.closed  # a redeem whose answer was lost: send it again
                     or now_ms >= account.body.terms.completion_deadline_ms - margin_ms)]

    def settled(self, now_ms: int, keep_ms: int) -> list[str]:
        """Agreements nothing more can happen to here, `keep_ms` after their completion
        deadline: redeemed (the marketplace holds the evidence from then on), or never paid."""
        with self._lock:
            accounts = list(self._accounts.items())
        return [agreement for agreement, account in accounts
                if (account.redeemed is not None or account.latest is None)
                and now_ms >= account.body.terms.completion_deadline_ms + keep_ms]

    def forget(self, agreement_ids: list[str]) -> list[str]:
        """Drop settled agreements from memory and the journal (so a long-running seller does
        not grow without end); returns those dropped. One still taking a call, or paid and not
        redeemed, is kept."""
        done = []
        for agreement_id in agreement_ids:
            account = self._accounts.get(agreement_id)
            if account is None:
                continue
            with account.lock:
                if account.reserved_atomic or (account.latest is not None
                                               and account.redeemed is None):
                    continue
                account.closed = True  # no call gets in between this and the delete
            done.append(agreement_id)
        if self.journal is not None and done:
            self.journal.forget(done)
        with self._lock:
            for agreement_id in done:
                self._accounts.pop(agreement_id, None)
        return done


def _truncate(account: _Account, position: int) -> None:
    """Take the receipts from chain `position` on out of the account (under its lock): their
    charges are no longer booked and their calls are unanswered."""
    for kept, call_id in zip(account.receipts[position - 1:],
                             account.chain_calls[position - 1:], strict=True):
        receipt = agreement_pb2.Receipt.FromString(kept)
        account.charged_atomic -= receipt.charged_atomic
        account.chain_bytes -= ag.receipt_bytes(receipt)
        call = account.calls.get(call_id)
        if call is not None:
            call.response = call.durable = None
            call.in_flight, call.reserve_atomic = False, 0
    del account.receipts[position - 1:], account.chain_calls[position - 1:]
    account.chain_index = position - 1
    account.chain_head = ag.CHAIN_GENESIS if position == 1 else \
        agreement_pb2.Receipt.FromString(account.receipts[-1]).chain_sha256


def _receipts(account: _Account) -> list[agreement_pb2.Receipt]:
    """The agreement's receipts, by voucher sequence."""
    receipts = [agreement_pb2.Receipt.FromString(kept) for kept in account.receipts]
    return sorted(receipts, key=lambda r: r.sequence)


def _encode_response(response: Any) -> bytes:
    """A paid call's response for the journal: unary (U) or a stream's last chunk (S)."""
    kind = b"S" if isinstance(response, agent_pb2.StreamChunk) else b"U"
    return kind + response.SerializeToString()


def _decode_response(data: bytes) -> Any:
    message = agent_pb2.StreamChunk if data[:1] == b"S" else agent_pb2.InvokeResponse
    return message.FromString(data[1:])
