"""Client call details with new metadata: what every client interceptor here passes on."""

from __future__ import annotations

from typing import Any, NamedTuple

import grpc


class _Fields(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _ClientCallDetails(_Fields, grpc.ClientCallDetails):
    """grpc.ClientCallDetails is abstract; a named tuple gives it its fields."""


def with_metadata(details: Any, metadata: list[tuple[str, Any]]) -> grpc.ClientCallDetails:
    """`details` with its metadata replaced."""
    return _ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                              getattr(details, "wait_for_ready", None),
                              getattr(details, "compression", None))


def with_timeout(details: Any, timeout: float | None) -> grpc.ClientCallDetails:
    """`details` with its timeout replaced (what is left of the call's deadline)."""
    return _ClientCallDetails(details.method, timeout, details.metadata, details.credentials,
                              getattr(details, "wait_for_ready", None),
                              getattr(details, "compression", None))
