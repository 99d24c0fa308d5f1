"""The HTTP/x402 gateway: any HTTP agent buys a listed skill, paying with x402 v2.

    POST /v1/skills/{listing}/{skill}    JSON input -> JSON output (402 until paid)
    POST /v1/sessions/{agreement}/close  {"finish": "<buyer's signature hex>"} -> settlement
    GET  /openapi.json                   this API

A door onto the node, nothing more: the `x402` package's resource server (`x402ResourceServer`
and `x402HTTPResourceServer`) builds the 402 from the listing's price, matches and verifies the
payment and runs the settle hooks; agentmarket's scheme (`agents.x402.facilitator`) holds and
captures through the node's `Settlement`, and the call goes to the seller's AgentService over
gRPC with the buyer's PayWord voucher, as a gRPC buyer's would. A session's later calls take
`agents.x402.session_calls`, which checks the next word in a few hashes without x402's models;
a close, `agents.x402.session_closes`.
The caller's W3C `traceparent` is continued into the gRPC hops and the postings.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import propagate, trace
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount
from starlette.routing import Route as Path
from x402 import x402ResourceServer
from x402.http import HTTPProcessResult, HTTPRequestContext
from x402.http.constants import PAYMENT_REQUIRED_HEADER, PAYMENT_RESPONSE_HEADER
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
    encode_payment_required_header,
    encode_payment_response_header,
    safe_base64_decode,
)
from x402.schemas import PaymentPayload
from x402.schemas.hooks import CompletedSettlement

from agents.payments import paid_call_metadata
from agents.v1 import agent_pb2
from agents.x402 import forward
from agents.x402 import network as net
from agents.x402._door import (
    Adapter,
    Unpaid,
    body_within,
    event,
    fingerprint,
    identifier,
    payment_fingerprint,
    problem,
    refined,
)
from agents.x402.answers import Answer, Answers
from agents.x402.closing import CLOSE_PATH
from agents.x402.evm import EvmSettlement
from agents.x402.facilitator import (
    LedgerScheme,
    LocalFacilitator,
    PriceScheme,
    facilitator_for,
)
from agents.x402.facilitator_app import facilitator_app
from agents.x402.openapi import openapi
from agents.x402.routes import Route, Routes
from agents.x402.session_calls import SessionCalls
from agents.x402.session_closes import SessionCloses
from agents.x402.sessions import SessionBook
from marketplace.errors import NotFound
from marketplace.grpc_tracing import tracing_active
from marketplace.http.app import LOOPBACK_HOSTS, SecurityHeaders
from marketplace.identity import AgentKey
from wallets import attributes as attr

MAX_BODY_BYTES = 64 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Remember:
    """Where a paid call's answer is remembered (`agents.x402.answers`), and whom to tell."""

    scope: str
    ident: str
    fingerprint: bytes
    finished: Callable[[], None]


async def _drained(events: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    while (piece := await events.get()) is not None:
        yield piece


class Gateway:
    """The gateway of one node (in its process: `node.settlement` holds and captures)."""

    def __init__(self, node: Any, *, key: AgentKey | None = None,
                 tracer_provider: Any = None, max_body_bytes: int = MAX_BODY_BYTES,
                 evm: EvmSettlement | None = None) -> None:
        """`evm`: also settle x402 `exact` payments on that EVM chain (EIP-3009
        authorisations) through the facilitator (`agents.x402.evm`)."""
        self.node = node
        self.key = key or node.key
        self.network = net.network_id(node.agent_id)
        self.max_body_bytes = max_body_bytes
        self.tracer_provider = tracer_provider
        self._tracer = trace.get_tracer("agentmarket.gateway", tracer_provider=tracer_provider)
        self.channels = forward.Channels(self.key, tracer_provider)
        self.sessions = SessionBook(node.settlement, self.key, channels=self.channels,
                                    node_key=node.key)
        # The gateway's own resource server settles sessions in process; the facilitator it
        # serves over HTTP to third parties settles authorisations (and EVM) only: a session's
        # settle phases are the gateway's, never a stranger's to replay or to charge.
        self.facilitator = facilitator_for(self.network, node.ledger, node.key, self.sessions)
        self.public_facilitator = facilitator_for(self.network, node.ledger, node.key)
        self.evm_network = evm.register(self.public_facilitator) if evm is not None else None
        self.closes = SessionCloses(self.sessions, LedgerScheme(
            net.EXACT, self.network, node.ledger, node.key), self._tracer)
        self.server = x402ResourceServer(LocalFacilitator(self.facilitator, self.sessions))
        for scheme in net.SCHEMES:
            self.server.register(self.network, PriceScheme(scheme, flow="escrow"))
        self.server.initialize()
        self.routes = Routes(node, self.server, self.network, self.key, self.channels)
        self.session_calls = SessionCalls(self.sessions, self.server, self.routes,
                                          self.channels, node.key, self.network,
                                          self.offer_again)
        self.answers = Answers(self.sessions)  # payment identifiers' first answers
        self._relays: set[asyncio.Task[None]] = set()  # streamed calls being relayed

    def app(self, hosts: Sequence[str] = LOOPBACK_HOSTS) -> Starlette:
        """The ASGI app; `hosts`: the Host header values answered (`marketplace.http.app.
        allowed_hosts`), with the node's security headers on every response."""
        return Starlette(middleware=[
            Middleware(SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))], routes=[
            Path("/v1/skills/{listing}/{skill}", self.call, methods=["POST"]),
            Path(CLOSE_PATH, self.closes.close, methods=["POST"]),
            Path("/openapi.json", lambda _r: JSONResponse(openapi(self.network))),
            Mount("/facilitator", app=facilitator_app(self.public_facilitator))])

    # ---- a paid call ----------------------------------------------------------------------

    async def call(self, request: Request) -> Response:
        if not tracing_active(self.tracer_provider):  # tracing off: no span per call
            return await self._call(request, trace.INVALID_SPAN)
        context = propagate.extract(dict(request.headers))
        with self._tracer.start_as_current_span("gateway.call", context=context,
                                                kind=trace.SpanKind.SERVER) as span:
            return await self._call(request, span)

    async def _call(self, request: Request, span: Any) -> Response:
        raw = await body_within(request, self.max_body_bytes)
        if raw is None:
            return problem(413, "body_too_large", f"the body is over {self.max_body_bytes} "
                                                   "bytes")
        try:
            arguments = net.strict_loads(raw or b"{}")
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            return problem(400, "invalid_json", "the body is not JSON (UTF-8, with no lone "
                                                "surrogate escape such as \\ud800)")
        if not isinstance(arguments, dict):
            return problem(400, "invalid_json", "the body is a JSON object of arguments")
        header = request.headers.get("payment-signature")
        if header:
            fast = await self.session_calls.answer(request, header, arguments, span)
            if fast is not None:
                return fast
        payload, data = None, None
        if header:
            try:
                data = net.strict_loads(safe_base64_decode(header))
            except (ValueError, RecursionError):
                return problem(400, "malformed_payment_header",
                                "PAYMENT-SIGNATURE is not base64 JSON of a PaymentPayload")
            try:
                payload = net.v2_payload(data)
            except net.PayloadError as error:
                return problem(400, "malformed_payment_header", error.message)
            if isinstance(payload.payload, dict) and "phase" in payload.payload:
                return problem(400, "malformed_payment_header", "payload.phase is the "
                               "gateway's to set when it settles, not the payer's")
        listing_id, skill = request.path_params["listing"], request.path_params["skill"]
        try:
            route = await self.routes.route(listing_id, skill)
        except NotFound as error:
            return problem(404, "not_found", error.message)
        except grpc.aio.AioRpcError as error:  # the seller would not quote a metered skill
            return problem(503, "seller_refused", f"the seller did not quote: "
                                                  f"{error.details()}")
        ctx = HTTPRequestContext(adapter=Adapter(request, arguments), path=request.url.path,
                                 method="POST", payment_header=header)
        remembered = identifier(payload)
        if not remembered:
            return await self._paid(request, route, payload, arguments, ctx, span, None)
        scope, ident = remembered
        payment_print = payment_fingerprint(data)  # the payload canonicalised once
        request_print = fingerprint(payment_print, listing_id, skill, arguments)
        first = self.answers.first(scope, ident, request_print)
        if first is not None:
            return first
        return await self.answers.once(scope, ident, request_print, lambda finished: self._paid(
            request, route, payload, arguments, ctx, span,
            _Remember(scope, ident, request_print, finished)),
            payment_print=payment_print)

    async def _paid(self, request: Request, route: Route, payload: PaymentPayload | None,
                    arguments: dict[str, Any], ctx: HTTPRequestContext, span: Any,
                    remember: _Remember | None) -> Response:
        """The call checked, held, forwarded and settled by x402's resource server; its
        answer remembered under its payment identifier (`remember`)."""
        skill = request.path_params["skill"]
        processed = await self._next_voucher(route, payload)
        if processed is None:
            processed = await route.http.process_http_request(ctx)
        if processed.type != "payment-verified":
            instructions = processed.response
            assert instructions is not None
            if payload is None and PAYMENT_REQUIRED_HEADER in instructions.headers:
                required = decode_payment_required_header(
                    instructions.headers[PAYMENT_REQUIRED_HEADER])
                route.offer(list(required.accepts))  # type: ignore[arg-type]
            headers = refined(instructions.headers, payload)
            failed = headers.get(PAYMENT_RESPONSE_HEADER)
            if failed and PAYMENT_REQUIRED_HEADER not in headers:  # the hold was refused
                headers = {**headers, **await self.offer_again(
                    route, request, arguments,
                    decode_payment_response_header(failed).error_reason)}
            return JSONResponse(instructions.body or {}, status_code=instructions.status,
                                headers=headers)
        held = processed.before_handler_settlement
        assert held is not None and processed.payment_payload is not None
        if route.offered is None and processed.payment_requirements is not None:
            route.offer([processed.payment_requirements])
        span.set_attributes({attr.PAYER: held.result.payer or "",
                             attr.PAYEE: route.listing.agent_id, attr.SKILL: skill,
                             attr.AGREEMENT_ID: (held.result.extra or {}).get("agreementId",
                                                                              "")})
        if "text/event-stream" in request.headers.get("accept", ""):
            headers = {"cache-control": "no-store",
                       PAYMENT_RESPONSE_HEADER: encode_payment_response_header(held.result)}
            events: asyncio.Queue[bytes | None] = asyncio.Queue()
            relay = asyncio.create_task(self._relay(route, arguments, processed, ctx, events,
                                                    remember, headers))
            self._relays.add(relay)
            relay.add_done_callback(self._relays.discard)
            return StreamingResponse(_drained(events), media_type="text/event-stream",
                                     headers=headers)
        voucher = net.parse(processed.payment_payload.payload).voucher  # type: ignore[union-attr]
        status, body, charged = await forward.invoke(self.channels, route.listing.endpoint,
                                                     arguments, voucher,
                                                     self._proof(voucher.agreement_id))
        settled = await route.http.process_settlement(
            processed.payment_payload, processed.payment_requirements, context=ctx,
            settlement_overrides={"amount": str(charged)},
            declared_extensions=processed.declared_extensions)
        headers = dict(settled.headers)
        refused = status == forward.VOUCHER_REFUSED
        if refused:  # booked as nothing; the buyer pays again (and its identifier is free)
            headers = await self.offer_again(route, request, arguments, body["error"])
        answer = json.dumps(body).encode()
        headers["content-type"] = "application/json"
        if remember is not None and not refused:
            self.answers.remember(remember.scope, remember.ident,
                                  Answer(remember.fingerprint, status, headers, answer))
        return Response(answer, status_code=status, headers=headers)

    async def _relay(self, route: Route, arguments: dict[str, Any], processed: Any,
                     ctx: HTTPRequestContext, events: asyncio.Queue[bytes | None],
                     remember: _Remember | None, headers: dict[str, str]) -> None:
        """A streamed call, relayed and settled by a task of its own: a reader that hangs up
        stops reading, not the relay, so the seller's charge (at most what the voucher
        authorised) is still booked to the session, whose books stay the seller's. Its
        events, all of them, are its remembered answer under a payment identifier."""
        sent: list[bytes] = []

        def send(piece: bytes) -> None:
            events.put_nowait(piece)
            if remember is not None:
                sent.append(piece)

        try:
            await self._relayed(route, arguments, processed, ctx, send)
        except Exception:  # the reader is told the call did not finish; the operator why
            log.exception("the gateway could not finish a streamed call")
            send(event("error", {"error": "internal", "message":
                                 "the gateway could not finish this call"}))
        finally:
            events.put_nowait(None)
            if remember is not None:
                try:
                    self.answers.remember(remember.scope, remember.ident, Answer(
                        remember.fingerprint, 200,
                        {**headers, "content-type": "text/event-stream; charset=utf-8"},
                        b"".join(sent)))
                finally:  # a retry waiting for this answer never waits forever
                    remember.finished()

    async def _relayed(self, route: Route, arguments: dict[str, Any], processed: Any,
                       ctx: HTTPRequestContext, send: Callable[[bytes], None]) -> None:
        """Server-sent events to `send`: `data` per piece with the charge so far (the seller
        stops at what the voucher authorised), then `payment-response` (the settlement) and
        `end`."""
        payment = net.parse(processed.payment_payload.payload)
        voucher = payment.voucher  # type: ignore[union-attr]
        stub, request = self.channels.stub(route.listing.endpoint), \
            forward.invoke_request(arguments, voucher)
        metadata = paid_call_metadata(voucher, self._proof(voucher.agreement_id))
        end, charged, pieces = None, 0, 0
        try:
            async for chunk in stub.InvokeStream(request, timeout=forward.CALL_TIMEOUT_S,
                                                 metadata=metadata):
                if chunk.HasField("end"):
                    end, charged = chunk.end, chunk.end.usage.charged_atomic
                    break
                charged, pieces = chunk.charged_atomic, pieces + 1
                send(event("message", {"text": chunk.text_delta, "charged": str(charged)}))
        except grpc.aio.AioRpcError as error:
            send(event("error", {"error": error.code().name.lower(),
                                  "message": error.details() or ""}))
            if pieces:  # cut off under way: the seller billed what it sent, and says so
                end = await forward.refetched_end(stub, request, metadata, error)
                charged = end.usage.charged_atomic if end is not None else 0
        settled = await route.http.process_settlement(
            processed.payment_payload, processed.payment_requirements, context=ctx,
            settlement_overrides={"amount": str(charged if end is not None else 0)},
            declared_extensions=processed.declared_extensions)
        if settled.settle_response is not None:
            send(event("payment-response", encode_payment_response_header(
                settled.settle_response)))
        if end is not None:
            send(event("end", {
                "output": json.loads(end.output_json),
                "stopReason": agent_pb2.StopReason.Name(end.stop_reason)
                .removeprefix("STOP_REASON_").lower(),
                "usage": {"inputTokens": end.usage.input_tokens,
                          "outputTokens": end.usage.output_tokens,
                          "charged": str(end.usage.charged_atomic)},
                "receipt": net.b64(end.receipt.SerializeToString())}))

    def _proof(self, agreement_id: str) -> bytes:
        """The session's escrow proof, for the seller on the calls of the full path (a
        session's first; its later ones take `session_calls`, when the seller knows it)."""
        session = self.sessions.sessions.get(agreement_id)
        return session.escrow_proof if session is not None else b""

    async def _next_voucher(self, route: Route, payload: PaymentPayload | None
                            ) -> HTTPProcessResult | None:
        """A session's next voucher against the route's 402, already built: x402's resource
        server matches it and settles the hold phase (hooks, facilitator), without making
        the 402 again for every paid call. Anything else, or a refusal, takes the full path
        (which answers the refusal; a refused voucher booked nothing)."""
        if payload is None or route.offered is None or payload.payload.get("kind") \
                != "voucher":
            return None
        matching = self.server.find_matching_requirements(route.offered, payload)
        if matching is None:
            return None
        held = await self.server.settle_payment(payload, matching, phase="before-handler",
                                                declared_extensions=route.extensions)
        if not held.success:
            return None
        return HTTPProcessResult(
            type="payment-verified", payment_payload=payload, payment_requirements=matching,
            declared_extensions=route.extensions, before_handler_settlement=CompletedSettlement(
                phase="before-handler", flow="escrow", result=held, requirements=matching))

    async def offer_again(self, route: Route, request: Request, arguments: Any,
                          reason: str | None) -> dict[str, str]:
        """The 402 to pay again after a refused hold or voucher, its `error` the refusal's
        reason."""
        unpaid = HTTPRequestContext(adapter=Unpaid(request, arguments),
                                    path=request.url.path, method="POST")
        again = await route.http.process_http_request(unpaid)
        assert again.response is not None
        required = decode_payment_required_header(again.response.headers[
            PAYMENT_REQUIRED_HEADER])
        refused = required.model_copy(update={"error": reason})
        return {PAYMENT_REQUIRED_HEADER: encode_payment_required_header(refused)}

    async def aclose(self) -> None:
        await self.channels.aclose()

