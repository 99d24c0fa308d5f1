"""The accounts settlement posts to: each party's wallet, and the marketplace's fees and
dispute accounts, per currency.

An account's id never changes once it is open, so each is looked up once per node and
remembered (at most MAX_KNOWN_ACCOUNTS, the oldest forgotten first), not on every request
that pays it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select

from marketplace.errors import FailedPrecondition
from wallets import _sqlite_hot as hot
from wallets.currencies import currency
from wallets.ledger import Ledger
from wallets.tables import AccountRow

MARKETPLACE_OWNER = "marketplace"
DISPUTE_ACCOUNT_KIND = "escrow"
MAX_KNOWN_ACCOUNTS = 100_000
ACCOUNTS = AccountRow.__table__  # type: ignore[attr-defined]
_WALLET = hot.Statement(select(ACCOUNTS).where(ACCOUNTS.c.owner == bindparam("owner"),
                                               ACCOUNTS.c.currency == bindparam("currency"),
                                               ACCOUNTS.c.kind == "wallet"))
_ACCOUNT = hot.Statement(select(ACCOUNTS).where(ACCOUNTS.c.id == bindparam("account")))


class SettlementAccounts:
    """Account ids by (owner, currency, kind), opened if missing."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._ids: dict[tuple[str, str, str], str] = {}

    def fees(self, currency_code: str) -> str:
        return self._id(MARKETPLACE_OWNER, currency_code, "fees")

    def dispute(self, currency_code: str) -> str:
        return self._id(MARKETPLACE_OWNER, currency_code, DISPUTE_ACCOUNT_KIND)

    def wallet(self, owner: str, currency_code: str) -> str:
        return self._id(owner, currency_code, "wallet")

    def _id(self, owner: str, currency_code: str, kind: str) -> str:
        key = (owner, currency_code, kind)
        found = self._ids.get(key)
        if found is None:
            found = self.ledger.open_account(owner, currency_code, kind).account_id
            if len(self._ids) >= MAX_KNOWN_ACCOUNTS:
                self._ids.pop(next(iter(self._ids)), None)
            self._ids[key] = found
        return found

    def buyer_wallet(self, conn: Any, buyer_id: str, currency_code: str) -> Any:
        """The buyer's wallet row, read in `conn` (its id remembered once found); it must
        exist: an escrow is never the first thing a wallet sees."""
        key = (buyer_id, currency_code, "wallet")
        known = self._ids.get(key)
        row = (_ACCOUNT.first(conn, {"account": known}) if known is not None else
               _WALLET.first(conn, {"owner": buyer_id, "currency": currency(currency_code).code}))
        if row is None:
            raise FailedPrecondition(f"the buyer has no {currency_code} wallet")
        if known is None and len(self._ids) < MAX_KNOWN_ACCOUNTS:
            self._ids[key] = row.id
        return row

    def parties(self, row: Any) -> dict[str, str]:
        """The account ids an agreement's settlement may post to (`row`: its buyer, seller,
        verifier and currency; all opened at OpenEscrow)."""
        parties = {"seller": self.wallet(row.seller_id, row.currency),
                   "buyer": self.wallet(row.buyer_id, row.currency),
                   "fees": self.fees(row.currency),
                   "dispute": self.dispute(row.currency)}
        if row.verifier_id:
            parties["verifier"] = self.wallet(row.verifier_id, row.currency)
        return parties
