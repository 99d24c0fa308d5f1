"""Listings made to hurt the registry's other users, refused at Advertise or kept harmless.

Agent keys cost nothing, so any of these is one stranger's doing: listings big enough that a
Discover answer no longer reaches buyers (a listing is bounded as a whole, and an answer stops
before the 4 MiB a gRPC client receives), schemas whose `$ref` sends every validator to a
remote address or round a loop until Python's recursion limit, and endpoints nobody can dial.
Each refusal is INVALID_ARGUMENT with nothing stored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import grpc
import pytest
from pydantic import BaseModel
from sqlalchemy import Engine

from marketplace import listing_checks
from marketplace import registry as registry_module
from marketplace.agreements import check_terms
from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from marketplace.listing_checks import MAX_DISCOVER_BYTES, MAX_LISTING_BYTES
from marketplace.node import MarketplaceNode
from marketplace.registry import Registry
from marketplace.testing import M, make_listing, make_skill, make_terms
from marketplace.v1 import registry_pb2, registry_pb2_grpc
from wallets.errors import AgentmarketError, NotFound
from wallets.store import make_engine

DEFAULT_CLIENT_BYTES = 4 * 1024 * 1024  # what a gRPC client receives unless told otherwise


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarketplaceNode]:
    path = tmp_path_factory.mktemp("registry") / "m.db"
    with MarketplaceNode(f"sqlite:///{path}", sweep_interval_s=3600) as node:
        yield node


def _advertise(node: MarketplaceNode, key: AgentKey,
               listing: registry_pb2.Listing) -> registry_pb2.AdvertiseResponse:
    """Advertise over a default client (no larger message limits than gRPC's own)."""
    with signed_channel(node.address, key) as channel:
        return registry_pb2_grpc.RegistryServiceStub(channel).Advertise(
            registry_pb2.AdvertiseRequest(idempotency_key=f"advertise:{uuid.uuid4()}",
                                          listing=listing), timeout=30)


def _refused(node: MarketplaceNode, key: AgentKey, listing: registry_pb2.Listing) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        _advertise(node, key, listing)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(NotFound):
        node.registry.get(key.agent_id)
    return caught.value.details() or ""


def _bulky(name: str, schema_bytes: int, *, price_atomic: int = 1) -> registry_pb2.Skill:
    skill = make_skill(name, price_atomic=price_atomic)
    skill.input_schema_json = skill.output_schema_json = json.dumps(
        {"type": "object", "description": "x" * schema_bytes})
    return skill


# ---- size -------------------------------------------------------------------------------------


def test_a_listing_larger_than_the_limit_is_refused_as_a_whole(node: MarketplaceNode) -> None:
    """Two free keys, each with a 3.5 MB listing of filler skills that also sells `target`
    cheapest, made every Discover of `target` larger than buyers could receive."""
    for _ in range(2):
        key = AgentKey.generate()
        listing = make_listing(key, make_skill("target", price_atomic=1),
                               *(_bulky(f"filler{i}", 60_000) for i in range(29)))
        assert listing.ByteSize() > 3_000_000
        assert str(MAX_LISTING_BYTES) in _refused(node, key, listing)
    just_over = make_listing(key := AgentKey.generate(), *(
        _bulky(f"filler{i}", 33_000) for i in range(4)))
    assert MAX_LISTING_BYTES < just_over.ByteSize() < 2 * MAX_LISTING_BYTES
    _refused(node, key, just_over)
    honest = AgentKey.generate()
    _advertise(node, honest, make_listing(honest, make_skill("target", price_atomic=5)))
    with signed_channel(node.address, honest) as channel:
        found = registry_pb2_grpc.RegistryServiceStub(channel).Discover(
            registry_pb2.DiscoverRequest(skill="target"), timeout=30)
    assert [listing.agent_id for listing in found.listings] == [honest.agent_id]


def test_a_discover_page_of_large_listings_fits_a_default_client(node: MarketplaceNode) -> None:
    """Twenty allowed listings of ~240 KiB each are 4.8 MB: the answer holds the cheapest
    that fit in MAX_DISCOVER_BYTES, in rank order."""
    keys = [AgentKey.generate() for _ in range(20)]
    listings = [make_listing(key, *(_bulky(f"heavy{i}", 29_000, price_atomic=100 + n)
                                    for i in range(4)), name=f"heavy-{n:02}")
                for n, key in enumerate(keys)]
    assert all(200 * 1024 < listing.ByteSize() <= MAX_LISTING_BYTES for listing in listings)
    assert sum(listing.ByteSize() for listing in listings) > DEFAULT_CLIENT_BYTES
    node.registry.advertise_many(listings, 600)
    with signed_channel(node.address, keys[0]) as channel:
        found = registry_pb2_grpc.RegistryServiceStub(channel).Discover(
            registry_pb2.DiscoverRequest(skill="heavy0", limit=20), timeout=30)
    assert found.ByteSize() <= MAX_DISCOVER_BYTES < DEFAULT_CLIENT_BYTES
    assert 10 <= len(found.listings) < 20
    assert [listing.name for listing in found.listings] == [
        f"heavy-{n:02}" for n in range(len(found.listings))]


def test_a_listing_stored_before_the_limit_is_left_out(engine: Engine, clock,  # type: ignore[no-untyped-def]
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(engine, clock_ms=clock)
    monkeypatch.setattr(listing_checks, "MAX_LISTING_BYTES", 8 * 1024 * 1024)
    old = make_listing(AgentKey.generate(), make_skill("target", price_atomic=1),
                       *(_bulky(f"filler{i}", 60_000) for i in range(29)), name="old")
    registry.advertise(old, 600)
    monkeypatch.undo()
    registry.advertise(make_listing(AgentKey.generate(), make_skill("target", price_atomic=5),
                                    name="honest"), 600)
    assert [listing.name for listing in registry.discover("target")] == ["honest"]


# ---- schemas ----------------------------------------------------------------------------------


class _Node(BaseModel):
    name: str
    children: list[_Node] = []


@pytest.mark.parametrize("schema", [
    {"$ref": "#"},
    {"properties": {"text": {"$ref": "#"}}},
    {"$ref": "http://169.254.169.254/latest/meta-data"},
    {"$ref": "other.json#/$defs/a"},
    {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    {"$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"not": {"$ref": "#/$defs/a"}}},
     "properties": {"text": {"$ref": "#/$defs/a"}}},
    {"$defs": {"a": {"$id": "urn:a", "$defs": {"b": {"$ref": "#/$defs/b"}},
                     "$ref": "#/$defs/b"}}, "$ref": "#/$defs/a"},
    {"$ref": "#/$defs/missing"},
    {"description": "text", "$ref": "#/description"},
    {"$dynamicRef": "#meta"},
], ids=["root", "root-below-a-property", "remote", "relative", "self", "loop", "loop-in-id",
        "missing", "not-a-schema", "dynamic"])
def test_schemas_whose_refs_leave_the_schema_or_loop_in_place_are_refused(
        node: MarketplaceNode, schema: dict) -> None:
    key = AgentKey.generate()
    details = _refused(node, key, make_listing(key, make_skill("echo", output_schema=schema)))
    assert "not a valid JSON Schema" in details


def test_recursive_models_are_still_welcome(node: MarketplaceNode) -> None:
    """A reference loop that reads deeper into the value each time ends with the value."""
    key = AgentKey.generate()
    _advertise(node, key, make_listing(key, make_skill(
        "tree", output_schema=_Node.model_json_schema())))
    assert node.registry.get(key.agent_id).skills[0].name == "tree"


# ---- endpoints --------------------------------------------------------------------------------


BAD_ENDPOINTS = ["127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:65536", ":::1", "::1:80",
                 "[::1]", "[::1:80", "[zz::1]:80", "host:", ":80", "-bad.example:80",
                 "a..b:80", "999.1.1.1:80", "1.2.3:80", "host:80\n", "x" * 250 + ".com:80"]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_endpoints_nobody_can_dial_are_refused(node: MarketplaceNode, endpoint: str) -> None:
    key = AgentKey.generate()
    assert "host:port" in _refused(node, key, make_listing(key, endpoint=endpoint))


@pytest.mark.parametrize("endpoint", ["127.0.0.1:1", "[::1]:65535", "localhost:50051",
                                      "seller-1.example.com:443", "[2001:db8::7]:8443"])
def test_dialable_endpoints_are_accepted(node: MarketplaceNode, endpoint: str) -> None:
    key = AgentKey.generate()
    assert _advertise(node, key, make_listing(key, endpoint=endpoint)).listing.endpoint \
        == endpoint


@pytest.mark.parametrize("endpoint", ["127.0.0.1:0", ":::1", "127.0.0.1:99999"])
def test_a_verifier_endpoint_follows_the_same_rule(endpoint: str) -> None:
    terms = make_terms(method=M.VERIFICATION_METHOD_THIRD_PARTY, max_total_atomic=10_000,
                       verifier={"agent_id": AgentKey.generate().agent_id,
                                 "endpoint": endpoint})
    with pytest.raises(AgentmarketError) as caught:
        check_terms(terms)
    assert caught.value.status == "INVALID_ARGUMENT" and "verifier.endpoint" in str(caught.value)


# ---- cost: what one Advertise writes, and what a lapsed listing leaves behind ---------------


def _words_listing(key: AgentKey, skills: int, currencies: tuple[str, ...], words: int,
                   *, price_atomic: int = 1, description: str = "") -> registry_pb2.Listing:
    """A listing of `skills` skills, each priced in `currencies` and described in `words`
    words (plus `description`), with 8 tags: as many search rows as the limits allowed."""
    made = []
    for i in range(skills):
        skill = make_skill(f"s{i}", price_atomic=price_atomic, description=" ".join(
            [description, *(f"w{j}" for j in range(words))]).strip())
        del skill.tags[:]
        skill.tags.extend(f"t{j}" for j in range(8))
        del skill.prices[:]
        for code in currencies:
            skill.prices.add().CopyFrom(make_skill(price_atomic=price_atomic,
                                                   currency=code).prices[0])
        made.append(skill)
    return make_listing(key, *made)


def test_a_listing_found_through_too_many_search_rows_is_refused(node: MarketplaceNode) -> None:
    """Each (skill, price) repeats its skill's search tokens: 50 skills in 8 currencies with 48
    words and 28 tag pairs were 30,400 rows, all rewritten by every Advertise under the node's
    one SQLite writer (hundreds of times an honest posting's work). A large honest listing
    (6,000 rows) still goes in."""
    key = AgentKey.generate()
    huge = _words_listing(key, 50, ("USD", "USDC", "ECNY"), 48)
    assert "search rows" in _refused(node, key, huge)
    assert _advertise(node, key, _words_listing(key, 50, ("USD", "USDC"), 15)).listing.skills


def _vm_steps(engine: Engine, run) -> int:  # type: ignore[no-untyped-def]
    """The SQLite virtual machine steps `run` takes on the engine's connections (a count of
    work done, not a time)."""
    from sqlalchemy import event

    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    def counting(dbapi_connection, *_args) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.set_progress_handler(tick, 1)

    def stopped(dbapi_connection, *_args) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.set_progress_handler(None, 1)

    event.listen(engine, "checkout", counting)
    event.listen(engine, "checkin", stopped)
    try:
        run()
    finally:
        event.remove(engine, "checkout", counting)
        event.remove(engine, "checkin", stopped)
    return steps[0]


def test_lapsed_listings_leave_nothing_for_discovery_to_walk(tmp_path, clock, monkeypatch  # type: ignore[no-untyped-def]
                                                            ) -> None:
    """Free keys advertised the cheapest offers for a word with a 10 s TTL; lapsed, their rows
    stayed in the search index for an hour and every honest Discover for that word walked
    them (6,069 SQLite steps with 20 such listings, 24,069 with 80, against 68). After the
    sweep that follows their lapse, they cost nothing; a listing advertised again between the
    sweep's look and its delete keeps its new rows. (SQLite: its steps are counted.)"""
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(engine, clock_ms=clock)
    honest = AgentKey.generate()
    registry.advertise(make_listing(honest, make_skill(
        "translate", price_atomic=1_000, description="translate text")), ttl_s=86_400)

    def discover() -> None:
        found = registry.discover(text="translate", currency_code="USD", limit=5)
        assert [x.agent_id for x in found] == [honest.agent_id]

    costs, made = [], 0
    for spammers in (0, 20, 80):
        for _ in range(spammers - made):
            registry.advertise(_words_listing(AgentKey.generate(), 20, ("USD",), 10,
                                              description="translate"), ttl_s=10)
        made = spammers
        clock.advance(11)
        registry.purge_expired()  # the node's sweeper, once a second
        discover()
        costs.append(_vm_steps(engine, discover))
    assert costs[2] <= costs[0] * 1.5, costs
    back = AgentKey.generate()
    registry.advertise(_words_listing(back, 1, ("USD",), 1, description="translate"), ttl_s=10)
    clock.advance(11)
    looked = registry_module._LAPSED_SINCE

    class AdvertisedAgainAfterTheLook:
        @staticmethod
        def all(conn, params):  # type: ignore[no-untyped-def]
            lapsed = looked.all(conn, params)
            assert back.agent_id in [row.agent_id for row in lapsed]
            registry.advertise(_words_listing(back, 1, ("USD",), 1, description="translate"),
                               ttl_s=60)
            return lapsed

    monkeypatch.setattr(registry_module, "_LAPSED_SINCE", AdvertisedAgainAfterTheLook)
    registry.purge_expired()
    assert back.agent_id in [x.agent_id for x in registry.discover(
        text="translate", currency_code="USD", limit=5)]
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("taken_by", ["the sweep", "a liveness check"])
def test_a_heartbeat_racing_the_removal_of_its_search_rows_asks_for_a_new_advertise(
        postgres_url: str, clock, taken_by: str) -> None:  # type: ignore[no-untyped-def]
    """Two nodes over one PostgreSQL: a heartbeat at the edge of its listing's TTL (or as
    another node's liveness check expires it) read its clock, then the sweep (or the check)
    removed the search rows and committed first. The heartbeat still succeeded, so the seller
    never advertised again: live and unfindable. Now the heartbeat is told to advertise again
    (NOT_FOUND), and advertising makes the listing findable. (SQLite: one writer at a time,
    the clock is read inside the heartbeat's turn.)"""
    from tests.conftest import postgres_schema

    with postgres_schema(postgres_url) as url:
        registry = Registry(make_engine(url), clock_ms=clock)
        key = AgentKey.generate()

        def advertise() -> None:
            registry.advertise(make_listing(key, make_skill(
                "translate", price_atomic=5, description="translate text")), ttl_s=10)

        def findable() -> bool:
            return key.agent_id in [x.agent_id for x in registry.discover(
                text="translate", currency_code="USD", limit=5)]

        advertise()
        clock.advance(10 if taken_by == "the sweep" else 5)

        def removed_meanwhile() -> int:  # the heartbeat's clock; the removal commits first
            registry.clock_ms = clock
            if taken_by == "the sweep":
                registry.purge_expired()
            else:
                assert registry.expire(key.agent_id, make_listing(key, make_skill()).endpoint)
            return clock() - 1

        registry.clock_ms = removed_meanwhile  # type: ignore[method-assign]
        with pytest.raises(NotFound, match="advertise again"):
            registry.heartbeat(key.agent_id)
        assert not findable()
        advertise()
        assert findable()
        registry.engine.dispose()


def test_lapsed_listings_of_one_expiry_beyond_a_sweeps_batch_do_not_stall_it(
        tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    """More listings lapsing in the same millisecond than a sweep takes kept its cursor on
    that millisecond for good: listings lapsing later kept their search rows for an hour."""
    from sqlalchemy import select

    from marketplace.discovery import OFFERS

    registry = Registry(make_engine(f"sqlite:///{tmp_path / 'r.db'}"), clock_ms=clock)
    registry.advertise_many([make_listing(AgentKey.generate(), make_skill(
        "other", description="other")) for _ in range(3)], ttl_s=10)  # one expiry for three
    clock.advance(5)
    late = AgentKey.generate()
    registry.advertise(make_listing(late, make_skill("translate", description="translate")),
                       ttl_s=10)
    clock.advance(20)
    for _ in range(3):
        registry.purge_expired(limit=2)
        clock.advance(1)
    with registry.engine.connect() as conn:
        assert conn.execute(select(OFFERS.c.agent_id)).scalars().all() == []
    registry.engine.dispose()
