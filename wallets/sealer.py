"""The sealer: links committed postings into the hash chain, in its own short transactions.

Writers on PostgreSQL never touch the chain head: each posting is numbered at insert
(`sequence`, from a database sequence) and commits unsealed, so postings on different accounts
commit in parallel. The sealer then takes the head row (the only transaction that locks it),
reads the committed postings not yet sealed in `sequence` order (a batch never splits one
writer's transaction), gives each the next chain
position, its predecessor's hash and its own (`wallets._chain`), and moves the head: one short
transaction per batch, whatever the number of writers. A posting numbered earlier but committed
later simply gets a later position. Sealing is safe to run from several places at once (the
head row lock orders them) and to kill at any point (an unfinished batch rolls back whole);
`Sealer` keeps it to one background thread per database through a lease (`wallets.lease`),
taken over by another process within a round when its holder dies.

On SQLite writers are serialised anyway, and the ledger seals each posting as it writes it
(position = sequence), so `ledger verify` after any operation sees the whole chain sealed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from sqlalchemy import Connection, Engine, bindparam, literal_column, select, text, update
from sqlalchemy.exc import ProgrammingError

from wallets._chain import posting_hash
from wallets.lease import AdvisoryLease
from wallets.models import Leg
from wallets.store import begin_in_turn
from wallets.tables import EntryRow, LedgerHeadRow, PostingRow

log = logging.getLogger("agentmarket.sealer")
POSTINGS = PostingRow.__table__  # type: ignore[attr-defined]
ENTRIES = EntryRow.__table__  # type: ignore[attr-defined]
HEAD = LedgerHeadRow.__table__  # type: ignore[attr-defined]
SEAL_BATCH = 2000
SEAL_INTERVAL_S = 0.05  # between rounds while there is sealing to do
IDLE_INTERVAL_S = 0.25  # at most, when there was not (and between tries for the lease)
LEASE_CHECK_S = 1.0  # how often the lease holder checks that it still holds it
LEASE_CLASS = "agentmarket-sealer"

_WRITER = literal_column("xmin::text").label("writer")  # PostgreSQL: the inserting transaction
_UNSEALED = (select(POSTINGS).where(POSTINGS.c.position.is_(None))
             .order_by(POSTINGS.c.sequence).limit(bindparam("n")))
_UNSEALED_PG = (select(POSTINGS, _WRITER).where(POSTINGS.c.position.is_(None))
                .order_by(POSTINGS.c.sequence).limit(bindparam("n")))
# PostgreSQL: a batch's entries and seals in one statement each, with array parameters
_ENTRIES_PG = ("SELECT sequence, account_id, currency, posted_atomic, pending_debit_atomic, "
               "pending_credit_atomic FROM ledger_entries WHERE sequence = ANY(%(s)s) "
               "ORDER BY id")
_SEAL_PG = ("UPDATE ledger_postings p SET position = u.position, prev_hash = u.prev, "
            "hash = u.hash FROM unnest(%(s)s::bigint[], %(p)s::bigint[], %(prev)s::text[], "
            "%(h)s::text[]) AS u(sequence, position, prev, hash) "
            "WHERE p.sequence = u.sequence AND p.position IS NULL")
_SEAL = (update(POSTINGS).where(POSTINGS.c.sequence == bindparam("s_sequence"),
                                POSTINGS.c.position.is_(None))
         .values(position=bindparam("s_position"), prev_hash=bindparam("s_prev"),
                 hash=bindparam("s_hash")))


def seal_in(conn: Connection, limit: int = SEAL_BATCH) -> int:
    """Seal up to `limit` committed, unsealed postings inside `conn`'s transaction (which then
    holds the head row until it ends); returns how many."""
    if conn.dialect.name == "postgresql":
        # Sealing is derived data: a power failure may lose the last seals, which are then
        # made again. It need not wait for its own disk flush; whatever states a position to
        # the outside (a signed receipt, a checkpoint) commits synchronously after it, which
        # flushes the log up to it first.
        conn.execute(text("SET LOCAL synchronous_commit = off"))
    head = conn.execute(select(HEAD).where(HEAD.c.id == 1).with_for_update()).first()
    if head is None:
        return 0
    postgres = conn.dialect.name == "postgresql"
    rows = conn.execute(_UNSEALED_PG if postgres else _UNSEALED, {"n": limit}).all()
    if not rows:
        return 0
    if postgres and len(rows) == limit:
        # never split one transaction's postings over two batches, so one checkpoint (cut at
        # a batch's end) covers all the postings a settlement receipt names
        rows += conn.execute(select(POSTINGS, _WRITER).where(
            POSTINGS.c.position.is_(None), POSTINGS.c.sequence > rows[-1].sequence,
            literal_column("xmin::text").in_(sorted({r.writer for r in rows})))
            .order_by(POSTINGS.c.sequence)).all()
    legs: dict[int, list[Leg]] = defaultdict(list)
    sequences = [r.sequence for r in rows]
    found = (conn.exec_driver_sql(_ENTRIES_PG, {"s": sequences}) if postgres else
             conn.execute(select(ENTRIES).where(ENTRIES.c.sequence.in_(sequences))
                          .order_by(ENTRIES.c.id)))
    for e in found:
        legs[e.sequence].append(Leg(e.account_id, e.currency, e.posted_atomic,
                                    e.pending_debit_atomic, e.pending_credit_atomic))
    position, prev = head.sequence, head.hash
    sealed = []
    for r in rows:
        position += 1
        digest = posting_hash(prev, sequence=r.sequence, idempotency_key=r.idempotency_key,
                              kind=r.kind, hold_id=r.hold_id, created_at_ms=r.created_at_ms,
                              memo=r.memo, trace_id=r.trace_id, span_id=r.span_id,
                              legs=legs[r.sequence])
        sealed.append({"s_sequence": r.sequence, "s_position": position, "s_prev": prev,
                       "s_hash": digest})
        prev = digest
    if postgres:
        conn.exec_driver_sql(_SEAL_PG, {"s": sequences, "p": [s["s_position"] for s in sealed],
                                        "prev": [s["s_prev"] for s in sealed],
                                        "h": [s["s_hash"] for s in sealed]})
    else:
        conn.execute(_SEAL, sealed)
    conn.execute(update(HEAD).where(HEAD.c.id == 1).values(sequence=position, hash=prev))
    return len(sealed)


def seal(engine: Engine, *, limit: int = SEAL_BATCH) -> int:
    """Seal everything committed so far, a batch per transaction; returns how many."""
    total = 0
    while True:
        with begin_in_turn(engine) as conn:
            done = seal_in(conn, limit)
        total += done
        if done < limit:
            return total


class Sealer:
    """A background thread sealing every `interval_s` while this process holds the lease
    (backing off to IDLE_INTERVAL_S while there is nothing to seal: the lag behind commits is
    at most that plus a batch's time; the rounds cost the writers little when they are few)."""

    def __init__(self, engine: Engine, holder: str, *, interval_s: float = SEAL_INTERVAL_S,
                 batch: int = SEAL_BATCH) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.batch = batch
        self.lease = AdvisoryLease(engine, holder, LEASE_CLASS)
        self._stop = threading.Event()
        self._checked_at = 0.0
        self._thread = threading.Thread(target=self._loop, name="ledger-sealer", daemon=True)

    def start(self) -> Sealer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.lease.release()

    def _holding(self) -> bool:
        """The lease, checked against the database at most every LEASE_CHECK_S while held
        (sealing stays correct without it: the head row orders sealers; it only keeps one
        at work)."""
        now = time.monotonic()
        if self.lease.holding and now - self._checked_at < LEASE_CHECK_S:
            return True
        self._checked_at = now
        return self.lease.held()

    def _loop(self) -> None:
        pause = self.interval_s
        while not self._stop.is_set():
            busy = False
            try:
                if self._holding():
                    with begin_in_turn(self.engine) as conn:
                        done = seal_in(conn, self.batch)
                    busy = done >= self.batch
                    pause = self.interval_s if done else min(pause * 2, IDLE_INTERVAL_S)
                else:
                    pause = IDLE_INTERVAL_S
            except ProgrammingError as error:  # the tables are gone (a dropped schema)
                log.error("sealing stopped: %s", error)
                return
            except Exception as error:  # the database went away: back off, try again
                log.warning("sealing failed, retrying in %.1f s: %s", pause, error)
                pause = min(pause * 2 if pause >= 0.5 else 0.5, 5.0)
            if not busy:
                self._stop.wait(pause)
