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
once; `release()` returns the reserve of a call that failed. What the gate knows of each
agreement is `agents._gate_accounts`; its redeems and retention, `agents._gate_redeems`.

PayWord words travel in clear metadata: run agents over TLS, as anyone who sees a word can spend
the prepaid balance it authorises.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents._chain_repair import repaired
from agents._gate_accounts import (
    AgreementAccount,
    CallPayment,
    FreshAgreements,
    decode_response,
    encode_response,
    replay_as,
    truncate_chain,
)
from agents._gate_redeems import GateRedeems
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
from agents.usage_journal import JournalAgreement, Pending, UsageJournal
from marketplace import agreements as ag
from marketplace import escrow_proof
from marketplace.errors import ReceiptLimit
from marketplace.identity import AgentKey
from marketplace.payword import CHEAP_CHECK_HASHES, verify_word
from marketplace.v1 import agreement_pb2, settlement_pb2
from wallets.currencies import INT64_MAX

VOUCHER_METADATA_KEY = "agentmarket-voucher-bin"
MAX_CALL_ID_CHARS = 128
UNNAMED_CALL_PREFIX = "#"  # a call sent without a call id is named "#<voucher sequence>"
# Agreements one buyer may have countersigned here, with no call and their offer still open
# (an agreement costs the buyer nothing until it is escrowed; keys are free).
MAX_FRESH_AGREEMENTS_PER_BUYER = 32


def paid_call_metadata(voucher: agreement_pb2.Voucher, proof: bytes = b""
                       ) -> list[tuple[str, bytes]]:
    """A paid call's metadata: its voucher, and the node's escrow proof when given (an
    agreement's first calls: `marketplace.escrow_proof`)."""
    pairs = [(VOUCHER_METADATA_KEY, voucher.SerializeToString())]
    if proof:
        pairs.append((escrow_proof.METADATA_KEY, proof))
    return pairs


@dataclass
class Admission:
    """A call the gate let through: its voucher sequence and the reserve it holds."""

    agreement_id: str
    call_id: str
    sequence: int
    reserve_atomic: int
    replay: Any = None  # the first response of this call id, to return instead of running
    durable: Pending | None = None  # its usage record on the way to the journal: wait first
    checked_input: Any = None  # (skill, arguments), checked before the voucher was admitted


class PaymentGate(GateRedeems):
    """The seller's local voucher check, run before every paid call."""

    def __init__(self, key: AgentKey | None = None, journal: UsageJournal | None = None,
                 *, clock_ms: Callable[[], int] | None = None,
                 calls_end_before_ms: int = 0) -> None:
        """`key`: the seller's, signing every RECEIPT_SIGN_EVERY-th receipt of each chain;
        `journal`: where agreements, answered calls and redeems are made durable;
        `clock_ms`: the time calls are checked against agreements' deadlines (wall clock);
        `calls_end_before_ms`: how long before an agreement's completion deadline calls stop:
        the seller redeems then (its redeem margin), so no call is answered that the redeem
        could not carry."""
        self.key = key
        self.journal = journal
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._accounts: dict[str, AgreementAccount] = {}
        self._fresh = FreshAgreements(MAX_FRESH_AGREEMENTS_PER_BUYER)
        self._lock = threading.Lock()
        self.calls_end_before_ms = calls_end_before_ms
        if journal is not None:
            journal.on_failed_calls = self._unchain_failed

    def open(self, agreement_id: str, body: agreement_pb2.AgreementBody) -> None:
        """Start taking calls under an agreement. Its journal record is queued lazily, to share
        the commit of its first call's record: that record cannot commit without it (a foreign
        key), so no call is answered before the open is durable."""
        if agreement_id in self._accounts:
            return
        self._fresh.add(body.buyer_id, agreement_id, body.offer_expires_at_ms, self.clock_ms())
        opened = None if self.journal is None else self._queue_open(agreement_id, body)
        with self._lock:
            self._accounts.setdefault(agreement_id, AgreementAccount(
                body=body, anchor_word=body.payword_root, opened=opened))

    def _queue_open(self, agreement_id: str, body: agreement_pb2.AgreementBody, *,
                    lazy: bool = True) -> Pending:
        assert self.journal is not None
        return self.journal.queue_open(agreement_id, body.seller_id, body.SerializeToString(),
                                       lazy=lazy)

    def _check_opened(self, agreement_id: str, account: AgreementAccount) -> None:
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
            account = AgreementAccount(body=body, anchor_word=body.payword_root,
                                       closed=entry.closed)
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
                account.calls[call.call_id] = CallPayment(
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

    def closing(self, agreement_id: str) -> bool:
        """Whether the agreement stopped taking calls (a redeem began): a running stream
        ends then, billed for what it delivered, so that its charge is in the redeem."""
        account = self._accounts.get(agreement_id)
        return account is None or account.closed

    def known(self, agreement_id: str) -> bool:
        return agreement_id in self._accounts

    def agreements(self) -> list[str]:
        with self._lock:
            return list(self._accounts)

    def body(self, agreement_id: str) -> agreement_pb2.AgreementBody:
        return self._account(agreement_id).body

    def _account(self, agreement_id: str) -> AgreementAccount:
        account = self._accounts.get(agreement_id)
        if account is None:
            raise NotFound(f"no agreement {agreement_id[:12]}… with this seller")
        return account

    def admit(self, voucher: agreement_pb2.Voucher | None, agreement_id: str,
              reserve_atomic: int, *, call_id: str = "", partial: bool = False,
              fresh_word_required: bool = False,
              on_new_word: Callable[[str], None] | None = None) -> Admission:
        """Check a voucher and reserve `reserve_atomic` of the prepayment for this call
        (`partial`: a stream takes what is prepaid, up to that, and at least one atomic unit).
        `on_new_word(buyer_id)` runs once the voucher proves a genuine word not seen before,
        before anything is used (what it raises refuses the call and changes nothing): the
        buyer's rate-limit draw for an unsigned call, in the same check as the word's. It runs
        under the agreement's lock, so it must not wait (a seller's buckets are in memory).

        A retry of a call id with its first voucher returns that call's first response (or
        runs it again if it failed before completing). Holds the agreement's lock only for the
        check itself (microseconds)."""
        voucher = _addressed(voucher, agreement_id)
        if len(call_id) > MAX_CALL_ID_CHARS:
            raise InvalidArgument(f"call_id is longer than {MAX_CALL_ID_CHARS} characters")
        if call_id.startswith(UNNAMED_CALL_PREFIX):  # the gate's own names: never a buyer's
            raise InvalidArgument(f"call_id may not begin with {UNNAMED_CALL_PREFIX!r}: calls "
                                  "sent without one are named so")
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
            self._check_in_time(account)
            if account.chain_index >= ag.MAX_RECEIPTS:  # before the voucher is taken
                raise ReceiptLimit(f"the agreement has had its {ag.MAX_RECEIPTS} calls, all one "
                                   "redeem can carry; it takes no more")
            self._check_new(account, voucher)
            if on_new_word is not None and voucher.payword_index > account.anchor_index:
                on_new_word(account.body.buyer_id)
            self._check_opened(agreement_id, account)
            if account.latest is None:  # its first call: no longer one of the buyer's fresh
                self._fresh.called(account.body.buyer_id, agreement_id)
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
            key = call_id or f"{UNNAMED_CALL_PREFIX}{voucher.sequence}"
            if key in account.calls:  # one name, one call: a second would share its record
                raise InvalidArgument(f"call {key!r} was already made under this agreement")
            account.anchor_word, account.anchor_index = voucher.payword, voucher.payword_index
            account.sequence = voucher.sequence
            account.authorised_atomic = voucher.cumulative_atomic
            account.latest = voucher
            account.reserved_atomic += reserve
            account.calls[key] = CallPayment(voucher.sequence, voucher.payword, reserve,
                                       voucher.SerializeToString())
            return Admission(agreement_id, key, voucher.sequence, reserve)

    def _check_in_time(self, account: AgreementAccount) -> None:
        """A new call comes before the seller's redeem: a call answered after it would be
        paid only if the redeem came in the marketplace's grace after the deadline, which is
        a tenth of the escrow's span: nothing for an escrow opened just before its deadline."""
        now, deadline = self.clock_ms(), account.body.terms.completion_deadline_ms
        if now > deadline:
            raise AgreementEnded("the agreement's completion deadline has passed; it takes "
                                 "no more calls (what was delivered is still redeemed)")
        if now > deadline - self.calls_end_before_ms:
            raise AgreementEnded(f"the agreement's last {self.calls_end_before_ms / 1000:g} s "
                                 "before its completion deadline are the seller's to redeem "
                                 "in; it takes no more calls")

    @staticmethod
    def _check_unhashed(account: AgreementAccount, voucher: agreement_pb2.Voucher) -> None:
        """What refuses a voucher before any hashing: a replay, an amount that does not match
        its index, a word past the chain's end or the agreement's maximum."""
        body = account.body
        if voucher.sequence > INT64_MAX:  # a uint64 on the wire; the journal's columns stop here
            raise InvalidArgument(f"voucher sequence {voucher.sequence} is past {INT64_MAX}")
        if voucher.sequence <= account.sequence or voucher.payword_index < account.anchor_index:
            raise InvalidVoucher(f"voucher {voucher.sequence} was already used (replay)")
        if voucher.cumulative_atomic != voucher.payword_index * body.link_value_atomic:
            raise InvalidVoucher("cumulative_atomic does not match the payword index")
        if (voucher.payword_index > body.payword_length
                or voucher.cumulative_atomic > body.terms.max_total_atomic):
            raise BudgetExceeded("the voucher goes past the agreement's maximum")

    @staticmethod
    def _check_new(account: AgreementAccount, voucher: agreement_pb2.Voucher) -> None:
        PaymentGate._check_unhashed(account, voucher)
        if not verify_word(voucher.payword, voucher.payword_index, account.anchor_word,
                           account.anchor_index):
            raise InvalidVoucher("the voucher's payword is forged")

    def _retry(self, agreement_id: str, account: AgreementAccount, voucher: agreement_pb2.Voucher,
               call_id: str, reserve_atomic: int, partial: bool) -> Admission:
        call = account.calls[call_id]
        _same_voucher(call_id, call, voucher)
        if call.response is not None:  # answered: again, once its record is durable
            if call.durable is not None and call.durable.done():
                call.durable = None  # written (a failed record would have unchained the call)
            return Admission(agreement_id, call_id, call.sequence, 0,
                             replay=replay_as(decode_response(call.response), partial),
                             durable=call.durable)
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
            if account.sealed:  # the redeem went without it: no charge, and no answer
                account.reserved_atomic -= call.reserve_atomic
                call.in_flight = False
                raise AgreementEnded("the agreement was redeemed while this call ran; it is "
                                     "not charged and not answered")
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
            call.in_flight, call.response = False, encode_response(response)
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
                truncate_chain(account, min(chained))

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
        return decode_response(call.response) if call is not None and call.response else None

    def paid_calls(self) -> list[tuple[str, str, bytes]]:
        """(agreement id, call id, payword) of every call kept: what a door indexes its own
        ids by after a restart."""
        with self._lock:
            accounts = list(self._accounts.items())
        return [(agreement_id, call_id, call.payword) for agreement_id, account in accounts
                for call_id, call in list(account.calls.items())]

    def unspent(self, agreement_id: str) -> int:
        return self._account(agreement_id).available_atomic

    def vouch(self, agreement_id: str, voucher: agreement_pb2.Voucher | None,
              call_id: str = "") -> None:
        """Raise what `admit` would for a voucher that is not genuine (missing, for another
        agreement, replayed, forged), changing nothing; a voucher whose check is dear passes
        (`admit` makes its sender pay for the hashing first)."""
        voucher = _addressed(voucher, agreement_id)
        account = self._account(agreement_id)
        with account.lock:
            known = account.calls.get(call_id) if call_id else None
            if known is not None:  # a retry: its first voucher again
                _same_voucher(call_id, known, voucher)
            elif voucher.payword_index - account.anchor_index <= CHEAP_CHECK_HASHES:
                self._check_new(account, voucher)
            else:
                self._check_unhashed(account, voucher)

    def check_hashes(self, agreement_id: str, voucher: agreement_pb2.Voucher | None) -> int:
        """How many SHA-256s checking `voucher` would take (from the last word seen); none
        for a voucher refused before any hashing (a replay, past the chain's end, a cumulative
        amount that does not match its index, over the agreement's maximum)."""
        if voucher is None:
            return 0
        account = self._account(agreement_id)
        try:
            self._check_unhashed(account, voucher)
        except (InvalidVoucher, BudgetExceeded):
            return 0
        return voucher.payword_index - account.anchor_index


def _addressed(voucher: agreement_pb2.Voucher | None,
               agreement_id: str) -> agreement_pb2.Voucher:
    """The call's voucher, there and for the call's agreement (PaymentRequired, or
    InvalidVoucher)."""
    if voucher is None:
        raise PaymentRequired("this method is paid: attach a voucher "
                              f"({VOUCHER_METADATA_KEY} metadata)")
    if voucher.agreement_id != agreement_id:
        raise InvalidVoucher("the voucher is for a different agreement than the request")
    return voucher


def _same_voucher(call_id: str, call: CallPayment, voucher: agreement_pb2.Voucher) -> None:
    """A retried call id must come with its first voucher."""
    if voucher.sequence != call.sequence or voucher.payword != call.payword:
        raise InvalidVoucher(f"call {call_id!r} was paid by another voucher; a retry must "
                             "send the same one")
