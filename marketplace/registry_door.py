"""Callers' registry writes, bounded, and refused before any work once the bound is reached.

A caller's registry write (Advertise, WithdrawListing, an unreachable listing's expiry) takes
room in `AskedWrites`: at most `MAX_ASKED_WRITES` run or wait for the writer at
once, and past that one is refused REGISTRY_BUSY at once, nothing written. A flood of
listings from free keys (each up to 8,192 search rows) then holds neither the node's worker
threads nor the writer, where payments go first anyway (`wallets.writer_turns`).

A write refused inside the registry has already cost the node its reading: a listing of up
to 256 KiB parsed, its signature's hash taken, every field checked. During a flood those
refusals took a quarter of the node's interpreter from the payments running beside them. So
`RegistryBusyDoor`, first on the node, looks at the method alone and refuses while there is
no room, the request never parsed. It only looks: room is taken in the registry, after the
caller's signature checked, so no unsigned request can take it. A heartbeat takes no room: it
only reads, and its new expiry is written with every other beat's (`listing_leases`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from marketplace.errors import RegistryBusy
from marketplace.v1 import registry_pb2
from wallets.grpc_errors import abort

MAX_ASKED_WRITES = 2
_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
# not Heartbeat: a beat only reads, its expiry written with others' (`listing_leases`)
WRITES = frozenset(f"/{_SERVICE}/{name}" for name in ("Advertise", "WithdrawListing"))


def busy() -> RegistryBusy:
    return RegistryBusy("the registry is busy writing other listings; try again in a moment")


class AskedWrites:
    """The room for callers' registry writes (see the module docstring)."""

    def __init__(self, limit: int = MAX_ASKED_WRITES) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._running = 0

    @contextmanager
    def room(self) -> Iterator[None]:
        """Hold room for one write while it runs; RegistryBusy at once when there is none."""
        with self._lock:
            if self._running >= self.limit:
                raise busy()
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    def full(self) -> bool:
        """Whether a write would be refused now."""
        return self._running >= self.limit


class RegistryBusyDoor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuse a caller's registry write before it is read while `writes` is full."""

    def __init__(self, writes: AskedWrites) -> None:
        self.writes = writes

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or details.method not in WRITES or not self.writes.full():
            return handler
        return grpc.unary_unary_rpc_method_handler(
            _refuse, request_deserializer=None,  # the request's bytes are never parsed
            response_serializer=handler.response_serializer)


def _refuse(_request: bytes, context: grpc.ServicerContext) -> Any:
    abort(context, busy())
