"""What an operator does from the console, sent to the node as signed gRPC requests.

The console holds an operator key and signs each action with it, so an action passes through
the same authentication, authorisation rules (`wallets.access`, `marketplace.access`),
idempotency and money code as `agentmarket approvals approve` or any other client: the money
rules live once. The person's name from the login goes into the request's free-text fields
(`decided_by`, `actor`, the dispute note's author) and, with the key and the outcome, into the
audit trail (`marketplace.console.audit`). Each action is one trace, linked from its audit row.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import trace

from marketplace import agreements as ag
from marketplace.auth import signed_channel
from marketplace.console.audit import AuditTrail
from marketplace.console.sessions import Session
from marketplace.grpc_tracing import client_interceptors
from marketplace.identity import AgentKey
from marketplace.v1 import dispute_pb2, dispute_pb2_grpc
from wallets import attributes as attr
from wallets.currencies import currency
from wallets.errors import AgentmarketError
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

TIMEOUT_S = 10.0
MAX_TEXT = 256
FORM_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}\Z")
OUTCOMES = {"seller": dispute_pb2.DISPUTE_OUTCOME_SELLER,
            "buyer": dispute_pb2.DISPUTE_OUTCOME_BUYER,
            "split": dispute_pb2.DISPUTE_OUTCOME_SPLIT}


class ActionRefused(Exception):
    """The form was wrong before anything was sent (the message says what)."""


@dataclass(frozen=True, slots=True)
class ActionResult:
    ok: bool
    message: str
    trace_id: str


def _text(value: str, what: str, *, required: bool) -> str:
    value = (value or "").strip()
    if required and not value:
        raise ActionRefused(f"give a {what}: it is recorded with the action")
    if len(value) > MAX_TEXT:
        raise ActionRefused(f"the {what} is longer than {MAX_TEXT} characters")
    return value


class OperatorActions:
    """Signed requests to one node, with `key` (an operator of that node)."""

    def __init__(self, address: str, key: AgentKey, audit: AuditTrail, *,
                 credentials: grpc.ChannelCredentials | None = None,
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        self.key = key
        self.audit = audit
        self._tracer = trace.get_tracer("agentmarket.console", tracer_provider=tracer_provider)
        self._channel = signed_channel(address, key, credentials,
                                       interceptors=client_interceptors(tracer_provider))
        self._wallets = wallet_pb2_grpc.WalletServiceStub(self._channel)
        self._arbitration = dispute_pb2_grpc.ArbitrationServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _by(self, session: Session) -> str:
        return f"{session.operator} (console, key {self.key.agent_id[:12]})"

    def _key(self, session: Session, action: str, form_key: str) -> str:
        """The idempotency key: the form's own (a resubmitted form replays the first answer)."""
        if not FORM_KEY.match(form_key or ""):
            raise ActionRefused("the form has no valid idempotency key; reload the page")
        return f"console:{action}:{session.tag}:{form_key}"

    def _run(self, session: Session, action: str, target: str, detail: dict[str, Any],
             call: Any, describe: Any, span_attributes: dict[str, Any] | None = None
             ) -> ActionResult:
        with self._tracer.start_as_current_span(f"console.{action}", attributes={
            "enduser.id": self.key.agent_id, "agentmarket.operator": session.operator,
            **(span_attributes or {})}) as span:
            context = span.get_span_context()
            trace_id = format(context.trace_id, "032x") if context.is_valid else ""
            action_id = self.audit.begin(
                at_ms=time.time_ns() // 1_000_000, operator=session.operator,
                session=session.tag, key_id=self.key.agent_id, action=action, target=target,
                detail=detail, trace_id=trace_id)
            try:
                answer = call()
            except grpc.RpcError as error:
                message = f"{error.code().name}: {error.details()}"
                self.audit.finish(action_id, "refused", message)
                return ActionResult(False, message, trace_id)
            message = describe(answer)
            self.audit.finish(action_id, "done", message)
            return ActionResult(True, message, trace_id)

    # ---- approvals ------------------------------------------------------------------------

    def decide(self, session: Session, approval_id: str, *, approve: bool, note: str,
               form_key: str) -> ActionResult:
        """Approve or deny a waiting payment (the wallet's Approve / Deny)."""
        note = _text(note, "note", required=False)
        action = "approve" if approve else "deny"
        request = wallet_pb2.DecideApprovalRequest(
            idempotency_key=self._key(session, action, form_key), approval_id=approval_id,
            decided_by=self._by(session), note=note)
        method = self._wallets.Approve if approve else self._wallets.Deny
        return self._run(session, action, approval_id, {"note": note},
                         lambda: method(request, timeout=TIMEOUT_S),
                         lambda answer: f"approval {answer.approval_id} is {answer.status}")

    # ---- wallets --------------------------------------------------------------------------

    def freeze(self, session: Session, account_id: str, *, reason: str, frozen: bool,
               form_key: str) -> ActionResult:
        """Freeze a wallet (its debits refused) or unfreeze it."""
        reason = _text(reason, "reason", required=True)
        action = "freeze" if frozen else "unfreeze"
        key = self._key(session, action, form_key)
        if frozen:
            call = lambda: self._wallets.Freeze(wallet_pb2.FreezeRequest(  # noqa: E731
                idempotency_key=key, account_id=account_id, reason=reason,
                actor=self._by(session)), timeout=TIMEOUT_S)
        else:
            call = lambda: self._wallets.Unfreeze(wallet_pb2.UnfreezeRequest(  # noqa: E731
                idempotency_key=key, account_id=account_id, reason=reason,
                actor=self._by(session)), timeout=TIMEOUT_S)
        return self._run(session, action, account_id, {"reason": reason}, call,
                         lambda answer: f"wallet {account_id} is "
                                        f"{'frozen' if answer.frozen else 'not frozen'}")

    # ---- disputes -------------------------------------------------------------------------

    def resolve(self, session: Session, agreement_id: str, *, to: str, seller_amount: str,
                currency_code: str, note: str, form_key: str) -> ActionResult:
        """Pay a disputed amount to the seller, the buyer or a split, signed as the arbiter."""
        if to not in OUTCOMES:
            raise ActionRefused(f"resolve to seller, buyer or split, not {to!r}")
        note = _text(note, "reason for the decision", required=True)
        seller_atomic = 0
        if to == "split":
            try:
                seller_atomic = currency(currency_code).atomic((seller_amount or "").strip())
            except (AgentmarketError, ArithmeticError, ValueError):
                raise ActionRefused(f"the seller's share must be an amount in {currency_code} "
                                    f"like 0.004, not {seller_amount!r}") from None
        outcome = OUTCOMES[to]
        signed_note = f"{note} (by {session.operator})"
        signature = self.key.sign(ag.resolve_message(agreement_id, outcome, seller_atomic,
                                                     signed_note))
        request = dispute_pb2.ResolveDisputeRequest(
            idempotency_key=self._key(session, "resolve", form_key), agreement_id=agreement_id,
            outcome=outcome, seller_atomic=seller_atomic, note=signed_note,
            arbiter_id=self.key.agent_id, arbiter_signature=signature)
        money = currency(currency_code)
        return self._run(
            session, "resolve", agreement_id,
            {"to": to, "seller_atomic": seller_atomic, "currency": currency_code, "note": note},
            lambda: self._arbitration.ResolveDispute(request, timeout=TIMEOUT_S),
            lambda escrow: f"resolved to the {to}: seller paid "
                           f"{money.format(escrow.captured_atomic)} (fee "
                           f"{money.format(escrow.fee_atomic)}), buyer refunded "
                           f"{money.format(escrow.refunded_atomic)}",
            {attr.AGREEMENT_ID: agreement_id, attr.AMOUNT_ATOMIC: seller_atomic,
             attr.CURRENCY: money.code})
