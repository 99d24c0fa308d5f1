"""The x402 floor (`benchmarks._x402_floor`) carries a real session call's bytes both ways and
records each call durably at its seller, doing no payment work: if it stopped doing so,
`x402_paid_call_ratio_floor` would measure something else.

Real parts: a node (SQLite file), a seller agent, the gateway on uvicorn, x402's own client
(the capture), the floor seller's journal file and gRPC server, the floor door on uvicorn.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import sqlite3
import threading
from collections.abc import Iterator

import httpx
import pytest
from x402.http.utils import decode_payment_response_header, decode_payment_signature_header

from benchmarks import _paid_floor
from benchmarks._paid_sides import echo, framework_interceptors
from benchmarks._x402_floor import capture
from benchmarks.x402_gateway import _floor_door
from marketplace.http import HttpServer
from tests.x402_market import Market, books_balance, open_market


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Iterator[Market]:
    yield from open_market(tmp_path_factory.mktemp("x402-floor"))


def test_the_capture_is_a_session_calls_wire_and_its_session_is_settled(market):
    before = market.posted(market.key.agent_id)
    wire = asyncio.run(capture(market.url("shout"), market.http.url,
                               market.network, market.key))
    paid = decode_payment_signature_header(wire.payment_signature)
    assert paid.payload["kind"] == "voucher" and paid.accepted.network == market.network
    settled = decode_payment_response_header(wire.payment_response)
    assert settled.success and settled.extra["calls"] == 3 and "receipt" in settled.extra
    assert wire.body["output"] == {"text": "HELLO"} and wire.body["receipt"]
    # the session was closed: three calls captured, the rest of the hold given back
    assert before - market.posted(market.key.agent_id) == 3 * int(paid.accepted.amount)
    books_balance(market.node)


def test_the_floor_door_carries_the_wire_and_its_seller_records_each_call(market, tmp_path):
    wire = asyncio.run(capture(market.url("shout"), market.http.url,
                               market.network, market.key))
    ready: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    seller = threading.Thread(target=_paid_floor.serve_floor, daemon=True,
                              args=(echo, framework_interceptors(), ready, stop, tmp_path))
    seller.start()
    door = HttpServer(_floor_door({"endpoint": ready.get(timeout=30)}, wire)).start()
    try:
        with httpx.Client(headers={"PAYMENT-SIGNATURE": wire.payment_signature}) as client:
            answers = [client.post(f"{door.url}/v1/skills/any/echo", json={"text": f"call {i}"})
                       for i in range(4)]
    finally:
        door.stop(0)
        stop.set()
        seller.join(timeout=30)
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        assert answer.headers["payment-response"] == wire.payment_response
        body = answer.json()
        assert body["output"] == {"text": f"call {i}", "length": len(f"call {i}")}
        assert body["usage"]["charged"] == str(_paid_floor.CHARGE_ATOMIC)
        assert len(base64.b64decode(body["receipt"])) > 100
    with sqlite3.connect(tmp_path / "journal.db") as db:
        rows = db.execute("SELECT call_id, response FROM agentmarket_seller_calls").fetchall()
    assert sorted(call_id for call_id, _ in rows) == [f"x402:{n}" for n in range(1, 5)]
    assert sorted(json.loads(response)["text"] for _, response in rows) == [
        f"call {i}" for i in range(4)]

