"""The seller gate's redeems and retention (mixed into `agents.payments.PaymentGate`): closing
an agreement to calls for its redeem, remembering the marketplace's answer, finding what is
due to redeem, and forgetting what is settled for good."""

from __future__ import annotations

import threading
import time
from typing import Any

from agents._gate_accounts import AgreementAccount, FreshAgreements, receipts_by_sequence
from agents.usage_journal import JournalError, Pending, UsageJournal
from marketplace.v1 import agreement_pb2

_SYNC_WAIT_S = 30.0  # how long a redeem's record waits for the journal


class GateRedeems:
    """Redeem bookkeeping of the seller's gate (a mixin: the gate holds the accounts)."""

    journal: UsageJournal | None
    _accounts: dict[str, AgreementAccount]
    _fresh: FreshAgreements
    _lock: threading.Lock

    def _account(self, agreement_id: str) -> AgreementAccount:
        raise NotImplementedError

    def _queue_open(self, agreement_id: str, body: agreement_pb2.AgreementBody, *,
                    lazy: bool = True) -> Pending:
        raise NotImplementedError

    def _ensure_opened(self, agreement_id: str, account: AgreementAccount) -> None:
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

    def redeemable(self, agreement_id: str) -> tuple[agreement_pb2.Voucher | None,
                                                      list[agreement_pb2.Receipt]]:
        account = self._account(agreement_id)
        with account.lock:
            return account.latest, receipts_by_sequence(account)

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
            account.sealed = True
            voucher = account.latest or agreement_pb2.Voucher(
                agreement_id=agreement_id, sequence=0, cumulative_atomic=0, payword_index=0,
                payword=account.body.payword_root)
            return voucher, receipts_by_sequence(account)

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
            account.sealed = escrow is not None

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
        """Agreements nothing more can happen to here: redeemed ones `keep_ms` after their
        completion deadline (the marketplace holds the evidence from then on), never paid ones
        at it (no call can come; one that cost nobody anything is not kept for a day)."""
        self._fresh.prune(now_ms)
        with self._lock:
            accounts = list(self._accounts.items())
        return [agreement for agreement, account in accounts
                if (account.redeemed is not None
                    and now_ms >= account.body.terms.completion_deadline_ms + keep_ms)
                or (account.latest is None and not account.reserved_atomic
                    and now_ms >= account.body.terms.completion_deadline_ms)]

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
