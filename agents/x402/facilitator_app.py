"""x402's facilitator API over HTTP: POST /verify, POST /settle, GET /supported.

For resource servers in other processes (a third party's, built with the x402 package and its
`HTTPFacilitatorClient`); the gateway mounts it at `/facilitator`. Each request is x402's
`{"x402Version", "paymentPayload", "paymentRequirements"}`; the answers are x402's
VerifyResponse and SettleResponse (200, refusals named in them); a body that is not such a
request is 400, one over 256 KiB is 413.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from x402 import x402FacilitatorSync
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SchemeNotFoundError,
    SettleResponse,
    VerifyResponse,
)

from agents.x402 import network as net
from agents.x402._door import body_within
from agents.x402.reasons import Refused

MAX_FACILITATOR_BODY_BYTES = 256 * 1024
REQUEST_MEMBERS = ("paymentPayload", "paymentRequirements")


def facilitator_app(facilitator: x402FacilitatorSync) -> Starlette:
    """POST /verify, POST /settle, GET /supported (x402's facilitator API)."""

    async def parsed(request: Request) -> tuple[PaymentPayload, PaymentRequirements]:
        raw = await body_within(request, MAX_FACILITATOR_BODY_BYTES)
        if raw is None:
            raise Refused("body_too_large", "the request is over 256 KiB")
        try:
            data = net.strict_loads(raw)
        except (ValueError, RecursionError) as error:
            raise Refused("invalid_payload", f"the body is not JSON: {error}"[:300]) from None
        if not isinstance(data, dict) or not all(
                isinstance(data.get(name), dict) for name in REQUEST_MEMBERS):
            raise Refused("invalid_payload", "the body is a JSON object with the objects "
                                             "paymentPayload and paymentRequirements")
        if not net.is_v2(data.get("x402Version", 2)):
            raise Refused("invalid_payload", "x402 v2 requests only (x402Version 2)")
        try:
            return (net.v2_payload(data["paymentPayload"]),
                    PaymentRequirements.model_validate(data["paymentRequirements"]))
        except net.PayloadError as error:
            raise Refused("invalid_payload", error.message) from None
        except (ValueError, TypeError, RecursionError, ValidationError) as error:
            raise Refused("invalid_payload", f"not a facilitator request: {error}"[:300]
                          ) from None

    async def verify(request: Request) -> JSONResponse:
        try:
            payload, requirements = await parsed(request)
        except Refused as error:
            return _bad(error)
        result = await asyncio.to_thread(_guarded, facilitator.verify, payload, requirements)
        return JSONResponse(result.model_dump(by_alias=True, exclude_none=True))

    async def settle(request: Request) -> JSONResponse:
        try:
            payload, requirements = await parsed(request)
        except Refused as error:
            return _bad(error)
        result = await asyncio.to_thread(_guarded, facilitator.settle, payload, requirements)
        return JSONResponse(result.model_dump(by_alias=True, exclude_none=True))

    async def supported(_request: Request) -> JSONResponse:
        return JSONResponse(facilitator.get_supported().model_dump(by_alias=True,
                                                                   exclude_none=True))

    return Starlette(routes=[Route("/verify", verify, methods=["POST"]),
                             Route("/settle", settle, methods=["POST"]),
                             Route("/supported", supported, methods=["GET"])])


def _guarded(call: Any, payload: PaymentPayload, requirements: PaymentRequirements) -> Any:
    """A scheme or network no one registered is the caller's mistake, answered as such; any
    other failure is the facilitator's own and stays an error (500), not a refusal."""
    try:
        return call(payload, requirements)
    except SchemeNotFoundError as error:
        network = payload.accepted.network
        if isinstance(call.__self__, x402FacilitatorSync) and "verify" in call.__name__:
            return VerifyResponse(is_valid=False, invalid_reason="invalid_network"
                                  if not net.is_network(network) else "invalid_scheme",
                                  invalid_message=str(error)[:300])
        return SettleResponse(success=False, error_reason="invalid_network"
                              if not net.is_network(network) else "invalid_scheme",
                              error_message=str(error)[:300], transaction="",
                              network=network)


def _bad(error: Refused) -> JSONResponse:
    status = 413 if error.reason == "body_too_large" else 400
    return JSONResponse({"error": error.reason, "message": error.message}, status_code=status)
