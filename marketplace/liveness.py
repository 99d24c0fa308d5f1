"""Listings whose seller does not answer stop being ranked: reported by a buyer, checked here.

A listing outlives a seller that died without withdrawing it (kill -9, a lost machine) by up
to its TTL, and may rank first on reputation it earned. Buyers that cannot reach a seller
report it (`RegistryService.ReportUnreachable`); one buyer's word is not enough (it may be the
buyer's own network, or a competitor's lie), so the registry tries the endpoint itself: a TCP
connection within `timeout_s`. Only when that fails too does the listing expire at once, as if
its TTL had run out: invisible to discovery, and the seller's next heartbeat, if it is alive
after all, is told to advertise again. An agent's listing is checked at most once per
`recheck_s`, whatever endpoint it names meanwhile (repeated reports get the last finding), a
listing's own agent cannot report it (it withdraws it instead), and at most `max_checks` run
at a time: an agent pointing its listing at other hosts' ports learns at most one port per
`recheck_s`, through another agent's report, and reports cannot exhaust the node's threads.

The registry must be able to reach the endpoints sellers advertise (as buyers must).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from marketplace.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from marketplace.identity import check_agent_id
from marketplace.registry import Registry

TIMEOUT_S = 1.0
RECHECK_S = 5.0
MAX_CHECKS = 4
MAX_REMEMBERED = 10_000
_ENDPOINT = re.compile(r"^\[?(?P<host>[A-Za-z0-9.\-:]+?)\]?:(?P<port>\d{1,5})\Z")


def tcp_probe(endpoint: str, timeout_s: float) -> bool:
    """True when something accepts a TCP connection at host:port within the timeout."""
    match = _ENDPOINT.match(endpoint)
    if match is None:
        return False
    try:
        with socket.create_connection((match["host"], int(match["port"])), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


class Liveness:
    def __init__(self, registry: Registry, *, probe: Callable[[str, float], bool] = tcp_probe,
                 timeout_s: float = TIMEOUT_S, recheck_s: float = RECHECK_S,
                 max_checks: int = MAX_CHECKS) -> None:
        self.registry = registry
        self.probe = probe
        self.timeout_s = timeout_s
        self.recheck_s = recheck_s
        self._slots = threading.BoundedSemaphore(max_checks)
        self._lock = threading.Lock()
        self._checked: OrderedDict[str, tuple[float, bool]] = OrderedDict()

    def report(self, agent_id: str, endpoint: str, reporter: str = "") -> bool:
        """Check a reported listing; True when it was unreachable and stopped being ranked."""
        check_agent_id(agent_id)
        if reporter == agent_id:
            raise FailedPrecondition("a listing's own agent does not report it unreachable: "
                                     "it withdraws it (Withdraw)")
        if not isinstance(endpoint, str) or not 0 < len(endpoint) <= 255:
            raise InvalidArgument("endpoint must be the listing's host:port")
        try:
            listing = self.registry.get(agent_id)
        except NotFound:
            return False  # gone already: nothing to rank
        if listing.endpoint != endpoint:
            return False  # the seller moved since the buyer looked: that endpoint is not listed
        key = agent_id  # not per endpoint: advertising another one gets no fresh probe
        now = time.monotonic()
        with self._lock:
            last = self._checked.get(key)
        if last is not None and now - last[0] < self.recheck_s:
            return False  # checked moments ago; its finding was acted on then
        if not self._slots.acquire(blocking=False):
            raise ResourceExhausted("the registry is checking other reports; try again shortly",
                                    reason="LIVENESS_BUSY")
        try:
            alive = self.probe(endpoint, self.timeout_s)
        finally:
            self._slots.release()
        self._remember(key, now, alive)
        return not alive and self.registry.expire(agent_id, endpoint)

    def _remember(self, key: str, at: float, alive: bool) -> None:
        with self._lock:
            self._checked[key] = (at, alive)
            self._checked.move_to_end(key)
            while len(self._checked) > MAX_REMEMBERED:
                self._checked.popitem(last=False)
