"""The console's HTTP edge: login, sessions, CSRF, and the rendering shared by every page.

Every page needs a session; every POST also needs the session's CSRF token (a form field or
the `X-CSRF-Token` header htmx sends) and, when the browser says where it comes from, to come
from this very origin (`Origin`, `Sec-Fetch-Site`). The login form, which has no session yet,
is protected by a double-submit cookie. Cookies are HttpOnly, SameSite=Strict, scoped to the
console's path, and Secure over HTTPS. Pages are never cached, and a strict Content Security
Policy allows only this origin's script and style (the vendored htmx).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from marketplace.console.format import FILTERS
from marketplace.console.sessions import LoginRefused, Session, Sessions, csrf_ok

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "agentmarket_console"
LOGIN_COOKIE = "agentmarket_console_login"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
MAX_FORM_BYTES = 64 * 1024
Handler = Callable[[Request, Session], Awaitable[Response]]


class Web:
    """Templates, sessions and the guards every route goes through."""

    def __init__(self, sessions: Sessions, context: Callable[[], dict[str, Any]]) -> None:
        self.sessions = sessions
        self._context = context
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(["html"]), trim_blocks=True,
                               lstrip_blocks=True)
        self.env.filters.update(FILTERS)
        self._flash: dict[str, list[tuple[str, str, str]]] = {}

    # ---- rendering ----------------------------------------------------------------------

    def render(self, request: Request, template: str, status_code: int = 200,
               session: Session | None = None, **values: Any) -> HTMLResponse:
        started = time.perf_counter()
        flashes = self._flash.pop(session.session_id, []) if session else []
        html = self.env.get_template(template).render(
            request=request, session=session, flashes=flashes, base=self.base(request),
            now_ms=time.time_ns() // 1_000_000, **self._context(), **values)
        done = time.perf_counter()
        response = HTMLResponse(html, status_code=status_code)
        self.secure(response)
        timings = [f"render;dur={(done - started) * 1000:.2f}"]
        if (arrived := getattr(request.state, "arrived", None)) is not None:
            timings.append(f"total;dur={(done - arrived) * 1000:.2f}")  # reads + render
        response.headers["server-timing"] = ", ".join(timings)
        return response

    @staticmethod
    def secure(response: Response) -> None:
        response.headers["content-security-policy"] = CSP
        response.headers["cache-control"] = "no-store"

    @staticmethod
    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def flash(self, session: Session, kind: str, message: str, trace_id: str = "") -> None:
        self._flash.setdefault(session.session_id, []).append((kind, message, trace_id))
        del self._flash[session.session_id][:-5]

    def cookie(self, request: Request, response: Response, name: str, value: str,
               max_age_s: int | None) -> None:
        response.set_cookie(name, value, max_age=max_age_s, path=self.base(request) or "/",
                            secure=request.url.scheme == "https", httponly=True,
                            samesite="strict")

    # ---- guards -------------------------------------------------------------------------

    def session_of(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A GET handler that needs a session (else: the login page, or 401 to htmx)."""

        async def guarded(request: Request) -> Response:
            request.state.arrived = time.perf_counter()
            session = self.session_of(request)
            if session is None:
                return self.to_login(request)
            return await handler(request, session)

        return guarded

    def action(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A POST handler: a session, this origin, and the session's CSRF token."""

        async def guarded(request: Request) -> Response:
            session = self.session_of(request)
            if session is None:
                return self.refuse(request, 401, "You are not logged in (or your session "
                                                 "ended); log in with a login token.")
            if not same_origin(request):
                return self.refuse(request, 403, "Refused: this request came from another "
                                                 "site. Actions are taken from the console's "
                                                 "own pages only.")
            form = await read_form(request)
            sent = request.headers.get("x-csrf-token") or form.get("csrf_token")
            if not csrf_ok(session, sent):
                return self.refuse(request, 403, "Refused: the form's security token is "
                                                 "missing or wrong. Reload the page and try "
                                                 "again.", session)
            request.state.form = form
            return await handler(request, session)

        return guarded

    def refuse(self, request: Request, status: int, message: str,
               session: Session | None = None) -> Response:
        return self.render(request, "refused.html", status_code=status, session=session,
                           message=message, title="Refused")

    def to_login(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = f"{self.base(request)}/login?next={quote(target)}"
        if request.headers.get("hx-request"):
            response: Response = Response(status_code=401, headers={"hx-redirect": login})
        else:
            response = RedirectResponse(login, status_code=303)
        self.secure(response)
        return response

    # ---- login --------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        nonce = secrets.token_urlsafe(24)
        response = self.render(request, "login.html", token=request.query_params.get(
            "token", ""), login_nonce=nonce, next=safe_next(self.base(request),
                                                            request.query_params.get("next")),
            title="Log in")
        self.cookie(request, response, LOGIN_COOKIE, nonce, 600)
        return response

    async def login(self, request: Request) -> Response:
        form = await read_form(request)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not same_origin(request) or not nonce or not secrets.compare_digest(
                nonce, str(form.get("login_nonce", ""))):
            return self.refuse(request, 403, "Refused: the login form did not come from this "
                                             "console. Open the login link again.")
        try:
            session = self.sessions.login(str(form.get("token", "")).strip(),
                                          str(form.get("operator", "")))
        except LoginRefused as error:
            response = self.render(request, "login.html", status_code=403, error=str(error),
                                   token="", login_nonce=nonce, operator=form.get("operator"),
                                   next=safe_next(self.base(request), form.get("next")),
                                   title="Log in")
            return response
        response = RedirectResponse(safe_next(self.base(request), form.get("next")),
                                    status_code=303)
        self.cookie(request, response, SESSION_COOKIE, session.session_id,
                    int(session.expires_s - session.created_s))
        response.delete_cookie(LOGIN_COOKIE, path=self.base(request) or "/")
        self.secure(response)
        return response

    async def logout(self, request: Request, session: Session) -> Response:
        self.sessions.logout(session.session_id)
        self._flash.pop(session.session_id, None)
        response = RedirectResponse(f"{self.base(request)}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=self.base(request) or "/")
        return response


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin. `Sec-Fetch-Site`
    is set by the browser and cannot be forged by a page; older browsers send `Origin`."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:  # not a browser: the CSRF token decides
        return True
    parts = urlsplit(origin)
    return (parts.scheme, parts.netloc) == (request.url.scheme, request.headers.get("host", ""))


async def read_form(request: Request) -> dict[str, str]:
    """The form's fields as text (files refused), bounded in size: a form comes with its
    Content-Length (a browser's always does), which the HTTP server holds the body to, so a
    chunked body of unknown size is not read at all."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > MAX_FORM_BYTES:
        return {}
    try:
        form = await request.form(max_files=0, max_fields=50)
    except Exception:  # a malformed body is treated as an empty form: the guards refuse it
        return {}
    return {k: v for k, v in form.items() if isinstance(v, str)}


def safe_next(base: str, target: Any) -> str:
    """Where to go after logging in: a path inside the console, never another site."""
    text = str(target or "")
    if text.startswith(f"{base}/") and not text.startswith("//") and "\\" not in text:
        return text
    return f"{base}/"
