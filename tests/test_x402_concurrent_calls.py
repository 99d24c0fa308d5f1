"""One x402 client's calls running at once: each is answered once and paid once.

A session's words are taken in order by the gateway and by the seller, so a call whose voucher
a later one of its session overtook (on the way to the gateway, or between the gateway and
the seller) is refused with a 402 (`payload_replayed`, never a 502) and the client pays it
again with the session's next voucher; the calls sent while a session is being opened wait
for its opening call's answer. Real parts: a node (SQLite file), a seller on gRPC, the
gateway on uvicorn (loopback) and x402's own httpx client.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from x402.extensions.payment_identifier import append_payment_identifier_to_extensions
from x402.http.utils import decode_payment_required_header, encode_payment_signature_header

from agents.errors import AgreementEnded
from agents.x402 import forward, http_client
from agents.x402.client import buyer_client
from agents.x402.prepay import PrepayTransport
from tests.x402_market import Market, books_balance, open_market

SHOUT_ATOMIC = 2_000_000  # shout's list price, 0.002 USD in atomic units


@pytest.fixture
def market(tmp_path) -> Iterator[Market]:
    yield from open_market(tmp_path)


async def _close_all(market: Market, schemes: dict) -> int:
    """Close every session the gateway holds for the buyer; what was captured in all."""
    captured = 0
    async with httpx.AsyncClient(timeout=30) as plain:
        for agreement in list(market.gateway.sessions.sessions):
            closed = await plain.post(f"{market.http.url}/v1/sessions/{agreement}/close",
                                      json={"finish": schemes["exact"].finish_signature(
                                          agreement)})
            assert closed.status_code == 200, closed.text
            captured += int(closed.json()["captured"])
    return captured


def test_forty_calls_of_one_client_at_once_are_each_answered_and_paid_once(market):
    seller_before = market.posted(market.seller.agent_id)

    async def run() -> tuple[list[int], int]:
        client, schemes = http_client(market.key, market.network, calls_per_session=10)
        async with client:
            first = await client.post(market.url("shout"), json={"text": "first"})
            rest = await asyncio.gather(*(client.post(market.url("shout"), json={"text": "a"})
                                          for _ in range(40)))
            answers = [first, *rest]
            return [a.status_code for a in answers], await _close_all(market, schemes)

    codes, captured = asyncio.run(run())
    assert codes == [200] * 41
    assert captured == 41 * SHOUT_ATOMIC  # each answered call once, nothing more
    assert market.posted(market.seller.agent_id) - seller_before > 0
    books_balance(market.node)


def test_a_voucher_overtaken_at_the_seller_is_a_402_and_is_paid_again(market, monkeypatch):
    """The gateway spends words 2 then 3, but 3 reaches the seller first: word 2's call is
    answered 402 with PAYMENT-REQUIRED (payload_replayed), and paid again with word 4."""
    invoke, delayed = forward.invoke, []

    async def late_word_two(channels, endpoint, arguments, voucher, proof=b""):
        if voucher.sequence == 2 and not delayed:
            delayed.append(voucher.sequence)
            await asyncio.sleep(0.5)
        return await invoke(channels, endpoint, arguments, voucher, proof)

    monkeypatch.setattr(forward, "invoke", late_word_two)
    seen: list[tuple[int, str | None]] = []
    send = PrepayTransport._send

    async def recorded(self, request, url, priced=False):
        response, refused = await send(self, request, url, priced)
        seen.append((response.status_code, refused.error if refused else None))
        if response.status_code == 402 and refused is not None:
            again = decode_payment_required_header(response.headers["payment-required"])
            assert again.accepts  # what to pay again with
        return response, refused

    monkeypatch.setattr(PrepayTransport, "_send", recorded)

    async def run() -> tuple[list[int], int]:
        client, schemes = http_client(market.key, market.network, calls_per_session=10)
        async with client:
            first = await client.post(market.url("shout"), json={"text": "first"})

            async def second() -> httpx.Response:
                await asyncio.sleep(0.1)  # word 3 leaves after word 2
                return await client.post(market.url("shout"), json={"text": "third"})

            overtaken, later = await asyncio.gather(
                client.post(market.url("shout"), json={"text": "second"}), second())
            assert overtaken.json()["output"] == {"text": "SECOND"}
            return [first.status_code, overtaken.status_code, later.status_code], \
                await _close_all(market, schemes)

    codes, captured = asyncio.run(run())
    assert delayed == [2] and codes == [200, 200, 200]
    assert (402, "payload_replayed") in seen
    assert captured == 3 * SHOUT_ATOMIC
    books_balance(market.node)


def test_a_voucher_the_seller_refused_leaves_its_payment_identifier_free(market, monkeypatch):
    """A 402 for an overtaken voucher is no answer to remember: the buyer's next voucher under
    the same payment identifier is served (not a 409 conflict with the refused one)."""
    unpaid = httpx.post(market.url("shout"), json={"text": "hi"})
    required = decode_payment_required_header(unpaid.headers["payment-required"])
    client, _ = buyer_client(market.key, market.network, calls_per_session=10)

    def header(identifier: str | None = None) -> str:
        payload = asyncio.run(client.create_payment_payload(required))
        if identifier is not None:
            extensions = dict(payload.extensions or {})
            append_payment_identifier_to_extensions(extensions, identifier)
            payload = payload.model_copy(update={"extensions": extensions})
        return encode_payment_signature_header(payload)

    def send(signature: str) -> httpx.Response:
        return httpx.post(market.url("shout"), json={"text": "hi"}, timeout=30,
                          headers={"PAYMENT-SIGNATURE": signature})

    assert send(header()).status_code == 200  # the session opens
    invoke = forward.invoke

    async def late_word_two(channels, endpoint, arguments, voucher, proof=b""):
        if voucher.sequence == 2:
            await asyncio.sleep(0.5)
        return await invoke(channels, endpoint, arguments, voucher, proof)

    monkeypatch.setattr(forward, "invoke", late_word_two)
    second, third = header("pay_overtaken_0123456789"), header()
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(send(second)))
    first.start()
    time.sleep(0.15)
    assert send(third).status_code == 200  # word 3 reaches the seller first
    first.join()
    assert answers[0].status_code == 402
    assert decode_payment_required_header(
        answers[0].headers["payment-required"]).error == "payload_replayed"
    again = send(header("pay_overtaken_0123456789"))  # word 4, the same identifier
    assert again.status_code == 200, again.text


def test_a_session_in_the_sellers_redeem_margin_is_ended_and_the_call_paid_in_a_new_one(
        market, monkeypatch):
    """The seller takes no call in its redeem margin (AGREEMENT_ENDED): the gateway answers
    402 session_ended, never a 409, and the client pays the call in a new session."""
    check = market.seller.gate._check_in_time
    ended: list[int] = []

    def margin_of_the_first(account):  # type: ignore[no-untyped-def]
        if account.body.terms.completion_deadline_ms == ended[0]:
            raise AgreementEnded("the agreement's last 60 s before its completion deadline "
                                 "are the seller's to redeem in; it takes no more calls")
        check(account)

    async def run() -> tuple[int, int, int]:
        client, _schemes = http_client(market.key, market.network, calls_per_session=10)
        async with client:
            first = await client.post(market.url("shout"), json={"text": "first"})
            (session,) = market.gateway.sessions.sessions.values()
            ended.append(session.body.terms.completion_deadline_ms)
            monkeypatch.setattr(market.seller.gate, "_check_in_time", margin_of_the_first)
            later = await client.post(market.url("shout"), json={"text": "later"})
            assert later.json()["output"] == {"text": "LATER"}
            opened = len(market.gateway.sessions.sessions)
            return first.status_code, later.status_code, opened

    first, later, opened = asyncio.run(run())
    assert (first, later, opened) == (200, 200, 2)
    books_balance(market.node)
