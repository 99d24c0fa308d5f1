"""The wallet service: what an agent does with its money (open, fund, spend, hold, cash out).

Plain Python over the ledger; the gRPC servicer is a thin adapter over it. Its owner's and
operators' side (policies, freezes, approvals, mandates) is `controls`; FX is `fx`.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, bindparam, insert, or_, select, update

from wallets import _idempotency
from wallets import _sqlite_hot as hot
from wallets._idempotency import NODE_SCOPE, check_key
from wallets.controls import WalletControls
from wallets.currencies import CURRENCIES, check_amount, currency
from wallets.ecny import EcnyGuard, EcnyWallets
from wallets.errors import FailedPrecondition, HoldClosed, InvalidAmount, InvalidArgument, NotFound
from wallets.fx import FxDesk, FxProvider
from wallets.ledger import Ledger
from wallets.models import Balance, Hold, Posting, Transfer
from wallets.rails import (
    SETTLEMENT_GRACE_S,
    ChainRail,
    DepositAddress,
    DepositInstructions,
    PendingWithdrawal,
    Rail,
    SandboxRail,
    is_chain_rail,
    payout_reference,
)
from wallets.tables import RailDepositRow, RailWithdrawalRow

WITHDRAWALS = RailWithdrawalRow.__table__  # type: ignore[attr-defined]
DEPOSITS = RailDepositRow.__table__  # type: ignore[attr-defined]
_DUE_WITHDRAWALS = hot.Statement(select(WITHDRAWALS).where(
    or_(WITHDRAWALS.c.status == "pending", WITHDRAWALS.c.status == "captured"),
    WITHDRAWALS.c.due_at_ms <= bindparam("now")).order_by(WITHDRAWALS.c.due_at_ms)
    .limit(bindparam("limit")))
log = logging.getLogger("agentmarket.wallets")


class WalletService:
    def __init__(self, ledger: Ledger, rails: list[Rail] | None = None, *,
                 fx_provider: FxProvider | None = None) -> None:
        self.ledger = ledger
        self.controls = WalletControls(ledger)
        self.fx = FxDesk(ledger, fx_provider)
        self.rails: dict[str, Rail] = {}
        for rail in rails or [SandboxRail(c) for c in CURRENCIES.values()]:
            self.rails[rail.name] = rail
        guard = ledger.spend_guard
        self.ecny = EcnyWallets(ledger) if isinstance(guard, EcnyGuard) else None

    def ecny_wallets(self) -> EcnyWallets:
        """The e-CNY tier registry, on a ledger that applies e-CNY's wallet rules."""
        if self.ecny is None:
            raise FailedPrecondition("this node does not apply e-CNY's wallet rules (serve it "
                                     "with --ecny): ECNY wallets have no tiers here",
                                     reason="ECNY_NOT_ENABLED")
        return self.ecny

    def rail(self, name: str, currency_code: str) -> Rail:
        """The rail `name` carrying `currency_code`; no name: the currency's sandbox rail, or
        its only rail."""
        code = currency(currency_code).code
        if not name:
            carrying = sorted(r.name for r in self.rails.values() if r.currency.code == code)
            sandbox = f"sandbox-{code.lower()}"
            name = sandbox if sandbox in carrying or len(carrying) != 1 else carrying[0]
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
        """Credit a wallet with money that arrived through a rail. `key` is the deposit's rail
        reference: the rail confirms it was made out to this wallet, and the ledger credits the
        wallet once per reference, whoever asks."""
        check_key(key)  # before the rail is asked or its ledger account opened
        check_amount(amount_atomic)
        wallet = self._wallet(account_id, currency_code)
        rail = self.rail(rail_name, wallet.currency)
        if amount_atomic % rail.currency.rail_step_atomic:
            raise InvalidAmount(
                f"{rail.name} carries {rail.currency.code} to {rail.currency.rail_scale} "
                f"decimals; {amount_atomic} atomic is finer"
            )
        rail.confirm_deposit(key, amount_atomic, account_id)
        source = self.rail_account(rail)
        memo = f"deposit via {rail.name}"
        transfers = [Transfer(source.account_id, account_id, amount_atomic)]
        scope = _idempotency.request_scope()

        def apply(conn: Connection) -> Posting:
            credited = conn.execute(select(DEPOSITS.c.scope).where(
                DEPOSITS.c.rail == rail.name, DEPOSITS.c.account_id == account_id,
                DEPOSITS.c.reference == key)).first()
            if credited is not None:
                raise FailedPrecondition(f"deposit reference {key!r} on {rail.name} was already "
                                         f"credited to wallet {account_id} by another caller",
                                         reason="DEPOSIT_REFERENCE_USED")
            conn.execute(insert(DEPOSITS).values(
                rail=rail.name, reference=key, account_id=account_id, scope=scope,
                amount_atomic=amount_atomic, created_at_ms=self.ledger.clock_ms()))
            return self.ledger.post_linked_in(conn, key, transfers, memo=memo, kind="deposit")

        # The request is what `Ledger.transfer` digested before deposits had their own table,
        # so a deposit retried across the upgrade still replays its first outcome.
        request = {"transfers": [[source.account_id, account_id, amount_atomic]], "memo": memo,
                   "kind": "deposit"}
        return self.ledger.mutate(key, "deposit", request, apply, Posting.to_json,
                                  Posting.from_json, scope=scope)

    def withdraw(self, key: str, account_id: str, amount_atomic: int, currency_code: str,
                 rail_name: str = "", destination: str = "") -> Posting:
        """Pay out through a rail, rounded down to its precision; the remainder stays here.

        With a rail settlement delay the result is the posting of a hold (kind "hold") that
        `settle_due` captures once the delay has passed; without one, the withdrawal itself.
        The rail is told `payout_reference(scope, key)`: one payout per request. A chain rail
        pays `destination` (an address), in a transaction named on the posting."""
        check_key(key)
        check_amount(amount_atomic)
        wallet = self._wallet(account_id, currency_code)
        rail = self.rail(rail_name, wallet.currency)
        if is_chain_rail(rail):
            if not destination:
                raise InvalidArgument(f"a withdrawal on {rail.name} needs a destination "
                                      "address (0x...)")
            return rail.withdraw(key, account_id, amount_atomic,  # type: ignore[attr-defined]
                                 destination)
        if destination:
            raise InvalidArgument(f"{rail.name} pays out to the wallet owner's account on "
                                  "file: destination is for chain rails only")
        payable, _remainder = rail.currency.to_rail(amount_atomic)
        if payable == 0:
            raise InvalidAmount(
                f"{amount_atomic} atomic is below the smallest amount {rail.name} can carry "
                f"({rail.currency.rail_step_atomic})"
            )
        sink = self.rail_account(rail)
        scope = _idempotency.request_scope()
        if getattr(rail, "settlement_delay_s", 0):
            return self._withdraw_later(scope, key, wallet, sink, rail, amount_atomic, payable)
        # The idempotency request is what was asked (not the rounded payout), so the same key
        # with another amount is refused even when both round to the same payout.
        withdrawal = [Transfer(account_id, sink.account_id, payable)]
        posting = self.ledger.mutate(
            key, "withdrawal", {"account": account_id, "rail": rail.name,
                                "amount": amount_atomic},
            lambda conn: self.ledger.post_linked_in(conn, key, withdrawal, kind="withdrawal",
                                                    memo=f"withdrawal via {rail.name}"),
            Posting.to_json, Posting.from_json, scope=scope)
        rail.send_payout(payout_reference(scope, key), payable)
        return posting

    def _withdraw_later(self, scope: str, key: str, wallet: Balance, sink: Balance, rail: Rail,
                        requested_atomic: int, payable: int) -> Posting:
        delay_s = rail.settlement_delay_s
        request = {"account": wallet.account_id, "rail": rail.name, "amount": requested_atomic,
                   "delay_s": delay_s}

        def apply(conn: Connection) -> Hold:
            hold = self.ledger.hold_in(conn, key, wallet.account_id, sink.account_id, payable,
                                       timeout_s=delay_s + SETTLEMENT_GRACE_S)
            now_ms = self.ledger.clock_ms()
            conn.execute(insert(WITHDRAWALS).values(
                hold_id=hold.hold_id, scope=scope, idempotency_key=key,
                reference=payout_reference(scope, key), rail=rail.name,
                account_id=wallet.account_id, currency=wallet.currency, amount_atomic=payable,
                due_at_ms=now_ms + delay_s * 1000, status="pending", created_at_ms=now_ms,
                settled_at_ms=0))
            return hold

        hold = self.ledger.mutate(key, "withdrawal", request, apply, Hold.to_json,
                                  Hold.from_json, scope=scope)
        return self.ledger.postings(hold_id=hold.hold_id, limit=1)[0]

    def chain_rail(self, account_id: str, rail_name: str = "") -> ChainRail:
        """The chain rail of the wallet's currency (or `rail_name`)."""
        wallet = self.ledger.balance(account_id)
        if rail_name:
            rail = self.rail(rail_name, wallet.currency)
        else:
            chains = [r for r in self.rails.values()
                      if r.currency.code == wallet.currency and is_chain_rail(r)]
            if not chains:
                raise FailedPrecondition(f"this node has no chain rail for {wallet.currency}",
                                         reason="NO_CHAIN_RAIL")
            rail = chains[0]
        if not is_chain_rail(rail):
            raise FailedPrecondition(f"{rail.name} is not a chain rail: its deposits are not "
                                     "claimed from addresses", reason="NO_CHAIN_RAIL")
        return rail  # type: ignore[return-value]

    def deposit_instructions(self, account_id: str, address: str,
                             rail_name: str = "") -> DepositInstructions:
        """How the wallet's owner funds it from `address` over a chain rail."""
        return self.chain_rail(account_id, rail_name).deposit_instructions(account_id, address)

    def register_deposit_address(self, key: str, account_id: str, address: str,
                                 signature: bytes, rail_name: str = "") -> DepositAddress:
        """Credit the wallet with what `address` sends to the chain rail, once its key has
        signed the rail's registration message (`deposit_instructions`). Idempotent."""
        check_key(key)
        return self.chain_rail(account_id, rail_name).register_address(
            key, account_id, address, signature)

    def settle_due(self, *, limit: int = 100) -> int:
        """The sweep for delayed withdrawals: capture each one due to its rail account, then
        pay it out (again, if a sweep died after the capture). Returns how many were paid.
        Its keys (`settle-withdrawal:<hold>`, `withdrawal-paid:<hold>`) are the node's own."""
        now_ms = self.ledger.clock_ms()
        with hot.reading(self.ledger.engine) as conn:  # the sweeper asks every round
            due = _DUE_WITHDRAWALS.all(conn, {"now": now_ms, "limit": limit})
        paid = 0
        for row in due:
            rail = self.rails.get(row.rail)
            if rail is None:
                log.warning("withdrawal %s waits for rail %s, which is not configured",
                            row.hold_id, row.rail)
                continue
            if row.status == "pending" and self._capture(row) != "captured":
                continue
            try:
                rail.send_payout(row.reference, row.amount_atomic)
            except Exception:  # captured but not sent: the next sweep sends it again
                log.exception("payout of withdrawal %s on %s failed", row.hold_id, row.rail)
                continue
            self._set_status(f"withdrawal-paid:{row.hold_id}", row.hold_id, "paid")
            paid += 1
        return paid

    def _capture(self, row: RailWithdrawalRow) -> str:
        def apply(conn: Connection) -> str:
            current = conn.execute(select(WITHDRAWALS.c.status).where(
                WITHDRAWALS.c.hold_id == row.hold_id).with_for_update()).one()
            if current.status != "pending":
                return str(current.status)
            try:
                self.ledger.capture_in(conn, f"settle-withdrawal:{row.hold_id}", row.hold_id,
                                       row.amount_atomic, final=True)
                status = "captured"
            except HoldClosed:  # expired unsettled: the money went back to the wallet
                status = "returned"
            conn.execute(update(WITHDRAWALS).where(WITHDRAWALS.c.hold_id == row.hold_id)
                         .values(status=status, settled_at_ms=self.ledger.clock_ms()))
            return status

        return self.ledger.mutate(f"settle-withdrawal:{row.hold_id}", "settle_withdrawal",
                                  {"hold": row.hold_id}, apply, str, str, scope=NODE_SCOPE)

    def _set_status(self, key: str, hold_id: str, status: str) -> None:
        def apply(conn: Connection) -> str:
            conn.execute(update(WITHDRAWALS).where(WITHDRAWALS.c.hold_id == hold_id)
                         .values(status=status))
            return status

        self.ledger.mutate(key, "withdrawal_status", {"hold": hold_id, "status": status},
                           apply, str, str, scope=NODE_SCOPE)

    def withdrawals(self, account_id: str = "", *, limit: int = 100) -> list[PendingWithdrawal]:
        """Delayed withdrawals, newest first."""
        query = select(WITHDRAWALS).order_by(WITHDRAWALS.c.created_at_ms.desc()).limit(limit)
        if account_id:
            query = query.where(WITHDRAWALS.c.account_id == account_id)
        with self.ledger.engine.connect().execution_options(agentmarket_read=True) as conn:
            return [PendingWithdrawal(r.hold_id, r.idempotency_key, r.rail, r.account_id,
                                      r.currency, r.amount_atomic, r.due_at_ms, r.status,
                                      r.settled_at_ms, r.reference) for r in conn.execute(query)]

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
