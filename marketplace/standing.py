"""Standing: which agents the registry still takes writes from while strangers flood it.

Keys are free, so a flood of listings from fresh keys can keep the registry's room for callers'
writes (`marketplace.registry_door`) full for as long as it lasts, and an honest seller's
Advertise or WithdrawListing would be refused REGISTRY_BUSY with theirs. A seller with standing
has a lane of its own: it has finished agreements as a seller and their mean rating is above
zero (`marketplace.reputation`: at least one settled, or a dispute resolved with something paid
to it), which took a funded buyer, an escrow and a settlement, not just a key. A brand-new
seller has no standing and shares the flood's room (SECURITY.md says so).

Looked up on demand, only for a caller whose signature verified (a forged claim costs a hash and
a signature check, never a lookup): a seller with standing keeps it (cached for good, up to
`MAX_KNOWN`), and one without is asked again after `UNKNOWN_TTL_S`, so its first sale counts
within seconds on every node sharing the database.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy import Engine

from marketplace.reputation import reputation

MAX_KNOWN = 65_536  # agents remembered as having standing (the oldest forgotten past it)
MAX_UNKNOWN = 65_536  # agents remembered, for UNKNOWN_TTL_S, as having none
UNKNOWN_TTL_S = 10.0


class Standing:
    """`standing(agent_id)`: whether the agent has sold with a mean rating above zero."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self._lock = threading.Lock()
        self._known: OrderedDict[str, None] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()  # agent -> when asked
        self.lookups = 0  # database reads made (the rest were answered from memory)

    def __call__(self, agent_id: str) -> bool:
        with self._lock:
            if agent_id in self._known:
                return True
            asked = self._unknown.get(agent_id)
            if asked is not None and self.clock() - asked < UNKNOWN_TTL_S:
                return False
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            permille, rated = reputation(conn, agent_id)
        has = rated > 0 and permille > 0
        with self._lock:
            self.lookups += 1
            self._unknown.pop(agent_id, None)
            remembered = self._known if has else self._unknown
            remembered[agent_id] = None if has else self.clock()  # type: ignore[assignment]
            if len(remembered) > (MAX_KNOWN if has else MAX_UNKNOWN):
                remembered.popitem(last=False)
        return has
