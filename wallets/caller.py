"""Who is calling: the authenticated agent id of the request being served.

The gRPC edge (`marketplace.auth.AuthServerInterceptor`) verifies each request's signature and
sets the caller here for the duration of the call; authorisation rules (`wallets.access`,
`marketplace.access`) and audit read it. '' means no authenticated caller: in-process calls
(the sweeper, settlement acting under a signed agreement, operator commands over the database),
or a node run with authentication off.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_caller: contextvars.ContextVar[str] = contextvars.ContextVar("agentmarket_caller", default="")


def current_caller() -> str:
    """The verified agent id of the request being served ('' when there is none)."""
    return _caller.get()


@contextlib.contextmanager
def calling_as(agent_id: str) -> Iterator[None]:
    """Make `agent_id` the current caller inside the block (the auth interceptor; tests)."""
    token = _caller.set(agent_id)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # a generator may end in another context
            _caller.reset(token)
