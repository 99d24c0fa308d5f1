"""A seller agent's gRPC server: its interceptors in order, the AgentService adapter, health
and reflection, the port; and where its usage journal lives.

Beside AgentService the server speaks A2A v1.0 (lf.a2a.v1.A2AService, `agents._a2a_door`),
open to unsigned callers: its payment travels in the message.

Interceptors, outermost first: malformed bytes refused (INVALID_ARGUMENT), a SERVER span,
authentication (optional on the paid methods: a fresh PayWord word is its own proof), ids and
amounts checked (`wallets.grpc_fields`), then the access rules (`agents._access`).
"""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from a2a.types import a2a_pb2, a2a_pb2_grpc
from opentelemetry.trace import TracerProvider

from agents._a2a_door import METHODS as A2A_METHODS
from agents._a2a_door import SERVICE as A2A_SERVICE
from agents._a2a_door import A2ADoor
from agents._access import seller_rules
from agents._aio_invoke import fast_invoke
from agents._aio_server import AioServer, SyncBridge
from agents._grpc_payment import INVOKE, INVOKE_STREAM
from agents.keystore import home
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace.a2a_cards import CARD_PATH, listing_card
from marketplace.auth import AccessInterceptor, AuthServerInterceptor
from marketplace.grpc_listen import listen
from marketplace.grpc_tracing import server_interceptor
from marketplace.http.server import HttpServer
from marketplace.introspection import serve_introspection
from marketplace.request_fields import MARKET_FIELDS
from marketplace.stream_limits import StreamLimits
from marketplace.v1 import registry_pb2
from wallets.grpc_errors import MalformedRequestInterceptor, grpc_method
from wallets.grpc_fields import FieldCheckInterceptor

if TYPE_CHECKING:
    from agents.seller import SellerAgent

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # an input is at most 1 MiB of JSON (agents._serving)


def build_server(seller: SellerAgent, executor: Executor, *,
                 tracer_provider: TracerProvider | None, require_auth: bool,
                 rate_limit_per_s: float, rate_limit_burst: int, kind: str = "threaded",
                 workers: int = 16) -> tuple[Any, AuthServerInterceptor]:
    """The server (not yet serving anything) and its authentication interceptor, whose
    per-agent buckets the paid methods also draw from. `kind`: "threaded" (grpc.server) or
    "aio" (grpc.aio on an event loop thread, `agents._aio_server`), with the same
    interceptors."""
    open_methods = (INVOKE, INVOKE_STREAM, *A2A_METHODS)  # A2A: any client, payment in-band
    auth = AuthServerInterceptor(required=require_auth, rate_per_s=rate_limit_per_s,
                                 burst=rate_limit_burst, optional_methods=open_methods)
    access = [AccessInterceptor.of(seller_rules(seller), anonymous_methods=open_methods)
              ] if require_auth else []
    interceptors = [StreamLimits(workers), MalformedRequestInterceptor(),
                    server_interceptor(tracer_provider), auth,
                    FieldCheckInterceptor(MARKET_FIELDS), *access]
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.so_reuseport", 0)]  # a port in use is an error, not shared
    if kind == "aio":
        bridge = SyncBridge(interceptors, executor, {INVOKE: fast_invoke(seller, executor)},
                            tracer_provider)
        return AioServer(bridge, options), auth
    return grpc.server(executor, interceptors=interceptors, options=options), auth


def attach(seller: SellerAgent, server: Any, host: str, port: int,
           credentials: grpc.ServerCredentials | None) -> tuple[Any, int]:
    """Add the AgentService, the A2A door, health checking and reflection; bind the port.
    Returns the health servicer and the port bound."""
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(seller), server)
    a2a_pb2_grpc.add_A2AServiceServicer_to_server(A2ADoor(seller), server)
    health = serve_introspection(server, [AGENT_SERVICE, A2A_SERVICE])
    return health, listen(server, f"{host}:{port}", credentials)


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """AgentService over gRPC: a thin adapter onto the seller."""

    def __init__(self, seller: SellerAgent) -> None:
        self.seller = seller

    @grpc_method
    def Negotiate(self, request, context):  # type: ignore[no-untyped-def]
        return self.seller.negotiate(request)

    @grpc_method
    def Invoke(self, request, context):  # type: ignore[no-untyped-def]
        return self.seller.invoke(request, context)

    def InvokeStream(self, request, context):  # type: ignore[no-untyped-def]
        return self.seller.calls.invoke_stream(request, context)

    @grpc_method
    def Finish(self, request, context):  # type: ignore[no-untyped-def]
        return self.seller.finish(request)


def card_server(seller: SellerAgent, host: str, port: int) -> HttpServer:
    """An HTTP server for the seller's Agent Card at /.well-known/agent-card.json (a2a-sdk's
    own route, with its ETag), built on first request since it names the server's URL."""
    from a2a.server.routes.agent_card_routes import create_agent_card_routes
    from starlette.applications import Starlette

    async def card(_card: a2a_pb2.AgentCard) -> a2a_pb2.AgentCard:
        return seller.agent_card()

    unsigned = listing_card(registry_pb2.Listing(
        agent_id=seller.agent_id, name=seller.name, endpoint=seller.endpoint,
        skills=[s.message() for s in seller.skills.values()]),
        marketplace=seller.marketplace, key=None)  # replaced by the signed one per request
    app = Starlette(routes=create_agent_card_routes(unsigned, card_modifier=card,
                                                    card_url=CARD_PATH))
    return HttpServer(app, host=host, port=port)


def journal_url(journal: str | Path | None, agent_id: str) -> str:
    """The usage journal's database URL: as given (a URL, or a SQLite file path), or the
    seller's default file under $AGENTMARKET_HOME (./.agentmarket)."""
    if isinstance(journal, str) and "://" in journal:
        return journal
    if journal is None:
        folder = home()
        folder.mkdir(parents=True, exist_ok=True)
        journal = folder / f"seller-{agent_id[:16]}.db"
    return f"sqlite:///{Path(journal)}"
