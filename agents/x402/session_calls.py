"""A session's next call, paid in a few hashes: the gateway's fast path for `voucher` payloads.

Opening a session (and any first, unsessioned or unusual payment) runs x402's resource server
in full: it matches the requirements, runs the hooks and has the facilitator verify and hold.
A later call of the session only reveals the next PayWord word, so here, when the payment
repeats exactly what the route's 402 offered and nothing else is asked of x402 (no hooks,
no payment identifier, no stream), the word is checked against the session's last one under
the session's lock and spent, the call forwarded, and the PAYMENT-RESPONSE written as JSON
with the session's next chained receipt (`agents.x402.receipts`: the node signs one in
`SIGN_EVERY`): the same checks, without x402's models or a signature per call. Anything
else, a refusal included, returns None and the full path answers it (a refused voucher spent
nothing, so checking it twice changes nothing).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from x402 import x402ResourceServer
from x402.extensions.payment_identifier import PAYMENT_IDENTIFIER
from x402.http.constants import PAYMENT_RESPONSE_HEADER

from agents.x402 import forward, receipts
from agents.x402 import network as net
from agents.x402.reasons import Refused
from agents.x402.routes import Routes
from agents.x402.sessions import Session, SessionBook, check_terms
from marketplace.identity import AgentKey
from wallets import attributes as attr

PAYLOAD_FIELDS = frozenset({"x402Version", "payload", "accepted", "resource", "extensions"})
_HOOKS = ("_before_verify_hooks", "_after_verify_hooks", "_on_verify_failure_hooks",
          "_before_settle_hooks", "_after_settle_hooks", "_on_settle_failure_hooks",
          "_on_verified_payment_canceled_hooks", "_extension_hook_adapters")


class SessionCalls:
    """Pays and forwards a session's later calls (see the module's docstring)."""

    def __init__(self, sessions: SessionBook, server: x402ResourceServer, routes: Routes,
                 channels: forward.Channels, key: AgentKey, network: str,
                 offer_again: Callable[..., Awaitable[dict[str, str]]]) -> None:
        """`offer_again(route, request, arguments, reason)`: the headers of a 402 to pay
        again (the gateway's)."""
        self.sessions = sessions
        self.server = server
        self.routes = routes
        self.channels = channels
        self.key = key
        self.network = network
        self.offer_again = offer_again
        self.answered = 0  # calls paid here (the rest took the full path)

    async def answer(self, request: Request, header: str, arguments: dict[str, Any],
                     span: Any) -> Response | None:
        """The paid call's answer, or None: the full path takes it."""
        read = voucher_of(header)
        if read is None or "text/event-stream" in request.headers.get("accept", "") \
                or _has_hooks(self.server):
            return None
        accepted, payment = read
        route = self.routes.cached(request.path_params["listing"],
                                   request.path_params["skill"])
        requirements = route.matching(accepted) if route is not None else None
        session = self.sessions.sessions.get(payment.agreement_id)
        if route is None or requirements is None or session is None \
                or not self._spend(session, payment, requirements):
            return None
        body = session.body
        span.set_attributes({attr.PAYER: body.buyer_id, attr.PAYEE: body.seller_id,
                             attr.SKILL: body.terms.skill,
                             attr.AGREEMENT_ID: session.agreement_id})
        status, answer, charged = await forward.invoke(
            self.channels, route.listing.endpoint, arguments, payment.voucher)
        self.sessions.charged(session, charged)
        if status == forward.VOUCHER_REFUSED:  # overtaken at the seller: nothing booked
            return Response(json.dumps(answer).encode(), status_code=status, headers={
                **await self.offer_again(route, request, arguments, answer["error"]),
                "content-type": "application/json"})
        receipt = receipts.chained(self.key, session.receipts, session.lock, receipts.body_of(
            self.network, body.buyer_id, body.seller_id, charged, body.terms.currency,
            session.hold_posting, {"agreementId": session.agreement_id,
                                   "calls": session.calls}))
        self.answered += 1
        settled = receipts.settle_response(
            body.buyer_id, session.hold_posting, self.network, charged,
            {"agreementId": session.agreement_id, "calls": receipt["body"]["calls"],
             "holdPosting": session.hold_posting}, receipt)
        return Response(json.dumps(answer).encode(), status_code=status, headers={
            PAYMENT_RESPONSE_HEADER: receipts.header(settled),
            "content-type": "application/json"})

    def _spend(self, session: Session, payment: net.VoucherPayload, requirements: Any
               ) -> bool:
        """Check the word and the terms and spend it, under the session's lock; a busy lock
        (the session closing) or a refusal is the full path's to answer."""
        if not session.lock.acquire(blocking=False):
            return False
        try:
            if self.sessions.check_voucher(payment, int(requirements.amount)) is not session:
                return False
            check_terms(session.body, requirements)
            self.sessions.spend(session, payment.voucher)
            return True
        except Refused:
            return False
        finally:
            session.lock.release()


def voucher_of(header: str) -> tuple[Any, net.VoucherPayload] | None:
    """(`accepted`, the voucher) of a PAYMENT-SIGNATURE carrying a session's voucher and no
    payment identifier; None for anything else."""
    try:
        data = orjson.loads(base64.b64decode(header, validate=True))
    except (ValueError, binascii.Error, RecursionError):  # (orjson's error is a ValueError)
        return None
    if not isinstance(data, dict) or not net.is_v2(data.get("x402Version")) \
            or not data.keys() <= PAYLOAD_FIELDS or _identified(data.get("extensions")):
        return None
    payload = data.get("payload")
    if not isinstance(payload, dict) or payload.get("kind") != "voucher":
        return None
    try:
        payment = net.parse(payload)
    except net.PayloadError:
        return None
    assert isinstance(payment, net.VoucherPayload)
    return data.get("accepted"), payment


def _identified(extensions: Any) -> bool:
    """Extensions other than the declared payment identifier, or an identifier's id (its
    retry is answered from the full path's memory)."""
    if not extensions:
        return False
    if not isinstance(extensions, dict) or extensions.keys() != {PAYMENT_IDENTIFIER}:
        return True
    found = extensions[PAYMENT_IDENTIFIER]
    info = found.get("info") if isinstance(found, dict) else None
    return not isinstance(info, dict) or "id" in info


def _has_hooks(server: x402ResourceServer) -> bool:
    """Hooks registered with x402's resource server run on every payment: the full path."""
    return any(getattr(server, name, None) for name in _HOOKS)
