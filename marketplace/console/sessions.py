"""Who is logged in to the console: one-time login tokens, sessions and their CSRF tokens.

A login token is a secret printed where the node runs (as Jupyter prints its URL). It is spent
by the login that uses it, and the next one is announced the same way, so a token copied from a
terminal's scrollback later is worth nothing. A successful login makes a session: a random id
in an HttpOnly, SameSite=Strict cookie, and a CSRF token every form and htmx request must echo
(compared in constant time). Sessions live in this process's memory, with an absolute
lifetime; a restarted node forgets them. Wrong tokens are counted: past `MAX_FAILURES` within
`FAILURE_WINDOW_S` they are refused as too many, and logged. The right token still logs in:
a token of 32 random bytes cannot be guessed, so a lock would only let anyone who reaches the
port keep the operator out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

TOKEN_BYTES = 32
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 1000
MAX_FAILURES = 20
FAILURE_WINDOW_S = 60.0
log = logging.getLogger("agentmarket.console")
NAME_PATTERN = re.compile(r"^[\w .@'-]{1,64}\Z")


class LoginRefused(Exception):
    """The token was wrong, spent, or too many wrong ones came lately; the message says which."""


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    operator: str  # the name the person gave, recorded with every action
    csrf_token: str
    created_s: float
    expires_s: float

    @property
    def tag(self) -> str:
        """A short, non-secret name of the session for the audit trail."""
        return hashlib.sha256(self.session_id.encode()).hexdigest()[:12]


def check_operator_name(name: str) -> str:
    name = name.strip()
    if not NAME_PATTERN.match(name):
        raise LoginRefused("give your name (1..64 letters, digits, spaces or . @ ' - _): it "
                           "goes into the audit trail with every action")
    return name


class Sessions:
    """Login tokens and sessions of one console. `announce(token)` is called with every new
    login token (at start and after each login)."""

    def __init__(self, *, announce: Callable[[str], None] = lambda _token: None,
                 ttl_s: float = SESSION_TTL_S, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._announce = announce
        self._ttl_s = ttl_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._failures: deque[float] = deque()
        self._token = ""
        self.new_token()

    # ---- login tokens -------------------------------------------------------------------

    def new_token(self) -> str:
        """Replace the login token (the old one stops working) and announce the new one."""
        with self._lock:
            self._token = secrets.token_urlsafe(TOKEN_BYTES)
            token = self._token
        self._announce(token)
        return token

    @property
    def token(self) -> str:
        """The current, unspent login token."""
        return self._token

    def login(self, token: str, operator: str) -> Session:
        """Spend the token for a new session (LoginRefused if it is not the current one)."""
        name = check_operator_name(operator)
        now = self._clock()
        with self._lock:
            while self._failures and self._failures[0] < now - FAILURE_WINDOW_S:
                self._failures.popleft()
            if not token or not hmac.compare_digest(token.encode(), self._token.encode()):
                self._failures.append(now)
                if len(self._failures) > MAX_FAILURES:
                    if len(self._failures) == MAX_FAILURES + 1:
                        log.warning("more than %d wrong console login tokens in %.0f s",
                                    MAX_FAILURES, FAILURE_WINDOW_S)
                    while len(self._failures) > MAX_FAILURES + 1:  # bounded memory
                        self._failures.popleft()
                    raise LoginRefused("too many wrong login tokens lately; wait a minute")
                raise LoginRefused("that login token is wrong or already used; use the one "
                                   "the node printed last")
            self._token = ""  # spent; a fresh one is announced below
            self._expire(now)
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions.values(), key=lambda s: s.created_s)
                del self._sessions[oldest.session_id]
            session = Session(secrets.token_urlsafe(TOKEN_BYTES), name,
                              secrets.token_urlsafe(TOKEN_BYTES), now, now + self._ttl_s)
            self._sessions[session.session_id] = session
        self.new_token()
        return session

    # ---- sessions -----------------------------------------------------------------------

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_s <= self._clock():
                del self._sessions[session_id]
                return None
            return session

    def logout(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def _expire(self, now: float) -> None:
        for session_id in [s.session_id for s in self._sessions.values()
                           if s.expires_s <= now]:
            del self._sessions[session_id]


def csrf_ok(session: Session, sent: str | None) -> bool:
    """Whether a request echoed its session's CSRF token (constant time)."""
    return bool(sent) and hmac.compare_digest(str(sent).encode(), session.csrf_token.encode())
