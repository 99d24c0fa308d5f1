"""Plain postings on PostgreSQL in one round trip: the server function `ledger_post_plain`.

Through the general path a transfer costs about ten statements, each a round trip and far more
Python (SQLAlchemy, the pool's checkout ping) than PostgreSQL takes to run it. A plain one (no
spend controls on the wallets it debits, no mandate, no freeze queued on this thread, a new
idempotency key) is instead one call of the function the migration `0006` installs, on a
connection in autocommit, so the call is the whole transaction: the same row locks in the same
order, the same conditional balance UPDATE, the key recorded with the posting, and the commit
flushed before the answer. The function changes nothing when it answers NULL, and any error
rolls it back whole; then the general path (`MutationRunner.mutate`) runs the request as
before, which replays a stored outcome, raises the refusal and records it. A request the
function did commit, when the answer was lost, is replayed there from its key.

Plain postings that threads of one process make at the same time go together
(`wallets._combiner`): one transaction locks every account of the batch in account order,
calls the function for each posting in one round trip, and commits once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from wallets import _idempotency
from wallets._combiner import Combiner
from wallets.guard import SpendContext, SpendGuard
from wallets.models import Leg, Posting, Transfer

if TYPE_CHECKING:
    from wallets.ledger import Ledger

log = logging.getLogger("agentmarket.wallets.pg_hot")
T = TypeVar("T")
POST_PLAIN = ("SELECT o_sequence, o_currency FROM ledger_post_plain("
              "%s, %s, %s, %s, %s::text[], %s::bigint[], %s, %s, %s, %s, %s)")
LOCK_ACCOUNTS = ("SELECT id FROM ledger_accounts WHERE id = ANY(%s::text[]) ORDER BY id "
                 "FOR UPDATE")
MAX_CONNECTIONS = 16  # per ledger; more concurrent transfers take the general path meanwhile
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 3,
              "keepalives_count": 3}  # a vanished server fails the call instead of hanging it


def available(ledger: Ledger, group_commit: bool) -> bool:
    """Whether plain postings can take the one-call path on this ledger's engine."""
    engine = ledger.engine
    return (engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
            and not group_commit)


class PlainPostings:
    """Plain postings of one ledger, over connections of their own (autocommit)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._url = ledger.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False)
        self._idle: list[Any] = []
        self._open = 0
        self._lock = threading.Lock()
        self._closed = False
        self._combiner = Combiner(self._call_batch)

    def post(self, key: str, kind: str, request: dict[str, Any],
             transfers: Sequence[Transfer], memo: str, spend: SpendContext | None,
             trace: tuple[str, str]) -> Posting | None:
        """The posting, committed; None when the general path must run the request."""
        ledger = self.ledger
        if (ledger._legacy_keys or (spend is not None and spend.mandate_id)
                or type(ledger.spend_guard).check is not SpendGuard.check
                or ledger.spend_guard._queued_freezes()):
            return None
        _idempotency.check_key(key)
        scope = _idempotency.check_scope(_idempotency.request_scope())
        request_digest = _idempotency.digest(kind, request)
        deltas: dict[str, int] = {}
        for t in transfers:
            deltas[t.debit_account_id] = deltas.get(t.debit_account_id, 0) - t.amount_atomic
            deltas[t.credit_account_id] = deltas.get(t.credit_account_id, 0) + t.amount_atomic
        now_ms = ledger.clock_ms()
        trace_id, span_id = trace
        row = self._combiner.submit((scope, kind, key, request_digest, list(deltas),
                                     list(deltas.values()), kind, memo, now_ms, trace_id,
                                     span_id))
        if row is None or row[0] is None:
            return None
        sequence, code = row
        legs = tuple(Leg(account_id, code, posted_atomic=d) for account_id, d in deltas.items())
        return Posting(sequence=sequence, idempotency_key=key, kind=kind, legs=legs,
                       created_at_ms=now_ms, memo=memo, trace_id=trace_id, span_id=span_id)

    def _call_batch(self, batch: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...] | None]:
        """Concurrent plain postings of this process (`wallets._combiner`): one alone is one
        call; several are one transaction that first locks every account they touch, in
        account order (as one posting does: no deadlock with other nodes' batches), then
        calls the function for each, in one round trip, and commits once. A posting the
        function declines is left to the general path as alone; any error rolls the batch
        back whole, and each posting of it goes the general path."""
        if len(batch) == 1:
            return [self._call(batch[0])]
        accounts = sorted({a for params in batch for a in params[4]})

        def post(conn: Any) -> list[tuple[Any, ...] | None]:
            with conn.transaction(), conn.pipeline():
                conn.execute(LOCK_ACCOUNTS, (accounts,), prepare=True)
                cursors = [conn.execute(POST_PLAIN, params, prepare=True) for params in batch]
            return [cursor.fetchone() for cursor in cursors]

        return self._on_connection(post, [None] * len(batch))

    def _call(self, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """One call of the function; None on any error (it rolled back whole)."""
        return self._on_connection(
            lambda conn: conn.execute(POST_PLAIN, params, prepare=True).fetchone(), None)

    def _on_connection(self, work: Callable[[Any], T], declined: T) -> T:
        """`work` on a connection of this ledger's own; `declined` when there is none or a
        database error rolled the work back (the general path then runs it)."""
        import psycopg

        conn = self._take()
        if conn is None:
            return declined
        try:
            result = work(conn)
        except psycopg.Error as error:
            log.debug("plain posting(s) left to the general path: %s", error)
            result = declined
        except BaseException:
            self._drop(conn)
            raise
        if conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._drop(conn)
        else:
            self._give(conn)
        return result

    def _take(self) -> Any:
        import psycopg

        with self._lock:
            if self._closed:
                return None
            if self._idle:
                return self._idle.pop()
            if self._open >= MAX_CONNECTIONS:
                return None
            self._open += 1
        try:
            return psycopg.connect(self._url, autocommit=True, connect_timeout=5, **_KEEPALIVE)
        except psycopg.Error as error:
            log.warning("no connection for plain postings: %s", error)
            with self._lock:
                self._open -= 1
            return None

    def _give(self, conn: Any) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        self._drop(conn)

    def _drop(self, conn: Any) -> None:
        with self._lock:
            self._open -= 1
        with contextlib.suppress(Exception):  # broken or refused: close what is left of it
            conn.close()

    def close(self) -> None:
        """Close the idle connections; calls after this take the general path."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)
