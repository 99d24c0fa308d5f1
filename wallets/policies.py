"""Wallet policies: the spending rules an owner attaches to a wallet, and the counters behind them.

A policy holds, in atomic units of the wallet's currency (0 means "no limit"):
- `per_call_cap_atomic`: the most one request may take out of the wallet;
- `daily_cap_atomic`: the most per UTC day (the day of the ledger's clock);
- `counterparty_daily_cap_atomic`: the most per UTC day to any one counterparty;
- allow and deny lists of counterparties (agent ids, or an account owner such as
  `rail:sandbox-usd`) and of skills. A deny list always wins; a non-empty allow list admits only
  what it names. Skill lists judge spends that name a skill (escrow for an agreement); a plain
  transfer names none, so restrict those with the counterparty lists;
- `approval_threshold_atomic` and `approval_ttl_s` (see `wallets.approvals`);
- the velocity rule (see `wallets.anomaly`).

Counters start when a policy is attached (a wallet without one pays nothing for them). A hold
counts, whole, when it is placed; money a void or an expiry releases does not restore the cap
(the cap bounds what was authorised). The rules run inside the posting's transaction
(`wallets.guard`), so concurrent spends never pass a cap by even one atomic unit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, delete, insert, select, update

from wallets.currencies import MAX_AMOUNT_ATOMIC
from wallets.errors import InvalidArgument, PolicyDenied
from wallets.tables import SpendCounterRow, WalletPolicyRow

POLICIES = WalletPolicyRow.__table__  # type: ignore[attr-defined]
_ONE = select(POLICIES).where(POLICIES.c.account_id == bindparam("account"))
COUNTERS = SpendCounterRow.__table__  # type: ignore[attr-defined]
DAY_MS = 86_400_000
MAX_LIST = 100
MAX_NAME = 128
DEFAULT_APPROVAL_TTL_S = 24 * 3600
DEFAULT_VELOCITY_WINDOW_S = 60
DEFAULT_VELOCITY_BASELINE_S = 3600
MAX_APPROVAL_TTL_S = 30 * 24 * 3600
LISTS = ("allow_counterparties", "deny_counterparties", "allow_skills", "deny_skills")


@dataclass(frozen=True, slots=True)
class Policy:
    per_call_cap_atomic: int = 0
    daily_cap_atomic: int = 0
    counterparty_daily_cap_atomic: int = 0
    allow_counterparties: tuple[str, ...] = ()
    deny_counterparties: tuple[str, ...] = ()
    allow_skills: tuple[str, ...] = ()
    deny_skills: tuple[str, ...] = ()
    approval_threshold_atomic: int = 0
    approval_ttl_s: int = DEFAULT_APPROVAL_TTL_S
    velocity_window_s: int = DEFAULT_VELOCITY_WINDOW_S
    velocity_baseline_s: int = DEFAULT_VELOCITY_BASELINE_S
    velocity_factor_pct: int = 0  # 0: off; 500: trip above 5x the trailing baseline
    velocity_min_atomic: int = 0

    def __post_init__(self) -> None:
        for name in ("per_call_cap_atomic", "daily_cap_atomic", "counterparty_daily_cap_atomic",
                     "approval_threshold_atomic", "velocity_min_atomic"):
            _check_int(name, getattr(self, name), 0, MAX_AMOUNT_ATOMIC)
        for name in LISTS:
            names = getattr(self, name)
            if isinstance(names, str) or len(names) > MAX_LIST or not all(
                    isinstance(n, str) and 0 < len(n) <= MAX_NAME for n in names):
                raise InvalidArgument(
                    f"{name} must be a list of at most {MAX_LIST} names of 1..{MAX_NAME} "
                    "characters")
            object.__setattr__(self, name, tuple(sorted(set(names))))
        _check_int("approval_ttl_s", self.approval_ttl_s, 60, MAX_APPROVAL_TTL_S)
        _check_int("velocity_window_s", self.velocity_window_s, 6, 3600)
        _check_int("velocity_baseline_s", self.velocity_baseline_s, 2 * self.velocity_window_s,
                   7 * 24 * 3600)
        _check_int("velocity_factor_pct", self.velocity_factor_pct, 0, 1_000_000)
        if 0 < self.velocity_factor_pct < 100:
            raise InvalidArgument("velocity_factor_pct must be 0 (off) or at least 100 (1x)")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        return cls(**{k: tuple(v) if k in LISTS else v for k, v in data.items()})

    @classmethod
    def from_row(cls, row: Any) -> Policy:
        lists = orjson.loads(row.lists_json or "{}")
        return cls(
            per_call_cap_atomic=row.per_call_cap_atomic, daily_cap_atomic=row.daily_cap_atomic,
            counterparty_daily_cap_atomic=row.counterparty_daily_cap_atomic,
            approval_threshold_atomic=row.approval_threshold_atomic,
            approval_ttl_s=row.approval_ttl_s or DEFAULT_APPROVAL_TTL_S,
            velocity_window_s=row.velocity_window_s or DEFAULT_VELOCITY_WINDOW_S,
            velocity_baseline_s=row.velocity_baseline_s or DEFAULT_VELOCITY_BASELINE_S,
            velocity_factor_pct=row.velocity_factor_pct,
            velocity_min_atomic=row.velocity_min_atomic,
            **{name: tuple(lists.get(name, ())) for name in LISTS})

    def columns(self) -> dict[str, Any]:
        values = {k: v for k, v in asdict(self).items() if k not in LISTS}
        values["lists_json"] = orjson.dumps({name: list(getattr(self, name))
                                             for name in LISTS}).decode()
        return values


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{name} must be an integer in {low}..{high}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ControlState:
    """A wallet's policy and freeze state, as GetPolicy shows it."""

    account_id: str
    currency: str
    policy: Policy
    frozen: bool = False
    frozen_reason: str = ""
    frozen_by: str = ""
    frozen_at_ms: int = 0
    updated_at_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "policy": self.policy.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ControlState:
        return cls(**{**data, "policy": Policy.from_json(data["policy"])})

    @classmethod
    def from_row(cls, account_id: str, currency: str, row: Any | None) -> ControlState:
        if row is None:
            return cls(account_id, currency, Policy())
        return cls(account_id, currency, Policy.from_row(row), bool(row.frozen),
                   row.frozen_reason, row.frozen_by, row.frozen_at_ms, row.updated_at_ms)


# ---- storage ----------------------------------------------------------------------------------


def load_rows(conn: Connection, account_ids: list[str]) -> dict[str, Any]:
    """The control rows of these wallets (absent: no policy, not frozen)."""
    if len(account_ids) == 1:  # every hold and payment: a statement built once
        return {row.account_id: row for row in conn.execute(_ONE, {"account": account_ids[0]})}
    query = select(POLICIES).where(POLICIES.c.account_id.in_(account_ids))
    return {row.account_id: row for row in conn.execute(query)}


def save(conn: Connection, account_id: str, values: dict[str, Any], now_ms: int) -> None:
    """Insert or update a wallet's control row (inside the caller's write transaction)."""
    values = {**values, "updated_at_ms": now_ms}
    done = conn.execute(update(POLICIES).where(POLICIES.c.account_id == account_id)
                        .values(**values))
    if done.rowcount == 0:
        conn.execute(insert(POLICIES).values(account_id=account_id,
                                             **{**Policy().columns(), **values}))


# ---- the rules --------------------------------------------------------------------------------


def utc_day(now_ms: int) -> int:
    return now_ms // DAY_MS


def _day_name(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def check_lists(policy: Policy, account_id: str, counterparties: list[str], skill: str,
                own: str) -> None:
    """Refuse a counterparty or skill the lists exclude (paying oneself is not restricted)."""
    where = f"the policy of wallet {account_id}"
    for who in counterparties:
        if who == own:
            continue
        if who in policy.deny_counterparties:
            raise PolicyDenied(f"{where} denies paying {who} (deny_counterparties)")
        if policy.allow_counterparties and who not in policy.allow_counterparties:
            allowed = ", ".join(policy.allow_counterparties)
            raise PolicyDenied(f"{where} allows paying only {allowed} (allow_counterparties); "
                               f"{who} is not on the list")
    if skill and skill in policy.deny_skills:
        raise PolicyDenied(f"{where} denies buying skill {skill!r} (deny_skills)")
    if skill and policy.allow_skills and skill not in policy.allow_skills:
        raise PolicyDenied(f"{where} allows buying only skills {', '.join(policy.allow_skills)}"
                           f" (allow_skills); {skill!r} is not on the list")


def check_caps(conn: Connection, policy: Policy, account_id: str, currency: str, amount: int,
               by_counterparty: dict[str, int], own: str, now_ms: int) -> None:
    """Refuse a spend past the per-call, daily or per-counterparty daily cap."""
    where = f"the policy of wallet {account_id}"
    if policy.per_call_cap_atomic and amount > policy.per_call_cap_atomic:
        raise PolicyDenied(f"{where} caps one spend at {policy.per_call_cap_atomic} atomic "
                           f"{currency} (per_call_cap_atomic); this spend is {amount}")
    day = utc_day(now_ms)
    if policy.daily_cap_atomic:
        spent = _spent(conn, account_id, day, "")
        if spent + amount > policy.daily_cap_atomic:
            raise PolicyDenied(
                f"{where} caps spending at {policy.daily_cap_atomic} atomic {currency} per UTC "
                f"day (daily_cap_atomic); {spent} already spent on {_day_name(day)}, this spend "
                f"of {amount} would make {spent + amount}")
    if policy.counterparty_daily_cap_atomic:
        cap = policy.counterparty_daily_cap_atomic
        for who, part in sorted(by_counterparty.items()):
            if who == own:
                continue
            spent = _spent(conn, account_id, day, who)
            if spent + part > cap:
                raise PolicyDenied(
                    f"{where} caps spending to each counterparty at {cap} atomic {currency} "
                    f"per UTC day (counterparty_daily_cap_atomic); {spent} already paid to "
                    f"{who} on {_day_name(day)}, this spend of {part} would make {spent + part}")


def _spent(conn: Connection, account_id: str, day: int, counterparty: str) -> int:
    row = conn.execute(select(COUNTERS.c.spent_atomic).where(
        COUNTERS.c.account_id == account_id, COUNTERS.c.day == day,
        COUNTERS.c.counterparty == counterparty)).first()
    return row.spent_atomic if row else 0


def record_spend(conn: Connection, policy: Policy, account_id: str, amount: int,
                 by_counterparty: dict[str, int], now_ms: int) -> None:
    """Add an allowed spend to today's counters (the caps it passed are checked again by the
    next spend, in its own serialised transaction)."""
    if not (policy.daily_cap_atomic or policy.counterparty_daily_cap_atomic):
        return
    day = utc_day(now_ms)
    parts = {"": amount}
    if policy.counterparty_daily_cap_atomic:
        parts.update(by_counterparty)
    for who, part in parts.items():
        c = COUNTERS.c
        done = conn.execute(update(COUNTERS).where(
            c.account_id == account_id, c.day == day, c.counterparty == who,
        ).values(spent_atomic=c.spent_atomic + part))
        if done.rowcount == 0:
            if who == "":  # the first spend of a day: drop the counters of days before
                conn.execute(delete(COUNTERS).where(c.account_id == account_id, c.day < day))
            conn.execute(insert(COUNTERS).values(account_id=account_id, day=day,
                                                 counterparty=who, spent_atomic=part))
