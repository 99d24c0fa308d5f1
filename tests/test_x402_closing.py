"""`close_sessions`: a buyer done calling closes every session its schemes hold open, each
capture and refund in the answer, and forgets them (its next call opens a new session); a
close the gateway refuses (never with 402: a close is no payment) is the SDK's own error, the
other sessions still closed.
Real parts: a node (SQLite file), a seller agent, the gateway on uvicorn, x402's own client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from agents.errors import PermissionDenied, Unavailable
from agents.x402 import close_sessions, http_client
from agents.x402.reasons import Refused
from agents.x402.seller_calls import SellerAnswer
from tests.x402_market import Market, books_balance, open_market


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Iterator[Market]:
    yield from open_market(tmp_path_factory.mktemp("x402-closing"))


@pytest.fixture(autouse=True)
def balanced_books(market) -> Iterator[None]:
    yield
    books_balance(market.node)


def test_every_open_session_is_closed_settled_and_forgotten(market):
    async def run() -> tuple[list[dict], list[str], int]:
        client, schemes = http_client(market.key, market.network, calls_per_session=5)
        async with client:
            for text in ("a", "b"):  # a per-call skill: the exact scheme's session
                assert (await client.post(market.url("shout"), json={"text": text})
                        ).status_code == 200
            # a metered skill: a session of the upto scheme
            assert (await client.post(market.url("count_words"), json={"text": "one two"})
                    ).status_code == 200
            closed = await close_sessions(client, market.http.url + "/", schemes)
            left = [a for scheme in schemes.values() for a in scheme.open_sessions()]
            again = await client.post(market.url("shout"), json={"text": "c"})  # a new one
            opened = [a for scheme in schemes.values() for a in scheme.open_sessions()]
            await close_sessions(client, market.http.url, schemes)
            return closed, left, len(opened) if again.status_code == 200 else -1

    before = market.posted(market.key.agent_id)
    closed, left, reopened = asyncio.run(run())
    assert len(closed) == 2 and left == [] and reopened == 1
    assert all(int(c["captured"]) > 0 and "refunded" in c and c["receipt"]["signature"]
               for c in closed)
    assert market.posted(market.key.agent_id) < before  # the captures left the buyer


def test_a_refused_close_is_the_sdks_error_and_the_others_still_close(market):
    async def run() -> tuple[BaseException | None, list[str], list[dict]]:
        client, schemes = http_client(market.key, market.network, calls_per_session=5)
        async with client:
            for name in ("shout", "count_words"):
                assert (await client.post(market.url(name), json={"text": "x y"})
                        ).status_code == 200
            signed = schemes["exact"].finish_signature
            schemes["exact"].finish_signature = lambda _agreement: "00" * 64  # not the buyer's
            raised = None
            try:
                await close_sessions(client, market.http.url, schemes)
            except PermissionDenied as error:
                raised = error
            left = [a for s in schemes.values() for a in s.open_sessions()]
            schemes["exact"].finish_signature = signed
            return raised, left, await close_sessions(client, market.http.url, schemes)

    raised, left, closed_later = asyncio.run(run())
    assert raised is not None and "invalid_signature" in str(raised)
    assert len(left) == 1  # the refused one stays open; the upto session was closed
    assert len(closed_later) == 1


def test_a_gateway_that_does_not_answer_is_unavailable(market):
    async def run() -> None:
        client, schemes = http_client(market.key, market.network, calls_per_session=5)
        async with client:
            assert (await client.post(market.url("shout"), json={"text": "x"})
                    ).status_code == 200
            with pytest.raises(Unavailable, match="did not answer"):
                await close_sessions(client, "http://127.0.0.1:9", schemes)  # nobody there
            await close_sessions(client, market.http.url, schemes)

    asyncio.run(run())


def test_a_seller_that_does_not_finish_is_502_and_unavailable(market, monkeypatch):
    calls = market.gateway.sessions.seller_calls

    async def silent(_endpoint: str, agreement_id: str, _signature: bytes) -> SellerAnswer:
        return SellerAnswer(agreement_id, refused=Refused(
            "seller_refused", "the seller did not finish: it is gone"))

    async def run() -> tuple[httpx.Response, Unavailable | None, int]:
        client, schemes = http_client(market.key, market.network, calls_per_session=5)
        async with client:
            assert (await client.post(market.url("shout"), json={"text": "x"})
                    ).status_code == 200
            (agreement,) = schemes["exact"].open_sessions()
            with monkeypatch.context() as patched:
                patched.setattr(calls, "finish", silent)
                raw = await client.post(f"{market.http.url}/v1/sessions/{agreement}/close",
                                        json={"finish": schemes["exact"].finish_signature(
                                            agreement)})
                raised = None
                try:
                    await close_sessions(client, market.http.url, schemes)
                except Unavailable as error:
                    raised = error
            return raw, raised, len(await close_sessions(client, market.http.url, schemes))

    raw, raised, closed_after = asyncio.run(run())
    assert (raw.status_code, raw.json()["error"]) == (502, "seller_refused")
    assert raised is not None and "502 seller_refused" in str(raised)
    assert closed_after == 1  # closed once the seller finishes


def test_closing_with_nothing_open_closes_nothing():
    async def run() -> list[dict]:
        async with httpx.AsyncClient() as client:
            return await close_sessions(client, "http://127.0.0.1:9", {})

    assert asyncio.run(run()) == []
