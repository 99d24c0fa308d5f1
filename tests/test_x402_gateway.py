"""The HTTP/x402 gateway: x402's own client buys per-call and per-token skills; sessions are
one hold and one capture; the books balance after every test.

Real parts: a marketplace node (SQLite file, gRPC on port 0), a seller agent, the gateway on
uvicorn (loopback, port 0), and the `x402` package's httpx client paying with the buyer's key.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from x402.http.utils import decode_payment_response_header

from agents import SellerAgent
from agents.x402 import http_client
from agents.x402.network import network_id
from marketplace.node import MarketplaceNode
from tests.x402_market import Market, books_balance, drip, open_market, read_stream


@pytest.fixture
def market(tmp_path) -> Iterator[Market]:
    yield from open_market(tmp_path)


def test_x402_client_pays_a_per_call_skill(market):
    async def run() -> tuple[int, dict, str]:
        client, _ = http_client(market.key, network_id(market.node.agent_id), prepay=False)
        async with client:
            response = await client.post(market.url("shout"), json={"text": "hi"})
        return response.status_code, response.json(), response.headers["payment-response"]

    before = market.posted(market.key.agent_id)
    status, body, paid = asyncio.run(run())
    assert status == 200, body
    assert body["output"] == {"text": "HI"}
    settled = decode_payment_response_header(paid)
    assert settled.success and settled.payer == market.key.agent_id
    assert settled.amount == "2000000"
    assert settled.extra["settlement"]["state"] == "settled"
    assert market.posted(market.key.agent_id) == before - 2_000_000
    assert market.posted(market.seller.agent_id) > 0
    books_balance(market.node)


def _postings(node: MarketplaceNode, agreement: str) -> list[str]:
    hold_id = node.settlement.get(agreement)["hold_id"]
    return [p.kind for p in node.ledger.postings(hold_id=hold_id)]


def test_a_session_of_per_unit_calls_is_one_hold_and_one_capture(market):
    texts = ["one two three", "four five", "six"]

    async def run() -> tuple[list, dict, str]:
        client, schemes = http_client(market.key, network_id(market.node.agent_id),
                                      calls_per_session=10)
        answers = []
        async with client:
            for text in texts:
                response = await client.post(market.url("count_words"), json={"text": text})
                assert response.status_code == 200, response.text
                answers.append((response.json(), decode_payment_response_header(
                    response.headers["payment-response"])))
            agreement = schemes["upto"].open_sessions()[0]
            closed = await client.post(f"{market.http.url}/v1/sessions/{agreement}/close",
                                       json={"finish": schemes["upto"].finish_signature(
                                           agreement)})
        return answers, closed.json(), agreement

    before = market.posted(market.key.agent_id)
    answers, closed, agreement = asyncio.run(run())
    assert [a[0]["output"]["text"] for a in answers] == ["3", "2", "1"]
    assert [a[1].amount for a in answers] == ["3000000", "2000000", "1000000"]
    assert {a[1].extra["agreementId"] for a in answers} == {agreement}
    assert closed["state"] == "settled" and closed["captured"] == "6000000"
    assert market.posted(market.key.agent_id) == before - 6_000_000
    assert _postings(market.node, agreement) == ["hold", "capture"]
    books_balance(market.node)


def test_a_streamed_answer_is_billed_as_it_flows_and_stops_at_the_authorisation(market):
    async def run() -> tuple[list[tuple[str, str]], Any]:
        client, _ = http_client(market.key, market.network)
        async with client:
            return await read_stream(client, market.url("write"), words=1000)

    events, held = asyncio.run(run())
    pieces = [json.loads(data) for name, data in events if name == "message"]
    charges = [int(p["charged"]) for p in pieces]
    assert pieces and charges == sorted(charges)  # billed as it flows
    end = json.loads(next(data for name, data in events if name == "end"))
    assert end["stopReason"] == "budget"  # stopped at what the voucher authorised
    settled = decode_payment_response_header(
        next(data for name, data in events if name == "payment-response"))
    authorised = int(held.amount)
    assert int(settled.amount) == int(end["usage"]["charged"]) <= authorised
    assert settled.extra["settlement"]["captured"] == settled.amount
    books_balance(market.node)


def test_a_streamed_call_whose_reader_hangs_up_is_still_charged_to_its_session(market):
    seller = SellerAgent("dripper", skills=[drip], marketplace=market.node.address,
                         dispute_window_s=0).serve()
    url = f"{market.http.url}/v1/skills/{seller.agent_id}/drip"

    async def run() -> tuple[dict, int, int, int, int]:
        client, schemes = http_client(market.key, market.network, calls_per_session=3)
        async with client:
            assert len((await read_stream(client, url, hang_up=True))[0]) == 1
            agreement = schemes["upto"].open_sessions()[0]
            session = market.gateway.sessions.sessions[agreement]
            for _ in range(400):  # the relay goes on without its reader, then settles
                if not session.in_flight:
                    break
                await asyncio.sleep(0.025)
            hung_up = session.charged_atomic
            events, _ = await read_stream(client, url)  # the session goes on
            end = json.loads(next(data for name, data in events if name == "end"))
            closed = await client.post(f"{market.http.url}/v1/sessions/{agreement}/close",
                                       json={"finish": schemes["upto"].finish_signature(
                                           agreement)})
            assert closed.status_code == 200, closed.text
            return closed.json(), hung_up, int(end["usage"]["charged"]), \
                session.charged_atomic, session.in_flight

    try:
        closed, hung_up, second, booked, in_flight = asyncio.run(run())
    finally:
        seller.stop(0)
    assert in_flight == 0 and hung_up > 0  # the abandoned call was charged to the session
    assert booked == hung_up + second == int(closed["captured"])  # as the seller redeemed
    books_balance(market.node)


def test_a_streamed_call_whose_settlement_fails_ends_with_an_error_event(market, monkeypatch,
                                                                          caplog):
    from x402.http import x402HTTPResourceServer

    settle = x402HTTPResourceServer.process_settlement

    async def broken(*args, **kwargs):  # only the streamed call's settlement after its relay
        if asyncio.current_task().get_coro().__name__ == "_relay":
            raise RuntimeError("the facilitator fell over")
        return await settle(*args, **kwargs)

    monkeypatch.setattr(x402HTTPResourceServer, "process_settlement", broken)

    async def run() -> list[tuple[str, str]]:
        client, _ = http_client(market.key, market.network)
        async with client:
            return (await read_stream(client, market.url("write")))[0]

    events = asyncio.run(run())
    assert [name for name, _ in events][-1] == "error"  # not a silently cut stream
    assert json.loads(events[-1][1])["error"] == "internal"
    assert "could not finish a streamed call" in caplog.text
    assert "the facilitator fell over" in caplog.text


def test_a_session_hands_the_seller_the_escrow_proof_so_it_never_asks_the_node(market):
    asked: list[str] = []
    get = market.node.settlement.get

    def counted(agreement: str) -> dict:
        asked.append(agreement)
        return get(agreement)

    market.node.settlement.get = counted

    async def run() -> str:
        client, schemes = http_client(market.key, network_id(market.node.agent_id),
                                      calls_per_session=5)
        async with client:
            for text in ("a", "b", "c"):
                response = await client.post(market.url("shout"), json={"text": text})
                assert response.status_code == 200, response.text
            agreement = schemes["exact"].open_sessions()[0]
            assert agreement in market.seller._escrowed and agreement not in asked
            closed = await client.post(f"{market.http.url}/v1/sessions/{agreement}/close",
                                       json={"finish": schemes["exact"].finish_signature(
                                           agreement)})
            assert closed.status_code == 200, closed.text
        return agreement

    asyncio.run(run())
    books_balance(market.node)
