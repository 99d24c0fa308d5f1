"""Discovery over 100k listings in one SQLite file: p50 and p99 of a mix of queries.

Builds a deterministic market (seeded random): 100,000 sellers, 1..3 skills each from 2,000 skill
names, descriptions drawn Zipf-like from a 600-word vocabulary, 1..4 of 150 tags, prices per call
(70 %), per 1k tokens (20 %) or per unit (10 %), mostly in USD, some ECNY and USDC; a fifth of the
sellers with an earned reputation. Listings go in through `Registry.advertise_many` (one
transaction per 5,000). Then, in-process against `Registry.discover`, a mix of queries, each
timed alone:

    skill      exact skill name, in USD                                    25 %
    text       one or two words of free text                               25 %
    tags       one or two tags                                             20 %
    price      a currency and a max price, nothing else                    15 %
    combined   text + tag + max price + minimum reputation                 15 %

after 1,000 warm-up queries (steady state: hot pages, token counts cached), and, for comparison,
a thousand of the same queries over gRPC (signed Discover calls to a node serving the same
file), after the same warm-up: a node started on the file begins with cold pages and counts. Run:
`python -m benchmarks.discovery [listings]` (or `make bench`). No figure is asserted.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from marketplace.registry import Registry
from marketplace.v1 import registry_pb2
from wallets.store import make_engine, sqlite_url

LISTINGS = 100_000
QUERIES = 4_000
WARMUP = 1_000
GRPC_QUERIES = 1_000
CHUNK = 5_000
SEED = 4
U = registry_pb2.PriceUnit
SCHEMA = json.dumps({"type": "object", "properties": {"text": {"type": "string"}}})
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "de", "pa", "gu", "be", "zo", "fi"]


def _vocabulary(rng: random.Random, n: int) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


class Market:
    """The generated market's vocabularies, so queries ask for things that exist."""

    def __init__(self, rng: random.Random) -> None:
        self.words = _vocabulary(rng, 600)
        self.tags = [f"t-{w}" for w in _vocabulary(rng, 150)]
        verbs = _vocabulary(rng, 40)
        nouns = _vocabulary(rng, 50)
        self.skills = sorted({f"{v}.{n}" for v in verbs for n in nouns})[:2000]
        self.word_weights = [1 / (i + 1) for i in range(len(self.words))]  # Zipf-like
        self.tag_weights = [1 / (i + 1) ** 0.8 for i in range(len(self.tags))]

    def skill(self, rng: random.Random) -> registry_pb2.Skill:
        words = rng.choices(self.words, self.word_weights, k=rng.randint(6, 16))
        kind = rng.random()
        code = "USD" if rng.random() < 0.8 else rng.choice(["ECNY", "USDC"])
        amount = int(10 ** rng.uniform(3, 7))
        if kind < 0.7:
            price = registry_pb2.Price(amount_atomic=amount, currency=code, unit=U.PRICE_UNIT_CALL)
        elif kind < 0.9:
            price = registry_pb2.Price(amount_atomic=amount, currency=code,
                                       unit=U.PRICE_UNIT_1K_TOKENS,
                                       output_amount_atomic=amount * 3)
        else:
            price = registry_pb2.Price(amount_atomic=amount, currency=code,
                                       unit=U.PRICE_UNIT_UNIT, unit_name="gpu_second",
                                       tiers=[registry_pb2.PriceTier(min_quantity=3600,
                                                                     amount_atomic=amount // 2)])
        return registry_pb2.Skill(
            name=rng.choice(self.skills), description=" ".join(words).capitalize() + ".",
            tags=sorted(set(rng.choices(self.tags, self.tag_weights, k=rng.randint(1, 4)))),
            input_schema_json=SCHEMA, output_schema_json=SCHEMA, prices=[price],
            verification_methods=[1, 4], typical_latency_ms=rng.randint(5, 2000))

    def listing(self, rng: random.Random, i: int) -> registry_pb2.Listing:
        skills: dict[str, registry_pb2.Skill] = {}
        for _ in range(rng.randint(1, 3)):
            skill = self.skill(rng)
            skills[skill.name] = skill
        return registry_pb2.Listing(agent_id=rng.randbytes(32).hex(), name=f"seller-{i}",
                                    endpoint=f"10.0.{i // 250 % 256}.{i % 250}:7000",
                                    skills=list(skills.values()))

    def query(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        roll = rng.random()
        words = rng.choices(self.words, self.word_weights[:len(self.words)], k=2)
        if roll < 0.25:
            return "skill", {"skill": rng.choice(self.skills), "currency_code": "USD"}
        if roll < 0.50:
            return "text", {"text": " ".join(words[:rng.randint(1, 2)])}
        if roll < 0.70:
            return "tags", {"tags": rng.sample(self.tags[:60], rng.randint(1, 2))}
        if roll < 0.85:
            return "price", {"currency_code": rng.choice(["USD", "ECNY"]),
                             "max_price_atomic": int(10 ** rng.uniform(3, 6))}
        return "combined", {"text": words[0], "tags": [rng.choice(self.tags[:30])],
                            "currency_code": "USD",
                            "max_price_atomic": int(10 ** rng.uniform(4, 7)),
                            "min_reputation_permille": rng.choice([300, 500, 800])}


def populate(registry: Registry, market: Market, rng: random.Random, n: int,
             say: Callable[[str], None]) -> float:
    """Insert n listings; returns listings per second (advertise_many only, not generating)."""
    elapsed = 0.0
    for first in range(0, n, CHUNK):
        batch = [market.listing(rng, i) for i in range(first, min(n, first + CHUNK))]
        start = time.perf_counter()
        registry.advertise_many(batch, ttl_s=86_400)
        elapsed += time.perf_counter() - start
        say(f"discovery: {min(n, first + CHUNK):,} listings")
    with registry.engine.begin() as conn:  # a fifth of the sellers have earned a reputation
        ids = [r[0] for r in conn.execute(text("SELECT agent_id FROM registry_listings"))]
        rated = [{"a": a, "r": rng.randint(0, 1000)} for a in rng.sample(ids, len(ids) // 5)]
        conn.execute(text("UPDATE registry_offers SET reputation_permille = :r "
                          "WHERE agent_id = :a"), rated)
        conn.execute(text("UPDATE registry_listings SET reputation_permille = :r, "
                          "rated_agreements = 10 WHERE agent_id = :a"), rated)
        conn.execute(text("UPDATE registry_terms SET reputation_permille = :r WHERE offer_id IN "
                          "(SELECT id FROM registry_offers WHERE agent_id = :a)"), rated)
    return n / elapsed


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(registry: Registry, market: Market, rng: random.Random,
            n: int) -> tuple[dict[str, list[float]], list[int]]:
    for _ in range(WARMUP):
        registry.discover(**market.query(rng)[1])
    timings: dict[str, list[float]] = {}
    found: list[int] = []
    for _ in range(n):
        kind, query = market.query(rng)
        start = time.perf_counter()
        result = registry.discover(**query)
        timings.setdefault(kind, []).append((time.perf_counter() - start) * 1000)
        found.append(len(result))
    return timings, found


def measure_grpc(path: Path, market: Market, rng: random.Random, n: int) -> list[float]:
    from marketplace.auth import signed_channel
    from marketplace.identity import AgentKey
    from marketplace.node import MarketplaceNode
    from marketplace.v1 import registry_pb2_grpc

    node = MarketplaceNode(sqlite_url(path), sweep_interval_s=3600,
                           rate_limit_per_s=1e6).start()  # one client, as fast as it can
    channel = signed_channel(node.address, AgentKey.generate())
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    timings = []
    try:
        for i in range(WARMUP + n):
            _, query = market.query(rng)
            request = registry_pb2.DiscoverRequest(
                skill=query.get("skill", ""), currency=query.get("currency_code", ""),
                max_price_atomic=query.get("max_price_atomic", 0), text=query.get("text", ""),
                tags=query.get("tags", []),
                min_reputation_permille=query.get("min_reputation_permille", 0))
            start = time.perf_counter()
            stub.Discover(request, timeout=10)
            if i >= WARMUP:
                timings.append((time.perf_counter() - start) * 1000)
    finally:
        channel.close()
        node.stop(0)
    return timings


def run(progress: Any = None, *, listings: int = LISTINGS, queries: int = QUERIES,
        grpc_queries: int = GRPC_QUERIES) -> dict[str, Any]:
    say = progress or (lambda _text: None)
    rng = random.Random(SEED)
    market = Market(rng)
    with tempfile.TemporaryDirectory(prefix="agentmarket-discovery-") as tmp:
        path = Path(tmp) / "registry.db"
        engine = make_engine(sqlite_url(path))
        registry = Registry(engine)
        inserted_per_s = populate(registry, market, rng, listings, say)
        say("discovery: querying")
        timings, found = measure(registry, market, rng, queries)
        engine.dispose()
        say("discovery: over gRPC")
        over_grpc = measure_grpc(path, market, rng, grpc_queries) if grpc_queries else []
        size_mb = path.stat().st_size / 1e6
    every = [t for kind in timings.values() for t in kind]
    results: dict[str, Any] = {
        "discover_listings": listings,
        "discover_cores": os.cpu_count(),
        "discover_insert_listings_per_s": round(inserted_per_s),
        "discover_db_mb": round(size_mb, 1),
        "discover_p50_ms_100k": round(statistics.median(every), 3),
        "discover_p99_ms_100k": round(_percentile(every, 0.99), 3),
        "discover_mean_results": round(statistics.mean(found), 1),
    }
    for kind, values in sorted(timings.items()):
        results[f"discover_{kind}_p99_ms"] = round(_percentile(values, 0.99), 3)
    if over_grpc:
        results["discover_grpc_p50_ms"] = round(statistics.median(over_grpc), 3)
        results["discover_grpc_p99_ms"] = round(_percentile(over_grpc, 0.99), 3)
    return results


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else LISTINGS
    for name, value in run(lambda text: print(text, file=sys.stderr), listings=count).items():
        print(f"{name}: {value}")
