"""The registry: sellers advertise listings with priced skills; buyers discover them.

Listings live `ttl_s` seconds past their last advertise or heartbeat. Discovery filters on an
indexed (skill, currency, price) table and ranks cheapest first, then by reputation (earned from
settled agreements, see `marketplace.reputation`), then by agent id for a stable order.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from sqlalchemy import Engine, delete, insert, select, update
from sqlmodel import SQLModel

from marketplace.errors import InvalidArgument, NotFound
from marketplace.identity import check_agent_id
from marketplace.reputation import ESCROWS, reputation_permille
from marketplace.tables import ListingRow, SkillPriceRow
from marketplace.v1 import registry_pb2
from wallets.currencies import MAX_AMOUNT_ATOMIC, currency
from wallets.store import WriteSerializer

LISTINGS = ListingRow.__table__  # type: ignore[attr-defined]
PRICES = SkillPriceRow.__table__  # type: ignore[attr-defined]
_SKILL_NAME = re.compile(r"^[a-z0-9_.-]{1,64}$")
_ENDPOINT = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}:\d{1,5}$")
MAX_SKILLS = 50
MAX_DESCRIPTION = 2000
MAX_SCHEMA_BYTES = 64 * 1024
TTL_DEFAULT_S, TTL_MIN_S, TTL_MAX_S = 60, 10, 86_400


def check_schema(text: str, field: str) -> dict:
    """Parse a JSON Schema and check it is one; an empty text means 'anything'."""
    if not text:
        return {}
    if len(text) > MAX_SCHEMA_BYTES:
        raise InvalidArgument(f"{field} is larger than {MAX_SCHEMA_BYTES} bytes")
    try:
        schema = json.loads(text)
        validator_for(schema).check_schema(schema)
    except (ValueError, SchemaError) as error:
        raise InvalidArgument(f"{field} is not a valid JSON Schema: {error}") from None
    return schema


def check_listing(listing: registry_pb2.Listing) -> None:
    check_agent_id(listing.agent_id)
    if not _ENDPOINT.match(listing.endpoint):
        raise InvalidArgument(f"endpoint {listing.endpoint!r} must be host:port")
    if not 1 <= len(listing.skills) <= MAX_SKILLS:
        raise InvalidArgument(f"a listing needs 1..{MAX_SKILLS} skills")
    names = set()
    for skill in listing.skills:
        if not _SKILL_NAME.match(skill.name):
            raise InvalidArgument(f"skill name {skill.name!r} must match [a-z0-9_.-]{{1,64}}")
        if skill.name in names:
            raise InvalidArgument(f"skill {skill.name!r} appears twice")
        names.add(skill.name)
        if len(skill.description) > MAX_DESCRIPTION:
            raise InvalidArgument(f"skill {skill.name}: description is too long")
        check_schema(skill.input_schema_json, f"skill {skill.name}: input_schema_json")
        check_schema(skill.output_schema_json, f"skill {skill.name}: output_schema_json")
        if not skill.prices:
            raise InvalidArgument(f"skill {skill.name} has no price")
        for price in skill.prices:
            price.currency = currency(price.currency).code
            if not 0 < price.amount_atomic <= MAX_AMOUNT_ATOMIC:
                raise InvalidArgument(f"skill {skill.name}: price must be positive")
            if price.unit == registry_pb2.PRICE_UNIT_UNSPECIFIED:
                raise InvalidArgument(f"skill {skill.name}: price unit is required")


class Registry:
    def __init__(self, engine: Engine, *, clock_ms: Callable[[], int] | None = None) -> None:
        self.engine = engine
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._serial = WriteSerializer(engine)
        SQLModel.metadata.create_all(engine, tables=[LISTINGS, PRICES, ESCROWS])

    def advertise(self, listing: registry_pb2.Listing, ttl_s: int = 0) -> registry_pb2.Listing:
        """Create or replace the seller's listing (re-advertising is idempotent)."""
        ttl_s = ttl_s or TTL_DEFAULT_S
        if not TTL_MIN_S <= ttl_s <= TTL_MAX_S:
            raise InvalidArgument(f"ttl_s must be {TTL_MIN_S}..{TTL_MAX_S}")
        stored = registry_pb2.Listing()
        stored.CopyFrom(listing)
        check_listing(stored)
        now = self.clock_ms()
        stored.expires_at_ms = now + ttl_s * 1000
        stored.reputation_permille = 0
        blob = stored.SerializeToString()
        with self._serial(), self.engine.begin() as conn:
            conn.execute(delete(PRICES).where(PRICES.c.agent_id == stored.agent_id))
            conn.execute(delete(LISTINGS).where(LISTINGS.c.agent_id == stored.agent_id))
            conn.execute(insert(LISTINGS).values(agent_id=stored.agent_id, listing=blob,
                                                 expires_at_ms=stored.expires_at_ms,
                                                 updated_at_ms=now))
            conn.execute(insert(PRICES), [
                dict(agent_id=stored.agent_id, skill=s.name, currency=p.currency, unit=p.unit,
                     price_atomic=p.amount_atomic)
                for s in stored.skills for p in s.prices
            ])
        stored.reputation_permille = reputation_permille(self.engine, stored.agent_id)
        return stored

    def heartbeat(self, agent_id: str, ttl_s: int = TTL_DEFAULT_S) -> int:
        check_agent_id(agent_id)
        expires = self.clock_ms() + ttl_s * 1000
        with self._serial(), self.engine.begin() as conn:
            result = conn.execute(update(LISTINGS).where(
                LISTINGS.c.agent_id == agent_id, LISTINGS.c.expires_at_ms > self.clock_ms()
            ).values(expires_at_ms=expires))
        if result.rowcount != 1:
            raise NotFound(f"agent {agent_id[:12]}… has no live listing; advertise again")
        return expires

    def withdraw(self, agent_id: str) -> None:
        check_agent_id(agent_id)
        with self._serial(), self.engine.begin() as conn:
            conn.execute(delete(PRICES).where(PRICES.c.agent_id == agent_id))
            conn.execute(delete(LISTINGS).where(LISTINGS.c.agent_id == agent_id))

    def get(self, agent_id: str) -> registry_pb2.Listing:
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            row = conn.execute(select(LISTINGS).where(
                LISTINGS.c.agent_id == agent_id, LISTINGS.c.expires_at_ms > self.clock_ms()
            )).first()
        if row is None:
            raise NotFound(f"agent {agent_id[:12]}… has no live listing")
        return self._decode(row)

    def discover(self, skill: str = "", currency_code: str = "", max_price_atomic: int = 0,
                 limit: int = 20) -> list[registry_pb2.Listing]:
        limit = limit or 20
        if not 1 <= limit <= 100:
            raise InvalidArgument("limit must be 1..100")
        if max_price_atomic < 0:
            raise InvalidArgument("max_price_atomic must not be negative")
        if max_price_atomic and not currency_code:
            raise InvalidArgument("max_price_atomic needs a currency")
        query = (select(LISTINGS, PRICES.c.price_atomic)
                 .join(PRICES, PRICES.c.agent_id == LISTINGS.c.agent_id)
                 .where(LISTINGS.c.expires_at_ms > self.clock_ms())
                 .order_by(PRICES.c.price_atomic, LISTINGS.c.agent_id))
        if skill:
            query = query.where(PRICES.c.skill == skill)
        if currency_code:
            query = query.where(PRICES.c.currency == currency(currency_code).code)
        if max_price_atomic:
            query = query.where(PRICES.c.price_atomic <= max_price_atomic)
        seen: dict[str, tuple[int, registry_pb2.Listing]] = {}
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            for row in conn.execute(query.limit(limit * 4)):
                if row.agent_id not in seen:
                    seen[row.agent_id] = (row.price_atomic, self._decode(row))
        ranked = sorted(seen.values(),
                        key=lambda pl: (pl[0], -pl[1].reputation_permille, pl[1].agent_id))
        return [listing for _, listing in ranked[:limit]]

    def _decode(self, row) -> registry_pb2.Listing:  # type: ignore[no-untyped-def]
        listing = registry_pb2.Listing.FromString(row.listing)
        listing.expires_at_ms = row.expires_at_ms
        listing.reputation_permille = reputation_permille(self.engine, listing.agent_id)
        return listing
