"""What a wallet's owner and an operator do with its controls: policies, freezes, alerts,
approvals and mandates. Plain Python over the ledger (the gRPC servicer and a CLI sit on it).

Every change runs through `Ledger.mutate` under the caller's idempotency key, serialised with
the spends it governs: a policy set, a freeze or a revocation applies to the very next spend.
Who may call these over gRPC is decided at the edge (`wallets.access`: the owner or an operator
sets policy and freezes; only operators unfreeze and decide approvals); mandates and their
revocation are signed by the owner's key as well.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Connection

from wallets import anomaly, approvals, mandates, policies
from wallets._idempotency import check_key
from wallets.anomaly import Alert
from wallets.approvals import Approval
from wallets.errors import InvalidArgument
from wallets.ledger import Ledger
from wallets.mandates import Mandate, MandateTerms
from wallets.models import Balance
from wallets.policies import ControlState, Policy


class WalletControls:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def _read(self) -> Connection:
        return self.ledger.engine.connect().execution_options(agentmarket_read=True)

    def _wallet(self, account_id: str) -> Balance:
        account = self.ledger.balance(account_id)
        if account.kind != "wallet":
            raise InvalidArgument(f"account {account_id} is a {account.kind} account; only "
                                  "wallets have policies")
        return account

    @staticmethod
    def _state(conn: Connection, wallet: Balance) -> ControlState:
        row = policies.load_rows(conn, [wallet.account_id]).get(wallet.account_id)
        return ControlState.from_row(wallet.account_id, wallet.currency, row)

    # ---- policy and freeze ------------------------------------------------------------------

    def set_policy(self, key: str, account_id: str, policy: Policy) -> ControlState:
        """Replace the wallet's policy (its freeze state stays as it is)."""
        check_key(key)
        wallet = self._wallet(account_id)

        def apply(conn: Connection) -> ControlState:
            policies.save(conn, account_id, policy.columns(), self.ledger.clock_ms())
            return self._state(conn, wallet)

        return self.ledger.mutate(key, "set_policy", {"account": account_id,
                                                      "policy": policy.to_json()},
                                  apply, ControlState.to_json, ControlState.from_json)

    def policy(self, account_id: str) -> ControlState:
        wallet = self._wallet(account_id)
        with self._read() as conn:
            return self._state(conn, wallet)

    def freeze(self, key: str, account_id: str, *, reason: str, actor: str) -> ControlState:
        """Refuse the wallet's debits until `unfreeze` (a repeat leaves it frozen as it was)."""
        check_key(key)
        anomaly.check_actor(actor, reason)
        wallet = self._wallet(account_id)

        def apply(conn: Connection) -> ControlState:
            state = self._state(conn, wallet)
            if not state.frozen:
                now_ms = self.ledger.clock_ms()
                alert = Alert(uuid.uuid4().hex, account_id, "freeze",
                              f"wallet {account_id} frozen by {actor}: {reason}", 0, 0, actor,
                              now_ms)
                anomaly.freeze(conn, alert, reason)
            return self._state(conn, wallet)

        return self.ledger.mutate(key, "freeze", {"account": account_id, "reason": reason,
                                                  "actor": actor},
                                  apply, ControlState.to_json, ControlState.from_json)

    def unfreeze(self, key: str, account_id: str, *, reason: str, actor: str) -> ControlState:
        """Let a frozen wallet spend again (FAILED_PRECONDITION NOT_FROZEN if it is not)."""
        check_key(key)
        anomaly.check_actor(actor, reason)
        wallet = self._wallet(account_id)

        def apply(conn: Connection) -> ControlState:
            anomaly.unfreeze(conn, account_id, actor=actor, reason=reason,
                             now_ms=self.ledger.clock_ms())
            return self._state(conn, wallet)

        return self.ledger.mutate(key, "unfreeze", {"account": account_id, "reason": reason,
                                                    "actor": actor},
                                  apply, ControlState.to_json, ControlState.from_json)

    def alerts(self, account_id: str = "", *, limit: int = 100) -> list[Alert]:
        """Freezes (velocity or manual) and unfreezes, newest first."""
        with self._read() as conn:
            return anomaly.query(conn, account_id=account_id, limit=limit)

    # ---- approvals ----------------------------------------------------------------------------

    def approvals(self, account_id: str = "", *, status: str = "", limit: int = 100,
                  after: tuple[int, str] | None = None) -> list[Approval]:
        """Newest first; `after`: (created_at_ms, id) of the previous page's last."""
        with self._read() as conn:
            return approvals.query(conn, account_id=account_id, status=status, limit=limit,
                                   now_ms=self.ledger.clock_ms(), after=after)

    def approve(self, key: str, approval_id: str, *, decided_by: str,
                note: str = "") -> Approval:
        """Let the waiting spend through when it is retried under its own key."""
        return self._decide(key, approval_id, True, decided_by, note)

    def deny(self, key: str, approval_id: str, *, decided_by: str, note: str = "") -> Approval:
        """Refuse the waiting spend for good (its retries get APPROVAL_DENIED)."""
        return self._decide(key, approval_id, False, decided_by, note)

    def _decide(self, key: str, approval_id: str, approve: bool, decided_by: str,
                note: str) -> Approval:
        check_key(key)
        approvals.check_decision(approval_id, decided_by, note)

        def apply(conn: Connection) -> Approval:
            return approvals.decide(conn, approval_id, approve=approve, decided_by=decided_by,
                                    note=note, now_ms=self.ledger.clock_ms())

        request = {"approval": approval_id, "approve": approve, "by": decided_by, "note": note}
        return self.ledger.mutate(key, "decide_approval", request, apply, Approval.to_json,
                                  Approval.from_json)

    # ---- mandates -----------------------------------------------------------------------------

    def grant_mandate(self, key: str, terms: bytes, signature: bytes) -> Mandate:
        """Store an owner-signed mandate (`mandates.sign_mandate` makes the two arguments)."""
        check_key(key)
        parsed = MandateTerms.from_bytes(terms)
        wallet = self.ledger.balance(parsed.account_id)
        mandates.check_grant(wallet, parsed, terms, signature, self.ledger.clock_ms())

        def apply(conn: Connection) -> Mandate:
            return mandates.grant(conn, wallet, parsed, terms, signature,
                                  self.ledger.clock_ms())

        return self.ledger.mutate(key, "grant_mandate", {"terms": terms.hex(),
                                                         "signature": signature.hex()},
                                  apply, Mandate.to_json, Mandate.from_json)

    def revoke_mandate(self, key: str, mandate_id: str, signature: bytes) -> Mandate:
        """Revoke at once: the next spend under the mandate is refused (MANDATE_REVOKED)."""
        check_key(key)
        mandates.check_revocation(self.mandate(mandate_id), signature)

        def apply(conn: Connection) -> Mandate:
            return mandates.revoke(conn, mandate_id, self.ledger.clock_ms())

        return self.ledger.mutate(key, "revoke_mandate", {"mandate": mandate_id,
                                                          "signature": signature.hex()},
                                  apply, Mandate.to_json, Mandate.from_json)

    def mandate(self, mandate_id: str) -> Mandate:
        with self._read() as conn:
            return mandates.load(conn, mandate_id, self.ledger.clock_ms())
