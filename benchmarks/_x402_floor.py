"""The floor under `x402_paid_call_ratio`: a paid HTTP call whose payment does no work.

The unpaid door of `benchmarks.x402_gateway` (the same server, middleware, path and JSON work),
but every call carries what a session's paid call carries on the wire: the request a real
PAYMENT-SIGNATURE (a voucher payload with its `accepted` requirements), the answer a real
PAYMENT-RESPONSE (the session's chained receipt) and the seller's usage and receipt in the
body, all captured once from a real paid call through the gateway (`capture`). The door
forwards each call, with a voucher in its metadata, to the floor seller of
`benchmarks._paid_floor` (a paid echo's bytes and a durable usage record per call, no payment
work). Nothing is decoded, checked, spent, metered, billed or chained, in the client, the door
or the seller: what separates this floor from the unpaid call is the bytes and the record, so
its ratio to the unpaid call is the most any payment doing work per call could reach through
this door and client, whatever language the work were written in.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import httpx
from starlette.requests import Request
from starlette.responses import Response
from x402.http.clients.httpx import x402AsyncTransport

from agents.v1 import agent_pb2
from agents.x402 import forward
from agents.x402.client import buyer_client
from agents.x402.closing import close_sessions
from agents.x402.prepay import PrepayTransport
from benchmarks._paid_floor import AGREEMENT_ID, VOUCHERS, voucher_metadata
from marketplace.identity import AgentKey

CALL_TIMEOUT_S = 30.0


class Wire(NamedTuple):
    """A session's paid call as it went over HTTP: its PAYMENT-SIGNATURE, and the answer's
    PAYMENT-RESPONSE and JSON body."""

    payment_signature: str
    payment_response: str
    body: dict[str, Any]


class _Recorder(httpx.AsyncBaseTransport):
    """The transport under x402's client: each request as sent and its answer as read."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.last: Wire | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        self.last = Wire(request.headers.get("payment-signature", ""),
                         response.headers.get("payment-response", ""), json.loads(body))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def capture(url: str, gateway: str, network: str, key: AgentKey) -> Wire:
    """A real session call's wire: `key` (funded) opens a session at `url` through x402's
    client, pays two calls with vouchers and closes it at `gateway`; the last call is
    returned."""
    client, schemes = buyer_client(key, network, calls_per_session=4)
    recorder = _Recorder()
    async with httpx.AsyncClient(transport=x402AsyncTransport(
            client, transport=PrepayTransport(client, schemes, recorder))) as http:
        for _ in range(3):
            answer = await http.post(url, json={"text": "hello"})
            assert answer.status_code == 200, answer.text
        wire = recorder.last
        await close_sessions(http, gateway, schemes)
    assert wire is not None and wire.payment_signature and wire.payment_response
    return wire


def floor_call(stub_of: Callable[[], Any], wire: Wire
               ) -> Callable[[Request], Awaitable[Response]]:
    """The floor door's handler: the unpaid door's JSON and hop, with a paid call's bytes
    (the stub comes from `stub_of()`, the gateway's kind of channel to the floor seller)."""
    vouchers = voucher_metadata()
    call_ids = itertools.count(1)
    headers = {"PAYMENT-RESPONSE": wire.payment_response}

    async def call(request: Request) -> Response:
        arguments = json.loads(await request.body())
        request.headers.get("payment-signature")  # carried, as the gateway reads it
        number = next(call_ids)
        reply = await stub_of().Invoke(agent_pb2.InvokeRequest(
            agreement_id=AGREEMENT_ID, input_json=json.dumps(arguments),
            call_id=f"x402:{number}"), timeout=CALL_TIMEOUT_S, metadata=vouchers[number % VOUCHERS])
        return Response(json.dumps(forward.answer_body(reply)), media_type="application/json",
                        headers=headers)

    return call
