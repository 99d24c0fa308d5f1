"""Two-phase holds: reserve money for a payee, then capture it (in parts, split over payees)
or void what is left; a hold past its timeout is voided by the sweeper or on access. Each
step is one balanced posting plus the hold row's new state, in one transaction, once per
idempotency key. `wallets.ledger.Ledger` inherits them and supplies the posting machinery.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, or_, select, update

from wallets import _sqlite_hot as hot
from wallets._ledger_reads import HOLDS, LedgerReads, hold_from_row
from wallets._mutation import MutationRunner
from wallets.currencies import check_amount
from wallets.errors import (
    HoldClosed,
    HoldExceeded,
    HoldLocked,
    InvalidAmount,
    InvalidArgument,
    NotFound,
)
from wallets.guard import SpendContext
from wallets.models import MAX_LEGS, Balance, Hold, Leg, Posting, Transfer

# The hold statements of every escrow step: prepared on SQLite (`wallets._sqlite_hot`)
_HOLD_FOR_UPDATE = hot.Statement(select(HOLDS).where(HOLDS.c.id == bindparam("hold"))
                                 .with_for_update())  # SQLite: writers are serialised
_SETTLE_HOLD = hot.Statement(update(HOLDS).where(HOLDS.c.id == bindparam("hold")).values(
    captured_atomic=bindparam("captured"), voided_atomic=bindparam("voided"),
    status=bindparam("status")))
_DUE_HOLDS = hot.Statement(select(HOLDS.c.id).where(
    HOLDS.c.status == "open", HOLDS.c.expires_at_ms <= bindparam("now")).limit(bindparam("limit")))
# Overdue holds of one account (either side) or one hold, read before a balance or a capture
_DUE_HOLDS_OF_ACCOUNT = hot.Statement(select(HOLDS.c.id).where(
    HOLDS.c.status == "open", HOLDS.c.expires_at_ms <= bindparam("now"),
    or_(HOLDS.c.debit_account_id == bindparam("account"),
        HOLDS.c.credit_account_id == bindparam("account"))).limit(bindparam("limit")))
_DUE_HOLD = hot.Statement(select(HOLDS.c.id).where(
    HOLDS.c.id == bindparam("hold"), HOLDS.c.status == "open",
    HOLDS.c.expires_at_ms <= bindparam("now")))
_VOID_HOLD = hot.Statement(update(HOLDS).where(HOLDS.c.id == bindparam("hold")).values(
    voided_atomic=bindparam("voided"), status=bindparam("status")))
MAX_HOLD_TIMEOUT_S = 30 * 24 * 3600


class LedgerHolds(LedgerReads, MutationRunner):
    """The hold operations; the ledger provides `_post` and `_accounts_for`."""

    def _post(self, conn: Connection, key: str, kind: str, legs: list[Leg], *,
              hold_id: str = "", memo: str = "") -> Posting:
        raise NotImplementedError

    def _accounts_for(self, conn: Connection, account_ids: Iterable[str]) -> dict[str, Balance]:
        raise NotImplementedError

    def hold(self, key: str, debit_account_id: str, credit_account_id: str, amount_atomic: int,
             *, timeout_s: int, spend: SpendContext | None = None) -> Hold:
        """Reserve money on the debit account for the credit account until captured or voided."""
        check_amount(amount_atomic)
        if not 1 <= timeout_s <= MAX_HOLD_TIMEOUT_S:
            raise InvalidArgument(f"timeout_s must be 1..{MAX_HOLD_TIMEOUT_S}, got {timeout_s}")
        if debit_account_id == credit_account_id:
            raise InvalidArgument("debit and credit accounts must differ")
        request: dict[str, Any] = {"debit": debit_account_id, "credit": credit_account_id,
                                   "amount": amount_atomic, "timeout_s": timeout_s}
        if spend is not None:  # spend-guard hook: the context is part of the request
            request["spend"] = spend.request()

        def apply(conn: Connection) -> Hold:
            return self.hold_in(conn, key, debit_account_id, credit_account_id, amount_atomic,
                                timeout_s=timeout_s, spend=spend)

        return self.mutate(key, "hold", request, apply, Hold.to_json, Hold.from_json)

    def hold_in(self, conn: Connection, key: str, debit_account_id: str, credit_account_id: str,
                amount_atomic: int, *, timeout_s: int,
                spend: SpendContext | None = None) -> Hold:
        """`hold` inside a caller's transaction (escrow opens one atomically with its record).
        Debit and credit differ here too: callers that skip `hold` (hash-locked holds) would
        otherwise hold money for its own account, which no capture can balance."""
        if debit_account_id == credit_account_id:
            raise InvalidArgument("debit and credit accounts must differ")
        transfers = [Transfer(debit_account_id, credit_account_id, amount_atomic)]
        if self._sqlite:  # one statement: the accounts, and which wallets have controls
            accounts, controlled = hot.accounts_with_controls(
                conn, [debit_account_id, credit_account_id])
            if not self.spend_guard.idle(transfers, accounts, spend, controlled):
                self.spend_guard.check(conn, key, "hold", transfers, accounts, spend)
        else:
            accounts = self._accounts_for(conn, [debit_account_id, credit_account_id])
            self.spend_guard.check(  # spend-guard hook
                conn, key, "hold", transfers, accounts, spend)
        code = accounts[debit_account_id].currency
        hold_id = uuid.uuid4().hex
        self._post(conn, key, "hold", [
            Leg(debit_account_id, code, pending_debit_atomic=amount_atomic),
            Leg(credit_account_id, code, pending_credit_atomic=amount_atomic),
        ], hold_id=hold_id)
        expires_at_ms = self.clock_ms() + timeout_s * 1000
        row = dict(
            id=hold_id, debit_account_id=debit_account_id, credit_account_id=credit_account_id,
            currency=code, amount_atomic=amount_atomic, captured_atomic=0, voided_atomic=0,
            status="open", expires_at_ms=expires_at_ms, condition_sha256="", fulfilment="",
        )
        hot.insert(conn, HOLDS, row)
        return Hold(hold_id, debit_account_id, credit_account_id, code, amount_atomic, 0, 0,
                    "open", expires_at_ms)

    def get_hold(self, hold_id: str) -> Hold:
        self.expire_holds(hold_id=hold_id)
        with self._read() as conn:
            row = conn.execute(select(HOLDS).where(HOLDS.c.id == hold_id)).first()
        if row is None:
            raise NotFound(f"hold {hold_id!r} does not exist")
        return hold_from_row(row)

    def capture(self, key: str, hold_id: str, amount_atomic: int,
                splits: Sequence[tuple[str, int]] | None = None, *, final: bool = False) -> Posting:
        """Pay `amount_atomic` out of a hold, split over credit accounts (default: the hold's).

        Several partial captures are allowed up to the held amount; `final=True` voids whatever
        is left in the same posting, so capture and release are one atomic step.
        """
        check_amount(amount_atomic, allow_zero=final)
        request = {"hold": hold_id, "amount": amount_atomic,
                   "splits": [list(s) for s in splits or []], "final": final}
        self.expire_holds(hold_id=hold_id)

        def apply(conn: Connection) -> Posting:
            return self.capture_in(conn, key, hold_id, amount_atomic, splits, final=final)

        return self.mutate(key, "capture", request, apply, Posting.to_json, Posting.from_json)

    def capture_in(self, conn: Connection, key: str, hold_id: str, amount_atomic: int,
                   splits: Sequence[tuple[str, int]] | None = None, *,
                   final: bool = False, preimage: bytes = b"", locked: Any = None) -> Posting:
        """`preimage`: unlocks a hash-locked hold (`wallets.conditional`); others ignore it.
        `locked`: the hold's row as the caller read it in this transaction (`hold_for_update`),
        so it is not read again."""
        hold = self._open_hold(conn, hold_id, preimage, locked)
        splits = list(splits) if splits else [(hold.credit_account_id, amount_atomic)]
        if len(splits) > MAX_LEGS or any(a < 0 for _, a in splits) \
                or sum(a for _, a in splits) != amount_atomic:
            raise InvalidAmount(f"splits must be positive and sum to {amount_atomic}")
        if amount_atomic > hold.open_atomic:
            raise HoldExceeded(
                f"capture of {amount_atomic} exceeds the {hold.open_atomic} still held"
            )
        release = hold.open_atomic - amount_atomic if final else 0
        if self._sqlite:  # the same checks (each exists, one currency), one statement
            hot.accounts_with_controls(conn, [hold.debit_account_id, *(a for a, _ in splits)])
        else:
            self._accounts_for(conn, [hold.debit_account_id, *(a for a, _ in splits)])
        moved = amount_atomic + release
        captured = hold.captured_atomic + amount_atomic
        voided = hold.voided_atomic + release
        status = "open" if captured + voided < hold.amount_atomic else (
            "captured" if captured else "voided")
        # the hold's row before the posting: the posting locks the payees' accounts, which
        # other captures share, so nothing else is written while it holds them
        _SETTLE_HOLD.run(conn, {"hold": hold_id, "captured": captured, "voided": voided,
                                "status": status})
        legs: dict[str, list[int]] = {
            hold.debit_account_id: [-amount_atomic, -moved, 0],
            hold.credit_account_id: [0, 0, -moved],
        }
        for account_id, part in splits:
            if part:
                legs.setdefault(account_id, [0, 0, 0])[0] += part
        posting = self._post(conn, key, "capture", [
            Leg(a, hold.currency, posted_atomic=p, pending_debit_atomic=pd,
                pending_credit_atomic=pc) for a, (p, pd, pc) in legs.items()
        ], hold_id=hold_id)
        return posting

    def void(self, key: str, hold_id: str) -> Posting:
        """Release everything still held back to the debit account."""
        self.expire_holds(hold_id=hold_id)

        def apply(conn: Connection) -> Posting:
            return self.void_in(conn, key, hold_id)

        return self.mutate(key, "void", {"hold": hold_id}, apply,
                           Posting.to_json, Posting.from_json)

    def void_in(self, conn: Connection, key: str, hold_id: str, *, kind: str = "void",
                checked: bool = False) -> Posting:
        """`checked`: the caller read the hold open in this transaction and may void it though
        it is hash-locked (its payee declining it: `wallets.conditional`)."""
        hold = self._open_hold(conn, hold_id) if kind == "void" and not checked \
            else self._hold_row(conn, hold_id)
        left = hold.open_atomic
        posting = self._post(conn, key, kind, [
            Leg(hold.debit_account_id, hold.currency, pending_debit_atomic=-left),
            Leg(hold.credit_account_id, hold.currency, pending_credit_atomic=-left),
        ], hold_id=hold_id)
        status = "expired" if kind == "expire" else ("voided" if not hold.captured_atomic
                                                     else "captured")
        _VOID_HOLD.run(conn, {"hold": hold_id, "voided": hold.voided_atomic + left,
                              "status": status})
        return posting

    def _hold_row(self, conn: Connection, hold_id: str) -> Hold:
        return self.locked_hold(conn, hold_id)[1]

    def locked_hold(self, conn: Connection, hold_id: str) -> tuple[Any, Hold]:
        """The hold's row, FOR UPDATE (a capture may take it as `locked`), and the hold."""
        row = self.hold_for_update(conn, hold_id)
        if row is None:
            raise NotFound(f"hold {hold_id!r} does not exist")
        return row, hold_from_row(row)

    def _open_hold(self, conn: Connection, hold_id: str, preimage: bytes = b"",
                   locked: Any = None) -> Hold:
        """The hold, FOR UPDATE: concurrent captures of one hold queue here and each sees what
        the one before left (1000 concurrent captures of one hold all succeeded without it).
        `locked`: its row, already read so in this transaction."""
        row = self.hold_for_update(conn, hold_id) if locked is None else locked
        if row is None:
            raise NotFound(f"hold {hold_id!r} does not exist")
        hold = hold_from_row(row)
        if hold.status == "open" and hold.expires_at_ms <= self.clock_ms():
            raise HoldClosed(f"hold {hold_id} has expired; its money goes back to the payer")
        if hold.status != "open":
            raise HoldClosed(f"hold {hold_id} is already {hold.status}")
        # A hash-locked hold (wallets.conditional) is captured only with its preimage and
        # voided only by its timeout: a plain capture or void is refused.
        if row.condition_sha256 and hashlib.sha256(preimage).hexdigest() != \
                row.condition_sha256:
            raise HoldLocked(f"hold {hold_id} is locked by a SHA-256 condition: only its "
                             "preimage captures it, and only its timeout voids it")
        return hold

    def hold_for_update(self, conn: Connection, hold_id: str) -> Any:
        """The hold's row, locked (SQLite: writers are serialised, a plain read)."""
        return _HOLD_FOR_UPDATE.first(conn, {"hold": hold_id})

    def expire_holds(self, *, account_id: str | None = None, hold_id: str | None = None,
                     limit: int = 1000) -> int:
        """Void every open hold past its timeout (the sweeper; also run on access): all of
        them, an account's (either side: the payee's pending credits expire too) or one."""
        if account_id is not None and hold_id is not None:
            raise InvalidArgument("expire the holds of an account or one hold, not both")
        params: dict[str, Any] = {"now": self.clock_ms(), "limit": limit}
        statement = _DUE_HOLDS
        if account_id is not None:
            statement, params["account"] = _DUE_HOLDS_OF_ACCOUNT, account_id
        elif hold_id is not None:
            statement, params = _DUE_HOLD, {"now": params["now"], "hold": hold_id}
        with hot.reading(self.engine) as reader:  # prepared on SQLite: every balance asks
            due = [row.id for row in statement.all(reader, params)]
        return self._expire(due)

    def _expire(self, due: list[str]) -> int:
        """Void each due hold in a transaction of its own, run again after a deadlock with a
        concurrent capture (PostgreSQL): an expiry on access must not fail the caller's
        operation."""
        def expire_one(conn: Connection, due_id: str) -> int:
            hold = self._hold_row(conn, due_id)
            if hold.status == "open" and hold.expires_at_ms <= self.clock_ms():
                self.void_in(conn, f"expire:{due_id}", due_id, kind="expire")
                return 1
            return 0

        return sum(self._write_retried(lambda conn, due_id=due_id: expire_one(conn, due_id))
                   for due_id in due)
