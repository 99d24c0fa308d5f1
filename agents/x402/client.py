"""The buyer's side of x402 over agentmarket: a scheme for the `x402` package's client.

`AgentmarketScheme` is registered with an `x402.x402Client` for the agentmarket network
(`buyer_client` does it) and creates payloads signed with the buyer's ed25519 agent key. For a
seller behind the gateway it signs an agreement at the list price (`requirements.extra`) with a
fresh PayWord chain, then pays each call by revealing the next word: `calls_per_session` calls
under one agreement are one hold and one settlement. `calls_per_session=1` also signs the
finish, so the gateway settles that one call at once. For a resource server paid through the
facilitator (`extra.kind == "authorization"`) it signs a one-off transfer authorisation.

`PrepayTransport` (under x402's own httpx transport, `http_client`) sends the next voucher with
each request once a 402 named the price, so a session costs one round trip per call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import os
import ssl
import threading
import time
from dataclasses import dataclass
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
from x402.schemas import PaymentRequired, PaymentRequirements

from agents._deal import chain_shape
from agents.errors import AgentmarketError
from agents.metering import Tariff
from agents.payment_session import PaymentSession
from agents.x402 import network as net
from agents.x402._prepaid_header import Template, later_members
from marketplace import agreements as ag
from marketplace.identity import AgentKey
from marketplace.payword import PaywordChain
from marketplace.v1 import agreement_pb2, registry_pb2

OFFER_TTL_MS = 20_000
# a 402 with these reasons after a voucher: the gateway no longer has the session (closed, or
# forgotten by a restart); the client forgets it too, and the next payment opens a new one
SESSION_GONE = frozenset({"session_unknown", "session_ended"})
# A voucher refused because a later one of its session reached the gateway or the seller first
# (calls of one session running at once; words are taken in order) is paid again with the
# session's next, at most this many times per request
MAX_REPLANS = 8
OPEN_WAIT_S = 30.0  # how long a session's voucher waits for the call opening the session


@dataclass
class _Session:
    agreement: agreement_pb2.SignedAgreement
    payment: PaymentSession
    reserve_atomic: int
    opened: bool = False  # its open payload was made


class AgentmarketScheme:
    """x402 client scheme (`exact` or `upto`) on the agentmarket network."""

    def __init__(self, key: AgentKey, scheme: str = net.EXACT, *, calls_per_session: int = 1,
                 completion_s: int = 300) -> None:
        if scheme not in net.SCHEMES:
            raise ValueError(f"scheme is one of {net.SCHEMES}")
        if not 1 <= calls_per_session <= 10_000:
            raise ValueError("calls_per_session is 1..10000")
        self.key = key
        self.scheme = scheme
        self.calls_per_session = calls_per_session
        self.completion_s = completion_s
        self.sessions: dict[tuple[str, ...], _Session] = {}
        self.awaiting: set[str] = set()  # sessions whose opening call is not answered yet
        self._lock = threading.Lock()

    def create_payment_payload(self, requirements: PaymentRequirements) -> dict[str, Any]:
        extra = requirements.extra or {}
        if extra.get("kind") == "authorization":
            return net.sign_authorization(
                self.key, pay_to=requirements.pay_to, amount_atomic=int(requirements.amount),
                asset=requirements.asset, network=requirements.network,
                resource=str(extra.get("resource", "")), nonce=os.urandom(16).hex(),
                valid_before_ms=_now_ms() + requirements.max_timeout_seconds * 1000)
        session_key = (requirements.network, requirements.pay_to, str(extra.get("skill")),
                       requirements.asset, requirements.amount)
        with self._lock:
            session = self.sessions.get(session_key)
            if session is not None:
                try:
                    session.payment.plan(session.reserve_atomic, fresh=True)
                except AgentmarketError:  # the chain is spent: a new session
                    session = None
            if session is None:
                session = self._open(session_key, requirements)
            # the gateway takes each word once: a call whose prepayment carried over from a
            # refused one still reveals a new word
            voucher = session.payment.next_voucher(session.reserve_atomic, fresh=True)
            session.payment.settle(session.reserve_atomic, session.reserve_atomic)
            if session.opened:
                return net.voucher_payload(voucher)
            session.opened = True
            finish = b""
            if self.calls_per_session == 1:
                finish = self.key.sign(ag.request_message("finish", voucher.agreement_id))
                self.sessions.pop(session_key, None)
            else:  # its later vouchers wait for this one's answer (PrepayTransport)
                self.awaiting.add(voucher.agreement_id)
            return net.open_payload(session.agreement, voucher, finish)

    def _open(self, session_key: tuple[str, ...], requirements: PaymentRequirements
              ) -> _Session:
        extra = requirements.extra or {}
        reserve = int(requirements.amount)
        unit = int(extra["unit"])
        tariff = Tariff(unit, int(extra["unitPrice"]), int(extra.get("outputUnitPrice", 0)),
                        reserve)
        max_total = reserve * self.calls_per_session
        link_value, length = chain_shape(tariff, max_total)
        chain = PaywordChain(length)
        now = _now_ms()
        body = agreement_pb2.AgreementBody(
            rfq_id=f"list:{os.urandom(8).hex()}", buyer_id=self.key.agent_id,
            seller_id=requirements.pay_to, seller_endpoint=str(extra["sellerEndpoint"]),
            terms=agreement_pb2.Terms(
                skill=str(extra["skill"]), unit_price_atomic=tariff.unit_price_atomic,
                unit=unit, currency=requirements.asset, max_total_atomic=max_total,
                verification=registry_pb2.VerificationMethod.Value(str(extra["verification"])),
                completion_deadline_ms=now + self.completion_s * 1000, dispute_window_s=0,
                output_unit_price_atomic=tariff.output_unit_price_atomic,
                unit_name=str(extra.get("unitName", ""))),
            payword_root=chain.root, payword_length=length, link_value_atomic=link_value,
            created_at_ms=now, nonce=os.urandom(16), offer_expires_at_ms=now + OFFER_TTL_MS)
        signed = agreement_pb2.SignedAgreement(body=body.SerializeToString())
        ag.sign_as_buyer(signed, self.key)
        agreement_id = ag.agreement_id(signed.body)
        session = _Session(signed, PaymentSession(agreement_id, chain, link_value, max_total,
                                                  requirements.asset),
                           reserve)
        self.sessions[session_key] = session
        return session

    def charged(self, agreement_id: str, charged_atomic: int) -> None:
        """What the gateway says a call cost (PAYMENT-RESPONSE `amount`): prepaid but not
        charged money carries to the next call of the session."""
        with self._lock:
            for session in self.sessions.values():
                if session.payment.agreement_id == agreement_id:
                    refund = session.reserve_atomic - charged_atomic
                    session.payment.settle(0, -max(0, refund))

    def open_answered(self, agreement_id: str) -> None:
        with self._lock:
            self.awaiting.discard(agreement_id)

    def overtaken(self, agreement_id: str, sequence: int) -> bool:
        """Whether voucher `sequence` of this session may have been refused only because later
        ones were made after it (and reached the gateway first): the session made others
        since, or was followed by a new one (its chain spent). Its prepayment stays counted
        as spent: the gateway takes each word once, so the next voucher must reveal a new one
        (the session's capture is what the seller charged, the rest goes back at close)."""
        with self._lock:
            current = [s for s in self.sessions.values()
                       if s.payment.agreement_id == agreement_id]
            return not current or current[0].payment.sequence > sequence

    def finish_signature(self, agreement_id: str) -> str:
        """The buyer's signature that closes a session (`POST /v1/sessions/{id}/close`)."""
        return self.key.sign(ag.request_message("finish", agreement_id)).hex()

    def open_sessions(self) -> list[str]:
        with self._lock:
            return [s.payment.agreement_id for s in self.sessions.values() if s.opened]

    def forget(self, agreement_id: str) -> bool:
        """Drop the session of this agreement (the next payment opens a new one); whether
        there was one."""
        with self._lock:
            found = [k for k, s in self.sessions.items()
                     if s.payment.agreement_id == agreement_id]
            for key in found:
                del self.sessions[key]
            self.awaiting.discard(agreement_id)
            return bool(found)


def buyer_client(key: AgentKey, network: str, *, schemes: tuple[str, ...] = net.SCHEMES,
                 calls_per_session: int = 1, max_amount_atomic: int | None = None
                 ) -> tuple[x402Client, dict[str, AgentmarketScheme]]:
    """An x402Client paying on `network` with `key`; spending capped per payment at
    `max_amount_atomic` when given (x402's own spend controls)."""
    client = x402Client()
    registered = {}
    for scheme in schemes:
        registered[scheme] = AgentmarketScheme(key, scheme, calls_per_session=calls_per_session)
        client.register(network, registered[scheme])
    allowed: list[dict[str, str]] = []
    for asset in net.ASSETS:
        entry = {"network": network, "asset": asset}
        if max_amount_atomic is not None:
            entry["max_amount_per_payment"] = str(max_amount_atomic)
        allowed.append(entry)
    client.set_spend_controls({"allowed_assets": allowed})  # type: ignore[typeddict-item]
    return client, registered


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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
