"""Who is calling: the authenticated agent id of the request being served.

The gRPC edge (`marketplace.auth.AuthServerInterceptor`) verifies each request's signature and
sets the caller here for the duration of the call; authorisation rules (`wallets.access`,
`marketplace.access`) and audit read it. '' means no authenticated caller: in-process calls
(the sweeper, settlement acting under a signed agreement, operator commands over the database),
or a node run with authentication off.

Idempotency keys are scoped by who asks (`wallets._idempotency`): the caller's agent id,
`NODE_SCOPE` for the node's own work (sweeps, withdrawal settlement), `ANONYMOUS_SCOPE` when
there is no authenticated caller. Neither is 64 hex characters, so no agent id can take them.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

NODE_SCOPE = "node"
ANONYMOUS_SCOPE = "anonymous"
_caller: contextvars.ContextVar[str] = contextvars.ContextVar("agentmarket_caller", default="")


def current_caller() -> str:
    """The verified agent id of the request being served ('' when there is none)."""
    return _caller.get()


def key_scope() -> str:
    """Whose idempotency keys the request being served uses: its caller, else anonymous."""
    return _caller.get() or ANONYMOUS_SCOPE


@contextlib.contextmanager
def calling_as(agent_id: str) -> Iterator[None]:
    """Make `agent_id` the current caller inside the block (the auth interceptor; tests)."""
    token = _caller.set(agent_id)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # a generator may end in another context
            _caller.reset(token)
