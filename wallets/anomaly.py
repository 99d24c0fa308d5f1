"""Velocity anomaly detection: a wallet spending far faster than its own recent baseline
freezes, and an alert is recorded for an operator.

The rule, per wallet, from its policy (off while `velocity_factor_pct` is 0):

    window   = spent in the last `velocity_window_s`, this spend included
    trailing = spent in the `velocity_baseline_s` before that window
    trip when window > velocity_min_atomic
          and window x baseline_s x 100 > velocity_factor_pct x trailing x window_s

that is, when the window's spend passes `factor` times the trailing spend scaled to one window:
exact integers, no rates in floating point. The floor `velocity_min_atomic` keeps a new wallet
(baseline 0) from tripping on its first spends. Spend is counted in buckets of a sixth of the
window, so the window is measured to within a sixth of its length. A spend a person approved
(`wallets.approvals`) counts but never trips the rule.

On a trip the spend is refused (WALLET_FROZEN) and the freeze with its alert is written right
after the refusing transaction ends (`SpendGuard.after_transaction`): it persists although the
spend rolled back. Every debit of a frozen wallet (transfer, hold, withdrawal, conversion) is
refused until an operator unfreezes it; captures of holds placed before still go through, and
credits always do. Unfreezing clears the window (not the older baseline), so the burst that
tripped the rule does not freeze the wallet again at once. Freezes, manual ones included, and
unfreezes are all alerts (`list_alerts`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from wallets import policies
from wallets.errors import FailedPrecondition, InvalidArgument, WalletFrozen
from wallets.policies import Policy
from wallets.tables import SpendBucketRow, WalletAlertRow

BUCKETS = SpendBucketRow.__table__  # type: ignore[attr-defined]
ALERTS = WalletAlertRow.__table__  # type: ignore[attr-defined]
MAX_REASON = 256
MAX_LIST = 1000


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    account_id: str
    kind: str  # velocity | freeze | unfreeze
    message: str
    window_spent_atomic: int
    threshold_atomic: int
    actor: str
    created_at_ms: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Freeze:
    """The effect of a velocity trip: freeze the wallet, record the alert (idempotent)."""

    alert: Alert

    @property
    def account_id(self) -> str:
        return self.alert.account_id

    def persist(self, conn: Connection) -> None:
        if conn.execute(select(ALERTS.c.id).where(ALERTS.c.id == self.alert.alert_id)).first():
            return
        freeze(conn, self.alert, f"velocity rule tripped (alert {self.alert.alert_id})")


def bucket_size_ms(policy: Policy) -> int:
    return max(1000, policy.velocity_window_s * 1000 // 6)


def _sum(conn: Connection, account_id: str, after_ms: int, upto_ms: int) -> int:
    c = BUCKETS.c
    total = conn.execute(select(func.coalesce(func.sum(c.spent_atomic), 0)).where(
        c.account_id == account_id, c.bucket_ms > after_ms, c.bucket_ms <= upto_ms)).scalar()
    return int(total or 0)


def check(conn: Connection, policy: Policy, *, account_id: str, currency: str,
          amount_atomic: int, now_ms: int, approved: bool,
          queue: Callable[[Any], None]) -> None:
    """Refuse (and queue a freeze for) a spend that takes the window past the rule."""
    if not policy.velocity_factor_pct or approved:
        return
    window_ms = policy.velocity_window_s * 1000
    baseline_ms = policy.velocity_baseline_s * 1000
    window = _sum(conn, account_id, now_ms - window_ms, now_ms) + amount_atomic
    trailing = _sum(conn, account_id, now_ms - window_ms - baseline_ms, now_ms - window_ms)
    if window <= policy.velocity_min_atomic:
        return
    if window * policy.velocity_baseline_s * 100 <= \
            policy.velocity_factor_pct * trailing * policy.velocity_window_s:
        return
    per_window = trailing * policy.velocity_window_s // policy.velocity_baseline_s
    threshold = max(policy.velocity_min_atomic,
                    policy.velocity_factor_pct * per_window // 100)
    alert_id = uuid.uuid4().hex
    message = (
        f"wallet {account_id} spent {window} atomic {currency} in the last "
        f"{policy.velocity_window_s} s with this spend of {amount_atomic}, over "
        f"{policy.velocity_factor_pct}% of its trailing baseline of {per_window} per "
        f"{policy.velocity_window_s} s and over the floor of {policy.velocity_min_atomic}; the "
        f"wallet is frozen (alert {alert_id}) until an operator unfreezes it")
    queue(Freeze(Alert(alert_id, account_id, "velocity", message, window, threshold,
                       "velocity-rule", now_ms)))
    raise WalletFrozen(message)


def record(conn: Connection, policy: Policy, account_id: str, amount_atomic: int,
           now_ms: int) -> None:
    """Add an allowed spend to the current bucket; drop buckets older than the rule looks."""
    if not policy.velocity_factor_pct:
        return
    size = bucket_size_ms(policy)
    bucket = now_ms - now_ms % size
    c = BUCKETS.c
    done = conn.execute(update(BUCKETS).where(c.account_id == account_id, c.bucket_ms == bucket)
                        .values(spent_atomic=c.spent_atomic + amount_atomic))
    if done.rowcount == 0:
        horizon = now_ms - (policy.velocity_window_s + policy.velocity_baseline_s) * 1000 - size
        conn.execute(delete(BUCKETS).where(c.account_id == account_id, c.bucket_ms < horizon))
        conn.execute(insert(BUCKETS).values(account_id=account_id, bucket_ms=bucket,
                                            spent_atomic=amount_atomic))


def refuse_if_frozen(row: Any, account_id: str) -> None:
    if row is not None and row.frozen:
        raise WalletFrozen(f"wallet {account_id} is frozen since {row.frozen_at_ms} ms by "
                           f"{row.frozen_by}: {row.frozen_reason}; an operator must unfreeze "
                           "it before it can spend")


# ---- freeze, unfreeze, alerts -------------------------------------------------------------------


def check_actor(actor: str, reason: str) -> None:
    if not actor or len(actor) > 128:
        raise InvalidArgument("actor must name who acts (1..128 characters)")
    if not reason or len(reason) > MAX_REASON:
        raise InvalidArgument(f"reason is required (1..{MAX_REASON} characters)")


def freeze(conn: Connection, alert: Alert, reason: str) -> None:
    """Freeze the wallet (if it is not already) and record the alert."""
    row = policies.load_rows(conn, [alert.account_id]).get(alert.account_id)
    if row is None or not row.frozen:
        policies.save(conn, alert.account_id, {
            "frozen": True, "frozen_reason": reason[:MAX_REASON],
            "frozen_by": alert.actor, "frozen_at_ms": alert.created_at_ms}, alert.created_at_ms)
    conn.execute(insert(ALERTS).values(
        id=alert.alert_id, account_id=alert.account_id, kind=alert.kind, message=alert.message,
        window_spent_atomic=alert.window_spent_atomic, threshold_atomic=alert.threshold_atomic,
        actor=alert.actor, created_at_ms=alert.created_at_ms))


def unfreeze(conn: Connection, account_id: str, *, actor: str, reason: str,
             now_ms: int) -> Alert:
    row = policies.load_rows(conn, [account_id]).get(account_id)
    if row is None or not row.frozen:
        raise FailedPrecondition(f"wallet {account_id} is not frozen", reason="NOT_FROZEN")
    policies.save(conn, account_id, {"frozen": False, "frozen_reason": "", "frozen_by": "",
                                     "frozen_at_ms": 0}, now_ms)
    policy = policies.Policy.from_row(row)
    recent = now_ms - policy.velocity_window_s * 1000 - bucket_size_ms(policy)
    conn.execute(delete(BUCKETS).where(BUCKETS.c.account_id == account_id,
                                       BUCKETS.c.bucket_ms > recent))
    alert = Alert(uuid.uuid4().hex, account_id, "unfreeze",
                  f"wallet {account_id} unfrozen by {actor}: {reason}", 0, 0, actor, now_ms)
    conn.execute(insert(ALERTS).values(id=alert.alert_id, **{
        k: v for k, v in alert.to_json().items() if k != "alert_id"}))
    return alert


def query(conn: Connection, *, account_id: str = "", limit: int = 100) -> list[Alert]:
    """Alerts, newest first."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidArgument(f"limit must be 1..{MAX_LIST}")
    c = ALERTS.c
    stmt = select(ALERTS).order_by(c.created_at_ms.desc(), c.id).limit(limit)
    if account_id:
        stmt = stmt.where(c.account_id == account_id)
    return [Alert(r.id, r.account_id, r.kind, r.message, r.window_spent_atomic,
                  r.threshold_atomic, r.actor, r.created_at_ms) for r in conn.execute(stmt)]
