"""The gateway's 402s: one x402 route per listed skill, priced from the listing (cached).

A per-call skill is offered `exact` at its price; a metered one `upto` at the seller's own
per-call maximum (one RFQ, cached). Each route keeps the requirements its 402 offered, as
x402 objects and as the JSON a payment's `accepted` repeats, so a session's next voucher is
matched without building the 402 again.

A route is built once however many requests ask for it at the same moment, and a route past
its time is still served while one refresh runs: otherwise a burst of unpaid requests (which
anyone can send) would send the seller one quote request each, be refused for too many open
negotiations, and fail other buyers' paid calls with them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from x402 import x402ResourceServer
from x402.extensions.payment_identifier import (
    PAYMENT_IDENTIFIER,
    declare_payment_identifier_extension,
)
from x402.http import x402HTTPResourceServer
from x402.http.types import PaymentOption, RouteConfig
from x402.schemas import AssetAmount, PaymentRequirements

from agents.v1 import agent_pb2, agent_pb2_grpc
from agents.x402 import network as net
from agents.x402.forward import CALL_TIMEOUT_S, Channels
from marketplace.errors import NotFound
from marketplace.identity import AgentKey
from marketplace.v1 import agreement_pb2, registry_pb2

QUOTE_TTL_S = 60.0
# Routes and metered skills' quotes remembered at once (listings are anyone's to advertise)
MAX_ROUTES = 4096
MAX_QUOTES = 4096
# How long a route past QUOTE_TTL_S is still served while its refresh runs (or keeps failing)
STALE_MAX_S = 600.0
CALLS = registry_pb2.PRICE_UNIT_CALL

log = logging.getLogger(__name__)


@dataclass
class Route:
    """One skill of one listing, as x402 sells it."""

    http: x402HTTPResourceServer
    listing: registry_pb2.Listing
    extensions: dict[str, Any]
    made_at: float = field(default_factory=time.monotonic)
    offered: list[PaymentRequirements] | None = None  # the accepts of this route's 402
    offered_json: list[dict[str, Any]] = field(default_factory=list)

    def offer(self, requirements: list[PaymentRequirements]) -> None:
        """Remember what the 402 offered (and its JSON, for `matching`)."""
        self.offered = requirements
        self.offered_json = [r.model_dump(by_alias=True, exclude_none=True)
                             for r in requirements]

    def matching(self, accepted: Any) -> PaymentRequirements | None:
        """The offered requirement a payment's `accepted` repeats exactly (else None)."""
        for offered, as_json in zip(self.offered or (), self.offered_json, strict=False):
            if accepted == as_json:
                return offered
        return None

    def fresh(self) -> bool:
        return time.monotonic() - self.made_at < QUOTE_TTL_S

    def servable(self) -> bool:
        """Young enough to answer with while a refresh runs."""
        return time.monotonic() - self.made_at < STALE_MAX_S


class Routes:
    """The routes of a gateway's node, made on first use and again after QUOTE_TTL_S."""

    def __init__(self, node: Any, server: x402ResourceServer, network: str, key: AgentKey,
                 channels: Channels) -> None:
        self.node = node
        self.server = server
        self.network = network
        self.key = key
        self.channels = channels
        self._routes: dict[tuple[str, str], Route] = {}
        self._quotes: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._building: dict[tuple[str, str], asyncio.Task[Route]] = {}

    def cached(self, listing_id: str, skill_name: str) -> Route | None:
        """The route if it is made and servable (no lookup, no await; on the event loop): one
        past its time starts its refresh and is answered with meanwhile."""
        key = (listing_id, skill_name)
        found = self._routes.get(key)
        if found is None or found.fresh():
            return found
        if not found.servable():
            return None
        self._build(key)
        return found

    async def route(self, listing_id: str, skill_name: str) -> Route:
        """The route, built once for all the requests that ask for it meanwhile."""
        found = self.cached(listing_id, skill_name)
        if found is not None:
            return found
        return await asyncio.shield(self._build((listing_id, skill_name)))

    def _build(self, key: tuple[str, str]) -> asyncio.Task[Route]:
        """The route's build under way, or a new one."""
        task = self._building.get(key)
        if task is None:
            task = self._building[key] = asyncio.get_running_loop().create_task(
                self._make(*key))
            task.add_done_callback(lambda done: self._built(key, done))
        return task

    def _built(self, key: tuple[str, str], task: asyncio.Task[Route]) -> None:
        if self._building.get(key) is task:
            del self._building[key]
        if task.cancelled():
            return
        error = task.exception()  # retrieved, so a refresh nobody awaits logs no warning
        if isinstance(error, NotFound):
            self._routes.pop(key, None)  # the listing or skill is gone: no stale answers
        elif error is not None:
            log.info("gateway: building the route of %s/%s failed: %s", key[0][:12], key[1],
                     error)

    async def _make(self, listing_id: str, skill_name: str) -> Route:
        listing = await asyncio.to_thread(self.node.registry.get, listing_id)
        skill = next((s for s in listing.skills if s.name == skill_name), None)
        if skill is None:
            raise NotFound(f"listing {listing_id[:12]}… sells no skill {skill_name!r}")
        options = [await self._option(listing, skill, price) for price in skill.prices]
        extensions = {PAYMENT_IDENTIFIER: declare_payment_identifier_extension()}
        config = RouteConfig(accepts=options, description=skill.description[:200],
                             mime_type="application/json", extensions=extensions)
        route = Route(x402HTTPResourceServer(self.server, {"POST /v1/skills/*": config}),
                      listing, extensions)
        _remember(self._routes, (listing_id, skill_name), route, MAX_ROUTES)
        return route

    async def _option(self, listing: registry_pb2.Listing, skill: registry_pb2.Skill,
                      price: registry_pb2.Price) -> PaymentOption:
        scheme = net.EXACT if price.unit == CALLS else net.UPTO
        amount = price.amount_atomic if price.unit == CALLS else await self._call_max(
            listing, skill, price.currency)
        extra = {"skill": skill.name, "unit": int(price.unit), "unitName": price.unit_name,
                 "unitPrice": str(price.amount_atomic),
                 "outputUnitPrice": str(price.output_amount_atomic),
                 "verification": registry_pb2.VerificationMethod.Name(verification(skill)),
                 "sellerEndpoint": listing.endpoint, "decimals": net.decimals(price.currency)}
        return PaymentOption(scheme=scheme, pay_to=listing.agent_id, network=self.network,
                             price=AssetAmount(amount=str(amount), asset=price.currency),
                             max_timeout_seconds=300, extra=extra)

    async def _call_max(self, listing: registry_pb2.Listing, skill: registry_pb2.Skill,
                        currency: str) -> int:
        """A metered skill's per-call maximum: the seller's own quote (one RFQ, cached)."""
        cached = self._quotes.get((listing.agent_id, skill.name, currency))
        if cached is not None and time.monotonic() - cached[0] < QUOTE_TTL_S:
            return cached[1]
        stub = agent_pb2_grpc.AgentServiceStub(self.channels.get(listing.endpoint,
                                                                 signed=True))
        now = time.time_ns() // 1_000_000
        rfq = agreement_pb2.Rfq(
            rfq_id=f"quote:{os.urandom(12).hex()}", buyer_id=self.key.agent_id,
            skill=skill.name, expected_quantity=1, max_budget_atomic=2**62, currency=currency,
            deadline_ms=now + 60_000, verification=verification(skill),
            max_rounds=20)  # many rounds left: the first offer is the opening (list) price
        reply = await stub.Negotiate(agent_pb2.NegotiationMessage(rfq=rfq),
                                     timeout=CALL_TIMEOUT_S)
        await stub.Negotiate(agent_pb2.NegotiationMessage(reject_reason="a quote only",
                                                          rfq_id=rfq.rfq_id),
                             timeout=CALL_TIMEOUT_S)
        offered = reply.offer.terms.unit_price_atomic or 1
        listed = next(p.amount_atomic for p in skill.prices if p.currency == currency)
        # the quote is at the offered price: scaled to the list price, rounded up (a reserve
        # a little above the seller's only prepays more, never less)
        most = -(-(reply.metering.max_call_atomic or offered) * listed // offered)
        _remember(self._quotes, (listing.agent_id, skill.name, currency),
                  (time.monotonic(), most), MAX_QUOTES)
        return int(most)


def _remember(found: dict[Any, Any], key: Any, value: Any, most: int) -> None:
    """`found[key] = value`, the least recently stored entries out beyond `most`."""
    found.pop(key, None)
    while len(found) >= most:
        found.pop(next(iter(found)))
    found[key] = value


def verification(skill: registry_pb2.Skill) -> int:
    """The method a gateway agreement names: the output schema when the skill offers it, else
    buyer acceptance (what list-price agreements support)."""
    if registry_pb2.VERIFICATION_METHOD_SCHEMA in skill.verification_methods:
        return registry_pb2.VERIFICATION_METHOD_SCHEMA
    return registry_pb2.VERIFICATION_METHOD_BUYER_ACCEPTANCE
