"""The registry: sellers advertise listings with priced skills; buyers discover them.

A listing lives `ttl_s` seconds past its last advertise or heartbeat (a heartbeat only reads;
its expiry is written with other beats' within 0.5 s: `marketplace.listing_leases`);
withdrawing removes it at once; advertising again replaces it (idempotent: the same listing
twice is the same state).
Expired listings are invisible at once; their search rows (offers, terms) go at the node's next
sweep, so discovery never walks past dead offers, and the listing itself an hour later
(`purge_expired`, run by the node's sweeper).

Discovery filters on skill name, free text (every word in the skill's name, description or
tags), a tag set (all of them), a maximum list price and a minimum reputation. The ranking:

1. list unit price, cheapest first, in the request's currency (for tokens: 1k input + 1k
   output; volume tiers do not count). With `convert_currencies`, listings priced in other
   currencies are converted into it through the node's FX converter (max price too). Without a
   currency, the ranking currency is the reference currency (USD) and the others are converted
   the same way; with no FX provider they come after it, grouped by currency code, each group
   cheapest first.
2. then higher earned reputation (`marketplace.reputation`);
3. then lower declared typical latency;
4. then agent id, so the order is total and stable.
A listing appears once, ranked by its best matching skill/currency. How a query is answered
fast (one index range scan per currency, reputation denormalised into the scanned rows) is in
`marketplace.discovery`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from marketplace import discovery, pricing
from marketplace.discovery import OFFERS, TERMS, Converter, Query, TokenCounts
from marketplace.errors import InvalidArgument, NotFound
from marketplace.identity import check_agent_id
from marketplace.listing_checks import MAX_DISCOVER_BYTES, MAX_LISTING_BYTES, check_listing
from marketplace.listing_leases import SOON_MS, Leases, LeaseWriter
from marketplace.registry_door import AskedWrites
from marketplace.reputation import REPUTATION
from marketplace.standing import Standing
from marketplace.tables import ListingRow
from marketplace.v1 import registry_pb2
from wallets import _sqlite_hot as hot
from wallets.caller import current_caller
from wallets.schema import upgrade
from wallets.store import WriteSerializer, is_sqlite

LISTINGS = ListingRow.__table__  # type: ignore[attr-defined]
_LIVE_LISTING = hot.Statement(select(LISTINGS).where(
    LISTINGS.c.agent_id == bindparam("agent"), LISTINGS.c.expires_at_ms > bindparam("now")))
# a heartbeat's listing: live, and still findable (a sweep or a liveness check may have
# taken its search rows as it lapsed)
_BEATING = hot.Statement(select(LISTINGS.c.ttl_s, LISTINGS.c.expires_at_ms).where(
    LISTINGS.c.agent_id == bindparam("agent"), LISTINGS.c.expires_at_ms > bindparam("now"),
    select(OFFERS.c.id).where(OFFERS.c.agent_id == bindparam("agent"),
                              OFFERS.c.expires_at_ms > bindparam("now")).exists()))
_LAPSED = hot.Statement(select(LISTINGS.c.agent_id).where(
    LISTINGS.c.expires_at_ms < bindparam("cutoff")).limit(bindparam("limit")))
# lapsed after the cursor (expiry, agent id) and by now, in that order
_LAPSED_SINCE = hot.Statement(select(LISTINGS.c.agent_id, LISTINGS.c.expires_at_ms).where(
    or_(LISTINGS.c.expires_at_ms > bindparam("since"),
        and_(LISTINGS.c.expires_at_ms == bindparam("since"),
             LISTINGS.c.agent_id > bindparam("since_agent"))),
    LISTINGS.c.expires_at_ms <= bindparam("now"))
    .order_by(LISTINGS.c.expires_at_ms, LISTINGS.c.agent_id).limit(bindparam("limit")))
_AFTER_EVERY_AGENT = "~"  # sorts after every agent id (64 hex)
TTL_DEFAULT_S, TTL_MIN_S, TTL_MAX_S = 60, 10, 86_400
PURGE_AFTER_MS = 3_600_000
_CHUNK = 500
_REPLACE_TRIES = 5  # PostgreSQL: a listing replaced on two nodes at once, run again
_FRAMING_BYTES = 64  # around each listing in an answer: its tag, length, fields set on reading


def _no_live_listing(agent_id: str) -> NotFound:
    return NotFound(f"agent {agent_id[:12]}… has no live listing; advertise again")


class Registry:
    def __init__(self, engine: Engine, *, clock_ms: Callable[[], int] | None = None,
                 fx: Converter | None = None, reference_currency: str = "USD") -> None:
        """`fx` converts (amount_atomic, from_code, to_code) for discovery across currencies."""
        self.engine = engine
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.fx = fx
        self.reference_currency = reference_currency
        self._serial = WriteSerializer(engine, urgent=False)  # money goes first
        # callers' writes, bounded, with a lane for sellers with standing (`registry_door`)
        self.asked_writes = AskedWrites(standing=Standing(engine))
        self.leases = Leases()  # heartbeats' expiries, written by `flush_leases`
        self._lease_writer = LeaseWriter(engine, self._serial, self.clock_ms)
        self.version = 0  # counts this registry's writes to listings (`DiscoverCache` keys)
        self._version_lock = threading.Lock()
        self._counts = TokenCounts()
        # (expiry, agent id): listings lapsed up to it have no search rows left
        self._unindexed_to: tuple[int, str] = (0, "")
        upgrade(engine, "marketplace")  # the shipped migrations (wallets.schema)

    # ---- writing --------------------------------------------------------------------------

    def _changed(self) -> None:
        """After a committed write to listings: answers read before it are not reused."""
        with self._version_lock:
            self.version += 1

    def advertise(self, listing: registry_pb2.Listing, ttl_s: int = 0) -> registry_pb2.Listing:
        """Create or replace the seller's listing (re-advertising is idempotent)."""
        with self.asked_writes.room(current_caller()):
            return self.advertise_many([listing], ttl_s)[0]

    def advertise_many(self, listings: Sequence[registry_pb2.Listing],
                       ttl_s: int = 0) -> list[registry_pb2.Listing]:
        """Advertise several listings in one transaction (imports, benchmarks)."""
        ttl_s = ttl_s or TTL_DEFAULT_S
        if not TTL_MIN_S <= ttl_s <= TTL_MAX_S:
            raise InvalidArgument(f"ttl_s must be {TTL_MIN_S}..{TTL_MAX_S}")
        now = self.clock_ms()
        stored = []
        for listing in listings:
            copy = registry_pb2.Listing()
            copy.CopyFrom(listing)
            check_listing(copy)
            copy.expires_at_ms = now + ttl_s * 1000
            copy.reputation_permille = copy.rated_agreements = 0
            stored.append(copy)
        if len({s.agent_id for s in stored}) != len(stored):
            raise InvalidArgument("each agent appears once in a batch")
        if not stored:
            return []
        for s in stored:  # a beat of the listing replaced does not renew this one
            self.leases.forget(s.agent_id)
        for attempt in range(_REPLACE_TRIES):
            try:
                reputations = self._replace(stored, now, ttl_s)
                break
            except IntegrityError:
                # PostgreSQL: another node replaced one of these listings at once (replicas
                # of a seller sharing its key); both deleted, its insert won. Run again: the
                # delete now sees its row.
                if is_sqlite(self.engine) or attempt == _REPLACE_TRIES - 1:
                    raise
        self._changed()
        for s in stored:
            s.reputation_permille, s.rated_agreements = reputations.get(s.agent_id, (0, 0))
        return stored

    def _replace(self, stored: list[registry_pb2.Listing], now: int, ttl_s: int
                 ) -> dict[str, tuple[int, int]]:
        """Delete the agents' listings and offers, insert the new ones, in one transaction;
        returns the agents' reputations."""
        with self._serial(), self.engine.begin() as conn:
            ids = [s.agent_id for s in stored]
            self._delete(conn, ids)
            reputations = self._reputations(conn, ids)
            conn.execute(insert(LISTINGS), [dict(
                agent_id=s.agent_id, listing=s.SerializeToString(), expires_at_ms=s.expires_at_ms,
                updated_at_ms=now, ttl_s=ttl_s, reputation_permille=reputations.get(
                    s.agent_id, (0, 0))[0], rated_agreements=reputations.get(s.agent_id, (0, 0))[1],
            ) for s in stored])
            self._insert_offers(conn, stored, reputations)
        return reputations

    @staticmethod
    def _reputations(conn: Connection, ids: list[str]) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for start in range(0, len(ids), _CHUNK):
            for row in conn.execute(select(REPUTATION).where(
                    REPUTATION.c.seller_id.in_(ids[start:start + _CHUNK]))):
                if row.rated:
                    found[row.seller_id] = (row.score_sum // row.rated, row.rated)
        return found

    @staticmethod
    def _insert_offers(conn: Connection, listings: list[registry_pb2.Listing],
                       reputations: dict[str, tuple[int, int]]) -> None:
        rows, terms = [], []
        for listing in listings:
            for skill in listing.skills:
                skill_terms = discovery.skill_terms(skill)
                for price in skill.prices:
                    rank_price = pricing.ranking_price_atomic(price)
                    rows.append(dict(
                        agent_id=listing.agent_id, skill=skill.name, currency=price.currency,
                        unit=price.unit, price_atomic=rank_price,
                        expires_at_ms=listing.expires_at_ms,
                        reputation_permille=reputations.get(listing.agent_id, (0, 0))[0],
                        latency_ms=skill.typical_latency_ms))
                    terms.append((skill_terms, price.currency, rank_price,
                                  reputations.get(listing.agent_id, (0, 0))[0]))
        marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        if conn.dialect.name == "sqlite":  # one writer holds the database: number them here
            first = conn.execute(select(func.coalesce(func.max(OFFERS.c.id), 0))).scalar_one()
            offer_ids = list(range(first + 1, first + 1 + len(rows)))
            columns = ["id", *rows[0]]
            conn.exec_driver_sql(
                f"INSERT INTO {OFFERS.name} ({', '.join(columns)}) "
                f"VALUES ({', '.join([marker] * len(columns))})",
                [(offer_id, *row.values()) for offer_id, row in zip(offer_ids, rows, strict=True)])
        else:
            offer_ids = conn.execute(insert(OFFERS).returning(
                OFFERS.c.id, sort_by_parameter_order=True), rows).scalars().all()
        # The driver's executemany directly: this is most of a listing's rows (~15 per skill).
        conn.exec_driver_sql(
            f"INSERT INTO {TERMS.name} (offer_id, token, currency, price_atomic, "
            f"reputation_permille) VALUES ({', '.join([marker] * 5)})",
            [(offer_id, token, code, price, reputation)
             for offer_id, (tokens, code, price, reputation) in zip(offer_ids, terms, strict=True)
             for token in tokens])

    @staticmethod
    def _delete(conn: Connection, agent_ids: list[str]) -> None:
        Registry._delete_search_rows(conn, agent_ids)
        for start in range(0, len(agent_ids), _CHUNK):
            chunk = agent_ids[start:start + _CHUNK]
            conn.execute(delete(LISTINGS).where(LISTINGS.c.agent_id.in_(chunk)))

    @staticmethod
    def _delete_search_rows(conn: Connection, agent_ids: list[str],
                            lapsed_by_ms: int | None = None) -> None:
        """The agents' offers and their search terms (what discovery scans); with
        `lapsed_by_ms`, only offers expired by then (a listing advertised again meanwhile
        keeps its new ones)."""
        for start in range(0, len(agent_ids), _CHUNK):
            chunk = agent_ids[start:start + _CHUNK]
            which = OFFERS.c.agent_id.in_(chunk)
            if lapsed_by_ms is not None:
                which = and_(which, OFFERS.c.expires_at_ms <= lapsed_by_ms)
            conn.execute(delete(TERMS).where(TERMS.c.offer_id.in_(
                select(OFFERS.c.id).where(which))))
            conn.execute(delete(OFFERS).where(which))

    def heartbeat(self, agent_id: str) -> int:
        """Renew a live, findable listing for another ttl; NOT_FOUND once it has expired or
        lost its search rows (advertise again). It only reads: the new expiry is written with
        every other beat's by `flush_leases` (`marketplace.listing_leases`)."""
        check_agent_id(agent_id)
        now = self.clock_ms()
        with hot.reading(self.engine) as conn:
            row = _BEATING.first(conn, {"agent": agent_id, "now": now})
        if row is None:
            raise _no_live_listing(agent_id)
        expires = now + row.ttl_s * 1000
        self.leases.renew(agent_id, expires, soon=row.expires_at_ms - now <= SOON_MS)
        return expires

    def flush_leases(self) -> int:
        """Write the expiries heartbeats renewed since the last call (`LeaseWriter.flush`);
        returns how many listings were written."""
        return self._lease_writer.flush(self.leases, self._changed)

    def expire(self, agent_id: str, endpoint: str) -> bool:
        """End a live listing's life now, as if its TTL had run out (its seller did not answer
        at `endpoint`: `marketplace.liveness`); False when it is not live at that endpoint.
        A live seller's next heartbeat is told to advertise again."""
        check_agent_id(agent_id)
        now = self.clock_ms()
        self.leases.forget(agent_id)
        with self.asked_writes.room(current_caller()), self._serial(), \
                self.engine.begin() as conn:
            row = conn.execute(select(LISTINGS.c.listing).where(
                LISTINGS.c.agent_id == agent_id, LISTINGS.c.expires_at_ms > now)).first()
            if row is None or registry_pb2.Listing.FromString(row.listing).endpoint != endpoint:
                return False
            conn.execute(update(LISTINGS).where(LISTINGS.c.agent_id == agent_id)
                         .values(expires_at_ms=now))
            self._delete_search_rows(conn, [agent_id])
        self._changed()
        return True

    def withdraw(self, agent_id: str) -> None:
        check_agent_id(agent_id)
        self.leases.forget(agent_id)
        with self.asked_writes.room(current_caller()), self._serial(), \
                self.engine.begin() as conn:
            self._delete(conn, [agent_id])
        self._changed()

    def purge_expired(self, limit: int = 1000) -> int:
        """Drop the search rows of listings lapsed since the last sweep (a stranger's listings
        with a short TTL would otherwise lie in every discovery's index range for an hour),
        and delete listings expired more than an hour ago; returns how many of those."""
        now = self.clock_ms()
        with hot.reading(self.engine) as conn:
            since, since_agent = self._unindexed_to
            lapsed = _LAPSED_SINCE.all(conn, {"since": since, "since_agent": since_agent,
                                              "now": now, "limit": limit})
            ids = [r.agent_id for r in _LAPSED.all(conn, {"cutoff": now - PURGE_AFTER_MS,
                                                          "limit": limit})]
        if lapsed:
            with self._serial(), self.engine.begin() as conn:
                self._delete_search_rows(conn, [r.agent_id for r in lapsed], lapsed_by_ms=now)
        # a full batch: the next sweep goes on after its last listing; else after `now`
        self._unindexed_to = (lapsed[-1].expires_at_ms, lapsed[-1].agent_id) \
            if len(lapsed) == limit else (now, _AFTER_EVERY_AGENT)
        if ids:
            with self._serial(), self.engine.begin() as conn:
                self._delete(conn, ids)
        if lapsed or ids:
            self._changed()
        return len(ids)

    # ---- reading --------------------------------------------------------------------------

    def get(self, agent_id: str) -> registry_pb2.Listing:
        with hot.reading(self.engine) as conn:
            return self.get_in(conn, agent_id)

    def get_in(self, conn: Any, agent_id: str) -> registry_pb2.Listing:
        """`get` over a connection the caller reads several things with (a SQLAlchemy one or
        `wallets._sqlite_hot.reading`'s)."""
        row = _LIVE_LISTING.first(conn, {"agent": agent_id, "now": self.clock_ms()})
        if row is None:
            raise NotFound(f"agent {agent_id[:12]}… has no live listing")
        return _decode(row)

    def discover(self, skill: str = "", currency_code: str = "", max_price_atomic: int = 0,
                 limit: int = 20, *, text: str = "", tags: Iterable[str] = (),
                 min_reputation_permille: int = 0,
                 convert_currencies: bool = False) -> list[registry_pb2.Listing]:
        """Live listings matching every filter, ranked (see the module docstring): the first
        `limit` of them, fewer when more would pass MAX_DISCOVER_BYTES."""
        query = Query.build(skill=skill, currency_code=currency_code,
                            max_price_atomic=max_price_atomic, limit=limit, text=text, tags=tags,
                            min_reputation_permille=min_reputation_permille,
                            convert_currencies=convert_currencies)
        now = self.clock_ms()
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            discovery.tune_reader(conn)
            hits = discovery.search(query, conn, self._counts, now_ms=now,
                                    reference=self.reference_currency, fx=self.fx)
            if not hits:
                return []
            marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            rows = {r.agent_id: r for r in conn.exec_driver_sql(
                f"SELECT agent_id, listing, expires_at_ms, reputation_permille, rated_agreements "
                f"FROM {LISTINGS.name} WHERE agent_id IN ({', '.join([marker] * len(hits))})",
                tuple(h.agent_id for h in hits))}
        found, size = [], 0
        for hit in hits:
            row = rows.get(hit.agent_id)
            if row is None or len(row.listing) > MAX_LISTING_BYTES:
                continue  # gone, or larger than a listing may be (stored by an older node)
            size += len(row.listing) + _FRAMING_BYTES
            if size > MAX_DISCOVER_BYTES:
                break
            found.append(_decode(row))
        return found


def _decode(row) -> registry_pb2.Listing:  # type: ignore[no-untyped-def]
    listing = registry_pb2.Listing.FromString(row.listing)
    listing.expires_at_ms = row.expires_at_ms
    listing.reputation_permille = row.reputation_permille
    listing.rated_agreements = row.rated_agreements
    return listing
