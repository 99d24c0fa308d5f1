"""Heartbeats: a live listing's lease renewed in memory, written for all listings at once.

A heartbeat used to rewrite its listing's rows itself, in the room callers' registry writes
share (`marketplace.registry_door`: at most 2 at once). During a flood of big listings from
free keys that room is always full, so an honest seller's beats were refused REGISTRY_BUSY,
and after three its listing lapsed. Now a heartbeat only reads (is the listing live and
findable?) and leaves its new expiry in `Leases`; `LeaseFlusher`, one per node, has
`LeaseWriter` write every expiry left since its last turn (`Registry.flush_leases`), in the
node's writer turns like any listing write (money first). So a beat is never refused for
others' writes and never waits for the writer, and a thousand beats cost four commits (256
listings each), not a thousand.

An expiry is written within `FLUSH_INTERVAL_S`, at once when the listing's written expiry is
near (`SOON_MS`). A node that dies before writing one loses it: the listing keeps the expiry
of its previous beat (two thirds of a TTL at a seller's pace), and the next beat renews it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from marketplace.discovery import OFFERS
from marketplace.errors import RegistryBusy
from marketplace.tables import ListingRow

FLUSH_INTERVAL_S = 0.5
SOON_MS = 5_000  # a beat this close to its listing's written expiry is written at once
MAX_PENDING = 65_536  # renewed listings awaiting the writer (each one is live: advertised)
PER_COMMIT = 256  # listings a transaction writes: money takes the writer between them
LISTINGS = ListingRow.__table__  # type: ignore[attr-defined]

log = logging.getLogger("agentmarket.registry")


class Leases:
    """Expiries renewed by heartbeats and not yet written, the latest per listing."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self.due = threading.Event()  # set when an expiry should be written now
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}

    def renew(self, agent_id: str, expires_at_ms: int, *, soon: bool = False) -> None:
        with self._lock:
            known = self._pending.get(agent_id)
            if known is None and len(self._pending) >= self.limit:
                raise RegistryBusy("the registry has too many heartbeats to write; beat again "
                                   "in a moment")
            if known is None or known < expires_at_ms:
                self._pending[agent_id] = expires_at_ms
        if soon:
            self.due.set()

    def take(self) -> dict[str, int]:
        """Every pending expiry, which the caller now writes (or gives `back`)."""
        self.due.clear()
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def back(self, pending: dict[str, int], *, due: bool = True) -> None:
        """Expiries a write failed to store, pending again (later beats win); `due`: to be
        written at once."""
        with self._lock:
            for agent_id, expires_at_ms in pending.items():
                if self._pending.get(agent_id, 0) < expires_at_ms:
                    self._pending[agent_id] = expires_at_ms
        if due:
            self.due.set()

    def forget(self, agent_id: str) -> None:
        """A withdrawn or expired listing: its pending renewal must not outlive it."""
        with self._lock:
            self._pending.pop(agent_id, None)

    def __len__(self) -> int:
        return len(self._pending)


class LeaseWriter:
    """Writes pending expiries into the registry's tables (`Registry.flush_leases`)."""

    def __init__(self, engine: Engine, serial: Callable[[], AbstractContextManager[None]],
                 clock_ms: Callable[[], int]) -> None:
        """`serial`: the registry's writer turns; `clock_ms`: its clock."""
        self.engine = engine
        self.serial = serial
        self.clock_ms = clock_ms
        self._flushing = threading.Lock()

    def flush(self, leases: Leases, changed: Callable[[], None]) -> int:
        """Write every pending expiry, `PER_COMMIT` listings per transaction; returns how
        many listings were written (`changed` after any). A listing whose search rows went
        meanwhile (a sweep, a liveness check) lapses instead, so its next beat asks for an
        advertise. A chunk the database refuses (PostgreSQL: a deadlock with another node
        replacing one of its listings) is written again a listing per transaction, so no
        listing's trouble holds back the others'; one refused again is pending again."""
        with self._flushing:  # returns once a flush under way (the node's) has committed
            pending = sorted(leases.take().items())  # one lock order for every node
            written, refused = 0, dict[str, int]()
            try:
                while written < len(pending):
                    chunk = pending[written:written + PER_COMMIT]
                    try:
                        self._write(chunk)
                    except DBAPIError:
                        for lease in chunk:
                            try:
                                self._write([lease])
                            except DBAPIError:
                                refused[lease[0]] = lease[1]
                    written += len(chunk)
            except BaseException:
                leases.back(dict(pending[written:]))
                raise
            finally:
                if refused:  # written at the flusher's next turn, not at once
                    leases.back(refused, due=False)
                if written:
                    changed()
            if refused:
                log.warning("%d heartbeats' expiries refused by the database; pending again",
                            len(refused))
            return len(pending) - len(refused)

    def _write(self, chunk: list[tuple[str, int]]) -> None:
        """One transaction: each listing's offers, then the listing (the order Advertise and
        the sweep lock them in)."""
        with self.serial(), self.engine.begin() as conn:
            marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            now = self.clock_ms()  # in the writer's turn: what a sweep wrote before is seen
            renew = (f"UPDATE {{}} SET expires_at_ms = {marker} WHERE agent_id = {marker} "
                     f"AND expires_at_ms > {marker} AND expires_at_ms < {marker}")
            for agent_id, expires in chunk:
                params = (expires, agent_id, now, expires)
                findable = conn.exec_driver_sql(renew.format(OFFERS.name), params).rowcount
                # none renewed: withdrawn, expired or advertised again since the beat
                if conn.exec_driver_sql(renew.format(LISTINGS.name), params).rowcount \
                        and not findable:  # live, its search rows gone: lapse it
                    conn.exec_driver_sql(f"UPDATE {LISTINGS.name} SET expires_at_ms = "
                                         f"{marker} WHERE agent_id = {marker}", (now, agent_id))


class LeaseFlusher:
    """The thread that writes pending expiries every `interval_s` (sooner when one is due),
    and once more when stopped."""

    def __init__(self, leases: Leases, flush: Callable[[], int],
                 interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.leases = leases
        self.flush = flush
        self.interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listing-leases", daemon=True)

    def start(self) -> LeaseFlusher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.leases.due.wait(self.interval_s)
            if self._stopping.is_set():
                return
            if not self._flush_logged():  # expiries given back set `due`: pause, not spin
                self._stopping.wait(self.interval_s)

    def _flush_logged(self) -> bool:
        try:
            self.flush()
            return True
        except Exception:  # the expiries are pending again; the next turn writes them
            log.exception("writing heartbeats' expiries failed")
            return False

    def stop(self) -> None:
        self._stopping.set()
        self.leases.due.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._flush_logged()
