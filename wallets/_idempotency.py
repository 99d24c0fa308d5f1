"""Idempotency keys: a retry with the same key and request returns the first outcome.

A key names a request only within (scope, operation), as Stripe scopes keys to an account:

    scope       who may write it
    <agent id>  the authenticated caller of the request (64 hex: `wallets.caller`)
    "node"      the node's own work: sweeps, withdrawal settlement (`wallets.caller.NODE_SCOPE`)
    "anonymous" calls with no authenticated caller: unsigned calls to a node run with
                `--no-auth`, and in-process calls that name no scope (`ANONYMOUS_SCOPE`)
    "legacy"    rows written before keys were scoped; read as a fallback, never written

No agent id can equal the other three (they are not 64 hex characters), so two parties never
share a key, and no caller can take a key the node derives for itself. The stored identity is
(scope, operation, key); the request's digest decides whether a retry is the same request.

The key is recorded in the same transaction as the effect, so an acknowledged effect and its key
are durable together. A first *failure* caused by state (e.g. insufficient funds) is recorded
too and replayed on retry. Refusals a retry can cure are never recorded (`is_recorded_failure`):
a malformed request, the same key with another request (that refusal is the other request's,
not the key's), a spend waiting for an approval or an unfreeze, an outage; nor are the node's
own failures (its sweeps try again, and the agreement's state keeps them from acting twice).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, insert, select

from wallets.caller import ANONYMOUS_SCOPE, NODE_SCOPE, key_scope
from wallets.errors import (
    AgentmarketError,
    ApprovalRequired,
    IdempotencyConflict,
    InvalidArgument,
    TooManyApprovals,
    WalletFrozen,
)
from wallets.tables import IdempotencyRow

_T = IdempotencyRow.__table__  # type: ignore[attr-defined]
LEGACY_SCOPE = "legacy"
MAX_KEY_LENGTH = 200
MAX_SCOPE_LENGTH = 80
_NOT_FINAL_STATUSES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"})
# built once: the hot path reuses them
_LOOKUP = select(_T).where(_T.c.scope == bindparam("i_scope"),
                           _T.c.operation == bindparam("i_operation"),
                           _T.c.key == bindparam("i_key"))
_LOOKUP_WITH_LEGACY = select(_T).where(
    _T.c.scope.in_([bindparam("i_scope"), LEGACY_SCOPE]),
    _T.c.operation == bindparam("i_operation"), _T.c.key == bindparam("i_key"))
_RECORD = insert(_T)
_active: contextvars.ContextVar[str] = contextvars.ContextVar("agentmarket_key_scope",
                                                             default="")


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise InvalidArgument("idempotency_key is required on every mutating request")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(f"idempotency_key is longer than {MAX_KEY_LENGTH} characters")
    if "\x00" in key:
        raise InvalidArgument("idempotency_key must not contain NUL characters")
    return key


def request_scope() -> str:
    """The scope of the request being served: its authenticated caller, else anonymous."""
    return key_scope()


def check_scope(scope: str) -> str:
    if not isinstance(scope, str) or not 0 < len(scope) <= MAX_SCOPE_LENGTH \
            or scope == LEGACY_SCOPE:
        raise ValueError(f"an idempotency scope is 1..{MAX_SCOPE_LENGTH} characters and not "
                         f"{LEGACY_SCOPE!r}, got {scope!r}")
    return scope


def active_scope() -> str:
    """The scope of the mutation running on this thread (the spend guard keys approvals by
    it); outside one, the request's."""
    return _active.get() or request_scope()


@contextlib.contextmanager
def running_in(scope: str) -> Iterator[None]:
    """Make `scope` the active one while a mutation applies its effect."""
    token = _active.set(scope)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _active.reset(token)


def digest(operation: str, request: dict[str, Any]) -> str:
    text = orjson.dumps([operation, request], option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(text).hexdigest()


def _error_classes() -> dict[str, type[AgentmarketError]]:
    found: dict[str, type[AgentmarketError]] = {}
    stack: list[type[AgentmarketError]] = [AgentmarketError]
    while stack:
        cls = stack.pop()
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        stack.extend(cls.__subclasses__())
    return found


def stored_outcome(row: Any, key: str, request_digest: str) -> tuple[Any, AgentmarketError | None]:
    """(result, None) or (None, error) of a stored row; a different request under the same
    key is refused (IdempotencyConflict, raised)."""
    if row.request_digest != request_digest:
        raise IdempotencyConflict(
            f"idempotency key {key!r} was already used for a different {row.operation} request")
    payload = orjson.loads(row.result_json)
    if row.outcome == "error":
        cls = _error_classes().get(payload["type"], AgentmarketError)
        return None, cls(payload["message"], reason=payload["reason"])
    return payload, None


def pick(rows: list[Any], scope: str) -> Any | None:
    """The row of `scope` if there is one, else a legacy row (written before scoping)."""
    own = [row for row in rows if row.scope == scope]
    return (own or rows or [None])[0]


def lookup(conn: Connection, scope: str, key: str, operation: str, request_digest: str, *,
           legacy: bool = False) -> Any | None:
    """The stored outcome of (scope, operation, key) (raising a stored error again), or None if
    the key is new there. `legacy`: fall back to a row written before keys were scoped."""
    params = {"i_scope": scope, "i_operation": operation, "i_key": key}
    row = pick(conn.execute(_LOOKUP_WITH_LEGACY, params).all(), scope) if legacy \
        else conn.execute(_LOOKUP, params).first()
    if row is None:
        return None
    result, error = stored_outcome(row, key, request_digest)
    if error is not None:
        raise error
    return result


def row_values(scope: str, key: str, operation: str, request_digest: str, now_ms: int, *,
               result: Any = None, error: AgentmarketError | None = None) -> dict[str, Any]:
    """The idempotency row recording one outcome."""
    if error is not None:
        cls = type(error)
        payload: Any = {"type": f"{cls.__module__}.{cls.__qualname__}",
                        "message": error.message, "reason": error.reason}
    else:
        payload = result
    return {"scope": scope, "key": key, "operation": operation,
            "request_digest": request_digest,
            "outcome": "error" if error is not None else "ok",
            "result_json": orjson.dumps(payload).decode(), "created_at_ms": now_ms}


def record(conn: Connection, scope: str, key: str, operation: str, request_digest: str,
           now_ms: int, *, result: Any = None, error: AgentmarketError | None = None) -> None:
    conn.execute(_RECORD, [row_values(scope, key, operation, request_digest, now_ms,
                                      result=result, error=error)])


def is_recorded_failure(error: AgentmarketError) -> bool:
    """Whether a refusal is the key's final outcome. Not recorded: malformed requests (they
    never started executing); the same key with another request (the refusal belongs to that
    other request: recording it would make the first one fail for good); refusals that wait on
    a person, APPROVAL_REQUIRED, TOO_MANY_APPROVALS and WALLET_FROZEN (the same request goes
    through once approved, decided or unfrozen); outages and contention (UNAVAILABLE, ABORTED:
    the next try may succeed)."""
    return not (isinstance(error, InvalidArgument | IdempotencyConflict | ApprovalRequired
                           | TooManyApprovals | WalletFrozen)
                or error.status in _NOT_FINAL_STATUSES)


__all__ = ["ANONYMOUS_SCOPE", "LEGACY_SCOPE", "NODE_SCOPE", "check_key", "check_scope",
           "digest", "is_recorded_failure", "lookup", "record", "request_scope"]
