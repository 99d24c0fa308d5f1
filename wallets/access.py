"""Who may do what with wallets: one rule per WalletService method, applied to the
authenticated caller before the request reaches the wallet service.

Roles:
    owner        the agent whose id is the wallet's `owner`.
    delegate     an agent holding a mandate from the owner. It spends (Transfer, Hold, Convert)
                 by naming the mandate and itself as `spender_id`; the ledger then checks the
                 mandate (its wallet, its agent, its limits, revoked or expired) inside the
                 spend's own transaction (`wallets.mandates.authorise`).
    marketplace  the node's own key and the operators: captures and voids holds, and acts for
                 the system accounts (owners that are not agent keys: "marketplace" fees and
                 dispute escrow).
    operator     a configured operator key: approvals, unfreezes, and reading any wallet.
    identity provider  a configured key of an e-CNY authorised operator's identity
                 verification: sets e-CNY wallet tiers (an operator may too), as the real
                 e-CNY raises a wallet's category once the holder's identity is verified.

    method                          allowed
    ListCurrencies, GetQuote        any authenticated caller
    OpenAccount                     the owner it names, or an operator
    GetBalance, History, GetPolicy  owner, or operator (system accounts: marketplace)
    Deposit, Withdraw               owner (system accounts: marketplace)
    Transfer, Hold, Convert         owner, or delegate (spender_id = caller) under a mandate
    Capture, Void                   marketplace
    SetPolicy, Freeze               owner, or operator
    Unfreeze, Approve, Deny         operator
    ListAlerts, ListApprovals       owner of account_id, or operator (no account_id: operator)
    GrantMandate                    owner, or the mandate's agent (the owner signs the terms)
    RevokeMandate                   any authenticated caller (the owner signs the revocation)
    GetMandate                      owner, the mandate's agent, or operator
    GetDepositInstructions          owner, or operator
    RegisterDepositAddress          owner (the address's key signs the registration too)
    SetEcnyTier                     identity authority: an operator or an identity provider,
                                    never the wallet's own agent
    GetEcnyWallet                   owner, operator, or identity provider
Rail accounts are never debited over the API (only Deposit and Withdraw move them): a
transfer out of one would mint money. A method without a rule is refused (deny by default).

Idempotency keys are not a shared namespace (`wallets._idempotency`): a key names a request of
its caller only, and the node's own work (`settle-withdrawal:<hold>` ...) keeps its keys in a
scope no caller can write, so no rule is needed about which keys a caller may use.

Why here and not inside `Ledger`/`WalletService`: those are also called in-process with the
authority of something other than a remote caller (settlement holds a buyer's money under the
agreement the buyer signed, then captures or voids it; the sweeper expires holds; operator
commands work on the database). The rules judge remote callers, so they run where a remote
request enters. They read only facts that never change once written (an account's owner and
kind, a mandate's owner and agent), so checking before the write transaction leaves no race.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wallets.errors import Forbidden
from wallets.mandates import MandateTerms, is_key
from wallets.models import Balance
from wallets.service import WalletService

SERVICE = "wallets.v1.WalletService"
Rule = Callable[[str, Any], None]


def _short(agent_id: str) -> str:
    return f"{agent_id[:12]}…" if agent_id else "(unauthenticated)"


@dataclass(frozen=True)
class Principals:
    """Keys with roles beyond their own wallets."""

    operators: frozenset[str] = frozenset()
    marketplace: frozenset[str] = frozenset()  # the node's keys; operators count too
    identity_providers: frozenset[str] = frozenset()  # set e-CNY tiers; operators count too

    def is_operator(self, caller: str) -> bool:
        return caller in self.operators

    def is_identity_authority(self, caller: str) -> bool:
        return caller in self.identity_providers or caller in self.operators

    def is_marketplace(self, caller: str) -> bool:
        return caller in self.marketplace or caller in self.operators


class WalletAccess:
    """The rules, over a wallet service (for owners, kinds and mandates)."""

    def __init__(self, wallets: WalletService, principals: Principals) -> None:
        self.wallets = wallets
        self.ledger = wallets.ledger
        self.principals = principals

    def rules(self) -> dict[str, Rule]:
        """Method name -> rule(caller, request); raises Forbidden to refuse."""
        anyone: Rule = lambda caller, request: None  # noqa: E731
        return {
            "ListCurrencies": anyone, "GetQuote": anyone, "RevokeMandate": anyone,
            "OpenAccount": self._open, "GetBalance": self._read, "History": self._read,
            "GetPolicy": self._read, "Deposit": self._deposit, "Withdraw": self._withdraw,
            "Transfer": self._spend("debit_account_id"), "Hold": self._spend("debit_account_id"),
            "Convert": self._spend("from_account_id"), "Capture": self._marketplace,
            "Void": self._void, "SetPolicy": self._control, "Freeze": self._control,
            "Unfreeze": self._operator, "Approve": self._operator, "Deny": self._operator,
            "ListAlerts": self._list, "ListApprovals": self._list,
            "GrantMandate": self._grant, "GetMandate": self._get_mandate,
            "GetDepositInstructions": self._instructions,
            "RegisterDepositAddress": self._register_address,
            "SetEcnyTier": self._set_tier, "GetEcnyWallet": self._read_tier,
        }

    # ---- who owns what --------------------------------------------------------------------

    def _account(self, account_id: str) -> Balance:
        return self.ledger.balance(account_id)

    def refuse_rail_payee(self, account_id: str) -> None:
        """A rail account mirrors what its rail holds outside (tokens on chain, a bank's
        float): money reaches it by Withdraw alone, never as a payment that sends nothing."""
        if account_id and self._account(account_id).kind == "rail":
            raise Forbidden("rail-accounts-move-by-rail", f"account {account_id} is a rail "
                                                          "account: pay out with Withdraw")

    def _acts_for(self, caller: str, account: Balance) -> bool:
        """The caller is the account's owner (agents), or the marketplace (system accounts)."""
        if is_key(account.owner):
            return caller == account.owner
        return account.kind != "rail" and self.principals.is_marketplace(caller)

    def _owner_or_operator(self, rule: str, caller: str, account_id: str, what: str) -> None:
        account = self._account(account_id)
        if not (self._acts_for(caller, account) or self.principals.is_operator(caller)):
            raise Forbidden(rule, f"only the owner of account {account_id} or an operator may "
                                  f"{what}; caller {_short(caller)} is neither")

    # ---- the rules ------------------------------------------------------------------------

    def _open(self, caller: str, request: Any) -> None:
        if request.owner != caller and not self.principals.is_operator(caller):
            raise Forbidden("open-own-wallet", f"an agent opens wallets for itself only; "
                                               f"caller {_short(caller)} is not "
                                               f"{_short(request.owner)}")

    def _read(self, caller: str, request: Any) -> None:
        self._owner_or_operator("wallet-owner-reads", caller, request.account_id,
                                "read its balance, history or policy")

    def _deposit(self, caller: str, request: Any) -> None:
        if not self._acts_for(caller, self._account(request.account_id)):
            raise Forbidden("deposit-own-wallet", f"only the owner of account "
                                                  f"{request.account_id} deposits into it; "
                                                  f"caller {_short(caller)} is not")

    def _withdraw(self, caller: str, request: Any) -> None:
        if not self._acts_for(caller, self._account(request.account_id)):
            raise Forbidden("wallet-owner-spends", f"only the owner of account "
                                                   f"{request.account_id} withdraws from it; "
                                                   f"caller {_short(caller)} is not")

    def _spend(self, field: str) -> Rule:
        def rule(caller: str, request: Any) -> None:
            account_id = getattr(request, field)
            account = self._account(account_id)
            if account.kind == "rail":
                raise Forbidden("rail-accounts-move-by-rail", f"account {account_id} is a rail "
                                                              "account: only Deposit and "
                                                              "Withdraw move it")
            self.refuse_rail_payee(getattr(request, "credit_account_id", ""))
            if request.spender_id and request.spender_id != caller:
                raise Forbidden("spender-is-caller", f"spender_id must be the caller "
                                                     f"({_short(caller)}), not "
                                                     f"{_short(request.spender_id)}")
            if self._acts_for(caller, account):
                return
            if not request.mandate_id:
                raise Forbidden("wallet-owner-spends", f"only the owner of account {account_id}"
                                                       f" spends from it, or an agent under a "
                                                       f"mandate from the owner (name it in "
                                                       f"mandate_id); caller {_short(caller)} "
                                                       "is neither")
            if account.kind != "wallet" or not is_key(account.owner):
                # the market's own accounts (fx, fees, escrow) have no owner to grant mandates:
                # only the marketplace moves them (a named mandate would otherwise be trusted)
                raise Forbidden("wallet-owner-spends", f"account {account_id} is the market's "
                                                       f"own ({account.kind}): no mandate "
                                                       "spends from it")
            # a delegate: the ledger checks the mandate names this wallet and this spender

        return rule

    def _void(self, caller: str, request: Any) -> None:
        """The marketplace voids holds; the payee of a hash-locked hold may decline it
        (`wallets.conditional`: it gives up only its own claim)."""
        if self.principals.is_marketplace(caller) or self.declines(caller, request.hold_id):
            return
        self._marketplace(caller, request)

    def declines(self, caller: str, hold_id: str) -> bool:
        """Whether `caller` is the payee of hash-locked hold `hold_id` (a Void of it by them
        declines it)."""
        from wallets.conditional import hash_locked_payee

        return bool(caller) and hash_locked_payee(self.ledger, hold_id) == caller

    def _marketplace(self, caller: str, request: Any) -> None:
        if not self.principals.is_marketplace(caller):
            raise Forbidden("marketplace-settles-holds", f"only the marketplace (its node key "
                                                         f"or an operator) captures or voids "
                                                         f"holds; caller {_short(caller)} is "
                                                         "not")

    def _control(self, caller: str, request: Any) -> None:
        self._owner_or_operator("owner-or-operator-controls", caller, request.account_id,
                                "set its policy or freeze it")

    def _operator(self, caller: str, request: Any) -> None:
        if not self.principals.is_operator(caller):
            raise Forbidden("operator-decides", f"only an operator unfreezes wallets and "
                                                f"approves or denies held payments; caller "
                                                f"{_short(caller)} is not an operator")

    def _list(self, caller: str, request: Any) -> None:
        if not request.account_id:
            if not self.principals.is_operator(caller):
                raise Forbidden("operator-lists-all", "only an operator lists every wallet's "
                                                      "alerts or approvals; name your "
                                                      "account_id")
            return
        self._owner_or_operator("wallet-owner-reads", caller, request.account_id,
                                "list its alerts or approvals")

    def _grant(self, caller: str, request: Any) -> None:
        terms = MandateTerms.from_bytes(request.terms)
        owner = self._account(terms.account_id).owner
        if caller not in (owner, terms.agent_key):
            raise Forbidden("mandate-parties-grant", f"a mandate is presented by the wallet's "
                                                     f"owner or by the agent it names; caller "
                                                     f"{_short(caller)} is neither")

    def _get_mandate(self, caller: str, request: Any) -> None:
        found = self.wallets.controls.mandate(request.mandate_id)
        if caller not in (found.owner, found.terms.agent_key) and \
                not self.principals.is_operator(caller):
            raise Forbidden("mandate-parties-read", f"only the owner, the mandate's agent or "
                                                    f"an operator reads mandate "
                                                    f"{request.mandate_id[:12]}…")

    def _instructions(self, caller: str, request: Any) -> None:
        self._owner_or_operator("wallet-owner-reads", caller, request.account_id,
                                "read its deposit instructions")

    def _register_address(self, caller: str, request: Any) -> None:
        if not self._acts_for(caller, self._account(request.account_id)):
            raise Forbidden("deposit-own-wallet", f"only the owner of account "
                                                  f"{request.account_id} registers addresses "
                                                  f"that fund it; caller {_short(caller)} is "
                                                  "not")

    def _set_tier(self, caller: str, request: Any) -> None:
        if not self.principals.is_identity_authority(caller):
            raise Forbidden("identity-authority-sets-tier", f"only an identity authority (an "
                                                            f"operator or a configured identity "
                                                            f"provider) sets e-CNY wallet tiers; "
                                                            f"caller {_short(caller)} is neither")
        if caller == self._account(request.account_id).owner:
            raise Forbidden("identity-authority-sets-tier", "an agent never sets its own "
                                                            "wallet's tier, even as an authority")

    def _read_tier(self, caller: str, request: Any) -> None:
        if self.principals.is_identity_authority(caller):
            return
        self._owner_or_operator("wallet-owner-reads", caller, request.account_id,
                                "read its e-CNY tier")
