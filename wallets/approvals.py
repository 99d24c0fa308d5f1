"""Approvals: a person in the loop for spends above a wallet's approval threshold.

1. A spend above the policy's `approval_threshold_atomic` is refused with APPROVAL_REQUIRED and
   a pending approval is created: id, wallet, counterparty, skill, amount, the spend's
   idempotency key with its scope (the spender: the owner, or a delegate under a mandate; see
   `wallets._idempotency`) and operation, and an expiry (`approval_ttl_s` later). The guard
   queues it and writes it in its own short transaction right after the refusing one ends
   (`SpendGuard.after_transaction`), so it persists although the spend rolled back.
2. An operator approves or denies it (`WalletControls.approve` / `deny`, RPCs Approve and
   Deny; over gRPC only an operator may, `wallets.access`); the decision records `decided_by`.
3. The same spend retried with the same idempotency key: approved -> it goes through, once (the
   approval is marked used in the spend's own transaction); denied -> APPROVAL_DENIED; past its
   expiry, undecided or unused -> APPROVAL_EXPIRED; still pending -> APPROVAL_REQUIRED again. A
   retry under the same key that differs (amount, counterparty, skill) is an idempotency
   conflict, and that refusal is not recorded as the key's outcome either, so the approved spend
   still goes through when it is retried; nor is APPROVAL_REQUIRED (`wallets._idempotency`).
   An approval belongs to its spender's key: a delegate using the owner's key (or the other way
   round) asks for an approval of its own and can never use, or use up, the other's.

An approval lifts the threshold only: caps, lists and mandates still apply to the spend.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from wallets.currencies import format_amount
from wallets.errors import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalRequired,
    FailedPrecondition,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    TooManyApprovals,
)
from wallets.store import insert_unless_present
from wallets.tables import ApprovalRow

APPROVALS = ApprovalRow.__table__  # type: ignore[attr-defined]
STATUSES = ("pending", "approved", "denied", "used", "expired")
MAX_NOTE = 512
MAX_LIST = 1000
MAX_PENDING_PER_SPENDER = 32  # approvals one caller may keep waiting on one wallet


@dataclass(frozen=True, slots=True)
class Approval:
    approval_id: str
    account_id: str
    currency: str
    counterparty: str
    skill: str
    amount_atomic: int
    spend_key: str
    spend_scope: str
    operation: str
    mandate_id: str
    spender_id: str
    status: str  # pending | approved | denied | used | expired
    created_at_ms: int
    expires_at_ms: int
    decided_by: str = ""
    decided_at_ms: int = 0
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Approval:
        return cls(**data)

    @classmethod
    def from_row(cls, row: Any, now_ms: int) -> Approval:
        status = row.status
        if status in ("pending", "approved") and row.expires_at_ms <= now_ms:
            status = "expired"
        return cls(row.id, row.account_id, row.currency, row.counterparty, row.skill,
                   row.amount_atomic, row.spend_key, row.spend_scope, row.operation,
                   row.mandate_id,
                   row.spender_id, status, row.created_at_ms, row.expires_at_ms,
                   row.decided_by, row.decided_at_ms, row.note)

    def persist(self, conn: Connection) -> None:
        """Write this pending approval unless it exists (an effect of a refused spend)."""
        insert_unless_present(  # two first tries of one spend at once: one row, no error
            conn, APPROVALS, id=self.approval_id, account_id=self.account_id,
            currency=self.currency, counterparty=self.counterparty, skill=self.skill,
            amount_atomic=self.amount_atomic, spend_key=self.spend_key,
            spend_scope=self.spend_scope, operation=self.operation, mandate_id=self.mandate_id,
            spender_id=self.spender_id, status="pending", created_at_ms=self.created_at_ms,
            expires_at_ms=self.expires_at_ms, decided_by="", decided_at_ms=0, note="")


def _utc(at_ms: int) -> str:
    """A time as people read it in a message (UTC, to the second)."""
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def approval_id(account_id: str, spend_scope: str, spend_key: str) -> str:
    """Stable per (wallet, spender's scope, spend key): every retry of one spend names the
    same approval."""
    text = f"approval\n{account_id}\n{spend_scope}\n{spend_key}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def gate(conn: Connection, *, threshold_atomic: int, ttl_s: int, account_id: str,
         currency: str, scope: str, key: str, operation: str, amount_atomic: int,
         counterparty: str, skill: str, mandate_id: str, spender_id: str, now_ms: int,
         queue: Callable[[Any], None]) -> bool:
    """Let a spend through (True when it rides on an approval, now used) or refuse it."""
    if not threshold_atomic or amount_atomic <= threshold_atomic:
        return False
    row = conn.execute(select(APPROVALS).where(APPROVALS.c.account_id == account_id,
                                               APPROVALS.c.spend_scope == scope,
                                               APPROVALS.c.spend_key == key)).first()
    above = (f"a spend of {format_amount(amount_atomic, currency)} ({amount_atomic} atomic) "
             f"from wallet {account_id} is above its approval threshold of "
             f"{format_amount(threshold_atomic, currency)}")
    if row is None:
        _refuse_past_the_cap(conn, account_id, scope, now_ms)
        pending = Approval(approval_id(account_id, scope, key), account_id, currency,
                           counterparty, skill, amount_atomic, key, scope, operation, mandate_id,
                           spender_id, "pending", now_ms, now_ms + ttl_s * 1000)
        queue(pending)
        raise ApprovalRequired(
            f"{above}: approval {pending.approval_id} is pending until "
            f"{_utc(pending.expires_at_ms)}; once it is approved, retry the same request with "
            "the same idempotency key",
            approval_id=pending.approval_id)
    found = Approval.from_row(row, now_ms)
    asked = (found.amount_atomic, found.counterparty, found.skill, found.operation)
    if asked != (amount_atomic, counterparty, skill, operation):
        raise IdempotencyConflict(
            f"idempotency key {key!r} is awaiting approval {found.approval_id} for a different "
            f"spend ({found.amount_atomic} atomic to {found.counterparty})")
    if found.status == "pending":
        raise ApprovalRequired(f"{above}: approval {found.approval_id} is still pending (until "
                               f"{_utc(found.expires_at_ms)})", approval_id=found.approval_id)
    if found.status == "expired":
        raise ApprovalExpired(f"approval {found.approval_id} expired at "
                              f"{_utc(found.expires_at_ms)}; ask again under a new idempotency "
                              "key")
    if found.status == "denied":
        raise ApprovalDenied(f"approval {found.approval_id} was denied by {found.decided_by}"
                             + (f": {found.note}" if found.note else ""))
    if found.status == "used":
        raise ApprovalDenied(f"approval {found.approval_id} was already used")
    conn.execute(update(APPROVALS).where(APPROVALS.c.id == found.approval_id)
                 .values(status="used"))
    return True


def _refuse_past_the_cap(conn: Connection, account_id: str, scope: str, now_ms: int) -> None:
    """One spender (a mandate's holder, say) may keep at most MAX_PENDING_PER_SPENDER
    approvals waiting on a wallet: more would bury the owner's and others' in the approvers'
    queue, and each costs a person's attention."""
    c = APPROVALS.c
    waiting = conn.execute(select(c.id).where(
        c.account_id == account_id, c.spend_scope == scope, c.status == "pending",
        c.expires_at_ms > now_ms).limit(MAX_PENDING_PER_SPENDER)).all()
    if len(waiting) >= MAX_PENDING_PER_SPENDER:
        raise TooManyApprovals(
            f"{MAX_PENDING_PER_SPENDER} spends of this caller already wait for approval on "
            f"wallet {account_id}; ask again once some are decided or have expired")


def decide(conn: Connection, approval: str, *, approve: bool, decided_by: str, note: str,
           now_ms: int) -> Approval:
    """Approve or deny a pending approval (a repeat of the same decision returns it again).
    The write applies only to a row still pending: two operators deciding at once on two
    nodes get one decision, and the other is judged against it (PostgreSQL re-reads the row
    when the first commits)."""
    for _judged in range(3):
        decided = _decide_once(conn, approval, approve=approve, decided_by=decided_by,
                               note=note, now_ms=now_ms)
        if decided is not None:
            return decided
    raise FailedPrecondition(f"approval {approval} keeps changing; ask again",
                             reason="APPROVAL_DECIDED")


def _decide_once(conn: Connection, approval: str, *, approve: bool, decided_by: str, note: str,
                 now_ms: int) -> Approval | None:
    """The decision, or None when the row left "pending" between the look and the write."""
    row = conn.execute(select(APPROVALS).where(APPROVALS.c.id == approval)).first()
    if row is None:
        raise NotFound(f"approval {approval!r} does not exist")
    found = Approval.from_row(row, now_ms)
    target = "approved" if approve else "denied"
    if found.status == target or (approve and found.status == "used"):
        return found
    if found.status == "expired":
        raise ApprovalExpired(f"approval {approval} expired at {found.expires_at_ms} ms")
    if found.status != "pending":
        raise FailedPrecondition(f"approval {approval} is already {found.status}",
                                 reason="APPROVAL_DECIDED")
    written = conn.execute(update(APPROVALS).where(
        APPROVALS.c.id == approval, APPROVALS.c.status == "pending").values(
        status=target, decided_by=decided_by, decided_at_ms=now_ms, note=note))
    if written.rowcount != 1:
        return None
    return replace(found, status=target, decided_by=decided_by, decided_at_ms=now_ms, note=note)


def check_decision(approval: str, decided_by: str, note: str) -> None:
    if not isinstance(approval, str) or not approval:
        raise InvalidArgument("approval_id is required")
    if not decided_by or len(decided_by) > 128:
        raise InvalidArgument("decided_by must name who decides (1..128 characters)")
    if len(note) > MAX_NOTE:
        raise InvalidArgument(f"note is longer than {MAX_NOTE} characters")


def query(conn: Connection, *, account_id: str = "", status: str = "", limit: int = 100,
          now_ms: int, after: tuple[int, str] | None = None) -> list[Approval]:
    """Approvals, newest first (ties by id); `status` filters on the effective status (expiry
    included); `after` = (created_at_ms, id) of the last one of the page before."""
    if status and status not in STATUSES:
        raise InvalidArgument(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    if not 1 <= limit <= MAX_LIST:
        raise InvalidArgument(f"limit must be 1..{MAX_LIST}")
    c = APPROVALS.c
    stmt = select(APPROVALS).order_by(c.created_at_ms.desc(), c.id).limit(limit)
    if after is not None:
        stmt = stmt.where(or_(c.created_at_ms < after[0],
                              and_(c.created_at_ms == after[0], c.id > after[1])))
    if account_id:
        stmt = stmt.where(c.account_id == account_id)
    live = c.expires_at_ms > now_ms
    if status in ("pending", "approved"):
        stmt = stmt.where(c.status == status, live)
    elif status == "expired":
        stmt = stmt.where(c.status.in_(("pending", "approved")), ~live)
    elif status:
        stmt = stmt.where(c.status == status)
    return [Approval.from_row(row, now_ms) for row in conn.execute(stmt)]
