"""gRPC edge of payments: the buyer's interceptor attaches vouchers, the seller's checks them.

The seller's interceptor runs the `PaymentGate` check before the skill handler, so a call with a
missing, forged, replayed or over-budget voucher never reaches the skill.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import grpc

from agents.errors import AgentmarketError
from agents.payments import VOUCHER_METADATA_KEY, PaymentGate, PaymentSession
from marketplace.v1 import agreement_pb2
from wallets.grpc_errors import abort

PAID_METHOD = "/agents.v1.AgentService/Invoke"
call_sequence: contextvars.ContextVar[int] = contextvars.ContextVar("call_sequence", default=0)


class _ClientCallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, Any]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class VoucherClientInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Attach the next voucher of the request's agreement to every paid call."""

    def __init__(self, sessions: dict[str, PaymentSession],
                 price_of: Callable[[str, Any], int]) -> None:
        self.sessions = sessions
        self.price_of = price_of

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        if details.method != PAID_METHOD:
            return continuation(details, request)
        session = self.sessions.get(request.agreement_id)
        if session is None:
            return continuation(details, request)  # the seller will refuse: no voucher
        voucher = session.next_voucher(self.price_of(request.agreement_id, request))
        metadata = [*(details.metadata or []), (VOUCHER_METADATA_KEY, voucher.SerializeToString())]
        return continuation(_ClientCallDetails(details, metadata), request)


class PaymentServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Check the voucher before the paid handler runs; refuse with a clear status."""

    def __init__(self, gate: PaymentGate, price_of: Callable[[str], int]) -> None:
        self.gate = gate
        self.price_of = price_of

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if details.method != PAID_METHOD or handler is None or handler.unary_unary is None:
            return handler
        raw = next((v for k, v in details.invocation_metadata or ()
                    if k == VOUCHER_METADATA_KEY), None)
        inner = handler.unary_unary

        def paid(request, context):  # type: ignore[no-untyped-def]
            try:
                voucher = agreement_pb2.Voucher.FromString(raw) if raw is not None else None
            except Exception:
                voucher = agreement_pb2.Voucher()  # undecodable: refused as forged below
            try:
                if not self.gate.known(request.agreement_id):
                    self.gate.admit(voucher, request.agreement_id, 0)  # raises NotFound
                sequence = self.gate.admit(voucher, request.agreement_id,
                                           self.price_of(request.agreement_id))
            except AgentmarketError as error:
                abort(context, error)
            token = call_sequence.set(sequence)
            try:
                return inner(request, context)
            finally:
                call_sequence.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            paid, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
