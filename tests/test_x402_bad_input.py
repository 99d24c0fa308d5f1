"""Bad input at the gateway: each refusal names its reason (402 with x402's PAYMENT-REQUIRED
`error`, 400 for a malformed request, 413 for a body over the limit, 431 for a head over
its) and moves and holds
nothing. A retried request with the same payment identifier gets the first answer, paid once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from x402.extensions.payment_identifier import append_payment_identifier_to_extensions
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
    encode_payment_signature_header,
)
from x402.schemas import PaymentPayload

from agents.x402 import buyer_client, close_sessions, http_client
from agents.x402 import client as x402_client
from marketplace.v1 import agreement_pb2
from tests.x402_market import Market, books_balance, open_market


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Iterator[Market]:
    yield from open_market(tmp_path_factory.mktemp("x402"))


@pytest.fixture(autouse=True)
def balanced_books(request) -> Iterator[None]:
    """The books balance after every test (the market is shared by the module's tests)."""
    yield
    if "market" in request.fixturenames:
        books_balance(request.getfixturevalue("market").node)


def _ledger_state(market: Market) -> tuple[int, int]:
    postings = market.node.ledger.postings(limit=100_000)
    return len(postings), len(market.node.ledger.holds(status="open"))


def _payload(market: Market, skill: str, *, calls: int = 1) -> tuple[Any, PaymentPayload]:
    """x402's client makes the payload for the 402 the gateway answers."""
    unpaid = httpx.post(market.url(skill), json={"text": "hi"})
    assert unpaid.status_code == 402
    required = decode_payment_required_header(unpaid.headers["payment-required"])
    client, _ = buyer_client(market.key, market.network, calls_per_session=calls)
    return client, asyncio.run(client.create_payment_payload(required))


def _send(market: Market, skill: str, header: str, body: Any = None) -> httpx.Response:
    return httpx.post(market.url(skill), json={"text": "hi"} if body is None else body,
                      headers={"PAYMENT-SIGNATURE": header})


def _reason(response: httpx.Response) -> str:
    if response.status_code == 402:
        return decode_payment_required_header(response.headers["payment-required"]).error or ""
    return response.json()["error"]


def _edited(payload: PaymentPayload, **accepted: Any) -> str:
    return encode_payment_signature_header(payload.model_copy(update={
        "accepted": payload.accepted.model_copy(update=accepted)}))


def _sent_malformed(market: Market, data: Any) -> str:
    """`data` sent as the PAYMENT-SIGNATURE: 400 malformed_payment_header, nothing moved or
    held; the refusal's message."""
    before = _ledger_state(market)
    response = _send(market, "shout", _b64(json.dumps(data)))
    assert (response.status_code, _reason(response)) == (400, "malformed_payment_header")
    assert _ledger_state(market) == before
    return response.json()["message"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(("header", "status", "reason"), [
    ("%%% not base64 %%%", 400, "malformed_payment_header"),
    (_b64("not json"), 400, "malformed_payment_header"),
    (_b64(json.dumps({"x402Version": 2, "hello": "world"})), 400,
     "malformed_payment_header"),
])
def test_malformed_payment_headers_are_400(market, header, status, reason):
    before = _ledger_state(market)
    response = _send(market, "shout", header)
    assert (response.status_code, _reason(response)) == (status, reason)
    assert _ledger_state(market) == before


@pytest.mark.parametrize("identified", [False, True])
def test_a_payment_nested_too_deep_is_400_and_moves_nothing(market, identified):
    """x402's extension checks recurse through a payload's extensions: one nested hundreds of
    levels deep would exhaust the stack, so the gateway refuses it as malformed first."""
    _, payload = _payload(market, "shout")
    data = payload.model_dump(mode="json", by_alias=True, exclude_none=True)
    extensions = data.setdefault("extensions", {})
    if identified:
        append_payment_identifier_to_extensions(extensions, "pay_deep_0123456789abcd")
    junk: Any = []
    for _ in range(600):
        junk = [junk]
    extensions["junk"] = junk
    assert "nests at most" in _sent_malformed(market, data)


@pytest.mark.parametrize("version", [0, 3, "2", True, 2.0, None])
def test_only_x402_v2_payloads_are_read(market, version):
    """x402's own decoder reads any version but 1 as v2: the gateway takes 2 alone."""
    _, payload = _payload(market, "shout")
    data = json.loads(base64.b64decode(encode_payment_signature_header(payload)))
    data["x402Version"] = version
    assert "x402Version 2" in _sent_malformed(market, data)


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("network", "agentmarket:" + "0" * 32, "invalid_network"),
    ("asset", "ECNY", "invalid_asset"),
    ("amount", "1", "invalid_amount"),
    ("pay_to", "ab" * 32, "invalid_pay_to"),
])
def test_a_payment_for_other_terms_is_refused_with_its_reason(market, field, value, reason):
    _, payload = _payload(market, "shout")
    before = _ledger_state(market)
    response = _send(market, "shout", _edited(payload, **{field: value}))
    assert (response.status_code, _reason(response)) == (402, reason)
    assert _ledger_state(market) == before


def test_a_payment_for_another_resource_is_refused(market):
    _, payload = _payload(market, "shout")  # whisper has the same price and seller
    before = _ledger_state(market)
    response = _send(market, "whisper", encode_payment_signature_header(payload))
    assert (response.status_code, _reason(response)) == (402, "invalid_resource")
    assert _ledger_state(market) == before


def test_an_expired_agreement_is_refused(market, monkeypatch):
    monkeypatch.setattr(x402_client, "OFFER_TTL_MS", -1000)
    _, payload = _payload(market, "shout")
    before = _ledger_state(market)
    response = _send(market, "shout", encode_payment_signature_header(payload))
    assert (response.status_code, _reason(response)) == (402, "payload_expired")
    assert _ledger_state(market) == before


def test_a_replayed_payment_is_refused_and_pays_once(market):
    _, payload = _payload(market, "shout")
    header = encode_payment_signature_header(payload)
    first = _send(market, "shout", header)
    assert first.status_code == 200, first.text
    after_first = _ledger_state(market)
    replay = _send(market, "shout", header)
    assert (replay.status_code, _reason(replay)) == (402, "payload_replayed")
    assert _ledger_state(market) == after_first


def test_a_forged_word_is_refused(market):
    client, payload = _payload(market, "shout", calls=5)
    assert _send(market, "shout", encode_payment_signature_header(payload)).status_code == 200
    required = decode_payment_required_header(httpx.post(
        market.url("shout"), json={"text": "hi"}).headers["payment-required"])
    second = asyncio.run(client.create_payment_payload(required))
    forged = dict(second.payload)
    voucher = x402_client.agreement_pb2.Voucher.FromString(base64.b64decode(forged["voucher"]))
    voucher.payword = bytes(32)
    forged["voucher"] = base64.b64encode(voucher.SerializeToString()).decode()
    before = _ledger_state(market)
    response = _send(market, "shout", encode_payment_signature_header(
        second.model_copy(update={"payload": forged})))
    assert (response.status_code, _reason(response)) == (402, "invalid_signature")
    assert _ledger_state(market) == before


def test_a_one_call_session_with_a_forged_finish_is_refused_before_it_runs(market):
    """A one-call session's finish is the buyer's signature: a forged one is refused with the
    payment, nothing held and nothing run, not found out after the call was served."""
    _, payload = _payload(market, "shout")
    forged = {**payload.payload, "finish": "00" * 64}
    before = _ledger_state(market)
    response = _send(market, "shout", encode_payment_signature_header(
        payload.model_copy(update={"payload": forged})))
    assert (response.status_code, _reason(response)) == (402, "invalid_signature")
    assert _ledger_state(market) == before
    assert _send(market, "shout", encode_payment_signature_header(payload)).status_code == 200


def test_a_close_body_over_its_limit_is_413(market):
    closing = httpx.post(f"{market.http.url}/v1/sessions/{'a' * 64}/close",
                         content=b'{"finish": "' + b"0" * 5000 + b'"}')
    assert (closing.status_code, closing.json()["error"]) == (413, "body_too_large")


def test_a_body_over_the_limit_or_not_json_changes_nothing(market):
    before = _ledger_state(market)
    big = httpx.post(market.url("shout"), content=b'{"text": "' + b"x" * 70_000 + b'"}')
    assert (big.status_code, big.json()["error"]) == (413, "body_too_large")
    broken = httpx.post(market.url("shout"), content=b"{not json")
    assert (broken.status_code, broken.json()["error"]) == (400, "invalid_json")
    unknown = httpx.post(f"{market.http.url}/v1/skills/{'ab' * 32}/shout", json={})
    assert unknown.status_code == 404
    assert _ledger_state(market) == before


@pytest.mark.parametrize("calls", [1, 5])
def test_a_paid_call_the_seller_refuses_as_bad_input_charges_nothing(market, calls):
    """Arguments the skill's schema refuses are the seller's to refuse (the gateway does not
    run a listing's schema, which anyone may advertise, for anyone's request): 400
    invalid_argument, nothing charged, and a one-call session's hold is released at once."""
    async def run() -> httpx.Response:
        client, schemes = http_client(market.key, market.network, calls_per_session=calls)
        async with client:
            refused = await client.post(market.url("shout"), json={"text": 5})
            await close_sessions(client, market.http.url, schemes)
        return refused

    before, holds = market.posted(market.key.agent_id), _ledger_state(market)[1]
    refused = asyncio.run(run())
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_argument")
    assert "input does not match the skill's schema" in refused.json()["message"]
    assert market.posted(market.key.agent_id) == before
    assert _ledger_state(market)[1] == holds  # no hold left open


def _raw_post(url: str, head: str, body: bytes) -> int:
    """POST over a bare socket (httpx will not send a Content-Length its body does not
    fill): the status line of the answer, read as soon as it comes."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"content-type: application/json\r\n{head}\r\n".encode() + body)
        return int(conn.recv(4096).split(b" ", 2)[1])


def test_a_body_far_over_the_limit_is_refused_without_being_read(market):
    """A body is read no further than its limit: one declared (Content-Length) or sent in
    chunks far past it is refused (413; 400 for a session's close, whose body is its small
    JSON) once the limit is passed, not held in memory whole."""
    chunk = b"x" * 65_536
    chunked = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 8  # 512 KiB, then nothing
    before = _ledger_state(market)
    for url, status in ((market.url("shout"), 413),
                        (f"{market.http.url}/v1/sessions/{'ab' * 32}/close", 413),
                        (f"{market.http.url}/facilitator/verify", 413)):
        assert _raw_post(url, f"content-length: {10**12}\r\n", b"{}") == status
        assert _raw_post(url, "transfer-encoding: chunked\r\n", chunked) == status
    assert _ledger_state(market) == before


def test_a_payment_header_over_the_head_limit_is_431_and_moves_nothing(market):
    """A PAYMENT-SIGNATURE that outgrows the server's buffer for a request's head is HTTP's
    431, answered before any of it is read as a payment."""
    parts = urlsplit(market.url("shout"))
    before = _ledger_state(market)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "payment-signature: ".encode() + b"A" * 32_768)  # more to come
        assert int(conn.recv(4096).split(b" ", 2)[1]) == 431
    assert _ledger_state(market) == before


@pytest.mark.parametrize("identified", [False, True], ids=["plain", "identified"])
def test_a_lone_surrogate_in_the_arguments_or_the_payment_is_400(market, identified):
    """`json.loads` takes "\\ud800", but nothing can encode it as UTF-8 (a fingerprint, the
    seller's protobuf string): a malformed request, not a 500, with or without a payment
    identifier."""
    _, payload = _payload(market, "shout")
    extensions = dict(payload.extensions or {})
    if identified:
        append_payment_identifier_to_extensions(extensions, "pay_surrogate_0123456789")
    header = encode_payment_signature_header(payload.model_copy(
        update={"extensions": extensions}))
    before = _ledger_state(market)
    in_body = httpx.post(market.url("shout"), content=b'{"text": "\\ud800"}',
                         headers={"PAYMENT-SIGNATURE": header})
    assert (in_body.status_code, in_body.json()["error"]) == (400, "invalid_json")
    assert "surrogate" in in_body.json()["message"]
    data = json.loads(base64.b64decode(header))
    data["extensions"]["note"] = "\ud800"
    in_header = _send(market, "shout", base64.b64encode(json.dumps(data).encode()).decode())
    assert (in_header.status_code, _reason(in_header)) == (400, "malformed_payment_header")
    assert _ledger_state(market) == before
    paired = _send(market, "shout", header, {"text": "\U0001F600"})  # a pair is a character
    assert paired.status_code == 200, paired.text


def test_a_browser_gets_the_json_402_not_a_paywall_for_other_networks(market):
    """x402's HTML paywall pays on EVM chains and Solana: a browser gets the same JSON 402 as
    any client, with PAYMENT-REQUIRED."""
    answer = httpx.post(market.url("shout"), json={"text": "hi"},
                        headers={"accept": "text/html", "user-agent": "Mozilla/5.0"})
    assert answer.status_code == 402
    assert answer.headers["content-type"].startswith("application/json")
    assert decode_payment_required_header(answer.headers["payment-required"]).accepts
    assert answer.json() == httpx.post(market.url("shout"), json={"text": "hi"}).json()


def test_a_retry_with_the_same_payment_identifier_returns_the_first_answer(market):
    _, payload = _payload(market, "shout")
    extensions = dict(payload.extensions or {})
    append_payment_identifier_to_extensions(extensions, "pay_retry_0123456789")
    header = encode_payment_signature_header(payload.model_copy(
        update={"extensions": extensions}))
    before = market.posted(market.key.agent_id)
    first = _send(market, "shout", header)
    retried = _send(market, "shout", header)
    assert first.status_code == retried.status_code == 200
    assert first.content == retried.content
    assert decode_payment_response_header(retried.headers["payment-response"]).transaction \
        == decode_payment_response_header(first.headers["payment-response"]).transaction
    assert market.posted(market.key.agent_id) == before - 2_000_000  # paid once
    books_balance(market.node)


def test_the_same_payment_identifier_with_another_request_is_a_conflict(market):
    """x402's payment-identifier: the same id with another payload or other arguments is 409
    and moves nothing; only the first request repeated reads its answer."""
    _, payload = _payload(market, "shout")
    extensions = dict(payload.extensions or {})
    append_payment_identifier_to_extensions(extensions, "pay_conflict_0123456789")
    with_id = payload.model_copy(update={"extensions": extensions})
    header = encode_payment_signature_header(with_id)
    first = _send(market, "shout", header)
    assert first.status_code == 200, first.text
    before = _ledger_state(market), market.posted(market.key.agent_id)
    voucher = agreement_pb2.Voucher.FromString(base64.b64decode(with_id.payload["voucher"]))
    voucher.payword = bytes(32)  # a stranger's guess of the word: same agreement, same id
    forged = {**with_id.payload, "voucher": base64.b64encode(voucher.SerializeToString()).decode()}
    others = [
        _send(market, "shout", header, body={"text": "something else"}),
        _send(market, "shout", encode_payment_signature_header(
            with_id.model_copy(update={"payload": forged}))),
    ]
    for other in others:
        assert other.status_code == 409, other.text
        assert other.json()["error"] == "payment_identifier_conflict"
        assert "payment-response" not in other.headers
        assert first.json() != other.json()
    assert (_ledger_state(market), market.posted(market.key.agent_id)) == before
    again = _send(market, "shout", header)
    assert (again.status_code, again.content) == (200, first.content)


def test_the_seller_countersigns_a_list_price_agreement_only_at_its_list(market):
    from agents.v1 import agent_pb2
    from marketplace import agreements as ag
    from marketplace.errors import TermsMismatch
    from marketplace.v1 import agreement_pb2

    _, payload = _payload(market, "shout")
    opened = agreement_pb2.SignedAgreement.FromString(
        base64.b64decode(payload.payload["agreement"]))
    body = agreement_pb2.AgreementBody.FromString(opened.body)
    body.terms.unit_price_atomic -= 1  # below the list price, signed by the buyer
    cheaper = agreement_pb2.SignedAgreement(body=body.SerializeToString())
    ag.sign_as_buyer(cheaper, market.key)
    with pytest.raises(TermsMismatch):
        market.seller.negotiate(agent_pb2.NegotiationMessage(agreement=cheaper))
    body.terms.unit_price_atomic += 1
    body.terms.dispute_window_s = 3600  # longer than the seller's own window
    longer = agreement_pb2.SignedAgreement(body=body.SerializeToString())
    ag.sign_as_buyer(longer, market.key)
    with pytest.raises(TermsMismatch):
        market.seller.negotiate(agent_pb2.NegotiationMessage(agreement=longer))


def test_a_transfer_authorisation_does_not_pay_a_sellers_call(market):
    from agents.x402 import network as net

    _, payload = _payload(market, "shout")
    accepted = payload.accepted
    transfer = net.sign_authorization(
        market.key, pay_to=accepted.pay_to, amount_atomic=int(accepted.amount),
        asset=accepted.asset, network=accepted.network, resource="", nonce="n" * 16,
        valid_before_ms=10**13)
    before = _ledger_state(market)
    response = _send(market, "shout", encode_payment_signature_header(
        payload.model_copy(update={"payload": transfer})))
    assert (response.status_code, _reason(response)) == (402, "unsupported_payload_type")
    assert _ledger_state(market) == before


WRONG_VALUES = [None, True, -1, 2**70, 1.5, "", "x" * 3000, [], {"a": 1}]


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if path:
        yield path
    children = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _leaves(child, (*path, key))


@pytest.mark.parametrize("skill", ["shout", "count_words"])
def test_every_field_of_a_payment_mangled_is_refused_cleanly(market, skill):
    """Each field of a paying `open` payload, at any depth, set to a value of the wrong kind
    or removed: the gateway never answers 5xx, and whatever it refuses moves and holds
    nothing (the few fields nobody signs may pass: then the session opens once, and the
    rest are replays)."""
    _, payload = _payload(market, skill)
    good = json.loads(base64.b64decode(encode_payment_signature_header(payload)))
    body = {"text": "one two"}
    for path in _leaves(good):
        for value in [*WRONG_VALUES, KeyError]:
            mangled = json.loads(json.dumps(good))
            parent = mangled
            for key in path[:-1]:
                parent = parent[key]
            if value is KeyError:
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
            before = _ledger_state(market)
            answer = _send(market, skill, _b64(json.dumps(mangled)), body)
            assert answer.status_code < 500, (path, value, answer.text)
            if answer.status_code != 200:
                assert answer.status_code in (400, 402, 404, 409, 413), (path, value)
                assert _ledger_state(market) == before, (path, value, answer.text)
