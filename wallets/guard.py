"""The spend guard: wallet policies, mandates, approvals and velocity, enforced with the debit.

The ledger calls `SpendGuard.check` inside the write transaction of every posting that debits a
wallet account (transfers, linked postings, withdrawals, conversions, holds; escrow holds too),
after it has read the accounts and before it applies the legs. Before reading any control it
locks the wallets it checks (SQLite: one writer anyway; PostgreSQL: their account rows FOR
UPDATE, in account order, with the accounts it credits: the legs lock those anyway, and one
order for all of them keeps two opposite transfers from deadlocking), and every spend from a
wallet passes here or through a hold that did, so each check-then-count is atomic: 50 concurrent
spends never pass a daily cap by one atomic unit. A refusal raises, and the posting's savepoint
(or, alone, its transaction) rolls back the counters with it. Captures of a hold are not checked
again: the hold was authorised when it was placed.

For each wallet the posting debits, in order:
1. frozen? -> WALLET_FROZEN;
2. the mandate the spend claims, if any (`wallets.mandates`) -> NOT_FOUND / MANDATE_*;
3. the policy's lists and caps (`wallets.policies`) -> POLICY_DENIED;
4. the approval threshold (`wallets.approvals`) -> APPROVAL_REQUIRED / _DENIED / _EXPIRED;
5. velocity (`wallets.anomaly`) -> WALLET_FROZEN;
then the spend is counted (daily counters, velocity buckets, mandate total, approval used).

Refusals that must outlive their rollback (the pending approval of step 4, the freeze and alert
of step 5) are queued as effects on this thread and written by `after_transaction`, which the
ledger calls as each write transaction ends, in a short transaction of their own, before the
refusal reaches the caller. Effects are idempotent (keyed by approval id and alert id), so a
retried or re-run refusal writes them once.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, select

from wallets import _idempotency, anomaly, approvals, mandates, policies
from wallets.errors import InvalidArgument, MandateDenied, WalletFrozen
from wallets.models import Balance, Transfer
from wallets.policies import Policy
from wallets.tables import AccountRow

if TYPE_CHECKING:
    from wallets.ledger import Ledger

log = logging.getLogger("agentmarket.wallets.guard")
ACCOUNTS = AccountRow.__table__  # type: ignore[attr-defined]
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
MAX_NAME = 128


@dataclass(frozen=True, slots=True)
class SpendContext:
    """Who spends and what for: what the wallet's policy and mandates judge a spend by.

    `counterparty`: who is paid (default: the owner of the account credited); `skill`: what is
    bought (escrow names it); `mandate_id` and `spender_id`: spend under that mandate, by that
    agent key."""

    counterparty: str = ""
    skill: str = ""
    mandate_id: str = ""
    spender_id: str = ""

    def __post_init__(self) -> None:
        for name in ("counterparty", "skill", "spender_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_NAME:
                raise InvalidArgument(f"{name} must be a string of at most {MAX_NAME} characters")
        if self.mandate_id and not _HEX64.match(self.mandate_id):
            raise InvalidArgument("mandate_id must be 64 hex characters")
        if bool(self.mandate_id) != bool(self.spender_id):
            raise InvalidArgument("mandate_id and spender_id go together: a spend under a "
                                  "mandate names the agent spending")

    def request(self) -> dict[str, str]:
        """The non-empty fields, for the idempotency digest of the request they belong to."""
        return {k: getattr(self, k) for k in ("counterparty", "skill", "mandate_id",
                                              "spender_id") if getattr(self, k)}


def involved(transfers: Sequence[Transfer]) -> set[str]:
    """Every account these transfers debit or credit."""
    return {a for t in transfers for a in (t.debit_account_id, t.credit_account_id)}


def lock_wallets(conn: Connection, account_ids: Iterable[str]) -> None:
    """Lock these account rows for the rest of the transaction, in a fixed order (no deadlock
    between two spends locking the same wallets): what a check reads about them after this
    stays true until it commits. (SQLite serialises writers; FOR UPDATE is not rendered.)"""
    conn.execute(select(ACCOUNTS.c.id).where(ACCOUNTS.c.id.in_(sorted(account_ids)))
                 .order_by(ACCOUNTS.c.id).with_for_update())


class Effect(Protocol):
    def persist(self, conn: Connection) -> None: ...


class SpendGuard:
    """One per ledger (`Ledger(engine, guard=...)`; the ledger makes one by default)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._ledger: Ledger | None = None

    def attach(self, ledger: Ledger) -> SpendGuard:
        self._ledger = ledger
        return self

    # ---- inside the ledger's transaction ----------------------------------------------------

    def check(self, conn: Connection, key: str, operation: str, transfers: Sequence[Transfer],
              accounts: Mapping[str, Balance], spend: SpendContext | None) -> None:
        """Refuse the posting, or count its wallet debits; see the module docstring."""
        debits: dict[str, dict[str, int]] = {}
        for t in transfers:
            if accounts[t.debit_account_id].kind != "wallet":
                continue
            who = (spend.counterparty if spend and spend.counterparty
                   else accounts[t.credit_account_id].owner)
            parts = debits.setdefault(t.debit_account_id, {})
            parts[who] = parts.get(who, 0) + t.amount_atomic
        if not debits:
            if spend is not None and spend.mandate_id:  # a mandate is its owner's wallet's:
                # a posting that debits none (the market's fx, fees or escrow) is no spend of it
                raise MandateDenied(f"mandate {spend.mandate_id[:12]}… spends from its owner's "
                                    "wallet; this posting debits no wallet")
            return
        assert self._ledger is not None, "attach the guard to its ledger first"
        lock_wallets(conn, debits)  # payees' rows are not read, and credits do not lock them
        now_ms = self._ledger.clock_ms()
        rows = policies.load_rows(conn, sorted(debits))
        for account_id in sorted(debits):
            self._check_wallet(conn, key, operation, accounts[account_id], debits[account_id],
                               rows.get(account_id), spend or SpendContext(), now_ms)

    def idle(self, transfers: Sequence[Transfer], accounts: Mapping[str, Balance],
             spend: SpendContext | None, controlled: set[str]) -> bool:
        """Whether `check` would neither refuse nor count anything: no wallet it debits has a
        control row (`controlled`: those that do, read in the posting's own transaction where
        writers are serialised, i.e. SQLite), no mandate is claimed, no freeze is queued. A
        subclass with a `check` of its own is never idle."""
        if type(self).check is not SpendGuard.check or (spend is not None and spend.mandate_id):
            return False
        debited = {t.debit_account_id for t in transfers
                   if accounts[t.debit_account_id].kind == "wallet"}
        return not debited & controlled and not debited & self._queued_freezes()

    def _check_wallet(self, conn: Connection, key: str, operation: str, wallet: Balance,
                      parts: dict[str, int], row: Any, spend: SpendContext, now_ms: int) -> None:
        account_id, amount = wallet.account_id, sum(parts.values())
        if account_id in self._queued_freezes():
            raise WalletFrozen(f"wallet {account_id} has just been frozen by the velocity rule; "
                               "an operator must unfreeze it before it can spend")
        anomaly.refuse_if_frozen(row, account_id)
        counterparties = sorted(parts)
        if spend.mandate_id:
            mandates.authorise(conn, spend.mandate_id, spender_id=spend.spender_id,
                               account_id=account_id, amount_atomic=amount,
                               counterparties=counterparties, now_ms=now_ms)
        if row is None:
            return
        policy = Policy.from_row(row)
        policies.check_lists(policy, account_id, counterparties, spend.skill, wallet.owner)
        policies.check_caps(conn, policy, account_id, wallet.currency, amount, parts,
                            wallet.owner, now_ms)
        approved = approvals.gate(
            conn, threshold_atomic=policy.approval_threshold_atomic,
            ttl_s=policy.approval_ttl_s, account_id=account_id, currency=wallet.currency,
            scope=_idempotency.active_scope(), key=key, operation=operation,
            amount_atomic=amount,
            counterparty=", ".join(counterparties)[:512], skill=spend.skill,
            mandate_id=spend.mandate_id, spender_id=spend.spender_id, now_ms=now_ms,
            queue=self._queue)
        anomaly.check(conn, policy, account_id=account_id, currency=wallet.currency,
                      amount_atomic=amount, now_ms=now_ms, approved=approved, queue=self._queue)
        policies.record_spend(conn, policy, account_id, amount, parts, now_ms)
        anomaly.record(conn, policy, account_id, amount, now_ms)

    # ---- effects that outlive a refusal -------------------------------------------------------

    def _effects(self) -> list[Effect]:
        effects = getattr(self._local, "effects", None)
        if effects is None:
            effects = self._local.effects = []
        return effects

    def _queue(self, effect: Effect) -> None:
        self._effects().append(effect)

    def _queued_freezes(self) -> set[str]:
        return {e.account_id for e in self._effects() if isinstance(e, anomaly.Freeze)}

    def after_transaction(self) -> None:
        """Write the effects queued by refusals on this thread (the ledger calls this as each
        write transaction ends, outside it). Never raises: a failure is logged, and the refused
        spend, when retried, queues its effect again."""
        effects = getattr(self._local, "effects", None)
        if not effects:
            return
        self._local.effects = []
        assert self._ledger is not None
        try:
            with self._ledger._write() as conn:
                for effect in effects:
                    effect.persist(conn)
        except Exception:
            log.exception("could not record %d effect(s) of refused spends", len(effects))

    def controlled(self, conn: Connection, account_ids: Sequence[str]) -> set[str]:
        """The accounts among these with a policy or a freeze: a bulk path that skips `check`
        must send their debits through the checked path instead."""
        return set(policies.load_rows(conn, sorted(set(account_ids))))
