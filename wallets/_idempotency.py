"""Idempotency keys: a retry with the same key and request returns the first outcome.

The key is recorded in the same transaction as the effect, so an acknowledged effect and its key
are durable together. A first *failure* caused by state (e.g. insufficient funds) is recorded
too and replayed on retry; a request refused as malformed (INVALID_ARGUMENT) records nothing, as
it never started executing. The same key with a different request is refused.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, insert, select

from wallets.errors import AgentmarketError, IdempotencyConflict, InvalidArgument
from wallets.tables import IdempotencyRow

_T = IdempotencyRow.__table__  # type: ignore[attr-defined]
_LOOKUP = select(_T).where(_T.c.key == bindparam("i_key"))  # built once: the hot path reuses it
_RECORD = insert(_T)
MAX_KEY_LENGTH = 200


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise InvalidArgument("idempotency_key is required on every mutating request")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(f"idempotency_key is longer than {MAX_KEY_LENGTH} characters")
    return key


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


def lookup(conn: Connection, key: str, operation: str, request_digest: str) -> Any | None:
    """The stored outcome for `key` (raising a stored error again), or None if the key is new."""
    row = conn.execute(_LOOKUP, {"i_key": key}).first()
    if row is None:
        return None
    if row.operation != operation or row.request_digest != request_digest:
        raise IdempotencyConflict(
            f"idempotency key {key!r} was already used for a different {row.operation} request"
        )
    payload = orjson.loads(row.result_json)
    if row.outcome == "error":
        cls = _error_classes().get(payload["type"], AgentmarketError)
        raise cls(payload["message"], reason=payload["reason"])
    return payload


def record(
    conn: Connection,
    key: str,
    operation: str,
    request_digest: str,
    now_ms: int,
    *,
    result: Any = None,
    error: AgentmarketError | None = None,
) -> None:
    if error is not None:
        cls = type(error)
        payload: Any = {
            "type": f"{cls.__module__}.{cls.__qualname__}",
            "message": error.message,
            "reason": error.reason,
        }
    else:
        payload = result
    conn.execute(_RECORD, [{
        "key": key, "operation": operation, "request_digest": request_digest,
        "outcome": "error" if error is not None else "ok",
        "result_json": orjson.dumps(payload).decode(), "created_at_ms": now_ms,
    }])


def is_recorded_failure(error: AgentmarketError) -> bool:
    """Malformed requests never started executing, so they leave no record. Refusals that wait
    on a person are not final either: APPROVAL_REQUIRED (the same request, retried under the
    same key once approved, must go through) and WALLET_FROZEN (likewise after an unfreeze)."""
    from wallets.errors import ApprovalRequired, WalletFrozen

    return not isinstance(error, InvalidArgument | ApprovalRequired | WalletFrozen)
