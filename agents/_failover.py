"""Which listing a buyer tries next when a seller cannot be reached.

A listing outlives its seller by up to its TTL when the seller died without withdrawing it (a
kill -9, a lost machine), and it may rank first (reputation it earned). `negotiate` therefore
tries the listings it was given in order, then the skill's other live listings, skipping a
seller that does not answer, and raises `SellerUnavailable` naming every one it tried only when
none answered; each one is reported to the registry, which checks it before it stops ranking it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc

from agents.errors import InvalidArgument, NotFound, SellerUnavailable
from marketplace.v1 import registry_pb2
from wallets.grpc_errors import error_reason

MAX_SELLERS_TRIED = 5
_NO_ANSWER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def unreachable(error: grpc.RpcError) -> bool:
    """The peer did not answer at all (no connection, no reply in time), as opposed to an
    answer that refuses: a refusal carries our ErrorInfo reason."""
    return error.code() in _NO_ANSWER and not error_reason(error)


class Failover:
    def __init__(self, listings: registry_pb2.Listing | Sequence[registry_pb2.Listing],
                 skill: str, currency: str) -> None:
        given = [listings] if isinstance(listings, registry_pb2.Listing) else listings
        if isinstance(given, str | bytes) or not isinstance(given, Sequence) or not all(
                isinstance(item, registry_pb2.Listing) for item in given):
            raise InvalidArgument("negotiate takes a listing or a list of listings from "
                                  "discover()")
        self.queue = list(given)
        self.skill, self.currency = skill, currency
        self.tried: dict[str, str] = {}  # agent id -> who and what happened
        self._refilled = False

    def wants_more(self) -> bool:
        """True once, when the given listings ran out before any seller answered."""
        return not self.queue and not self._refilled and len(self.tried) < MAX_SELLERS_TRIED

    def add(self, listings: Iterable[registry_pb2.Listing]) -> None:
        self._refilled = True
        self.queue.extend(item for item in listings if item.agent_id not in self.tried)

    def next(self) -> registry_pb2.Listing | None:
        while self.queue and len(self.tried) < MAX_SELLERS_TRIED:
            candidate = self.queue.pop(0)
            if candidate.agent_id not in self.tried:
                return candidate
        return None

    def failed(self, listing: registry_pb2.Listing, message: str) -> None:
        self.tried[listing.agent_id] = (f"{listing.name or listing.agent_id[:12]} at "
                                        f"{listing.endpoint} ({message})")

    def exhausted(self) -> SellerUnavailable | NotFound:
        if not self.tried:
            return NotFound(f"no live listing sells {self.skill!r} in {self.currency}")
        return SellerUnavailable(f"no seller of {self.skill!r} answered; tried "
                                 + "; ".join(self.tried.values()))
