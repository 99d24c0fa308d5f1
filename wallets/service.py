"""The wallet service: what an agent does with its money (open, fund, spend, hold, cash out).

Plain Python over the ledger; the gRPC servicer is a thin adapter over it.
"""

from __future__ import annotations

from wallets._idempotency import check_key
from wallets.currencies import CURRENCIES, check_amount, currency
from wallets.errors import InvalidAmount, InvalidArgument, NotFound
from wallets.ledger import Ledger
from wallets.models import Balance, Posting
from wallets.rails import Rail, SandboxRail


class WalletService:
    def __init__(self, ledger: Ledger, rails: list[Rail] | None = None) -> None:
        self.ledger = ledger
        self.rails: dict[str, Rail] = {}
        for rail in rails or [SandboxRail(c) for c in CURRENCIES.values()]:
            self.rails[rail.name] = rail

    def rail(self, name: str, currency_code: str) -> Rail:
        code = currency(currency_code).code
        name = name or f"sandbox-{code.lower()}"
        found = self.rails.get(name)
        if found is None:
            raise NotFound(f"rail {name!r} does not exist; rails: {', '.join(sorted(self.rails))}")
        if found.currency.code != code:
            raise InvalidArgument(f"rail {name} carries {found.currency.code}, not {code}")
        return found

    def rail_account(self, rail: Rail) -> Balance:
        return self.ledger.open_account(
            f"rail:{rail.name}", rail.currency.code, "rail", credit_limit_atomic=2**62
        )

    def deposit(self, key: str, account_id: str, amount_atomic: int, currency_code: str,
                rail_name: str = "") -> Posting:
        """Credit a wallet with money that arrived through a rail."""
        check_key(key)  # before the rail is asked or its ledger account opened
        check_amount(amount_atomic)
        wallet = self._wallet(account_id, currency_code)
        rail = self.rail(rail_name, wallet.currency)
        if amount_atomic % rail.currency.rail_step_atomic:
            raise InvalidAmount(
                f"{rail.name} carries {rail.currency.code} to {rail.currency.rail_scale} "
                f"decimals; {amount_atomic} atomic is finer"
            )
        rail.confirm_deposit(key, amount_atomic)
        source = self.rail_account(rail)
        return self.ledger.transfer(key, source.account_id, account_id, amount_atomic,
                                    kind="deposit", memo=f"deposit via {rail.name}")

    def withdraw(self, key: str, account_id: str, amount_atomic: int, currency_code: str,
                 rail_name: str = "") -> Posting:
        """Pay out through a rail, rounded down to its precision; the remainder stays here."""
        check_key(key)
        check_amount(amount_atomic)
        wallet = self._wallet(account_id, currency_code)
        rail = self.rail(rail_name, wallet.currency)
        payable, _remainder = rail.currency.to_rail(amount_atomic)
        if payable == 0:
            raise InvalidAmount(
                f"{amount_atomic} atomic is below the smallest amount {rail.name} can carry "
                f"({rail.currency.rail_step_atomic})"
            )
        sink = self.rail_account(rail)
        posting = self.ledger.transfer(key, account_id, sink.account_id, payable,
                                       kind="withdrawal", memo=f"withdrawal via {rail.name}")
        rail.send_payout(key, payable)
        return posting

    def check_currency(self, account_id: str, currency_code: str) -> Balance:
        """The account, refusing a request whose stated currency is not the account's."""
        return self._wallet(account_id, currency_code)

    def _wallet(self, account_id: str, currency_code: str) -> Balance:
        wallet = self.ledger.balance(account_id)
        if wallet.currency != currency(currency_code).code:
            raise InvalidArgument(
                f"account {account_id} holds {wallet.currency}, not {currency_code}"
            )
        return wallet
