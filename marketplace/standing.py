"""Standing: which agents the registry still takes writes from while strangers flood it.

Keys are free, so a flood of listings from fresh keys can keep the registry's room for callers'
writes (`marketplace.registry_door`) full for as long as it lasts, and an honest seller's
Advertise or WithdrawListing would be refused REGISTRY_BUSY with theirs. A seller with standing
has a lane of its own: it has finished agreements as a seller with a mean rating above zero
(`marketplace.reputation`: at least one settled, or a dispute resolved with something paid to
it), which took a funded buyer, an escrow and a settlement, not just a key. A brand-new
seller has no standing and shares the flood's room (SECURITY.md says so).

The door asks about every write a flood sends, so the answer comes from memory: the sellers
with standing, read whole from the reputation table (the `MAX_KNOWN` most rated), again when
the last read is `STALE_S` old and someone asks. A first sale so counts within seconds, on
every node sharing the database, and a flood of fresh keys costs no read per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine, select

from marketplace.reputation import REPUTATION

MAX_KNOWN = 100_000  # sellers with standing held in memory (the most rated; about 15 MB)
STALE_S = 10.0


class Standing:
    """`standing(agent_id)`: whether the agent has sold with a mean rating above zero."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self._known: frozenset[str] = frozenset()
        self._read_at: float | None = None
        self._reading = threading.Lock()
        self.reads = 0  # times the table was read

    def __call__(self, agent_id: str) -> bool:
        reads, read_at = self.reads, self._read_at  # in this order: see `refresh`
        if read_at is None or self.clock() - read_at >= STALE_S:
            self.refresh(wait=read_at is None, seen=reads)
        return agent_id in self._known

    def refresh(self, *, wait: bool = True, seen: int | None = None) -> None:
        """Read the sellers with standing again, unless another thread has since the caller
        looked (`seen`: the count of reads it saw; by default, now) or does meanwhile
        (without `wait`, this one answers from the last read while it does)."""
        before = self.reads if seen is None else seen
        if not self._reading.acquire(blocking=wait):
            return
        try:
            if self.reads != before:
                return  # read meanwhile by another thread
            with self.engine.connect().execution_options(agentmarket_read=True) as conn:
                rows = conn.execute(
                    select(REPUTATION.c.seller_id)
                    .where(REPUTATION.c.rated > 0, REPUTATION.c.score_sum > 0)
                    .order_by(REPUTATION.c.rated.desc()).limit(MAX_KNOWN)).scalars().all()
            self._known = frozenset(rows)
            self._read_at = self.clock()
            self.reads += 1
        finally:
            self._reading.release()
