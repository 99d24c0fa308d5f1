"""The node's A2A card catalogue against what strangers send: a seller's odd but valid input
schema, schemas with numbers JSON does not have, and filters written in non-ASCII digits.
One listing never takes the catalogue down for the others, and a bad filter is a 400."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest

from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.testing import make_listing, make_skill
from marketplace.v1 import registry_pb2, registry_pb2_grpc


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarketplaceNode]:
    started = MarketplaceNode(f"sqlite:///{tmp_path_factory.mktemp('cards') / 'm.db'}",
                              cards=True, sweep_interval_s=3600).start()
    yield started
    started.stop(0)


def _advertise(node: MarketplaceNode, skill: registry_pb2.Skill, name: str) -> str:
    key = AgentKey.generate()
    with signed_channel(node.address, key) as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).Advertise(
            registry_pb2.AdvertiseRequest(idempotency_key=uuid.uuid4().hex, ttl_s=3600,
                                          listing=make_listing(key, skill, name=name)),
            timeout=10)
    return key.agent_id


def test_a_listing_whose_input_schema_is_true_has_a_card_and_breaks_no_search(node):
    honest = _advertise(node, make_skill("boolean", price_atomic=5), "honest")
    skill = make_skill("boolean", price_atomic=1)  # cheaper: it comes first
    skill.input_schema_json = "true"  # a valid JSON Schema: anything goes
    odd = _advertise(node, skill, "odd")
    base = node.http.url
    search = httpx.get(f"{base}/cards/search", params={"skill": "boolean"}, timeout=10)
    assert search.status_code == 200, search.text
    assert [c["card"]["name"] for c in search.json()["cards"]] == ["odd", "honest"]
    for agent in (odd, honest):
        assert httpx.get(f"{base}/cards/{agent}/.well-known/agent-card.json",
                         timeout=10).status_code == 200


@pytest.mark.parametrize("schema", ['{"type": "object", "minimum": NaN}',
                                    '{"type": "object", "maximum": Infinity}',
                                    '{"type": "object", "maximum": -Infinity}'])
def test_a_schema_with_a_number_json_does_not_have_is_refused_at_advertise(node, schema):
    skill = make_skill("nan", price_atomic=1)
    skill.input_schema_json = schema
    with pytest.raises(grpc.RpcError) as refused:
        _advertise(node, skill, "nan")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a JSON number" in refused.value.details()


@pytest.mark.parametrize("query", ["limit=%C2%B2", "limit=%D9%A3",
                                   "max_price_atomic=%C2%B2&currency=USD",
                                   "limit=" + "1" * 5000])  # past int()'s 4300 digits
def test_a_filter_in_other_digits_is_a_400(node, query):
    answer = httpx.get(f"{node.http.url}/cards/search?{query}", timeout=10)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["reason"] == "INVALID_ARGUMENT"


def test_a_search_asked_again_signs_no_card_again(node, monkeypatch):
    """The search is open to anyone: each answer built and signed up to 50 cards, work a
    stranger could ask for without end. A card is now signed once per listing as stored,
    whatever Host the request names (its port is not checked: a new one per request made
    every card be signed again)."""
    from marketplace.http import cards

    for n in range(3):
        _advertise(node, make_skill("repeat", price_atomic=10 + n), f"repeat{n}")
    signed: list[str] = []
    real_sign = cards.sign

    def counted(card, key):  # type: ignore[no-untyped-def]
        signed.append(card.name)
        return real_sign(card, key)

    monkeypatch.setattr(cards, "sign", counted)
    answers = [httpx.get(f"{node.http.url}/cards/search", params={"skill": "repeat"},
                         headers={"host": f"127.0.0.1:{port}"}, timeout=10).json()
               for port in range(1, 6)]
    assert all(a["card"] == b["card"] for answer in answers
               for a, b in zip(answer["cards"], answers[0]["cards"], strict=True))
    assert answers[0]["cards"][0]["url"].startswith("http://127.0.0.1:1/cards/")
    card_url = answers[0]["cards"][0]["card"]["capabilities"]["extensions"][0]["params"][
        "cardUrl"]
    assert card_url.startswith(node.http.url + "/cards/")  # the node's own, not the Host
    assert [c["card"]["name"] for c in answers[0]["cards"]] == ["repeat0", "repeat1", "repeat2"]
    assert sorted(signed) == ["repeat0", "repeat1", "repeat2"]  # once each, five searches
