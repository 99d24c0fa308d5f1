"""The end of a buyer's x402 sessions: each closed at the gateway, the rest of its hold refunded.

A session's calls are one hold; closing it (`POST /v1/sessions/{agreement}/close` with the
buyer's finish signature) captures what the seller charged and frees the rest. A session
never closed is settled only when the seller redeems, so a buyer done calling closes what its
schemes hold open: `close_sessions` does that for every scheme, and forgets each session it
closed, so that a later call opens a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from agents.errors import (
    AgentmarketError,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from agents.x402.client import AgentmarketScheme

CLOSE_PATH = "/v1/sessions/{agreement}/close"


async def close_sessions(client: httpx.AsyncClient, gateway_url: str,
                         schemes: Mapping[str, AgentmarketScheme]) -> list[dict[str, Any]]:
    """Close every session `schemes` hold open at the gateway at `gateway_url` (through
    `client`, e.g. `http_client`'s): the gateway's answers (captured, fee, refunded, and the
    receipt the node signed), one per session closed. Every session is tried; if any close
    is refused the first refusal is raised (NotFound; PermissionDenied: the finish is not the
    buyer's; FailedPrecondition: a close is already running; Unavailable: the gateway or the
    seller did not answer, close again), the sessions not closed still open."""
    closed: list[dict[str, Any]] = []
    refused: list[AgentmarketError] = []
    for scheme in schemes.values():
        for agreement in scheme.open_sessions():
            request = client.build_request(
                "POST", gateway_url.rstrip("/") + CLOSE_PATH.format(agreement=agreement),
                json={"finish": scheme.finish_signature(agreement)})
            try:
                answer = await client.send(request)
            except httpx.HTTPError as error:
                refused.append(Unavailable(f"closing session {agreement[:12]}…: the gateway "
                                           f"did not answer ({type(error).__name__})"))
                continue
            if answer.status_code != 200:
                refused.append(_refusal(agreement, answer))
                continue
            scheme.forget(agreement)
            closed.append(answer.json())
    if refused:
        raise refused[0]
    return closed


def _refusal(agreement: str, answer: httpx.Response) -> AgentmarketError:
    """The gateway's refusal of a close as the SDK's error (its x402 reason and message)."""
    try:
        problem = answer.json()
        reason, message = str(problem.get("error", "")), str(problem.get("message", ""))
    except (ValueError, AttributeError):
        reason, message = "", answer.text[:200]
    status = f"{answer.status_code} {reason}".strip()
    text = f"closing session {agreement[:12]}… was refused ({status}): {message}"
    if answer.status_code == 404:
        return NotFound(text)
    if answer.status_code == 403:
        return PermissionDenied(text)
    if answer.status_code == 429 or answer.status_code >= 500:
        return Unavailable(text)
    return FailedPrecondition(text)


__all__ = ["close_sessions"]
