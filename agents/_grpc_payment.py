"""gRPC edge of payments: the buyer's interceptor attaches vouchers, the seller checks them.

The seller's paid methods (Invoke and InvokeStream) run `PaidCallAdmitter.admit` before the
skill, so a call with a missing, forged, replayed or over-budget voucher never reaches it; a
retried call id gets its first response back without running or charging again; a call that
fails gives its reserve back (agents._serving).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from agents.payment_session import PaymentSession
from agents.payments import VOUCHER_METADATA_KEY, Admission, PaymentGate, paid_call_metadata
from marketplace._call_details import with_metadata
from marketplace.payword import CHEAP_CHECK_HASHES
from marketplace.v1 import agreement_pb2
from wallets.caller import current_caller
from wallets.errors import ResourceExhausted
from wallets.grpc_errors import error_reason
from wallets.metrics import market_metrics

# Statuses after which a call may have run although its answer never came back
ANSWER_MAY_BE_LOST = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN})


def answer_may_be_lost(error: grpc.RpcError) -> bool:
    """Whether the call may have run although its answer never came back: one of
    ANSWER_MAY_BE_LOST, or INTERNAL without the ErrorInfo every refusal of ours carries (the
    transport's: a stream reset, a broken connection), not a server's own INTERNAL answer."""
    code = error.code()
    return code in ANSWER_MAY_BE_LOST or (code == grpc.StatusCode.INTERNAL
                                          and not error_reason(error))


PRECHECK_INPUT_CHARS = 16_384
INVOKE = "/agents.v1.AgentService/Invoke"
INVOKE_STREAM = "/agents.v1.AgentService/InvokeStream"


def has_voucher(metadata: Any) -> bool:
    return any(key == VOUCHER_METADATA_KEY for key, _ in metadata or ())


class VoucherClientInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Attach a voucher prepaying the call's maximum to an Invoke that has none, and book the
    charge from its receipt (`BuyerAgent.call` attaches its own, with a call id)."""

    def __init__(self, sessions: dict[str, PaymentSession],
                 reserve_of: Callable[[str, Any], int]) -> None:
        self.sessions = sessions
        self.reserve_of = reserve_of

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        if details.method != INVOKE or has_voucher(details.metadata):
            return continuation(details, request)
        session = self.sessions.get(request.agreement_id)
        if session is None:
            return continuation(details, request)  # the seller will refuse: no voucher
        reserve = self.reserve_of(request.agreement_id, request)
        voucher = session.next_voucher(reserve)
        metadata = [*(details.metadata or []), *paid_call_metadata(voucher)]
        outcome = continuation(with_metadata(details, metadata), request)
        try:
            charged = outcome.result().usage.charged_atomic
        except grpc.RpcError:
            charged = 0  # refused or failed: the seller released the reserve
        session.settle(reserve, charged)
        return outcome


def voucher_of(metadata: Any) -> agreement_pb2.Voucher | None:
    """The voucher in a call's metadata (an undecodable one is returned empty: refused as
    forged)."""
    raw = next((v for k, v in metadata or () if k == VOUCHER_METADATA_KEY), None)
    if raw is None:
        return None
    try:
        return agreement_pb2.Voucher.FromString(raw)
    except Exception:
        return agreement_pb2.Voucher()


class PaidCallAdmitter:
    """The seller's payment check, run by the paid methods before the skill: a missing,
    forged, replayed or over-budget voucher never reaches it. Called from the servicer, not
    an interceptor, so a paid call costs one function call here instead of a wrapped
    handler per call."""

    def __init__(self, gate: PaymentGate, reserve_of: Callable[[str], int], *,
                 require_auth: bool = True,
                 rate_limit: Callable[[str, int], bool] | None = None
                 ) -> None:
        """`require_auth`: an unsigned call must then reveal a new payword (its own proof);
        `rate_limit(subject, cost)`: the bucket unsigned calls draw from (the paying buyer's;
        a dear check of a voucher draws one token per CHEAP_CHECK_HASHES hashes)."""
        self.gate = gate
        self.reserve_of = reserve_of
        self.require_auth = require_auth
        self.rate_limit = rate_limit

    def admit(self, request: Any, context: grpc.ServicerContext, *, partial: bool,
              voucher: agreement_pb2.Voucher | None = None) -> Admission:
        """Check the call's voucher (`voucher`, or the one in the call's metadata) and reserve
        its maximum (raises AgentmarketError).

        An unsigned call is the buyer's only if its word is genuine and new, so only such a
        call draws from the buyer's rate-limit bucket (checked before anything is used): anyone
        who learned the agreement id could otherwise spend the buyer's bucket with forged
        vouchers and stall its calls. A voucher whose check costs more than
        `CHEAP_CHECK_HASHES` first draws one token per `CHEAP_CHECK_HASHES` hashes: from a
        signed caller's own bucket, else from the agreement's bucket for unproven calls, so
        that no one buys unbounded hashing."""
        if voucher is None:
            voucher = voucher_of(context.invocation_metadata())
        caller = current_caller()
        signed = bool(caller)
        agreement = request.agreement_id
        if not self.gate.known(agreement):
            self.gate.admit(voucher, agreement, 0)  # raises NotFound / PaymentRequired
        if self.rate_limit is not None:
            hashes = self.gate.check_hashes(agreement, voucher)
            if hashes > CHEAP_CHECK_HASHES:  # one token per CHEAP_CHECK_HASHES it would cost,
                # from the signed caller's own bucket, else the agreement's for unproven calls
                self._draw(caller or f"unproven:{agreement}", -(-hashes // CHEAP_CHECK_HASHES))
        draw = self._draw if self.rate_limit is not None and not signed else None
        admission = self.gate.admit(voucher, agreement, self.reserve_of(agreement),
                                    call_id=request.call_id, partial=partial,
                                    fresh_word_required=self.require_auth and not signed,
                                    on_new_word=draw)
        if admission.replay is None:
            terms = self.gate.body(request.agreement_id).terms
            market_metrics().paid_calls.add(1, {"currency": terms.currency,
                                                "skill": terms.skill})
        return admission

    def vouch(self, request: Any, context: Any,
              voucher: agreement_pb2.Voucher | None = None) -> None:
        """Before a large input is read (over PRECHECK_INPUT_CHARS: parsing and checking it
        against the skill's schema costs milliseconds), refuse a voucher that is not genuine,
        so that whoever learned an agreement id cannot make the seller read megabytes for
        free. A smaller input is read first, so that a call refused for its input spends no
        voucher."""
        if len(request.input_json) <= PRECHECK_INPUT_CHARS or \
                not self.gate.known(request.agreement_id):  # admission refuses it
            return
        if voucher is None:
            voucher = voucher_of(context.invocation_metadata())
        self.gate.vouch(request.agreement_id, voucher, request.call_id)

    def _draw(self, subject: str, cost: int = 1) -> None:
        assert self.rate_limit is not None
        if not self.rate_limit(subject, cost):
            raise ResourceExhausted(f"{subject[:20]}… is over its rate limit; slow down",
                                    reason="RATE_LIMITED")
