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

Such a flood would also shut out every honest seller's listing. Sellers with standing
(`marketplace.standing`: they have sold, rated above zero) have a lane of their own,
`MAX_STANDING_WRITES` writes at once, one per seller and at least `LANE_PAUSE_S` after that
seller's last one there. While the common room is full the door
lets a write through only to that lane: the id it claims must have standing (from memory, the
bytes unread), then its signature must verify over the raw bytes (a hash and an ed25519 check,
no parse), else REGISTRY_BUSY. A flood from fresh keys so costs no more than before, and a
forged claim of a known seller's id costs the node a signature check, as a forged request to
any method does, and takes no room.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from marketplace.auth import AGENT_KEY, first_values, verified_signer
from marketplace.errors import RegistryBusy
from marketplace.v1 import registry_pb2
from wallets.errors import AgentmarketError
from wallets.grpc_errors import abort

MAX_ASKED_WRITES = 2
MAX_STANDING_WRITES = 2  # sellers with standing, one write each, while the common room is full
LANE_PAUSE_S = 1.0  # between one seller's lane writes: a few such sellers cannot hold the lane
SKEW_MS = 60_000  # the auth interceptor's default: a stale request is not let through here
_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
# not Heartbeat: a beat only reads, its expiry written with others' (`listing_leases`)
WRITES = frozenset(f"/{_SERVICE}/{name}" for name in ("Advertise", "WithdrawListing"))


def busy() -> RegistryBusy:
    return RegistryBusy("the registry is busy writing other listings; try again in a moment")


class AskedWrites:
    """The room for callers' registry writes, and the lane of sellers with standing (see the
    module docstring)."""

    def __init__(self, limit: int = MAX_ASKED_WRITES, *,
                 standing: Callable[[str], bool] | None = None,
                 standing_limit: int = MAX_STANDING_WRITES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`standing(agent_id)`: whether a seller has standing (None: no such lane)."""
        self.limit = limit
        self.standing = standing
        self.standing_limit = standing_limit if standing is not None else 0
        self.clock = clock
        self._lock = threading.Lock()
        self._running = 0
        self._standing: set[str] = set()  # sellers writing in their lane now
        self._lane_ended: dict[str, float] = {}  # seller -> when its last lane write ended

    @contextmanager
    def room(self, caller: str = "") -> Iterator[None]:
        """Hold room for one write while it runs: in the common room, else in the standing
        lane for `caller` (the verified signer) if it has standing and no write there yet;
        RegistryBusy at once otherwise."""
        lane = self._take(caller)
        try:
            yield
        finally:
            with self._lock:
                if lane:
                    self._standing.discard(lane)
                    self._ended(lane)
                else:
                    self._running -= 1

    def _take(self, caller: str) -> str:
        """'' for the common room, else the caller, in the standing lane."""
        for looked_up in (False, True):
            with self._lock:
                if self._running < self.limit:
                    self._running += 1
                    return ""
                if not caller or not self._lane_open(caller):
                    raise busy()
                if looked_up:
                    self._standing.add(caller)
                    return caller
            if not self.has_standing(caller):  # outside the lock: it may read the database
                raise busy()
        raise AssertionError("unreachable")

    def _ended(self, seller: str) -> None:
        """Note when `seller`'s lane write ended (under the lock); forget the sellers whose
        pause is over, so the notes stay as few as the lane's recent writers."""
        now = self.clock()
        self._lane_ended[seller] = now
        if len(self._lane_ended) > 4 * MAX_STANDING_WRITES:
            self._lane_ended = {agent: ended for agent, ended in self._lane_ended.items()
                                if now - ended < LANE_PAUSE_S}

    def full(self) -> bool:
        """Whether a write without standing would be refused now."""
        return self._running >= self.limit

    def lane_open(self, seller: str) -> bool:
        """Whether the lane has room for `seller` now (its standing aside): no write of its
        there, its pause over, and room left."""
        with self._lock:
            return self._lane_open(seller)

    def _lane_open(self, seller: str) -> bool:
        return seller not in self._standing and len(self._standing) < self.standing_limit \
            and self.clock() - self._lane_ended.get(seller, -LANE_PAUSE_S) >= LANE_PAUSE_S

    def has_standing(self, agent_id: str) -> bool:
        return self.standing is not None and self.standing(agent_id)


class RegistryBusyDoor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuse a caller's registry write before it is read while `writes` is full, unless its
    signer has standing and room in its lane (checked on the raw bytes, before the parse)."""

    def __init__(self, writes: AskedWrites, skew_ms: int = SKEW_MS,
                 clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        """`skew_ms` and `clock_ms`: the auth interceptor's, so the door lets through no
        request it would refuse as stale."""
        self.writes = writes
        self.skew_ms = skew_ms
        self.clock_ms = clock_ms

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or details.method not in WRITES or not self.writes.full():
            return handler
        metadata = first_values(details.invocation_metadata)
        claimed = metadata.get(AGENT_KEY, "")
        if handler.unary_unary is None or not isinstance(claimed, str) or \
                not self.writes.lane_open(claimed) or not self.writes.has_standing(claimed):
            return grpc.unary_unary_rpc_method_handler(
                _refuse, request_deserializer=None,  # the request's bytes are never parsed
                response_serializer=handler.response_serializer)
        return self._signed_only(details.method, metadata, handler)

    def _signed_only(self, method: str, metadata: dict[str, Any], handler: Any) -> Any:
        """The handler, its request parsed only if its signature verifies (over the raw
        bytes, as the auth interceptor checks it after the parse)."""
        parse, behaviour = handler.request_deserializer, handler.unary_unary

        def read(data: bytes) -> Any:
            try:
                verified_signer(method, metadata, data, self.clock_ms(), self.skew_ms)
            except AgentmarketError:
                return _REFUSED
            return parse(data) if parse else data

        def run(request: Any, context: grpc.ServicerContext) -> Any:
            if request is _REFUSED:
                return _refuse(request, context)
            return behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            run, request_deserializer=read, response_serializer=handler.response_serializer)


_REFUSED = object()  # a request the door would not parse


def _refuse(_request: bytes, context: grpc.ServicerContext) -> Any:
    abort(context, busy())
