"""The registry: listings live by heartbeat, re-advertising is idempotent, and discovery filters
by skill, text, tags, price (across currencies with FX) and earned reputation, ranked."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select

from marketplace.discovery import OFFERS, TERMS, FxConverter
from marketplace.identity import AgentKey
from marketplace.registry import Registry
from marketplace.testing import Harness, make_listing, make_skill
from marketplace.v1 import registry_pb2
from wallets.errors import AgentmarketError
from wallets.fx import FixedRateProvider

TOKENS = registry_pb2.PRICE_UNIT_1K_TOKENS


@pytest.fixture
def registry(engine: Engine, clock) -> Registry:  # type: ignore[no-untyped-def]
    return Registry(engine, clock_ms=clock)


def _ids(listings: list[registry_pb2.Listing]) -> list[str]:
    return [listing.name for listing in listings]


def _seller(registry: Registry, name: str, *skills: registry_pb2.Skill,
            ttl_s: int = 60) -> AgentKey:
    key = AgentKey.generate()
    registry.advertise(make_listing(key, *skills, name=name), ttl_s)
    return key


def _count(registry: Registry, table) -> int:  # type: ignore[no-untyped-def]
    with registry.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


# ---- lifetime ---------------------------------------------------------------------------------


def test_advertise_is_idempotent_and_replaces(registry: Registry, clock):  # type: ignore[no-untyped-def]
    key = AgentKey.generate()
    listing = make_listing(key, make_skill("echo"), make_skill("shout"), name="s")
    first = registry.advertise(listing, 60)
    offers, terms = _count(registry, OFFERS), _count(registry, TERMS)
    again = registry.advertise(listing, 60)
    assert again == first
    assert (_count(registry, OFFERS), _count(registry, TERMS)) == (offers, terms)
    assert first.expires_at_ms == clock() + 60_000 and first.reputation_permille == 0
    registry.advertise(make_listing(key, make_skill("shout"), name="s"), 60)
    assert registry.discover("echo") == [] and _ids(registry.discover("shout")) == ["s"]


def test_listings_expire_without_heartbeats(registry: Registry, clock):  # type: ignore[no-untyped-def]
    key = _seller(registry, "s", make_skill(), ttl_s=30)
    clock.advance(20)
    assert registry.heartbeat(key.agent_id) == clock() + 30_000  # the advertised ttl
    assert registry.flush_leases() == 1  # the node's `LeaseFlusher` writes it within 0.5 s
    clock.advance(29)
    assert _ids(registry.discover("echo")) == ["s"]
    clock.advance(2)
    assert registry.discover("echo") == [] and registry.discover(text="echo") == []
    with pytest.raises(AgentmarketError) as caught:
        registry.heartbeat(key.agent_id)
    assert caught.value.status == "NOT_FOUND"
    assert registry.purge_expired() == 0  # kept an hour, in case it comes back
    clock.advance(3600)
    assert registry.purge_expired() == 1
    assert _count(registry, OFFERS) == _count(registry, TERMS) == 0


def test_withdraw_removes_at_once(registry: Registry):
    key = _seller(registry, "s", make_skill())
    registry.withdraw(key.agent_id)
    registry.withdraw(key.agent_id)  # again: still fine
    assert registry.discover() == []
    with pytest.raises(AgentmarketError):
        registry.get(key.agent_id)


# ---- filters ----------------------------------------------------------------------------------


@pytest.fixture
def shelf(registry: Registry) -> Registry:
    _seller(registry, "summarizer", make_skill(
        "summarize", price_atomic=300, description="Summarise long documents into bullet "
        "points.", tags=["text", "nlp"]))
    _seller(registry, "translator", make_skill(
        "translate.fr", price_atomic=200, description="Translate English documents to French.",
        tags=["text", "translation"]))
    _seller(registry, "ocr", make_skill(
        "ocr", price_atomic=100, description="Read the text of scanned pages.",
        tags=["vision", "documents"], unit=registry_pb2.PRICE_UNIT_UNIT, unit_name="page"))
    _seller(registry, "chat", make_skill(
        "chat", price_atomic=50, output_price_atomic=100, unit=TOKENS,
        description="Chat about documents.", tags=["llm"]))
    return registry


def test_discovery_by_text_is_every_word_case_insensitive(shelf: Registry):
    assert _ids(shelf.discover(text="Documents")) == ["ocr", "chat", "translator", "summarizer"]
    assert _ids(shelf.discover(text="the DOCUMENTS, in French!")) == ["translator"]
    assert _ids(shelf.discover(text="bullet")) == ["summarizer"]
    assert _ids(shelf.discover(text="translate")) == ["translator"]  # from the skill's name
    assert shelf.discover(text="bullet french") == []
    assert _ids(shelf.discover(text="the of")) == _ids(shelf.discover())  # no usable word


def test_discovery_by_tags_needs_all_of_them(shelf: Registry):
    assert _ids(shelf.discover(tags=["text"])) == ["translator", "summarizer"]
    assert _ids(shelf.discover(tags=["TEXT", "nlp"])) == ["summarizer"]
    assert shelf.discover(tags=["text", "vision"]) == []
    assert _ids(shelf.discover(text="documents", tags=["vision"])) == ["ocr"]


def test_discovery_by_skill_price_and_limit(shelf: Registry):
    assert _ids(shelf.discover("ocr")) == ["ocr"]
    assert _ids(shelf.discover(currency_code="USD", max_price_atomic=200)) == [
        "ocr", "chat", "translator"]  # chat: 50 in + 100 out per 1k tokens = 150
    assert _ids(shelf.discover(currency_code="USD", limit=2)) == ["ocr", "chat"]
    assert shelf.discover(currency_code="ECNY") == []


def test_ranking_breaks_price_ties_by_reputation_latency_then_id(registry: Registry):
    fast = _seller(registry, "fast", make_skill(price_atomic=100, latency_ms=50))
    slow = _seller(registry, "slow", make_skill(price_atomic=100, latency_ms=500))
    _seller(registry, "dear", make_skill(price_atomic=101))
    assert _ids(registry.discover("echo", "USD")) == ["fast", "slow", "dear"]
    from marketplace.reputation import record_outcome

    with registry.engine.begin() as conn:
        record_outcome(conn, slow.agent_id, 1000)
    assert _ids(registry.discover("echo", "USD")) == ["slow", "fast", "dear"]
    assert _ids(registry.discover("echo", "USD", min_reputation_permille=1)) == ["slow"]
    assert registry.discover("echo")[0].reputation_permille == 1000
    assert fast.agent_id != slow.agent_id


def test_a_listing_appears_once_at_its_best_match(registry: Registry):
    _seller(registry, "multi", make_skill("a", price_atomic=500, tags=["x"]),
            make_skill("b", price_atomic=100, tags=["x"]))
    _seller(registry, "single", make_skill("c", price_atomic=300, tags=["x"]))
    assert _ids(registry.discover(tags=["x"], currency_code="USD")) == ["multi", "single"]


def test_prices_in_other_currencies_convert_through_fx(engine: Engine, clock):  # type: ignore[no-untyped-def]
    fx = FxConverter(FixedRateProvider({"USD": "1", "USDC": "1", "ECNY": "7"}), clock)
    registry = Registry(engine, clock_ms=clock, fx=fx)
    _seller(registry, "usd", make_skill(price_atomic=1_000))
    _seller(registry, "ecny", make_skill(price_atomic=6_300, currency="ECNY"))  # 900 USD
    _seller(registry, "dear-ecny", make_skill(price_atomic=14_000, currency="ECNY"))  # 2000
    assert _ids(registry.discover("echo", "USD")) == ["usd"]  # priced in USD only
    assert _ids(registry.discover("echo", "USD", convert_currencies=True)) == [
        "ecny", "usd", "dear-ecny"]
    assert _ids(registry.discover("echo", "USD", 1_000, convert_currencies=True)) == [
        "ecny", "usd"]
    assert _ids(registry.discover("echo")) == ["ecny", "usd", "dear-ecny"]  # ranked in USD
    without = Registry(engine, clock_ms=clock)
    assert _ids(without.discover("echo")) == ["usd", "ecny", "dear-ecny"]  # USD first
    with pytest.raises(AgentmarketError) as caught:
        without.discover("echo", "USD", convert_currencies=True)
    assert caught.value.status == "FAILED_PRECONDITION"


@pytest.mark.parametrize("query", [
    {"limit": 101}, {"max_price_atomic": 5}, {"max_price_atomic": -1, "currency_code": "USD"},
    {"text": "x" * 201}, {"tags": ["Not a tag!"]}, {"tags": [f"t{i}" for i in range(9)]},
    {"min_reputation_permille": 1001}, {"currency_code": "XYZ"}])
def test_bad_queries_are_refused(registry: Registry, query: dict):
    with pytest.raises(AgentmarketError) as caught:
        registry.discover(**query)
    assert caught.value.status == "INVALID_ARGUMENT"


# ---- reputation is earned ---------------------------------------------------------------------


def test_reputation_comes_from_finished_agreements(engine: Engine, clock):  # type: ignore[no-untyped-def]
    market = Harness(engine, clock)
    try:
        market.advertise(make_skill(price_atomic=1_000))
        market.fund(market.buyer, 1_000_000_000)
        declared = make_listing(market.seller, make_skill(price_atomic=1_000))
        declared.reputation_permille = 1000  # self-declared: ignored
        assert market.registry.advertise(declared, 86_400).reputation_permille == 0
        for outputs in ([{"text": "ok"}], [{"text": "ok"}], [{"bad": 1}]):
            deal = market.deal(dispute_window_s=0)
            market.open(deal)
            market.redeem(deal, outputs)
        expired = market.deal()
        market.open(expired)
        clock.advance(3601)
        market.settlement.sweep()  # an expired agreement is not rated
        [listing] = market.registry.discover("echo", min_reputation_permille=666)
        assert (listing.reputation_permille, listing.rated_agreements) == (666, 3)
        assert market.registry.discover("echo", min_reputation_permille=667) == []
        market.registry.advertise(make_listing(market.seller, make_skill()), 3600)
        assert market.registry.get(market.seller.agent_id).reputation_permille == 666
    finally:
        market.close()


@pytest.fixture
def many(registry: Registry) -> Iterator[Registry]:
    listings = [make_listing(AgentKey.generate(), make_skill(price_atomic=1_000 + i),
                             name=f"n{i:03}") for i in range(300)]
    registry.advertise_many(listings, 60)
    yield registry


def test_bulk_advertise_and_deep_ranking(many: Registry):
    found = many.discover(text="echo", currency_code="USD", limit=100)
    assert _ids(found) == [f"n{i:03}" for i in range(100)]
    assert _ids(many.discover("echo", "USD", 1_004)) == [f"n{i:03}" for i in range(5)]


@pytest.mark.parametrize("as_list", [True, False], ids=["list", "lookup"])
def test_both_ways_of_checking_a_second_word_agree(shelf: Registry, monkeypatch, as_list: bool):
    expected = {"documents french": ["translator"],
                "documents text": ["ocr", "translator", "summarizer"],
                "documents chat": ["chat"], "scanned pages": ["ocr"]}
    monkeypatch.setattr(type(shelf._counts), "probe_as_list", lambda *_: as_list)
    for text, names in expected.items():
        assert _ids(shelf.discover(text=text)) == names
        assert _ids(shelf.discover(text=text, currency_code="USD")) == names


def test_a_listing_with_many_matching_skills_does_not_crowd_out_the_page(registry: Registry):
    _seller(registry, "multi", *(make_skill(f"s{i}", price_atomic=1 + i, tags=["x"])
                                 for i in range(40)))
    for i in range(25):
        _seller(registry, f"single-{i:02}", make_skill(price_atomic=100 + i, tags=["x"]))
    found = registry.discover(tags=["x"], currency_code="USD", limit=20)
    assert _ids(found) == ["multi", *(f"single-{i:02}" for i in range(19))]


def test_unconverted_currencies_rank_group_by_group_as_a_full_sort_would(registry: Registry):
    """Without FX, each other currency ranks after the reference currency (USD), in order; the
    search reads a later currency only while the page is not full, and agrees with sorting
    every matching skill of every listing."""
    rng = random.Random(11)
    group = {"USD": 0, "ECNY": 1, "USDC": 2}
    offers: list[tuple[tuple[int, int, int, str], str, set[str]]] = []
    for i in range(60):
        skills = [make_skill(f"s{j}", price_atomic=rng.randint(1, 30) * 10,
                             currency=rng.choice(["USD", "ECNY", "ECNY", "USDC"]),
                             tags=rng.sample(["a", "b", "c"], rng.randint(1, 3)),
                             latency_ms=rng.randint(0, 3)) for j in range(rng.randint(1, 3))]
        key = _seller(registry, f"n{i:02}", *skills)
        for s in skills:
            price = s.prices[0]
            offers.append(((group[price.currency], price.amount_atomic, s.typical_latency_ms,
                            key.agent_id), f"n{i:02}", set(s.tags)))
    for tags in (["a"], ["b", "c"], ["a", "b", "c"]):
        for limit in (1, 5, 20, 60):
            best: dict[str, str] = {}
            for _key, name, offered in sorted(offers):
                if set(tags) <= offered:
                    best.setdefault(name, name)
            assert _ids(registry.discover(tags=tags, limit=limit)) == list(best)[:limit], \
                (tags, limit)


def test_any_subset_of_a_skills_tags_finds_it(registry: Registry):
    _seller(registry, "tagged", make_skill(tags=["d", "a", "c", "b", "e"]))
    _seller(registry, "other", make_skill(tags=["a", "b", "z"]))
    for tags in (["e", "a"], ["c", "a", "e"], ["a", "b", "c", "d", "e"], ["b", "d"], ["d"]):
        assert _ids(registry.discover(tags=tags)) == ["tagged"], tags
    assert sorted(_ids(registry.discover(tags=["b", "a"]))) == ["other", "tagged"]
    assert registry.discover(tags=["a", "z", "e"]) == []


@pytest.mark.parametrize("tiers", [[(2, 10**12)], [(10, 500), (100, 600)]])
def test_a_volume_tier_dearer_than_the_price_below_it_is_refused(registry: Registry, tiers):
    """Discovery ranks and filters on the list price: a tier dearer than it would rank first
    and then quote larger orders far above what the buyer was shown."""
    seller = AgentKey.generate()
    with pytest.raises(AgentmarketError) as refused:
        registry.advertise(make_listing(seller, make_skill(price_atomic=1_000, tiers=tiers)),
                           60)
    assert refused.value.status == "INVALID_ARGUMENT" and "volume discounts" in \
        refused.value.message
    assert registry.discover("echo") == []


def test_a_token_price_whose_sum_passes_the_limit_is_invalid_argument(registry: Registry):
    """Discovery ranks a token price on input plus output: each within 2^62 may still sum past
    what an amount can be (it was an INTERNAL overflow in the offers table)."""
    from wallets.currencies import MAX_AMOUNT_ATOMIC

    seller = AgentKey.generate()
    dear = make_skill(price_atomic=MAX_AMOUNT_ATOMIC, unit=registry_pb2.PRICE_UNIT_1K_TOKENS,
                      output_price_atomic=MAX_AMOUNT_ATOMIC)
    with pytest.raises(AgentmarketError) as refused:
        registry.advertise(make_listing(seller, dear), 60)
    assert refused.value.status == "INVALID_ARGUMENT" and "output_amount_atomic must be at " \
        "most" in refused.value.message
    assert registry.discover("echo") == []


def test_liveness_probes_an_agents_listing_once_per_recheck_whatever_endpoint_it_names(
        registry: Registry):
    """An agent pointing its own listing at other hosts' ports, one after another, gets no
    fresh probe for each (the node would otherwise be its port scanner), and cannot report
    its own listing at all."""
    from marketplace.errors import FailedPrecondition
    from marketplace.liveness import Liveness

    probed: list[str] = []

    def probe(endpoint: str, _timeout_s: float) -> bool:
        probed.append(endpoint)
        return True  # something answers: the listing stays

    liveness = Liveness(registry, probe=probe, recheck_s=60)
    seller, reporter = AgentKey.generate(), AgentKey.generate().agent_id
    for port in (1, 2, 3):
        endpoint = f"10.0.0.1:{port}"
        registry.advertise(make_listing(seller, endpoint=endpoint), 60)
        assert liveness.report(seller.agent_id, endpoint, reporter=reporter) is False
    assert probed == ["10.0.0.1:1"]
    with pytest.raises(FailedPrecondition):
        liveness.report(seller.agent_id, "10.0.0.1:3", reporter=seller.agent_id)
    assert probed == ["10.0.0.1:1"]
