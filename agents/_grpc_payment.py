"""gRPC edge of payments: the buyer's interceptor attaches vouchers, the seller's checks them.

The seller's interceptor runs the `PaymentGate` check before the skill handler (Invoke and
InvokeStream), so a call with a missing, forged, replayed or over-budget voucher never reaches
the skill; a retried call id gets its first response back without running or charging again;
a call that fails gives its reserve back.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from typing import Any

import grpc

from agents.errors import AgentmarketError
from agents.payments import VOUCHER_METADATA_KEY, Admission, PaymentGate, PaymentSession
from marketplace._call_details import with_metadata
from marketplace.v1 import agreement_pb2
from wallets.caller import current_caller
from wallets.errors import ResourceExhausted
from wallets.grpc_errors import abort
from wallets.metrics import market_metrics

# Statuses after which a call may have run although its answer never came back
ANSWER_MAY_BE_LOST = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN})
INVOKE = "/agents.v1.AgentService/Invoke"
INVOKE_STREAM = "/agents.v1.AgentService/InvokeStream"
current_admission: contextvars.ContextVar[Admission | None] = contextvars.ContextVar(
    "current_admission", default=None)


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
        metadata = [*(details.metadata or []), (VOUCHER_METADATA_KEY, voucher.SerializeToString())]
        outcome = continuation(with_metadata(details, metadata), request)
        try:
            charged = outcome.result().usage.charged_atomic
        except grpc.RpcError:
            charged = 0  # refused or failed: the seller released the reserve
        session.settle(reserve, charged)
        return outcome


def _voucher(details: grpc.HandlerCallDetails) -> agreement_pb2.Voucher | None:
    raw = next((v for k, v in details.invocation_metadata or () if k == VOUCHER_METADATA_KEY),
               None)
    if raw is None:
        return None
    try:
        return agreement_pb2.Voucher.FromString(raw)
    except Exception:
        return agreement_pb2.Voucher()  # undecodable: refused as forged


class PaymentServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Check the voucher before the paid handler runs; refuse with a clear status."""

    def __init__(self, gate: PaymentGate, reserve_of: Callable[[str], int], *,
                 require_auth: bool = True, rate_limit: Callable[[str], bool] | None = None
                 ) -> None:
        """`require_auth`: an unsigned call must then reveal a new payword (its own proof);
        `rate_limit(subject)`: the bucket unsigned calls draw from (the paying buyer's)."""
        self.gate = gate
        self.reserve_of = reserve_of
        self.require_auth = require_auth
        self.rate_limit = rate_limit

    def _admit(self, request: Any, voucher: Any, partial: bool) -> Admission:
        if self.rate_limit is not None and not current_caller():
            # unsigned: the agreement's buyer pays for it, so it draws from the buyer's bucket
            known = self.gate.known(request.agreement_id)
            payer = self.gate.body(request.agreement_id).buyer_id if known \
                else f"agreement:{request.agreement_id}"
            if not self.rate_limit(payer):
                raise ResourceExhausted(f"agent {payer[:12]}… is over its rate limit; slow "
                                        "down", reason="RATE_LIMITED")
        if not self.gate.known(request.agreement_id):
            self.gate.admit(voucher, request.agreement_id, 0)  # raises NotFound / PaymentRequired
        admission = self.gate.admit(voucher, request.agreement_id,
                                    self.reserve_of(request.agreement_id),
                                    call_id=request.call_id, partial=partial,
                                    fresh_word_required=self.require_auth and not current_caller())
        if admission.replay is None:
            terms = self.gate.body(request.agreement_id).terms
            market_metrics().paid_calls.add(1, {"currency": terms.currency,
                                                "skill": terms.skill})
        return admission

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or details.method not in (INVOKE, INVOKE_STREAM):
            return handler
        voucher = _voucher(details)
        if details.method == INVOKE and handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, voucher),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if details.method == INVOKE_STREAM and handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, voucher),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler

    def _unary(self, inner: Callable[..., Any], voucher: Any) -> Callable[..., Any]:
        def paid(request, context):  # type: ignore[no-untyped-def]
            try:
                admission = self._admit(request, voucher, partial=False)
            except AgentmarketError as error:
                abort(context, error)
            if admission.replay is not None:
                return admission.replay
            token = current_admission.set(admission)
            try:
                return inner(request, context)
            finally:
                current_admission.reset(token)
                self.gate.release(request.agreement_id, admission)  # no-op once completed

        return paid

    def _stream(self, inner: Callable[..., Any], voucher: Any) -> Callable[..., Any]:
        def paid(request, context):  # type: ignore[no-untyped-def]
            try:
                admission = self._admit(request, voucher, partial=True)
            except AgentmarketError as error:
                abort(context, error)
            if admission.replay is not None:
                yield admission.replay
                return
            token = current_admission.set(admission)
            try:
                yield from inner(request, context)
            finally:
                with contextlib.suppress(ValueError):  # a generator may end in another context
                    current_admission.reset(token)
                self.gate.release(request.agreement_id, admission)

        return paid
