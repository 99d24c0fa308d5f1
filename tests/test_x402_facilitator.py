"""A third-party resource server built with the x402 package (its FastAPI middleware and HTTP
facilitator client) settles through agentmarket's facilitator; x402's client pays it with the
buyer's agent key. A replayed payment pays nothing more."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from x402 import x402ResourceServer
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.http.clients.httpx import x402AsyncTransport
from x402.http.middleware.fastapi import payment_middleware
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
    encode_payment_signature_header,
)

from agents.x402 import buyer_client
from agents.x402.facilitator import PriceScheme
from marketplace.http import HttpServer
from marketplace.identity import AgentKey
from tests.x402_market import Market, books_balance, open_market

PRICE_ATOMIC = 5_000_000


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Iterator[Market]:
    yield from open_market(tmp_path_factory.mktemp("x402"))


@pytest.fixture(autouse=True)
def balanced_books(request) -> Iterator[None]:
    """The books balance after every test (the market is shared by the module's tests)."""
    yield
    if "market" in request.fixturenames:
        books_balance(request.getfixturevalue("market").node)


@pytest.fixture
def weather(market) -> Iterator[tuple[str, str]]:
    """A resource server that is no agentmarket seller: it only names its wallet (payTo)."""
    owner = AgentKey.generate().agent_id
    facilitator = HTTPFacilitatorClient(FacilitatorConfig(
        url=f"{market.http.url}/facilitator"))
    server = x402ResourceServer(facilitator)
    server.register(market.network, PriceScheme("exact"))
    app = FastAPI()
    routes = {"GET /weather": {"accepts": {
        "scheme": "exact", "payTo": owner, "network": market.network,
        "price": {"amount": str(PRICE_ATOMIC), "asset": "USD"},
        "extra": {"kind": "authorization", "resource": "weather"}}}}
    middleware = payment_middleware(routes, server)

    @app.middleware("http")
    async def pay(request, call_next):  # type: ignore[no-untyped-def]
        return await middleware(request, call_next)

    @app.get("/weather")
    async def forecast() -> dict:
        return {"forecast": "sunny"}

    http = HttpServer(app).start()
    yield f"{http.url}/weather", owner
    http.stop(0)


def test_a_third_party_resource_server_settles_through_the_facilitator(market, weather):
    url, owner = weather

    async def run() -> tuple[int, dict, str, int, str]:
        payer, _ = buyer_client(market.key, market.network)
        sent: list[httpx.Request] = []

        class Recording(httpx.AsyncHTTPTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                sent.append(request)
                return await super().handle_async_request(request)

        async with httpx.AsyncClient(transport=x402AsyncTransport(payer, Recording())
                                     ) as client:
            response = await client.get(url)
            replay = await client.get(url, headers={
                "PAYMENT-SIGNATURE": sent[-1].headers["payment-signature"]})
        return (response.status_code, response.json(), response.headers["payment-response"],
                replay.status_code, replay.headers.get("payment-required", ""))

    before = market.posted(market.key.agent_id)
    status, body, paid, replay_status, refused = asyncio.run(run())
    assert status == 200 and body == {"forecast": "sunny"}
    settled = decode_payment_response_header(paid)
    assert settled.success and settled.amount == str(PRICE_ATOMIC)
    assert settled.payer == market.key.agent_id and settled.network == market.network
    assert settled.extra["receipt"]["node"] == market.node.agent_id
    assert market.posted(owner) == PRICE_ATOMIC
    assert market.posted(market.key.agent_id) == before - PRICE_ATOMIC
    assert replay_status == 402
    assert decode_payment_required_header(refused).error == "payload_replayed"
    assert market.posted(owner) == PRICE_ATOMIC  # paid once
    books_balance(market.node)


def test_the_facilitator_lists_what_it_settles(market):
    supported = httpx.get(f"{market.http.url}/facilitator/supported").json()
    assert {(k["scheme"], k["network"]) for k in supported["kinds"]} == {
        ("exact", market.network), ("upto", market.network)}
    assert supported["signers"] == {"agentmarket:*": [market.node.agent_id]}
    refused = httpx.post(f"{market.http.url}/facilitator/verify", content=b"{not json")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_payload"


def test_security_md_lists_every_x402_reason():
    from pathlib import Path

    from agents.x402.reasons import REASONS

    text = (Path(__file__).resolve().parent.parent / "SECURITY.md").read_text()
    missing = [reason for reason in REASONS if f"| `{reason}` |" not in text]
    assert not missing, f"add rows to SECURITY.md's x402 table: {missing}"


def test_the_protocol_md_authorization_vector():
    from agents.x402 import network as net

    key = AgentKey.from_seed(bytes(range(32)))
    payload = net.sign_authorization(
        key, pay_to="ab" * 32, amount_atomic=5_000_000, asset="USD",
        network="agentmarket:" + "cd" * 16, resource="weather",
        valid_before_ms=1_700_000_060_000, nonce="00112233445566778899aabbccddeeff")
    assert key.agent_id == "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    assert payload["signature"] == (
        "2d4bae5f63d7c92215fa20ede9e6496d58c1b3d83c531cbf35726b49a89d85c1"
        "92f22686f2e174cba638bfd42cddb510408120de3cdacc696a8ae7a38135b30b")
    assert net.parse(payload).verifies()


def test_the_gateway_describes_itself_in_openapi(market):
    document = httpx.get(f"{market.http.url}/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {"/v1/skills/{listing}/{skill}",
                                      "/v1/sessions/{agreement}/close"}
    responses = document["paths"]["/v1/skills/{listing}/{skill}"]["post"]["responses"]
    assert {"200", "400", "402", "404", "413"} <= set(responses)


def test_the_gateway_answers_its_own_host_names_only_with_the_nodes_headers(market):
    fine = httpx.get(f"{market.http.url}/openapi.json")
    assert fine.headers["x-content-type-options"] == "nosniff"
    rebound = httpx.get(f"{market.http.url}/openapi.json", headers={"host": "evil.example"})
    assert rebound.status_code == 400


@pytest.mark.parametrize(("change", "reason"), [
    ({"valid_before_ms": 1}, "payload_expired"),
    ({"resource": "another"}, "invalid_resource"),
    ({"amount_atomic": PRICE_ATOMIC + 1}, "invalid_amount"),
    ({"signer": "stranger"}, "invalid_signature"),
])
def test_the_facilitator_refuses_an_authorisation_that_does_not_fit(market, change, reason):
    from agents.x402 import network as net

    owner = AgentKey.generate().agent_id
    requirements = {"scheme": "exact", "network": market.network, "asset": "USD",
                    "amount": str(PRICE_ATOMIC), "payTo": owner, "maxTimeoutSeconds": 60,
                    "extra": {"kind": "authorization", "resource": "weather"}}
    fields = {"pay_to": owner, "amount_atomic": PRICE_ATOMIC, "asset": "USD",
              "network": market.network, "resource": "weather", "nonce": "x" * 16,
              "valid_before_ms": 10**13}
    signer = AgentKey.generate() if change.pop("signer", None) else market.key
    signed = net.sign_authorization(signer, **{**fields, **change})
    signed["authorization"]["from"] = market.key.agent_id  # claims the buyer's wallet
    body = {"x402Version": 2, "paymentRequirements": requirements, "paymentPayload": {
        "x402Version": 2, "accepted": requirements, "payload": signed}}
    before = market.posted(market.key.agent_id)
    for path in ("verify", "settle"):
        answer = httpx.post(f"{market.http.url}/facilitator/{path}", json=body).json()
        assert (answer.get("invalidReason") or answer.get("errorReason")) == reason, answer
    assert market.posted(market.key.agent_id) == before


@pytest.mark.parametrize("body", [b"[]", b"{}", b'"text"', b"null",
                                  b'{"paymentPayload": 5, "paymentRequirements": {}}',
                                  b'{"paymentPayload": {}, "paymentRequirements": []}'])
def test_a_body_that_is_no_facilitator_request_is_told_what_one_is(market, body):
    """400 invalid_payload naming the request's members, not the error Python met."""
    for path in ("verify", "settle"):
        refused = httpx.post(f"{market.http.url}/facilitator/{path}", content=body)
        assert (refused.status_code, refused.json()) == (400, {
            "error": "invalid_payload",
            "message": "the body is a JSON object with the objects paymentPayload and "
                       "paymentRequirements"})


@pytest.mark.parametrize("where", ["request", "payload"])
@pytest.mark.parametrize("version", [0, 1, 3, "2", True, 2.0])
def test_the_facilitator_reads_x402_v2_only(market, where, version):
    """x402's own decoder reads any version but 1 as v2; the facilitator takes 2 alone, for
    the request and for its payload, and moves nothing otherwise."""
    from agents.x402 import network as net

    owner = AgentKey.generate().agent_id
    requirements = {"scheme": "exact", "network": market.network, "asset": "USD",
                    "amount": str(PRICE_ATOMIC), "payTo": owner, "maxTimeoutSeconds": 60,
                    "extra": {"kind": "authorization", "resource": "weather"}}
    signed = net.sign_authorization(
        market.key, pay_to=owner, amount_atomic=PRICE_ATOMIC, asset="USD",
        network=market.network, resource="weather", nonce=os.urandom(8).hex(),
        valid_before_ms=10**13)
    body = {"x402Version": 2, "paymentRequirements": requirements, "paymentPayload": {
        "x402Version": 2, "accepted": requirements, "payload": signed}}
    (body if where == "request" else body["paymentPayload"])["x402Version"] = version
    before = market.posted(market.key.agent_id)
    for path in ("verify", "settle"):
        refused = httpx.post(f"{market.http.url}/facilitator/{path}", json=body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "invalid_payload"
    assert market.posted(market.key.agent_id) == before


def _authorisation(market, owner: str, scheme: str = "exact", nonce: str = "") -> dict:
    from agents.x402 import network as net

    requirements = {"scheme": scheme, "network": market.network, "asset": "USD",
                    "amount": str(PRICE_ATOMIC), "payTo": owner, "maxTimeoutSeconds": 60,
                    "extra": {"kind": "authorization", "resource": "weather"}}
    signed = net.sign_authorization(
        market.key, pay_to=owner, amount_atomic=PRICE_ATOMIC, asset="USD",
        network=market.network, resource="weather", nonce=nonce or os.urandom(8).hex(),
        valid_before_ms=10**13)
    return {"x402Version": 2, "paymentRequirements": requirements, "paymentPayload": {
        "x402Version": 2, "accepted": requirements, "payload": signed}}


def test_a_lone_surrogate_in_a_facilitator_request_is_invalid_payload(market):
    """JSON that UTF-8 cannot carry ("\\ud800" alone) is a malformed request: 400
    invalid_payload at verify and settle, not a refusal naming a scheme it does not lack."""
    body = _authorisation(market, AgentKey.generate().agent_id)
    body["paymentPayload"]["payload"]["authorization"]["resource"] = "\ud800"
    raw = json.dumps(body).encode()  # ensure_ascii: the lone surrogate as its escape
    before = market.posted(market.key.agent_id)
    for path in ("verify", "settle"):
        refused = httpx.post(f"{market.http.url}/facilitator/{path}", content=raw)
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_payload")
    assert market.posted(market.key.agent_id) == before


def test_a_settled_authorisation_stays_a_replay_after_a_restart_and_under_another_scheme(
        market):
    """The ledger, not the facilitator's memory, says an authorisation was settled: a new
    gateway (a restart) refuses it at verify, so does the other scheme, and a settle of it
    again is refused as a replay, paid once."""
    from agents.x402 import Gateway

    owner = AgentKey.generate().agent_id
    nonce = os.urandom(8).hex()
    paid = _authorisation(market, owner, nonce=nonce)
    first = httpx.post(f"{market.http.url}/facilitator/settle", json=paid).json()
    assert first["success"], first
    restarted = HttpServer(Gateway(market.node).app()).start()
    try:
        base = f"{restarted.url}/facilitator"
        other = _authorisation(market, owner, "upto", nonce)
        other["paymentPayload"]["payload"] = paid["paymentPayload"]["payload"]  # same bytes
        for body in (paid, other):
            verified = httpx.post(f"{base}/verify", json=body).json()
            assert (verified["isValid"], verified["invalidReason"]) == (
                False, "payload_replayed"), verified
        again = httpx.post(f"{base}/settle", json=paid).json()
        assert (again["success"], again["errorReason"]) == (False, "payload_replayed"), again
    finally:
        restarted.stop(0)
    assert market.posted(owner) == PRICE_ATOMIC


def test_a_settled_authorisation_is_settled_once_whatever_comes_with_it_again(market):
    """One authorisation buys one answer, as a token refuses a used nonce: settling its nonce
    again, with the same bytes or with other terms the payer signed, is a replay that moves
    nothing (the first settlement's transaction named); a forged copy moves nothing either."""
    from agents.x402 import network as net

    owner, accomplice = AgentKey.generate().agent_id, AgentKey.generate().agent_id
    nonce = os.urandom(8).hex()
    paid = _authorisation(market, owner, nonce=nonce)
    assert httpx.post(f"{market.http.url}/facilitator/verify", json=paid).json()["isValid"]
    cheap = _authorisation(market, accomplice, nonce=nonce)  # the same nonce, 1 unit elsewhere
    for part in (cheap["paymentRequirements"], cheap["paymentPayload"]["accepted"]):
        part["amount"] = "1"
    cheap["paymentPayload"]["payload"] = net.sign_authorization(
        market.key, pay_to=accomplice, amount_atomic=1, asset="USD", network=market.network,
        resource="weather", nonce=nonce, valid_before_ms=10**13)
    first = httpx.post(f"{market.http.url}/facilitator/settle", json=cheap).json()
    assert first["success"], first
    forged = _authorisation(market, owner, nonce=nonce)
    forged["paymentPayload"]["payload"]["signature"] = "00" * 64
    for body, reason in ((forged, "invalid_signature"), (paid, "payload_replayed"),
                         (cheap, "payload_replayed")):
        again = httpx.post(f"{market.http.url}/facilitator/settle", json=body).json()
        assert (again["success"], again["errorReason"]) == (False, reason), again
    assert first["transaction"] in again["errorMessage"]
    assert (market.posted(owner), market.posted(accomplice)) == (0, 1)


def test_one_authorisation_sent_at_once_by_many_requests_pays_one_of_them(market, weather):
    """The same PAYMENT-SIGNATURE sent five times at once to a resource server: each verifies
    before any settles, and the ledger lets one settle, so one request is answered and paid;
    the others get x402's 402."""
    url, owner = weather

    async def main() -> list[int]:
        client, _ = buyer_client(market.key, market.network)
        async with httpx.AsyncClient() as plain:
            asked = await plain.get(url)
            required = decode_payment_required_header(asked.headers["payment-required"])
            header = encode_payment_signature_header(
                await client.create_payment_payload(required))
            answers = await asyncio.gather(*(
                plain.get(url, headers={"PAYMENT-SIGNATURE": header}) for _ in range(5)))
        return sorted(a.status_code for a in answers)

    assert asyncio.run(main()) == [200, 402, 402, 402, 402]
    assert market.posted(owner) == PRICE_ATOMIC


@pytest.mark.parametrize(("to", "amount"), [("zz", PRICE_ATOMIC), ("payer", PRICE_ATOMIC),
                                            ("owner", 0), ("owner\n", PRICE_ATOMIC),
                                            ("payer\n", PRICE_ATOMIC)])
def test_the_facilitator_verifies_only_what_it_would_settle(market, to, amount):
    """An authorisation the ledger could not post (to no agent id, to the payer itself, of
    nothing) is refused at verify as at settle, and moves nothing. An id with a line break
    after it is no id (a `$` in a pattern would let it pass, and pay an account nobody owns,
    or the payer itself under another name)."""
    from agents.x402 import network as net

    ids = {"payer": market.key.agent_id, "owner": AgentKey.generate().agent_id}
    pay_to = ids[to.strip()] + to[len(to.strip()):] if to.strip() in ids else to
    body = _authorisation(market, pay_to)
    for part in (body["paymentRequirements"], body["paymentPayload"]["accepted"]):
        part["amount"] = str(amount)
    body["paymentPayload"]["payload"] = net.sign_authorization(
        market.key, pay_to=pay_to, amount_atomic=amount, asset="USD", network=market.network,
        resource="weather", nonce=os.urandom(8).hex(), valid_before_ms=10**13)
    before = market.posted(market.key.agent_id)
    expected = "invalid_amount" if amount == 0 else "invalid_pay_to"
    for path in ("verify", "settle"):
        answer = httpx.post(f"{market.http.url}/facilitator/{path}", json=body).json()
        assert (answer.get("invalidReason") or answer.get("errorReason")) == expected, answer
    assert market.posted(market.key.agent_id) == before


@pytest.mark.parametrize("amount", ["abc", "1e3", " 5", "\u0665", "-5", "1" * 20])
def test_a_requirement_whose_amount_is_not_atomic_digits_is_invalid_amount(market, amount):
    owner = AgentKey.generate().agent_id
    body = _authorisation(market, owner)
    for part in (body["paymentRequirements"], body["paymentPayload"]["accepted"]):
        part["amount"] = amount
    before = market.posted(market.key.agent_id)
    for path in ("verify", "settle"):
        answer = httpx.post(f"{market.http.url}/facilitator/{path}", json=body).json()
        assert (answer.get("invalidReason") or answer.get("errorReason")) == "invalid_amount", \
            answer
    assert market.posted(market.key.agent_id) == before
