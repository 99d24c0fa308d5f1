"""Which listing a buyer tries next when a seller cannot be reached.

A listing outlives its seller by up to its TTL when the seller died without withdrawing it (a
kill -9, a lost machine), and it may rank first (reputation it earned). `negotiate` therefore
tries the listings it was given in order, then the skill's other live listings, skipping a
seller that does not answer, and raises `SellerUnavailable` naming every one it tried only when
none answered; each one is reported to the registry, which checks it before it stops ranking it.

A listing parked at another agent's endpoint (anyone may advertise any address, and a copy of an
honest seller's listing a unit cheaper ranks above it) is answered by that other agent: it is
skipped without counting towards the sellers tried, and so is every other listing at that
endpoint under another agent id, so that however many keys park there the buyer still reaches
the agent that answers at it. At most `MAX_LISTINGS_SEEN` listings are looked at in all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc

from agents.errors import InvalidArgument, NotFound, SellerUnavailable
from marketplace.v1 import registry_pb2
from wallets.grpc_errors import error_reason

MAX_SELLERS_TRIED = 5
MAX_LISTINGS_SEEN = 100  # parked listings skipped included
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
        self.parked: dict[str, str] = {}  # listings at an endpoint another agent answers
        self.answers_at: dict[str, str] = {}  # endpoint -> the agent that answered there
        self.seen = 0
        self._refilled = False

    def wants_more(self) -> bool:
        """True once, when the given listings ran out before any seller answered."""
        return not self.queue and not self._refilled and len(self.tried) < MAX_SELLERS_TRIED

    @property
    def refill_limit(self) -> int:
        """How many listings to ask the registry for: once listings were found parked (there
        may be many more ranked above the seller), as many as may be looked at; those at an
        endpoint known to answer as another agent are skipped without a call."""
        return MAX_LISTINGS_SEEN if self.parked else MAX_SELLERS_TRIED

    def add(self, listings: Iterable[registry_pb2.Listing]) -> None:
        self._refilled = True
        self.queue.extend(item for item in listings if item.agent_id not in self.tried)

    def next(self) -> registry_pb2.Listing | None:
        while self.queue and len(self.tried) < MAX_SELLERS_TRIED \
                and self.seen < MAX_LISTINGS_SEEN:
            candidate = self.queue.pop(0)
            self.seen += 1
            answering = self.answers_at.get(address_key(candidate.endpoint))
            if answering is not None and answering != candidate.agent_id:
                self.parked[candidate.agent_id] = self._named(candidate, "parked at "
                                                              "another agent's endpoint")
            elif candidate.agent_id not in self.tried:
                return candidate
        return None

    def failed(self, listing: registry_pb2.Listing, message: str) -> None:
        self.tried[listing.agent_id] = self._named(listing, message)

    def parked_at(self, listing: registry_pb2.Listing, answering_agent: str,
                  message: str) -> None:
        """The listing's endpoint answers as `answering_agent`: not counted as a seller tried;
        the endpoint's other listings but that agent's are skipped too."""
        self.parked[listing.agent_id] = self._named(listing, message)
        self.answers_at[address_key(listing.endpoint)] = answering_agent

    @staticmethod
    def _named(listing: registry_pb2.Listing, message: str) -> str:
        return f"{listing.name or listing.agent_id[:12]} at {listing.endpoint} ({message})"

    def exhausted(self) -> SellerUnavailable | NotFound:
        if not self.tried and not self.parked:
            return NotFound(f"no live listing sells {self.skill!r} in {self.currency}")
        return SellerUnavailable(f"no seller of {self.skill!r} answered; tried "
                                 + "; ".join([*self.tried.values(),
                                              *list(self.parked.values())[:5]]))


def address_key(endpoint: str) -> str:
    """One spelling of an endpoint ("LocalHost:0080" and "localhost:80" are one address):
    host names are not case-sensitive, and a port is a number."""
    host, _, port = endpoint.rpartition(":")
    return f"{host.lower()}:{int(port)}" if port.isdigit() else endpoint.lower()
