"""The gateway's `POST /v1/sessions/{agreement}/close`: the buyer's signed finish relayed to
the seller, who redeems; the node captures once and the answer is the settlement.

A close is no payment, so its refusals are HTTP's own statuses, never 402 (which x402 clients
take for an offer to pay): `CLOSE_STATUS`. Closing a closed session answers its settlement
again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry import propagate, trace
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from x402.http.utils import encode_payment_response_header

from agents.x402 import network as net
from agents.x402._door import body_within, problem
from agents.x402.facilitator import LedgerScheme, settlement_summary
from agents.x402.reasons import Refused
from agents.x402.sessions import SessionBook

MAX_CLOSE_BYTES = 4096
# a bad finish signature 403, a seller that did not finish 502 (close again), no such session
# 404, another request closing it 409; anything else 400
CLOSE_STATUS = {"invalid_signature": 403, "seller_refused": 502, "session_unknown": 404,
                "session_busy": 409}


class SessionCloses:
    """Closes sessions at the gateway, each answered with its settlement and a
    PAYMENT-RESPONSE the node signs (naming the chained receipts' head)."""

    def __init__(self, sessions: SessionBook, responses: LedgerScheme,
                 tracer: trace.Tracer) -> None:
        self.sessions = sessions
        self.responses = responses
        self.tracer = tracer

    async def close(self, request: Request) -> Response:
        context = propagate.extract(dict(request.headers))
        with self.tracer.start_as_current_span("gateway.close", context=context):
            raw = await body_within(request, MAX_CLOSE_BYTES)
            if raw is None:
                return problem(413, "body_too_large",
                               f"a close's body is at most {MAX_CLOSE_BYTES} bytes")
            try:
                data = net.strict_loads(raw)
                finish = net.unhex(data["finish"], "finish", 64)  # type: ignore[index]
            except (ValueError, TypeError, KeyError, RecursionError, net.PayloadError):
                return problem(400, "invalid_json", 'the body is {"finish": "<hex>"}')
            agreement = request.path_params["agreement"]
            session = self.sessions.sessions.get(agreement)  # kept even if the table drops it
            try:
                if session is None:
                    raise Refused("session_unknown", "no session has this agreement")
                async with self.sessions.finishing(agreement, finish):
                    closing = await asyncio.to_thread(self.sessions.close, agreement, finish)
            except Refused as error:
                return problem(CLOSE_STATUS.get(error.reason, 400), error.reason, error.message)
            summary = settlement_summary(closing)
            extra: dict[str, Any] = {"agreementId": agreement, "calls": session.calls,
                                     "settlement": summary}
            with session.lock:  # the chained receipts' head: the close signs them all
                if session.receipts.seq:
                    extra["chainSeq"] = session.receipts.seq
                    extra["chainHead"] = session.receipts.head
            settled = self.responses.signed_response(
                session.body.buyer_id, session.body.seller_id, int(summary["captured"]),
                session.body.terms.currency, summary["transaction"], extra)
            return JSONResponse(summary, headers={
                "PAYMENT-RESPONSE": encode_payment_response_header(settled)})


__all__ = ["CLOSE_STATUS", "SessionCloses"]
