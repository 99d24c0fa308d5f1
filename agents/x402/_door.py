"""The gateway's HTTP pieces: x402's HTTPAdapter over Starlette, and the helpers that translate
between x402's answers and ours (the refusal's reason, payment identifiers, events, problems).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from x402.extensions.payment_identifier import PAYMENT_IDENTIFIER, extract_payment_identifier
from x402.http.constants import PAYMENT_REQUIRED_HEADER
from x402.http.utils import decode_payment_required_header, encode_payment_required_header
from x402.schemas import PaymentPayload, PaymentRequired

from agents.x402 import network as net

NO_MATCH = "No matching payment requirements"  # x402's words for an `accepted` we do not offer


class Adapter:
    """x402's HTTPAdapter over a Starlette request."""

    def __init__(self, request: Request, body: Any) -> None:
        self.request, self.body = request, body

    def get_header(self, name: str) -> str | None:
        return self.request.headers.get(name)

    def get_method(self) -> str:
        return self.request.method

    def get_path(self) -> str:
        return self.request.url.path

    def get_url(self) -> str:
        return str(self.request.url)

    def get_accept_header(self) -> str:
        """JSON for every client, browsers too: x402's HTML paywall pays on EVM chains and
        Solana, not on an agentmarket network, so it could only mislead a browser's user."""
        return "application/json"

    def get_user_agent(self) -> str:
        return self.request.headers.get("user-agent", "")

    def get_query_params(self) -> dict[str, str | list[str]] | None:
        return dict(self.request.query_params)

    def get_query_param(self, name: str) -> str | list[str] | None:
        return self.request.query_params.get(name)

    def get_body(self) -> Any:
        return self.body


class Unpaid(Adapter):
    def get_header(self, name: str) -> str | None:
        return None if name.lower() == "payment-signature" else super().get_header(name)


def fingerprint(payment_print: bytes, listing_id: str, skill: str,
                arguments: dict[str, Any]) -> bytes:
    """What a retry under one payment identifier must repeat: the payment payload (its
    `payment_fingerprint`), the resource and the arguments. x402's payment-identifier: the same
    id with the same payload gets the first answer, with another payload 409 (so knowing an id,
    or an agreement's, is not enough to read another's answer)."""
    return hashlib.sha256(payment_print + net.canonical([listing_id, skill, arguments])).digest()


async def body_within(request: Request, limit: int) -> bytes | None:
    """The request's body, or None once it is over `limit` bytes: read no further than that
    (a declared Content-Length over it is not read at all), so a huge body costs no memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def payment_fingerprint(data: Any) -> bytes:
    """The payment payload alone (what only its holder can send), without the request."""
    return hashlib.sha256(net.canonical(data)).digest()


def identifier(payload: PaymentPayload | None) -> tuple[str, str] | None:
    """(whose payment, payment-identifier id): ids are scoped to the agreement (or the payer
    of an authorisation), so one buyer's id never answers another's request."""
    if payload is None or PAYMENT_IDENTIFIER not in (payload.extensions or {}):
        return None
    try:
        found = extract_payment_identifier(payload)
        payment = net.parse(payload.payload)
    except (ValueError, TypeError):
        return None
    if not found:
        return None
    scope = payment.payer if isinstance(payment, net.Authorization) \
        else payment.voucher.agreement_id
    return scope, str(found)


def refined(headers: dict[str, str], payload: PaymentPayload | None) -> dict[str, str]:
    """x402's resource server says only "No matching payment requirements" when the payment's
    `accepted` differs from every offer: name the field (invalid_network, ...)."""
    encoded = headers.get(PAYMENT_REQUIRED_HEADER)
    if payload is None or not encoded:
        return headers
    required = decode_payment_required_header(encoded)
    if not isinstance(required, PaymentRequired) or required.error != NO_MATCH:
        return headers
    accepted = payload.accepted
    reason = "invalid_payload"
    for field_name, why in (("network", "invalid_network"), ("scheme", "invalid_scheme"),
                            ("asset", "invalid_asset"), ("pay_to", "invalid_pay_to"),
                            ("amount", "invalid_amount")):
        if all(getattr(accepted, field_name) != getattr(offer, field_name)
               for offer in required.accepts):
            reason = why
            break
    else:
        if all(accepted.extra != offer.extra for offer in required.accepts):
            reason = "invalid_resource"  # the terms of another skill or seller
    refined = required.model_copy(update={"error": reason})
    return {**headers, PAYMENT_REQUIRED_HEADER: encode_payment_required_header(refined)}


def event(name: str, data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return f"event: {name}\ndata: {text}\n\n".encode()


def problem(status: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"error": reason, "message": message}, status_code=status)
