"""What the console shows, read from the node's database and span store.

Reads go through the domain services where they answer the question (`Ledger`, `WalletControls`,
`Disputes`); the rest are read-only queries over the same tables (totals for the overview, pages
of wallets and postings), each bounded by a page size and served by an index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection, case, func, select

from marketplace.escrows import DISPUTES, ESCROWS
from marketplace.spanstore import SpanStore
from marketplace.tables import ListingRow
from marketplace.v1 import registry_pb2
from wallets._credits import accounts_select
from wallets._ledger_reads import balance_from_row
from wallets.anomaly import Alert
from wallets.approvals import APPROVALS, Approval
from wallets.controls import WalletControls
from wallets.ledger import Ledger
from wallets.mandates import Mandate
from wallets.models import Balance, Hold, Posting
from wallets.policies import ControlState
from wallets.tables import AccountRow, MandateRow, WalletPolicyRow

ACCOUNTS = AccountRow.__table__  # type: ignore[attr-defined]
POLICIES = WalletPolicyRow.__table__  # type: ignore[attr-defined]
MANDATES = MandateRow.__table__  # type: ignore[attr-defined]
LISTINGS = ListingRow.__table__  # type: ignore[attr-defined]
PAGE = 50
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class CurrencyFigures:
    currency: str
    volume_atomic: int = 0  # captured to sellers, gross (fee included)
    fees_atomic: int = 0
    volume_24h_atomic: int = 0
    fees_24h_atomic: int = 0
    open_holds: int = 0
    held_atomic: int = 0
    disputes_open: int = 0
    disputed_atomic: int = 0
    approvals_pending: int = 0
    awaiting_approval_atomic: int = 0


@dataclass(frozen=True, slots=True)
class Overview:
    currencies: list[CurrencyFigures]
    agreements_by_state: dict[str, int]
    refusals: list[tuple[str, int]]  # (reason, count) in the last 24 h, most first
    frozen_wallets: int
    disputes_open: int
    approvals_pending: int
    spans_available: bool
    at_ms: int


@dataclass(frozen=True, slots=True)
class WaitingApproval:
    approval: Approval
    owner: str
    threshold_atomic: int  # the policy that sent it to a person, as it stands now


@dataclass(frozen=True, slots=True)
class Wallet:
    account: Balance
    controls: ControlState
    holds: list[Hold]
    mandates: list[Mandate]
    alerts: list[Alert]


@dataclass(frozen=True, slots=True)
class WalletRow:
    owner: str
    accounts: list[Balance]
    frozen: bool


@dataclass
class PostingPage:
    postings: list[Posting]
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)  # account -> owner, kind
    next_before: int = 0


class ConsoleReads:
    def __init__(self, ledger: Ledger, spans: SpanStore | None = None, *,
                 clock_ms: Callable[[], int] | None = None) -> None:
        self.ledger = ledger
        self.engine = ledger.engine
        self.controls = WalletControls(ledger)
        self.spans = spans
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)

    def _read(self) -> Connection:
        return self.engine.connect().execution_options(agentmarket_read=True)

    # ---- overview ---------------------------------------------------------------------------

    def overview(self) -> Overview:
        now = self.clock_ms()
        since = now - DAY_MS
        figures: dict[str, dict[str, int]] = {}

        def add(code: str, **values: int) -> None:
            row = figures.setdefault(code, {})
            for name, value in values.items():
                row[name] = row.get(name, 0) + int(value or 0)

        recent = ESCROWS.c.updated_at_ms >= since
        with self._read() as conn:
            for code, volume, fees, volume_24h, fees_24h in conn.execute(select(
                    ESCROWS.c.currency, func.sum(ESCROWS.c.captured_atomic),
                    func.sum(ESCROWS.c.fee_atomic),
                    func.sum(case((recent, ESCROWS.c.captured_atomic), else_=0)),
                    func.sum(case((recent, ESCROWS.c.fee_atomic), else_=0)))
                    .group_by(ESCROWS.c.currency)):
                add(code, volume_atomic=volume, fees_atomic=fees, volume_24h_atomic=volume_24h,
                    fees_24h_atomic=fees_24h)
            for code, n, amount in conn.execute(select(
                    DISPUTES.c.currency, func.count(), func.sum(DISPUTES.c.frozen_atomic))
                    .where(DISPUTES.c.status == "open").group_by(DISPUTES.c.currency)):
                add(code, disputes_open=n, disputed_atomic=amount)
            for code, n, amount in conn.execute(select(
                    APPROVALS.c.currency, func.count(), func.sum(APPROVALS.c.amount_atomic))
                    .where(APPROVALS.c.status == "pending", APPROVALS.c.expires_at_ms > now)
                    .group_by(APPROVALS.c.currency)):
                add(code, approvals_pending=n, awaiting_approval_atomic=amount)
            states = {state: int(n) for state, n in conn.execute(
                select(ESCROWS.c.state, func.count()).group_by(ESCROWS.c.state))}
            frozen = int(conn.execute(select(func.count()).select_from(POLICIES)
                                      .where(POLICIES.c.frozen.is_(True))).scalar() or 0)
        for code, n, held in self.ledger.open_hold_totals():
            add(code, open_holds=n, held_atomic=held)
        currencies = [CurrencyFigures(code, **values) for code, values in sorted(figures.items())]
        return Overview(
            currencies=currencies, agreements_by_state=states,
            refusals=self.spans.refusals(since_ms=since) if self.spans else [],
            frozen_wallets=frozen, disputes_open=sum(c.disputes_open for c in currencies),
            approvals_pending=sum(c.approvals_pending for c in currencies),
            spans_available=self.spans is not None, at_ms=now)

    # ---- approvals --------------------------------------------------------------------------

    def approvals(self, status: str = "pending", limit: int = 200,
                  after: tuple[int, str] | None = None) -> list[WaitingApproval]:
        """A page of approvals, newest first; `after`: the last of the page before."""
        found = self.controls.approvals(status=status, limit=limit, after=after)
        accounts = {a.account_id for a in found}
        owners = self.owners(accounts)
        thresholds = {}
        with self._read() as conn:
            for row in conn.execute(select(POLICIES.c.account_id,
                                           POLICIES.c.approval_threshold_atomic)
                                    .where(POLICIES.c.account_id.in_(accounts))):
                thresholds[row.account_id] = row.approval_threshold_atomic
        return [WaitingApproval(a, owners.get(a.account_id, ("", ""))[0],
                                thresholds.get(a.account_id, 0)) for a in found]

    # ---- wallets ----------------------------------------------------------------------------

    def wallets(self, *, query: str = "", after: str = "", frozen_only: bool = False
                ) -> tuple[list[WalletRow], str]:
        """Owners of wallets, by id, a page at a time (`after`: the last owner shown)."""
        owners_q = (select(ACCOUNTS.c.owner).where(ACCOUNTS.c.kind == "wallet")
                    .group_by(ACCOUNTS.c.owner).order_by(ACCOUNTS.c.owner).limit(PAGE + 1))
        if query:
            owners_q = owners_q.where(ACCOUNTS.c.owner.startswith(query.strip().lower()))
        if after:
            owners_q = owners_q.where(ACCOUNTS.c.owner > after)
        if frozen_only:
            owners_q = owners_q.where(ACCOUNTS.c.id.in_(
                select(POLICIES.c.account_id).where(POLICIES.c.frozen.is_(True))))
        with self._read() as conn:
            owners = [r.owner for r in conn.execute(owners_q)]
            more = len(owners) > PAGE
            owners = owners[:PAGE]
            rows = conn.execute(accounts_select(conn).where(ACCOUNTS.c.owner.in_(owners),
                                                       ACCOUNTS.c.kind == "wallet")
                                .order_by(ACCOUNTS.c.owner, ACCOUNTS.c.currency)).all()
            frozen = {r.account_id for r in conn.execute(
                select(POLICIES.c.account_id).where(POLICIES.c.frozen.is_(True),
                                                    POLICIES.c.account_id.in_(
                                                        [r.id for r in rows])))}
        by_owner: dict[str, list[Balance]] = {}
        for row in rows:
            by_owner.setdefault(row.owner, []).append(balance_from_row(row))
        result = [WalletRow(o, by_owner.get(o, []),
                            any(b.account_id in frozen for b in by_owner.get(o, [])))
                  for o in owners]
        return result, owners[-1] if more and owners else ""

    def wallet(self, owner: str) -> list[Wallet]:
        """Every account of an owner, with its controls, holds, mandates and alerts."""
        now = self.clock_ms()
        wallets = []
        for account in self.ledger.accounts(owner):
            if account.kind != "wallet":
                continue
            with self._read() as conn:
                mandates = [Mandate.from_row(r, now) for r in conn.execute(
                    select(MANDATES).where(MANDATES.c.account_id == account.account_id)
                    .order_by(MANDATES.c.created_at_ms.desc()).limit(100))]
            wallets.append(Wallet(
                account, self.controls.policy(account.account_id),
                self.ledger.holds(account_id=account.account_id, status="open", limit=100),
                mandates, self.controls.alerts(account.account_id, limit=20)))
        return wallets

    # ---- the ledger -------------------------------------------------------------------------

    def postings(self, *, before: int = 0, kind: str = "", account: str = "",
                 trace_id: str = "", hold_id: str = "", limit: int = PAGE) -> PostingPage:
        """Postings newest first, a page at a time (`before`: a sequence number)."""
        postings = self.ledger.postings(
            before_sequence=before or None, kind=kind or None, account_id=account or None,
            trace_id=trace_id.lower() or None, hold_id=hold_id or None, limit=limit + 1,
            newest_first=True)
        more = len(postings) > limit
        postings = postings[:limit]
        page = PostingPage(postings, next_before=postings[-1].sequence if more else 0)
        page.owners = self.owners({leg.account_id for p in postings for leg in p.legs})
        return page

    def owners(self, account_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """account id -> (owner, kind)."""
        ids = list(set(account_ids))
        if not ids:
            return {}
        with self._read() as conn:
            return {r.id: (r.owner, r.kind) for r in conn.execute(
                select(ACCOUNTS.c.id, ACCOUNTS.c.owner, ACCOUNTS.c.kind)
                .where(ACCOUNTS.c.id.in_(ids)))}

    def names(self, agent_ids: Iterable[str]) -> dict[str, str]:
        """agent id -> the name in its listing, for the agents that advertise."""
        ids = [i for i in set(agent_ids) if i]
        if not ids:
            return {}
        names = {}
        with self._read() as conn:
            for row in conn.execute(select(LISTINGS.c.agent_id, LISTINGS.c.listing)
                                    .where(LISTINGS.c.agent_id.in_(ids))):
                listing = registry_pb2.Listing.FromString(row.listing)
                if listing.name:
                    names[row.agent_id] = listing.name
        return names


def postings_in_traces(reads: ConsoleReads, trace_ids: Iterable[str]) -> list[Posting]:
    """Every posting caused inside these traces, oldest first."""
    found: dict[int, Posting] = {}
    for trace_id in trace_ids:
        for posting in reads.ledger.postings(trace_id=trace_id, limit=200):
            found[posting.sequence] = posting
    return [found[s] for s in sorted(found)]

