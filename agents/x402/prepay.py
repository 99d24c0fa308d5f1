"""The buyer's httpx transport that pays up front: a session costs one round trip per call.

x402's client pays after a 402. `PrepayTransport`, under x402's own httpx transport
(`http_client` makes both), remembers each URL's PAYMENT-REQUIRED and sends the next request to
it with the scheme's next voucher (`agents.x402.client.AgentmarketScheme`) already attached, and
reads each answer's PAYMENT-RESPONSE for what the call was charged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import ssl
from typing import Any

import httpx
import orjson
from google.protobuf.message import DecodeError
from x402 import x402Client
from x402.http.clients.httpx import x402AsyncTransport
from x402.http.utils import (
    decode_payment_required_header,
    encode_payment_signature_header,
)
from x402.schemas import PaymentRequired

from agents.x402 import network as net
from agents.x402._prepaid_header import Template, later_members
from agents.x402.client import AgentmarketScheme, buyer_client
from marketplace.identity import AgentKey
from marketplace.v1 import agreement_pb2

# a 402 with these reasons after a voucher: the gateway no longer has the session (closed, or
# forgotten by a restart); the client forgets it too, and the next payment opens a new one
SESSION_GONE = frozenset({"session_unknown", "session_ended"})
# A voucher refused because a later one of its session reached the gateway or the seller first
# (calls of one session running at once; words are taken in order) is paid again with the
# session's next, at most this many times per request
MAX_REPLANS = 8
OPEN_WAIT_S = 30.0  # how long a session's voucher waits for the call opening the session


class PrepayTransport(httpx.AsyncBaseTransport):
    """Remembers each URL's PAYMENT-REQUIRED and pays the next request to it up front.

    The first prepaid request to a URL is x402's client's payment; later ones repeat what
    it selected with the scheme's next payload (x402's client runs again if it has hooks or
    policies of its own, which may decide differently per payment). A voucher refused because
    its session is gone (closed, or forgotten by a restarted gateway) forgets the session and
    pays once more in a new one; a prepaid header refused otherwise is taken off the request,
    so that x402's retry sends its own payment alone.

    Calls of one session may run at once: the vouchers of a session wait until its opening
    call is answered (the gateway knows the session only then), and a voucher overtaken by a
    later one of its session is paid again with the next (`MAX_REPLANS`)."""

    def __init__(self, client: x402Client, schemes: dict[str, AgentmarketScheme],
                 inner: httpx.AsyncBaseTransport | None = None, *, prepay: bool = True) -> None:
        """`prepay` False: pay only when asked (a 402 first), still reading each answer's
        charge and opening a new session when the gateway no longer has one."""
        self._client = client
        self._prepay = prepay
        self._schemes = schemes
        self._inner = inner or httpx.AsyncHTTPTransport(verify=tls_context())
        self._required: dict[str, PaymentRequired] = {}
        self._templates: dict[str, Template] = {}
        self._opening: dict[str, asyncio.Event] = {}  # agreement id: answered when set

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        known = self._required.get(url) if self._prepay else None
        ours = known is not None and "payment-signature" not in request.headers
        priced = False
        if ours:
            request.headers["PAYMENT-SIGNATURE"], priced = await self._header(url, known)
        response, refused = await self._paid_send(request, url, priced)
        if refused is not None and refused.error in SESSION_GONE and self._forget(request):
            await response.aclose()  # that session is gone: once more, in a new one
            response, refused = await self._pay_again(request, url, refused)
            ours = True
        replans = 0
        while refused is not None and refused.error == "payload_replayed" \
                and replans < MAX_REPLANS and self._overtaken(request):
            await response.aclose()  # a later voucher of its session went first
            response, refused = await self._pay_again(request, url, refused)
            ours, replans = True, replans + 1
        if ours and response.status_code == 402:
            del request.headers["PAYMENT-SIGNATURE"]  # x402's retry sends its own payment
        return response

    async def _pay_again(self, request: httpx.Request, url: str, refused: PaymentRequired
                         ) -> tuple[httpx.Response, PaymentRequired | None]:
        payload = await self._client.create_payment_payload(refused)
        request.headers["PAYMENT-SIGNATURE"] = encode_payment_signature_header(payload)
        return await self._paid_send(request, url)

    async def _paid_send(self, request: httpx.Request, url: str, priced: bool = False
                         ) -> tuple[httpx.Response, PaymentRequired | None]:
        """`_send`, a session's voucher held back until the call opening the session is
        answered."""
        if not any(scheme.awaiting for scheme in self._schemes.values()):
            return await self._send(request, url, priced)  # no session is being opened
        sent = _session_payment(request.headers.get("payment-signature", ""))
        if sent is None:
            return await self._send(request, url, priced)
        kind, agreement_id, _ = sent
        if kind == "voucher":
            if any(agreement_id in scheme.awaiting for scheme in self._schemes.values()):
                with contextlib.suppress(TimeoutError):  # an opening never sent: go on (the
                    await asyncio.wait_for(  # gateway says session_unknown, and a new opens)
                        self._opening.setdefault(agreement_id, asyncio.Event()).wait(),
                        OPEN_WAIT_S)
            return await self._send(request, url)
        try:
            return await self._send(request, url)
        finally:
            for scheme in self._schemes.values():
                scheme.open_answered(agreement_id)
            opening = self._opening.pop(agreement_id, None)
            if opening is not None:
                opening.set()

    def _overtaken(self, request: httpx.Request) -> bool:
        sent = _voucher_sent(request)
        return sent is not None and any([scheme.overtaken(*sent)
                                         for scheme in self._schemes.values()])

    async def _send(self, request: httpx.Request, url: str, priced: bool = False
                    ) -> tuple[httpx.Response, PaymentRequired | None]:
        """The answer, and its PAYMENT-REQUIRED when it is a 402 (remembered for `url`).
        `priced`: the payment was a voucher of ours for an `exact` price, so a 200 charged
        that price, as the payload already booked it: its PAYMENT-RESPONSE is not read."""
        response = await self._inner.handle_async_request(request)
        status, refused = response.status_code, None
        if status == 402:
            required = response.headers.get("payment-required")
            found = decode_payment_required_header(required) if required else None
            if isinstance(found, PaymentRequired):
                self._required[url] = refused = found
                self._templates.pop(url, None)
        if status != 200 or not priced:
            paid = response.headers.get("payment-response")
            if paid:
                self._charged(paid)
        return response, refused

    async def _header(self, url: str, required: PaymentRequired) -> tuple[str, bool]:
        """The prepaid PAYMENT-SIGNATURE for `url`, and whether it is a session voucher for
        an `exact` price (its charge known in advance)."""
        template = self._templates.get(url)
        if template is not None:
            return template.header(), template.requirements.scheme == net.EXACT
        payload = await self._client.create_payment_payload(required)
        scheme = self._schemes.get(payload.accepted.scheme)
        if scheme is not None and payload.payload.get("kind") in ("open", "voucher") \
                and not _has_hooks(self._client):
            self._templates[url] = Template(scheme, payload.accepted, later_members(payload))
        return encode_payment_signature_header(payload), False

    def _forget(self, request: httpx.Request) -> bool:
        """Forget the session a refused voucher was paid under (gone at the gateway); False
        when the payment was no voucher of a session of ours."""
        sent = _voucher_sent(request)
        return sent is not None and any([scheme.forget(sent[0])
                                         for scheme in self._schemes.values()])

    def _charged(self, header: str) -> None:
        """PAYMENT-RESPONSE's `amount` of a session's call: what it cost (the rest carries)."""
        try:
            settled = orjson.loads(base64.b64decode(header, validate=True))
            agreement, amount = settled["extra"]["agreementId"], int(settled["amount"])
        except (ValueError, TypeError, KeyError, binascii.Error):
            return
        for scheme in self._schemes.values():
            scheme.charged(agreement, amount)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _session_payment(header: str) -> tuple[str, str, int] | None:
    """(kind, agreement id, voucher sequence) of a PAYMENT-SIGNATURE paying with a session's
    `open` or `voucher` payload; None for anything else."""
    if not header:
        return None
    try:
        payload = json.loads(base64.b64decode(header, validate=True))["payload"]
        if payload["kind"] not in ("open", "voucher"):
            return None
        voucher = agreement_pb2.Voucher.FromString(base64.b64decode(payload["voucher"],
                                                                    validate=True))
    except (ValueError, TypeError, KeyError, binascii.Error, DecodeError):
        return None
    return payload["kind"], voucher.agreement_id, voucher.sequence


def _voucher_sent(request: httpx.Request) -> tuple[str, int] | None:
    """(agreement id, sequence) of the session voucher a request pays with; None for any
    other payment."""
    sent = _session_payment(request.headers.get("payment-signature", ""))
    return (sent[1], sent[2]) if sent is not None and sent[0] == "voucher" else None


def _has_hooks(client: x402Client) -> bool:
    return any(getattr(client, name, None) for name in (
        "_before_payment_creation_hooks", "_after_payment_creation_hooks",
        "_on_payment_creation_failure_hooks", "_policies"))


def http_client(key: AgentKey, network: str, *, calls_per_session: int = 1,
                prepay: bool = True, transport: httpx.AsyncBaseTransport | None = None,
                **options: Any) -> tuple[httpx.AsyncClient, dict[str, AgentmarketScheme]]:
    """An httpx.AsyncClient that pays with x402 (x402's transport over `PrepayTransport`).
    `transport`: what finally sends each request, paid or not (a proxy's, client certificates,
    limits of its own; default: httpx's, with the system's trusted CAs)."""
    client, schemes = buyer_client(key, network, calls_per_session=calls_per_session)
    inner = PrepayTransport(client, schemes, transport, prepay=prepay)
    return httpx.AsyncClient(transport=x402AsyncTransport(client, transport=inner),
                             **options), schemes


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (the system's trusted CAs), made once per process and
    shared by every client's transport: building one loads the CA bundle, tens of ms of CPU,
    which a program making many short-lived clients would otherwise pay for each."""
    return httpx.create_ssl_context()

