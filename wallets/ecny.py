"""e-CNY's published wallet rules, enforced with the debit: tiers, caps, controllable anonymity.

What the People's Bank of China (PBOC) has published, and what this sandbox does with it. Each
rule is a field of `EcnyRules` (and of `WalletTier`), so an operator sets its own figures.

Wallet tiers by identity strength. The white paper ("Progress of Research & Development of
E-CNY in China", PBOC e-CNY R&D Working Group, July 2021, section 3.3) says authorised
operators open "different types of digital wallets for customers based on the strength of
customer personal identity information", with different single-payment and balance limits. The
figures are from Mu Changchun (director of the PBOC Digital Currency Institute): at the 13th
Lujiazui Forum, 11 June 2021, "category 4" wallets, opened with a mobile phone number only,
are anonymous, with a balance cap of 10,000 CNY, 2,000 per payment and 5,000 per day;
"upgraded to a category 2 wallet" with a valid ID and a bound bank account, 500,000, 50,000 and
100,000; at Hong Kong FinTech Week, November 2020, that the phone-only wallet is capped at
50,000 a year and that the wallet opened in person at a bank counter has no transaction caps.

    category  identity (how it is opened)          balance   per payment   per day   per year
    1         in person at an operator's counter   -         -             -         -
    2         valid ID + bound bank account        500,000   50,000        100,000   -
    3         valid ID, remotely (ASSUMPTION)      20,000    5,000         10,000    -
    4         mobile phone number only (anonymous) 10,000    2,000         5,000     50,000

Who raises a tier. In e-CNY the holder does not choose its category: the authorised operator
verifies the identity behind the wallet (a phone number, an ID document, a bound bank account, a
visit to the counter) and upgrades it. Here that operator's identity service is an agent key the
node trusts (`MarketplaceNode(ecny_identity_providers=...)`, `serve --ecny-identity-provider`,
or an operator key): it calls `SetEcnyTier` over gRPC (`EcnyWallets.register`) with its own
reference to the identity record; the wallet's own agent never can (`wallets.access`).

Category 3's figures are not published by the PBOC: they are an assumption (between the two
published tiers), marked as such in `DEFAULT_TIERS`. The caps of categories 1 and 2 beyond
those quoted ("-") are not published either; none is enforced.

Controllable anonymity (white paper 3.2.5, "managed anonymity"): e-CNY "follows the principle
of 'anonymity for small value and traceable for high value'". Here: every payment from an e-CNY
wallet is recorded with pseudonymous wallet ids only (`ecny_payments`); a payment above
`anonymous_limit_atomic` (default 2,000 CNY, the anonymous tier's single-payment cap) requires
a tier whose identity the operator has verified (categories 1-3), and its record also names
that identity reference (what the operator discloses when the law requires).

Settlement in fen: the fen (0.01 CNY) is the RMB's smallest unit (Regulations of the PRC on the
Administration of RMB, 2000, article 3); the ledger keeps ECNY to 9 decimals, so per-token prices
below the fen are exact, and the e-CNY rail (`wallets.rails_ecny`) moves whole fen only: a
redemption is rounded down to the fen and the rest stays in the wallet (`Currency.to_rail`).
e-CNY pays no interest (white paper 3.2.2), so no computed amount needs the half-up rounding
Chinese banks apply below the fen to interest.

Conditional payments. The white paper (3.2.7, "Programmability") describes smart contracts
that make "self-executing payments according to predefined conditions"; Mu Changchun (13th
Lujiazui Forum, 2021) named prepaid funds as the case: money a consumer prepays for a service is
locked and released to the merchant as the service is delivered, so it cannot be taken before.
Here that is the marketplace's escrow (`marketplace.settlement`): the agreement's maximum is
held on the buyer's e-CNY wallet (checked against its tier when held), each delivery (a call's
receipt) is paid only if it passes the agreed verification, and what was not delivered or
failed goes back to the buyer; a seller who delivers nothing by the deadline gets nothing and
the hold returns (tests/test_ecny.py shows it).

Enforced where the wallet policies are (`wallets.guard`): `EcnyGuard` is the ledger's spend
guard, so every posting that debits an ECNY wallet (payment, hold, withdrawal, conversion) is
checked and counted inside the debit's transaction, and every posting that credits one is checked
against the balance cap (counting money already on its way in: pending credits). Captures are
not checked again: their hold was, when it was placed, so an escrow's release or a PvP claim
cannot fail on the cap. Nor is money paid out of escrow (a dispute's decision: the dispute
account holds it towards the seller): the escrow's own hold was checked when it opened, and a
payee that filled its wallet since must not keep a decision from landing. A wallet nobody
registered is in
`default_category` (4: the white paper's lowest-KYC wallet, anonymous by default). Daily caps
reset at midnight China Standard Time (UTC+8). `Ledger.transfer_many`'s bulk path sends the
debits of e-CNY wallets through this check, but not its credits: the balance cap is not checked
there (the bulk path serves batched settlement between wallets of one currency).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, select, update

from wallets.errors import FailedPrecondition, InvalidArgument
from wallets.guard import SpendContext, SpendGuard, involved, lock_wallets
from wallets.models import Balance, Transfer
from wallets.store import insert_unless_present
from wallets.tables import EcnyCounterRow, EcnyPaymentRow, EcnyWalletRow

WALLETS = EcnyWalletRow.__table__  # type: ignore[attr-defined]
COUNTERS = EcnyCounterRow.__table__  # type: ignore[attr-defined]
PAYMENTS = EcnyPaymentRow.__table__  # type: ignore[attr-defined]
CNY_ATOMIC = 10**9  # ECNY keeps 9 decimals
CHINA_OFFSET_MS = 8 * 3600 * 1000
DAY_MS = 24 * 3600 * 1000
LUJIAZUI_2021 = "Mu Changchun, 13th Lujiazui Forum, 11 June 2021"
HK_FINTECH_2020 = "Mu Changchun, Hong Kong FinTech Week, 2 November 2020"


class TierLimit(FailedPrecondition):
    """A payment or a credit past its e-CNY wallet tier's caps: upgrade the wallet (reason
    ECNY_BALANCE_CAP, ECNY_PAYMENT_CAP, ECNY_DAILY_CAP, ECNY_ANNUAL_CAP or
    ECNY_IDENTITY_REQUIRED)."""

    reason = "ECNY_TIER_LIMIT"


@dataclass(frozen=True, slots=True)
class WalletTier:
    """One wallet category; caps in atomic ECNY, 0 = no cap."""

    category: int
    identity: str
    verified_identity: bool
    balance_cap_atomic: int = 0
    per_payment_cap_atomic: int = 0
    daily_cap_atomic: int = 0
    annual_cap_atomic: int = 0
    source: str = ""


def _cny(amount: int) -> int:
    return amount * CNY_ATOMIC


DEFAULT_TIERS: Mapping[int, WalletTier] = {
    1: WalletTier(1, "in person at an operator's counter", True, source=HK_FINTECH_2020),
    2: WalletTier(2, "valid ID and a bound bank account", True, _cny(500_000), _cny(50_000),
                  _cny(100_000), source=LUJIAZUI_2021),
    3: WalletTier(3, "valid ID, verified remotely", True, _cny(20_000), _cny(5_000),
                  _cny(10_000), source="ASSUMPTION: not published by the PBOC"),
    4: WalletTier(4, "mobile phone number only (anonymous)", False, _cny(10_000), _cny(2_000),
                  _cny(5_000), _cny(50_000),
                  source=f"{LUJIAZUI_2021}; annual cap: {HK_FINTECH_2020}"),
}


@dataclass(frozen=True, slots=True)
class EcnyRules:
    tiers: Mapping[int, WalletTier] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    default_category: int = 4
    anonymous_limit_atomic: int = _cny(2_000)
    day_offset_ms: int = CHINA_OFFSET_MS

    def __post_init__(self) -> None:
        if self.default_category not in self.tiers:
            raise InvalidArgument(f"default_category {self.default_category} is not a tier")

    def tier(self, category: int) -> WalletTier:
        found = self.tiers.get(category)
        if found is None:
            raise InvalidArgument(f"e-CNY wallet category must be one of "
                                  f"{sorted(self.tiers)}, got {category!r}")
        return found


@dataclass(frozen=True, slots=True)
class EcnyWallet:
    account_id: str
    category: int
    pseudonym: str
    identity_ref: str
    registered: bool


class EcnyGuard(SpendGuard):
    """The spend guard of an e-CNY ledger: wallet policies first, then the tier rules."""

    def __init__(self, rules: EcnyRules | None = None) -> None:
        super().__init__()
        self.rules = rules or EcnyRules()

    def check(self, conn: Connection, key: str, operation: str, transfers: Sequence[Transfer],
              accounts: Mapping[str, Balance], spend: SpendContext | None) -> None:
        accounts_involved = involved(transfers)
        if any(_is_ecny_wallet(accounts[a]) for a in accounts_involved):
            # the wallets whose caps are checked, with the rest, locked first in account order
            lock_wallets(conn, accounts_involved)
        super().check(conn, key, operation, transfers, accounts, spend)
        assert self._ledger is not None
        now_ms = self._ledger.clock_ms()
        debits: dict[str, int] = {}
        credits: dict[str, int] = {}
        for t in transfers:
            if _is_ecny_wallet(accounts[t.debit_account_id]):
                debits[t.debit_account_id] = debits.get(t.debit_account_id, 0) + t.amount_atomic
            # not money paid out of escrow (see the module's docstring)
            if _is_ecny_wallet(accounts[t.credit_account_id]) and \
                    accounts[t.debit_account_id].kind != "escrow":
                credits[t.credit_account_id] = credits.get(t.credit_account_id, 0) + \
                    t.amount_atomic
        for account_id in sorted(credits):
            self._check_balance(conn, accounts[account_id], credits[account_id])
        for account_id in sorted(debits):
            wallet = wallet_of(conn, account_id, self.rules)
            self._check_payment(conn, wallet, debits[account_id], now_ms)
            payee = next(t.credit_account_id for t in transfers
                         if t.debit_account_id == account_id)
            self._record(conn, key, operation, wallet, accounts[payee], debits[account_id],
                         now_ms)

    def controlled(self, conn: Connection, account_ids: Sequence[str]) -> set[str]:
        """Every e-CNY wallet is controlled: the bulk path sends its debits through `check`."""
        found = super().controlled(conn, account_ids)
        from wallets.ledger import ACCOUNTS

        rows = conn.execute(select(ACCOUNTS.c.id).where(
            ACCOUNTS.c.id.in_(sorted(set(account_ids))), ACCOUNTS.c.currency == "ECNY",
            ACCOUNTS.c.kind == "wallet"))
        return found | {row.id for row in rows}

    def _check_balance(self, conn: Connection, account: Balance, incoming: int) -> None:
        wallet = wallet_of(conn, account.account_id, self.rules)
        cap = self.rules.tier(wallet.category).balance_cap_atomic
        from wallets._credits import accounts_select
        from wallets.ledger import ACCOUNTS

        now = conn.execute(accounts_select(conn)  # credits not yet folded count too
                           .where(ACCOUNTS.c.id == account.account_id)).one()
        after = int(now.posted_credits_atomic - now.posted_debits_atomic
                    + now.pending_credits_atomic + incoming)  # as locked, not as first read
        if cap and after > cap:
            raise TierLimit(f"e-CNY wallet {wallet.pseudonym} (category {wallet.category}) holds "
                            f"at most {_fmt(cap)} CNY; this credit would make {_fmt(after)} "
                            "(counting money on its way in): upgrade the wallet",
                            reason="ECNY_BALANCE_CAP")

    def _check_payment(self, conn: Connection, wallet: EcnyWallet, amount: int,
                       now_ms: int) -> None:
        tier = self.rules.tier(wallet.category)
        where = f"e-CNY wallet {wallet.pseudonym} (category {wallet.category})"
        if amount > self.rules.anonymous_limit_atomic and not tier.verified_identity:
            raise TierLimit(f"{where} is anonymous: a payment above "
                            f"{_fmt(self.rules.anonymous_limit_atomic)} CNY needs a wallet "
                            "with a verified identity", reason="ECNY_IDENTITY_REQUIRED")
        if tier.per_payment_cap_atomic and amount > tier.per_payment_cap_atomic:
            raise TierLimit(f"{where} pays at most {_fmt(tier.per_payment_cap_atomic)} CNY at "
                            f"once; this payment is {_fmt(amount)}", reason="ECNY_PAYMENT_CAP")
        for period, cap, name in ((self._day(now_ms), tier.daily_cap_atomic, "day"),
                                  (self._year(now_ms), tier.annual_cap_atomic, "year")):
            if not cap:
                continue
            spent = _spent(conn, wallet.account_id, period)
            if spent + amount > cap:
                raise TierLimit(f"{where} pays at most {_fmt(cap)} CNY per {name} ({period}); "
                                f"{_fmt(spent)} already paid, this payment of {_fmt(amount)} "
                                f"would make {_fmt(spent + amount)}",
                                reason="ECNY_DAILY_CAP" if name == "day" else "ECNY_ANNUAL_CAP")
        for period in (self._day(now_ms), self._year(now_ms)):
            _count(conn, wallet.account_id, period, amount)

    def _record(self, conn: Connection, key: str, operation: str, wallet: EcnyWallet,
                payee: Balance, amount: int, now_ms: int) -> None:
        """The payment's record: pseudonyms, and the identity only above the anonymous limit."""
        payee_name = (wallet_of(conn, payee.account_id, self.rules).pseudonym
                      if _is_ecny_wallet(payee) else f"{payee.kind}:{payee.owner}"[:128])
        traced = amount > self.rules.anonymous_limit_atomic
        conn.execute(insert(PAYMENTS).values(
            spend_key=key[:200], account_id=wallet.account_id, operation=operation[:64],
            payer_pseudonym=wallet.pseudonym, payee_pseudonym=payee_name,
            amount_atomic=amount, identity_ref=wallet.identity_ref if traced else "",
            created_at_ms=now_ms))

    def _day(self, now_ms: int) -> str:
        return f"d{(now_ms + self.rules.day_offset_ms) // DAY_MS}"

    def _year(self, now_ms: int) -> str:
        import datetime as dt

        when = dt.datetime.fromtimestamp((now_ms + self.rules.day_offset_ms) / 1000, dt.UTC)
        return f"y{when.year}"


def _is_ecny_wallet(account: Balance) -> bool:
    return account.currency == "ECNY" and account.kind == "wallet"


def _fmt(amount_atomic: int) -> str:
    whole, rest = divmod(amount_atomic, CNY_ATOMIC)
    return f"{whole:,}" + (f".{rest:09d}".rstrip("0") if rest else "")


def _spent(conn: Connection, account_id: str, period: str) -> int:
    found = conn.execute(select(COUNTERS.c.spent_atomic).where(
        COUNTERS.c.account_id == account_id, COUNTERS.c.period == period)).scalar()
    return int(found or 0)


def _count(conn: Connection, account_id: str, period: str, amount: int) -> None:
    done = conn.execute(update(COUNTERS).where(
        COUNTERS.c.account_id == account_id, COUNTERS.c.period == period).values(
        spent_atomic=COUNTERS.c.spent_atomic + amount))
    if done.rowcount == 0:
        conn.execute(insert(COUNTERS).values(account_id=account_id, period=period,
                                             spent_atomic=amount))


def wallet_of(conn: Connection, account_id: str, rules: EcnyRules, *,
              now_ms: int = 0) -> EcnyWallet:
    """The wallet's registration; a wallet seen for the first time is written down in the
    default tier with a random pseudonym (kept for its life, unlinkable to its id)."""
    looked_up = select(WALLETS).where(WALLETS.c.account_id == account_id)
    row = conn.execute(looked_up).first()
    if row is None:  # two first looks at once (two nodes): one row, both read it
        insert_unless_present(
            conn, WALLETS, account_id=account_id, category=rules.default_category,
            identity_ref="", pseudonym="w" + secrets.token_hex(8)[:15], registered_at_ms=0,
            updated_at_ms=now_ms)
        row = conn.execute(looked_up).one()
    return EcnyWallet(row.account_id, row.category, row.pseudonym, row.identity_ref,
                      row.registered_at_ms > 0)


class EcnyWallets:
    """The operator's side: register a wallet in a tier after checking the holder's identity
    (off this system; `identity_ref` is the operator's reference to that record), upgrade it,
    and read the payment records."""

    def __init__(self, ledger: Any, rules: EcnyRules | None = None) -> None:
        self.ledger = ledger
        self.rules = rules or (ledger.spend_guard.rules if isinstance(
            ledger.spend_guard, EcnyGuard) else EcnyRules())

    def register(self, key: str, account_id: str, category: int,
                 identity_ref: str = "") -> EcnyWallet:
        tier = self.rules.tier(category)
        if tier.verified_identity and not identity_ref:
            raise InvalidArgument(f"category {category} needs the verified identity's "
                                  "reference (identity_ref)")
        if len(identity_ref) > 128:
            raise InvalidArgument("identity_ref is at most 128 characters")
        account = self.ledger.balance(account_id)
        if not _is_ecny_wallet(account):
            raise InvalidArgument(f"account {account_id} is not an ECNY wallet")

        def apply(conn: Connection) -> dict[str, Any]:
            now_ms = self.ledger.clock_ms()
            wallet_of(conn, account_id, self.rules, now_ms=now_ms)  # written down if new
            conn.execute(update(WALLETS).where(WALLETS.c.account_id == account_id).values(
                category=category, identity_ref=identity_ref, registered_at_ms=now_ms,
                updated_at_ms=now_ms))
            found = wallet_of(conn, account_id, self.rules)
            return {"account_id": found.account_id, "category": found.category,
                    "pseudonym": found.pseudonym, "identity_ref": found.identity_ref,
                    "registered": True}

        return EcnyWallet(**self.ledger.mutate(
            key, "ecny_register", {"account": account_id, "category": category,
                                   "identity": identity_ref}, apply, dict, dict))

    def wallet(self, account_id: str) -> EcnyWallet:
        """The wallet's tier and pseudonym (read by the operator: written down if new)."""
        self.ledger.balance(account_id)
        with self.ledger.engine.begin() as conn:
            return wallet_of(conn, account_id, self.rules, now_ms=self.ledger.clock_ms())

    def payments(self, account_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """An e-CNY wallet's payment records, newest first."""
        if not 1 <= limit <= 1000:
            raise InvalidArgument("limit must be 1..1000")
        with self.ledger.engine.connect().execution_options(agentmarket_read=True) as conn:
            rows = conn.execute(select(PAYMENTS).where(PAYMENTS.c.account_id == account_id)
                                .order_by(PAYMENTS.c.created_at_ms.desc()).limit(limit)).all()
        return [{k: v for k, v in r._mapping.items() if k != "id"} for r in rows]
