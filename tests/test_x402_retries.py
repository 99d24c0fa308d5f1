"""Copies and retries at the gateway: a session is opened once however many copies of its
opening request arrive together; a request retried with its payment identifier, while the
first runs or after it, streamed or not, gets the first answer and is paid once; and the
answers a payer's identifiers keep are its own session's, which no one else can crowd out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from x402.extensions.payment_identifier import append_payment_identifier_to_extensions
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
    encode_payment_signature_header,
)

from agents import BuyerAgent
from agents.x402 import answers, buyer_client
from marketplace.identity import AgentKey
from tests.x402_market import Market, books_balance, open_market

SHOUT_ATOMIC = 2_000_000  # per call


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Iterator[Market]:
    yield from open_market(tmp_path_factory.mktemp("x402-retries"))


@pytest.fixture(autouse=True)
def balanced_books(market) -> Iterator[None]:
    yield
    books_balance(market.node)


class Payer:
    """x402's client, paying one skill call by call in a session of `calls`."""

    def __init__(self, market: Market, skill: str = "shout", *, calls: int = 10,
                 key: AgentKey | None = None) -> None:
        self.market, self.skill = market, skill
        unpaid = httpx.post(market.url(skill), json={"text": "hi"})
        self.required = decode_payment_required_header(unpaid.headers["payment-required"])
        self.client, _ = buyer_client(key or market.key, market.network, calls_per_session=calls)

    def header(self, identifier: str = "") -> str:
        payload = asyncio.run(self.client.create_payment_payload(self.required))
        if identifier:
            extensions = dict(payload.extensions or {})
            append_payment_identifier_to_extensions(extensions, identifier)
            payload = payload.model_copy(update={"extensions": extensions})
        return encode_payment_signature_header(payload)

    def send(self, header: str, body: Any = None) -> httpx.Response:
        return httpx.post(self.market.url(self.skill), json=body or {"text": "hi"},
                          headers={"PAYMENT-SIGNATURE": header}, timeout=60)


def _at_once(url: str, header: str, copies: int, body: Any = None,
             accept: str = "application/json") -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return list(await asyncio.gather(*[
                client.post(url, json=body or {"text": "hi"},
                            headers={"PAYMENT-SIGNATURE": header, "accept": accept})
                for _ in range(copies)]))
    return asyncio.run(run())


def _reason(response: httpx.Response) -> str:
    return decode_payment_required_header(response.headers["payment-required"]).error or ""


def _session(market: Market, response: httpx.Response) -> Any:
    settled = decode_payment_response_header(response.headers["payment-response"])
    return market.gateway.sessions.sessions[settled.extra["agreementId"]]


def test_copies_of_a_sessions_opening_sent_at_once_open_it_once(market):
    payer = Payer(market)
    answered = _at_once(market.url("shout"), payer.header(), 4)
    assert sorted(r.status_code for r in answered) == [200, 402, 402, 402]
    assert {_reason(r) for r in answered if r.status_code == 402} == {"payload_replayed"}
    session = _session(market, next(r for r in answered if r.status_code == 200))
    assert (session.calls, session.charged_atomic) == (1, SHOUT_ATOMIC)
    following = payer.send(payer.header())  # the session goes on: its next word pays
    assert following.status_code == 200, following.text
    assert (session.calls, session.charged_atomic) == (2, 2 * SHOUT_ATOMIC)


def test_copies_of_an_identified_call_sent_at_once_get_one_answer_paid_once(market):
    payer = Payer(market)
    session = _session(market, payer.send(payer.header()))
    answered = _at_once(market.url("shout"), payer.header("pay_copies_at_once_0123"), 4,
                        body={"text": "once"})
    assert [r.status_code for r in answered] == [200] * 4, [r.text for r in answered]
    assert {r.content for r in answered} == {answered[0].content}
    assert answered[0].json()["output"] == {"text": "ONCE"}
    assert {r.headers["payment-response"] for r in answered} == {
        answered[0].headers["payment-response"]}
    assert (session.calls, session.charged_atomic) == (2, 2 * SHOUT_ATOMIC)


def test_a_streamed_call_retried_with_its_identifier_gets_its_events_again(market):
    payer = Payer(market, "write")
    body = {"topic": "agents", "words": 12}
    header = payer.header("pay_streamed_retry_0123")
    first = _at_once(market.url("write"), header, 1, body, "text/event-stream")[0]
    assert first.status_code == 200 and "event: end" in first.text, first.text
    session = _session(market, first)
    calls, charged = session.calls, session.charged_atomic
    again = _at_once(market.url("write"), header, 1, body, "text/event-stream")[0]
    assert again.status_code == 200 and again.content == first.content
    assert again.headers["content-type"].startswith("text/event-stream")
    assert (session.calls, session.charged_atomic) == (calls, charged)  # paid once


@pytest.mark.parametrize(("limit", "value"), [("PER_SESSION", 3), ("TOTAL_BYTES", 6_000)])
def test_a_strangers_identified_calls_do_not_crowd_out_a_payers_answer(market, monkeypatch,
                                                                        limit, value):
    """Whether a session holds too many answers or the gateway too many bytes, the one that
    gives way is the stranger's session, which holds the most."""
    monkeypatch.setattr(answers, limit, value)
    victim = Payer(market)
    victim.send(victim.header())
    header = victim.header("pay_victim_keeps_0123")
    first = victim.send(header, {"text": "mine"})
    assert first.status_code == 200
    stranger_key = AgentKey.generate()
    with BuyerAgent("stranger", marketplace=market.node.address, key=stranger_key) as buyer:
        buyer.fund("1.00", "USD")
    stranger = Payer(market, key=stranger_key)
    stranger.send(stranger.header())
    for n in range(8):  # refused by the seller (bad arguments): charged nothing
        refused = stranger.send(stranger.header(f"pay_stranger_{n:04d}_0123"), {"nope": 1})
        assert refused.status_code == 400, refused.text
    again = victim.send(header, {"text": "mine"})
    assert (again.status_code, again.content) == (200, first.content)
    assert len(_session(market, first).answers) == 1
    kept = market.gateway.answers
    assert kept._total == sum(kept._held.values())
    if limit == "TOTAL_BYTES":
        assert kept._total <= value
    else:
        assert len(_session(market, refused).answers) == value
