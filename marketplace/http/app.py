"""One ASGI app for everything a node serves over HTTP.

Each part (the console, later the card catalogue and the x402 gateway) is an ASGI app mounted
at its own path prefix, so parts never see each other's routes, cookies or middleware. What
every part gets: `/healthz`, a Host header check (a DNS-rebinding page cannot reach a loopback
server under a name it controls) and security headers on every response.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make form posts Origin: null
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


@dataclass(frozen=True)
class HttpPart:
    """An ASGI app and the path prefix it is mounted at (`/console`)."""

    prefix: str
    app: ASGIApp
    title: str = ""

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/") or len(self.prefix) < 2:
            raise ValueError(f"a part's prefix looks like /name, not {self.prefix!r}")


class SecurityHeaders:
    """Adds the headers every response of the node carries (a part may add stricter ones)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in SECURITY_HEADERS if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> list[str]:
    """The Host header values the node answers: loopback names, the bound address, `extra`."""
    hosts = [*LOOPBACK_HOSTS, *extra]
    if host not in ("0.0.0.0", "::", ""):
        hosts.append(host.strip("[]"))
    else:  # bound to every address: names cannot be listed, so any is taken
        hosts.append("*")
    return sorted(set(hosts))


def build_app(parts: Sequence[HttpPart], *, hosts: Sequence[str] = LOOPBACK_HOSTS) -> Starlette:
    """The node's ASGI app: every part under its prefix, `/` leading to the first one."""
    prefixes = [p.prefix for p in parts]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"two parts share a prefix: {prefixes}")

    def health(_request: Request) -> Response:
        return PlainTextResponse("ok")

    def home(_request: Request) -> Response:
        if not parts:
            return PlainTextResponse("agentmarket node", status_code=404)
        return RedirectResponse(f"{parts[0].prefix}/", status_code=303)

    routes = [Route("/healthz", health), Route("/", home),
              *(Mount(p.prefix, app=p.app) for p in parts)]
    return Starlette(routes=routes, middleware=[
        Middleware(SecurityHeaders),
        Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts)),
    ])
