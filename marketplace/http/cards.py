"""The card catalogue: an A2A Agent Card for every live listing, and a search over them.

    GET /cards/{agent_id}/.well-known/agent-card.json   the listing's card (a2a-sdk resolves
                                                        it with base URL /cards/{agent_id})
    GET /cards/search?skill=&q=&tag=&currency=&max_price_atomic=&limit=
                                                        {"cards": [{"url", "card"}, ...]},
                                                        ranked as the registry's Discover

So any A2A client finds priced skills without speaking agents.v1. A catalogue card is built by
`marketplace.a2a_cards` from the listing and signed by the node's key (`kid` the node's agent
id, named in the params as `catalogue`): the seller's own card, signed by the seller, is the
one at its endpoint. Either way a buyer's money is safe only with the seller's key, which signs
the agreement. Bad filters answer 400 with the reason; an unknown or expired listing 404.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from marketplace.a2a_cards import CARD_PATH, card_dict, listing_card, sign
from marketplace.errors import AgentmarketError, InvalidArgument
from marketplace.http.app import HttpPart
from marketplace.v1 import registry_pb2

if TYPE_CHECKING:
    from marketplace.node import MarketplaceNode

PREFIX = "/cards"
MAX_RESULTS = 50
CARDS_KEPT = 1024  # signed cards kept, by listing as stored
log = logging.getLogger("agentmarket.cards")
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429}


def catalogue(node: MarketplaceNode) -> HttpPart:
    @functools.lru_cache(maxsize=CARDS_KEPT)
    def signed_card(listing_bytes: bytes) -> dict[str, Any]:
        """Built and signed once per listing as stored (the search is open to anyone, and
        50 cards signed per request was work a stranger could ask for without end). Its
        `cardUrl` is the node's own address, never the request's Host: a stranger varying that
        would make every card be signed again."""
        listing = registry_pb2.Listing.FromString(listing_bytes)
        card = listing_card(listing, marketplace=node.address, key=None,
                            card_url=_own_base(node) + card_path(listing.agent_id))
        card.capabilities.extensions[0].params.update({"catalogue": node.agent_id})
        return card_dict(sign(card, node.key))

    def card_of(listing: Any) -> dict[str, Any]:
        return signed_card(listing.SerializeToString(deterministic=True))

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/").removesuffix(PREFIX)

    def one(request: Request) -> Response:
        agent_id = request.path_params["agent_id"]
        try:
            if len(agent_id) != 64 or any(c not in "0123456789abcdef" for c in agent_id):
                raise InvalidArgument("an agent id is 64 lower-case hex characters")
            return JSONResponse(card_of(node.registry.get(agent_id)))
        except AgentmarketError as error:
            return _refused(error)

    def search(request: Request) -> Response:
        query = request.query_params
        try:
            limit = _int(query.get("limit", "20"), "limit", 1, MAX_RESULTS)
            listings = node.registry.discover(
                query.get("skill", ""), query.get("currency", ""),
                _int(query.get("max_price_atomic", "0"), "max_price_atomic", 0, 2**62), limit,
                text=query.get("q", ""), tags=query.getlist("tag"))
        except AgentmarketError as error:
            return _refused(error)
        base = base_url(request)
        cards = []
        for listing in listings:  # one listing whose card cannot be made hides no other
            try:
                cards.append({"url": base + card_path(listing.agent_id),
                              "card": card_of(listing)})
            except Exception:
                log.exception("no Agent Card for the listing of %s", listing.agent_id)
        return JSONResponse({"cards": cards})

    app = Starlette(routes=[Route("/search", search),
                            Route("/{agent_id}" + CARD_PATH, one)])
    return HttpPart(PREFIX, app, "Agent Cards")


def card_path(agent_id: str) -> str:
    return f"{PREFIX}/{agent_id}{CARD_PATH}"


def _own_base(node: MarketplaceNode) -> str:
    """The node's HTTP base URL, when it names one address (bound to every address, the
    catalogue cannot know which one a buyer reached: the card's path alone)."""
    server = node.http
    if server is None or server.host in ("0.0.0.0", "::", ""):
        return ""
    return server.url


def _int(text: str, name: str, low: int, high: int) -> int:
    # isdigit() alone also takes "²" and other digits int() refuses
    if not (text.isascii() and text.isdigit() and len(text) <= 19) \
            or not low <= int(text) <= high:
        raise InvalidArgument(f"{name} must be an integer from {low} to {high}")
    return int(text)


def _refused(error: AgentmarketError) -> Response:
    return JSONResponse({"error": {"reason": error.reason, "message": error.message}},
                        status_code=HTTP_STATUS.get(error.status, 400))
