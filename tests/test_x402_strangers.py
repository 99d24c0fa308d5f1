"""What strangers and broken networks do to the gateway's buyers: neither a burst of unpaid
requests nor a flood of forged words for a session fails anyone's paid calls, and a stream cut
off between the gateway and the seller is reported as charged for what the seller billed.

Real parts: a node (SQLite file), sellers on gRPC (port 0), the gateway on uvicorn (loopback),
x402's own httpx client, and a TCP relay on loopback that can cut its connections.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import base64
import collections
import contextlib
import json
import socket
import threading
from collections.abc import Iterator

import grpc
import httpx
import pytest
from x402.http.utils import decode_payment_response_header

from agents import SellerAgent
from agents.x402 import close_sessions, http_client, routes
from marketplace.v1 import agreement_pb2
from tests.x402_market import (
    Market,
    books_balance,
    drip,
    open_market,
    read_stream,
)


@pytest.fixture
def market(tmp_path) -> Iterator[Market]:
    yield from open_market(tmp_path)


async def _burst(url: str, count: int) -> collections.Counter:
    async with httpx.AsyncClient(timeout=60) as plain:
        answers = await asyncio.gather(*(plain.post(url, json={"text": "a b"})
                                         for _ in range(count)))
    return collections.Counter(answer.status_code for answer in answers)


def test_a_burst_of_unpaid_requests_asks_the_seller_for_one_quote(market, monkeypatch):
    """A metered route is priced by the seller's quote: requests arriving together share one
    (the seller refuses a buyer's too many open negotiations, and would fail them all)."""
    quotes = []
    quote = routes.Routes._call_max

    async def counted(self, *args):
        quotes.append(args)
        return await quote(self, *args)

    monkeypatch.setattr(routes.Routes, "_call_max", counted)
    assert asyncio.run(_burst(market.url("count_words"), 60)) == {402: 60}
    assert len(quotes) == 1


def test_a_stranger_flooding_a_sessions_words_does_not_fail_its_payers_calls(market):
    """A stranger who knows an open session's agreement id and the route's terms sends
    forged words for it, for the places just ahead of the payer's, from several connections
    at once: each is refused 402 and charges nothing, and every one of the payer's calls is
    answered and paid once."""
    url = market.url("shout")
    offered = httpx.post(url, json={"text": "a"})
    accepted = json.loads(base64.b64decode(offered.headers["payment-required"]))["accepts"][0]
    price = int(accepted["amount"])
    strangers: collections.Counter = collections.Counter()

    async def forge(agreement_id: str, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=60) as plain:
            place = 1
            while not stop.is_set():
                place += 1
                word = agreement_pb2.Voucher(
                    agreement_id=agreement_id, sequence=place, cumulative_atomic=place * price,
                    payword_index=place, payword=os.urandom(32)).SerializeToString()
                payment = {"x402Version": 2, "accepted": accepted, "payload": {
                    "kind": "voucher", "agreementId": agreement_id,
                    "voucher": base64.b64encode(word).decode()}}
                refused = await plain.post(url, json={"text": "theirs"}, headers={
                    "PAYMENT-SIGNATURE": base64.b64encode(json.dumps(payment).encode()).decode()})
                strangers[refused.status_code] += 1

    async def run() -> tuple[list[int], str]:
        client, schemes = http_client(market.key, market.network, calls_per_session=40)
        async with client:
            first = await client.post(url, json={"text": "mine"})
            (agreement_id,) = [a for s in schemes.values() for a in s.open_sessions()]
            stop = asyncio.Event()
            flooding = [asyncio.create_task(forge(agreement_id, stop)) for _ in range(4)]
            statuses = [first.status_code]
            for n in range(30):
                statuses.append((await client.post(url, json={"text": f"m{n}"})).status_code)
            stop.set()
            await asyncio.gather(*flooding)
            (closed,) = await close_sessions(client, market.http.url, schemes)
        return statuses, closed["captured"]

    statuses, captured = asyncio.run(run())
    assert statuses == [200] * 31
    assert set(strangers) == {402} and sum(strangers.values()) >= 4
    assert int(captured) == 31 * price  # the payer's calls, each once; the stranger's none
    books_balance(market.node)


def test_paid_calls_go_on_while_a_stale_route_is_refreshed(market, monkeypatch):
    """A route past its time is answered with while one refresh runs: unpaid requests sent
    around its expiry cannot fail a session's paid calls."""
    async def run() -> tuple[list[int], collections.Counter]:
        client, _ = http_client(market.key, market.network, calls_per_session=5)
        async with client:
            first = await client.post(market.url("count_words"), json={"text": "a b"})
            monkeypatch.setattr(routes, "QUOTE_TTL_S", 0.0)  # every route is stale now

            async def calls() -> list[int]:  # one session's calls, one after another
                return [(await client.post(market.url("count_words"), json={"text": "a"})
                         ).status_code for _ in range(3)]

            paid, burst = await asyncio.gather(calls(), _burst(market.url("count_words"), 40))
            return [first.status_code, *paid], burst

    paid, burst = asyncio.run(run())
    assert paid == [200] * 4
    assert burst == {402: 40}
    books_balance(market.node)


class Relay:
    """A TCP relay on loopback to `target`; `cut()` breaks the connections open now (new ones
    are relayed again), as a network between two hosts may."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inner, _ = self.listener.accept()
            except OSError:
                return
            outer = socket.create_connection(self.target)
            with self.lock:
                self.open += [inner, outer]
            for source, sink in ((inner, outer), (outer, inner)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            cut, self.open = self.open, []
        for connection in cut:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_a_stream_cut_off_on_its_way_from_the_seller_reports_what_the_seller_billed(market):
    """The seller bills the pieces it sent before the connection broke; the gateway asks for
    that end under the same call id, so PAYMENT-RESPONSE, the session and the capture agree
    with what the seller redeems (not 0 for a call that was charged)."""
    seller = SellerAgent("dripper", skills=[drip], marketplace=market.node.address,
                         dispute_window_s=0).serve()
    relay = Relay(seller.endpoint)
    url = f"{market.http.url}/v1/skills/{seller.agent_id}/drip"

    async def run() -> tuple[list[tuple[str, str]], int, dict]:
        client, schemes = http_client(market.key, market.network, calls_per_session=3)
        async with client:
            await client.post(url, json={"topic": "x", "words": 1})  # the session opens
            key = (seller.agent_id, "drip")
            market.gateway.routes._routes[key].listing.endpoint = relay.address
            events, _ = await read_stream(client, url, words=60, seen=lambda events: (
                relay.cut() if len(events) == 3 and events[-1][0] == "message" else None))
            agreement = schemes["upto"].open_sessions()[0]
            session = market.gateway.sessions.sessions[agreement]
            booked = session.charged_atomic
            closed = await client.post(f"{market.http.url}/v1/sessions/{agreement}/close",
                                       json={"finish": schemes["upto"].finish_signature(
                                           agreement)})
            assert closed.status_code == 200, closed.text
            return events, booked, closed.json()

    try:
        events, booked, closed = asyncio.run(run())
    finally:
        relay.close()
        seller.stop(0)
    names = [name for name, _ in events]
    assert "error" in names and names.count("message") < 60  # cut off under way
    settled = decode_payment_response_header(
        next(data for name, data in events if name == "payment-response"))
    ends = [data for name, data in events if name == "end"]
    assert ends, events  # the seller's end, asked for again under the same call id
    end = json.loads(ends[0])
    assert int(settled.amount) == int(end["usage"]["charged"]) > 0
    assert booked == int(closed["captured"])  # what the gateway booked is what was redeemed
    books_balance(market.node)


def _silent_sellers(market: Market, count: int) -> tuple[list[str], list[socket.socket]]:
    """`count` listings of free keys whose endpoint accepts TCP connections and never speaks
    HTTP/2: their URLs at the gateway, and the sockets (to close)."""
    import uuid

    from marketplace.auth import signed_channel
    from marketplace.identity import AgentKey
    from marketplace.testing import make_listing, make_skill
    from marketplace.v1 import registry_pb2, registry_pb2_grpc

    urls, holes = [], []
    for _ in range(count):
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        holes.append(hole)
        silent = AgentKey.generate()
        with signed_channel(market.node.address, silent) as channel:
            registry_pb2_grpc.RegistryServiceStub(channel).Advertise(
                registry_pb2.AdvertiseRequest(
                    idempotency_key=uuid.uuid4().hex, ttl_s=3600, listing=make_listing(
                        silent, make_skill("slow", price_atomic=1),
                        endpoint=f"127.0.0.1:{hole.getsockname()[1]}")), timeout=10)
        urls.append(f"{market.http.url}/v1/skills/{silent.agent_id}/slow")
    return urls, holes


def _funded_keys(market: Market, count: int) -> list:  # type: ignore[type-arg]
    from agents import BuyerAgent
    from marketplace.identity import AgentKey

    keys = [AgentKey.generate() for _ in range(count)]
    for n, key in enumerate(keys):
        with BuyerAgent(f"attacker{n}", marketplace=market.node.address, key=key) as agent:
            agent.fund("0.01", "USD")
    return keys


def test_opens_waiting_on_a_silent_seller_do_not_stall_other_buyers(market):
    """A free key lists a seller that accepts connections and never answers, and a buyer with
    a few cents opens sessions with it: each open waited 10 s on the seller on the same 6
    threads every other buyer's open, close and ledger check needed. Now those waits hold no
    thread and have a bound per buyer and per seller: the extra opens are refused at once,
    nothing held, and an honest buyer's paid call goes through meanwhile."""
    import time

    from agents.x402.seller_calls import OPENS_PER_BUYER, OPENS_PER_SELLER

    (slow_url,), holes = _silent_sellers(market, 1)
    attackers = _funded_keys(market, 3)  # 3 x 8 opens, of which 16 wait
    done: list[tuple[str, float, int, str]] = []
    start = time.monotonic()

    async def attack(key) -> None:  # type: ignore[no-untyped-def]
        client, _ = http_client(key, market.network, prepay=False, timeout=60)
        async with client:
            answer = await client.post(slow_url, json={"text": "x"})
        done.append(("attacker", time.monotonic() - start, answer.status_code,
                     answer.headers.get("payment-required", "")))

    async def honest() -> None:
        await asyncio.sleep(1.5)  # the opens to the silent seller are waiting
        client, _ = http_client(market.key, market.network, prepay=False, timeout=60)
        async with client:
            answer = await client.post(market.url("shout"), json={"text": "hi"})
        done.append(("honest", time.monotonic() - start, answer.status_code, answer.text))

    async def run() -> None:
        await asyncio.gather(*(attack(key) for key in attackers
                               for _ in range(OPENS_PER_BUYER + 1)), honest())

    try:
        asyncio.run(run())
    finally:
        for hole in holes:
            hole.close()
    honest_at, status, text = next((t, s, x) for who, t, s, x in done if who == "honest")
    assert status == 200 and json.loads(text)["output"] == {"text": "HI"}
    waited = sorted(t for who, t, _, _ in done if who == "attacker" and t > 5)
    refused = [t for who, t, s, _ in done if who == "attacker" and t <= 5]
    assert len(waited) == OPENS_PER_SELLER  # the rest refused at once: per buyer, per seller
    assert len(refused) == 3 * (OPENS_PER_BUYER + 1) - OPENS_PER_SELLER
    assert all(s == 402 for who, _, s, _ in done if who == "attacker")
    assert honest_at < waited[0]
    books_balance(market.node)


def test_opens_waiting_on_silent_sellers_hold_no_thread(market):
    """10 funded keys open 80 sessions with 5 silent sellers, within every per-buyer and
    per-seller bound: those waits held a pool's 64 threads, and an honest buyer's open queued
    behind them for 10 s. Now they wait on the event loop: the process gains no thread per
    open, and the honest buyer's paid call (its own open included) is answered meanwhile."""
    import threading
    import time

    from agents.x402.seller_calls import OPENS_PER_BUYER, OPENS_PER_SELLER

    urls, holes = _silent_sellers(market, 5)
    attackers = _funded_keys(market, 10)
    assert len(attackers) * OPENS_PER_BUYER == len(urls) * OPENS_PER_SELLER == 80
    done: list[tuple[str, float, int]] = []
    threads: list[int] = []
    start = time.monotonic()

    async def attack(n: int, key) -> None:  # type: ignore[no-untyped-def]
        client, _ = http_client(key, market.network, prepay=False, timeout=60)
        async with client:
            answer = await client.post(urls[n % len(urls)], json={"text": "x"})
        done.append(("attacker", time.monotonic() - start, answer.status_code))

    async def honest() -> None:
        await asyncio.sleep(2.0)  # the 80 opens are waiting on their sellers
        threads.append(threading.active_count())
        client, _ = http_client(market.key, market.network, prepay=False, timeout=60)
        async with client:
            answer = await client.post(market.url("shout"), json={"text": "hi"})
        done.append(("honest", time.monotonic() - start, answer.status_code))

    async def run() -> None:
        await asyncio.gather(*(attack(i * OPENS_PER_BUYER + j, key)
                               for i, key in enumerate(attackers)
                               for j in range(OPENS_PER_BUYER)), honest())

    before = threading.active_count()
    try:
        asyncio.run(run())
    finally:
        for hole in holes:
            hole.close()
    honest_at, status = next((t, s) for who, t, s in done if who == "honest")
    waited = sorted(t for who, t, s in done if who == "attacker")
    assert status == 200
    assert len(waited) == 80 and waited[0] > 5  # every open waited on its seller
    assert all(s == 402 for who, _, s in done if who == "attacker")
    assert honest_at < waited[0]
    assert threads[0] - before < 16  # not a thread per waiting open
    books_balance(market.node)


def test_the_end_is_asked_for_again_through_a_connection_still_closing():
    """The seller's end, asked for after a cut, could go out on the connection that was cut
    (the channel had not yet seen its socket close) and come back UNAVAILABLE: the charge was
    then reported as nothing. It is asked again, as while the seller still runs the call; a
    refusal of the seller's own is not."""
    from grpc.aio import AioRpcError, Metadata

    from agents.x402 import forward

    def lost() -> AioRpcError:
        return AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(),
                           details="Stream removed (Delayed close due to in-progress write)")

    answers: list = [lost(), lost(), "the end"]

    async def ask():  # type: ignore[no-untyped-def]
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert asyncio.run(forward._asked_again(ask)) == "the end" and answers == []
    refused = AioRpcError(grpc.StatusCode.PERMISSION_DENIED, Metadata(), Metadata(),
                          details="not yours")
    answers[:] = [refused, "never"]
    with pytest.raises(AioRpcError):
        asyncio.run(forward._asked_again(ask))
    assert answers == ["never"]
