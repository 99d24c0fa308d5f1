"""The operator console: one mountable part of the node's ASGI app (`marketplace.http`).

    console = Console.for_node(node, ConsoleOptions(span_store="spans.db"), grpc_address)
    part = console.part()          # HttpPart("/console", <Starlette app>)
    console.bind("http://127.0.0.1:8080")   # announces the first login URL

Reads come from the node's database and span store; actions go to the node as gRPC requests
signed with the console's operator key (`marketplace.console.actions`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from marketplace.console.actions import OperatorActions
from marketplace.console.agreement_reads import AgreementReads
from marketplace.console.audit import AuditTrail
from marketplace.console.pages import Pages
from marketplace.console.reads import ConsoleReads
from marketplace.console.sessions import SESSION_TTL_S, Sessions
from marketplace.console.web import HERE, Web
from marketplace.http.app import HttpPart
from marketplace.identity import AgentKey
from marketplace.spanstore import SpanStore

if TYPE_CHECKING:
    from marketplace.node import MarketplaceNode

PREFIX = "/console"
log = logging.getLogger("agentmarket.console")


@dataclass(frozen=True)
class ConsoleOptions:
    """How a node serves its console.

    `key`: the operator key the console signs actions with (None: a fresh one, trusted as an
    operator for the node's life); `arbiter`: that key also decides disputes; `span_store`:
    the span store file the trace pages read (None: no traces); `announce`: called with each
    new login URL (the first at start, the next after each login); `refresh_s`: how often the
    overview refreshes itself."""

    key: AgentKey | None = None
    arbiter: bool = False
    span_store: Path | str | None = None
    announce: Callable[[str], None] | None = None
    session_ttl_s: float = SESSION_TTL_S
    refresh_s: float = 5.0


class Console:
    def __init__(self, reads: ConsoleReads, agreements: AgreementReads,
                 actions: OperatorActions, audit: AuditTrail, *, node_id: str,
                 can_resolve: bool, options: ConsoleOptions) -> None:
        self.reads = reads
        self.actions = actions
        self.options = options
        self.base_url = ""
        self.sessions = Sessions(announce=self._announce, ttl_s=options.session_ttl_s)
        self.web = Web(self.sessions, lambda: {
            "node_id": node_id, "console_key": actions.key.agent_id, "prefix": PREFIX,
            "can_resolve": can_resolve})
        self.pages = Pages(self.web, reads, agreements, actions, audit,
                           can_resolve=can_resolve, refresh_s=options.refresh_s)

    @classmethod
    def for_node(cls, node: MarketplaceNode, options: ConsoleOptions, grpc_address: str,
                 key: AgentKey, tracer_provider: Any = None) -> Console:
        """A console over `node`'s database, acting through its gRPC server at
        `grpc_address` with `key` (which the node trusts as an operator)."""
        spans = SpanStore(options.span_store) if options.span_store else None
        reads = ConsoleReads(node.ledger, spans)
        audit = AuditTrail(node.engine)
        actions = OperatorActions(grpc_address, key, audit, tracer_provider=tracer_provider)
        return cls(reads, AgreementReads(reads, node.settlement), actions, audit,
                   node_id=node.agent_id,
                   can_resolve=key.agent_id in node.settlement.disputes.arbiters,
                   options=options)

    # ---- login URLs ---------------------------------------------------------------------

    def bind(self, base_url: str) -> None:
        """The server's address is known: announce the current login URL."""
        self.base_url = base_url.rstrip("/")
        self._announce(self.sessions.token)

    def login_url(self) -> str:
        """The URL that logs in with the current, unspent token."""
        return f"{self.base_url}{PREFIX}/login?token={self.sessions.token}"

    def _announce(self, token: str) -> None:
        if self.base_url and self.options.announce is not None:
            self.options.announce(f"{self.base_url}{PREFIX}/login?token={token}")

    # ---- the ASGI part ------------------------------------------------------------------

    def part(self) -> HttpPart:
        web, pages = self.web, self.pages
        routes = [
            Route("/login", web.login_page, methods=["GET"]),
            Route("/login", web.login, methods=["POST"]),
            Route("/logout", web.action(web.logout), methods=["POST"]),
            Route("/", web.page(pages.overview)),
            Route("/overview/live", web.page(pages.overview_live)),
            Route("/approvals", web.page(pages.approvals)),
            Route("/approvals/{approval_id}/{decision:str}", web.action(pages.decide),
                  methods=["POST"]),
            Route("/wallets", web.page(pages.wallets)),
            Route("/wallets/{owner}", web.page(pages.wallet)),
            Route("/accounts/{account_id}/{change:str}", web.action(pages.freeze),
                  methods=["POST"]),
            Route("/agreements", web.page(pages.agreements_page)),
            Route("/agreements/{agreement_id}", web.page(pages.agreement)),
            Route("/agreements/{agreement_id}/resolve", web.action(pages.resolve),
                  methods=["POST"]),
            Route("/ledger", web.page(pages.ledger)),
            Route("/traces", web.page(pages.traces)),
            Route("/traces/{trace_id}", web.page(pages.trace)),
            Route("/audit", web.page(pages.audit_page)),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ]
        return HttpPart(PREFIX, Starlette(routes=routes, exception_handlers={
            Exception: self._failed}), title="Operator console")

    async def _failed(self, request: Request, _error: Exception) -> Response:
        """An unexpected error: logged with an id; the page shows the id, never the error."""
        request_id = uuid.uuid4().hex[:12]
        log.exception("console error on %s (request %s)", request.url.path, request_id)
        return self.web.render(request, "refused.html", status_code=500,
                               session=self.web.session_of(request), title="Error",
                               message=f"Something went wrong (request id {request_id}); it "
                                       "is in the node's log.")

    def close(self) -> None:
        self.actions.close()
        if self.reads.spans is not None:
            self.reads.spans.close()
