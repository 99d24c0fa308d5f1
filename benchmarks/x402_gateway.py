"""A paid HTTP call through the x402 gateway against the same call unpaid, in the same run.

Paid: an HTTP client in x402 v2 (the `x402` package's client with agentmarket's scheme, each
call prepaid with the session's next PayWord voucher) calls `POST /v1/skills/{listing}/echo` on
the gateway, which checks the payment through x402's resource server and agentmarket's
facilitator scheme, forwards the call to the seller over gRPC with the voucher (the seller checks
it again, meters and journals the call) and answers with PAYMENT-RESPONSE. Unpaid: the same
HTTP request (the same path, listing id included) to a door of the same shape on the same
kind of server (uvicorn, Starlette with the gateway's host check and security headers, JSON in
and out) forwarding, over the gateway's kind of gRPC channel, to the same skill behind a bare
gRPC server (`benchmarks.paid_call`'s unpaid side): so the ratio is what paying over HTTP
costs. Floor (threaded only, `benchmarks._x402_floor`): the unpaid door and client carrying a
real session call's headers and body, to a seller writing a paid call's durable record, with
no payment work anywhere: the most any payment could reach here; and the same floor without the
record (`_bytes`) and with the record written but not waited for (`_unwaited`, which no seller
may do: it answers before the record is durable), so that the shares of the bytes, of writing
the record and of waiting for it are told apart. A round times the calls, then the sessions'
closes (paid only), and reports the closes' CPU apart as well.

16 clients, each its own HTTP connection and (paid) its own buyer key and session: a session's
calls are one hold and one capture on the ledger, reported as postings per 100 calls. Every
party is a process of its own, as deployed: the node with its gateway, as `agentmarket gateway`
runs them (its heap settled and its threads under SCHED_BATCH once started,
`marketplace.cli.tuning`), serving the unpaid and floor doors too, so that an unpaid call goes
through the gateway's process as a paid one does; the seller, the unpaid and the floor
servers (`benchmarks._paid_sides.Server`, heap settled); the clients (heap settled once they
are made, as README tells a buyer's process). Measured for both kinds of seller
server, each against an unpaid server of its kind: threaded (`x402_paid_call_ratio`) and
grpc.aio (`..._aio`). Run: `python -m benchmarks.x402_gateway` (or `make bench`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import multiprocessing
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agents import BuyerAgent, SellerAgent
from agents.v1 import agent_pb2
from agents.x402 import Gateway, forward
from benchmarks._paid_sides import (
    SKILLS,
    Server,
    serve_floor_variant,
    serve_unpaid,
    serve_unpaid_aio,
)
from benchmarks._x402_floor import Wire, capture, floor_call
from benchmarks._x402_rounds import Round, play_round
from marketplace import MarketplaceNode
from marketplace.heap import settle_heap
from marketplace.http import HttpServer
from marketplace.http.app import LOOPBACK_HOSTS, SecurityHeaders
from marketplace.identity import AgentKey
from marketplace.scheduling import batch_scheduling

CLIENTS = 16
CALLS_PER_CLIENT = 150
ROUNDS = 5
# `benchmarks._paid_floor` variants: the record waited for, none, written but not waited for
FLOORS = ("floor", "floor_bytes", "floor_unwaited")


def _serve_seller(marketplace: str, kind: str, ready: Any, stop: Any) -> None:
    """Child process: the echo seller on `kind` of server, settling at redeem (dispute
    window 0)."""
    seller = SellerAgent("echo", skills=[SKILLS["echo"]], marketplace=marketplace,
                         dispute_window_s=0, server=kind).serve()
    ready.put(seller.endpoint)
    stop.wait()
    seller.stop(0)


class _Doors:
    """The node, its gateway and the unpaid (and floor) doors, in one child process tuned as
    `agentmarket gateway` runs (heap settled, SCHED_BATCH): an unpaid call goes through the
    gateway's own process, as a paid one does. `urls`: the node's address, the network and
    each door's URL."""

    def __init__(self, database_url: str, unpaid: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._asks, self._answers = context.Queue(), context.Queue()
        self._server = Server(_serve_doors, database_url, unpaid, self._asks, self._answers)
        self.pid = self._server.pid
        self.urls: dict[str, str] = dict(self._server.address)  # type: ignore[arg-type]

    def add_floor(self, name: str, floor: str, wire: Wire) -> None:
        """A floor's door (its URL under `name`), to the floor server at `floor`, carrying
        `wire`."""
        self._asks.put((name, floor, wire))
        self.urls.update(self._answers.get(timeout=60))

    def close(self) -> None:
        self._asks.put(None)
        self._server.close()


def _serve_doors(database_url: str, unpaid: str, asks: Any, answers: Any, ready: Any,
                 _stop: Any) -> None:
    """Child process of `_Doors` (a `Server`, whose `ready` settles the heap): serves until
    asked None; a floor's door when asked for one."""
    node = MarketplaceNode(database_url, sweep_interval_s=3600).start()
    gateway = Gateway(node)
    doors = {"paid": HttpServer(gateway.app()).start(),
             "free": HttpServer(_unpaid_door({"endpoint": unpaid})).start()}
    batch_scheduling()  # threads started later inherit it
    ready.put({"node": node.address, "network": gateway.network,
               **{name: door.url for name, door in doors.items()}})
    while (ask := asks.get()) is not None:
        name, floor, wire = ask
        doors[name] = HttpServer(_floor_door({"endpoint": floor}, wire)).start()
        settle_heap()  # what the floor's door made, as `ready` did for the rest
        answers.put({name: doors[name].url})
    for door in doors.values():
        door.stop(0)
    node.stop(0)


def _unpaid_door(endpoint_box: dict[str, str]) -> Starlette:
    """The unpaid side's door: JSON in, the skill over gRPC (on the gateway's kind of
    channel, `agents.x402.forward.Channels`), JSON out."""
    channels: list[forward.Channels] = []

    async def call(request: Request) -> Response:
        arguments = json.loads(await request.body())
        reply = await _stub(channels, endpoint_box).Invoke(agent_pb2.InvokeRequest(
            input_json=json.dumps(arguments), call_id="free"), timeout=30)
        body = {"output": json.loads(reply.output_json)}
        return Response(json.dumps(body), media_type="application/json")

    return _door(call)


def _floor_door(endpoint_box: dict[str, str], wire: Wire) -> Starlette:
    """The floor's door (`benchmarks._x402_floor`): the unpaid door with a paid call's bytes,
    forwarding to the floor seller."""
    channels: list[forward.Channels] = []
    return _door(floor_call(lambda: _stub(channels, endpoint_box), wire))


def _stub(channels: list[forward.Channels], endpoint_box: dict[str, str]) -> Any:
    """The stub the gateway would call the endpoint with (its channels made on the loop)."""
    if not channels:
        channels.append(forward.Channels(AgentKey.generate()))
    return channels[0].stub(endpoint_box["endpoint"])


def _door(call: Any) -> Starlette:
    """A door serving `call` on the gateway's own path and middleware, so that only paying
    differs."""
    return Starlette(routes=[Route("/v1/skills/{listing}/{skill}", call, methods=["POST"])],
                     middleware=[Middleware(SecurityHeaders), Middleware(
                         TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS))])


def run(progress: Any = None) -> dict[str, float]:
    """Both kinds of seller server, each against an unpaid server of its kind: the threaded
    one (the headline `x402_paid_call_ratio`, and its floor) and grpc.aio (keys ending
    `_aio`)."""
    results = _measure("threaded", progress, floor=True)
    results.update({f"{key}_aio": value for key, value in _measure("aio", progress).items()
                    if key != "x402_clients"})
    return results


def _measure(kind: str, progress: Any, *, floor: bool = False) -> dict[str, float]:
    """Rounds of paid, unpaid (and, with `floor`, floor) calls, in turn."""
    say = progress or (lambda text: None)
    started: list[Any] = []  # servers, stopped last first
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        database = Path(tmp) / "market.db"
        try:
            unpaid = _started(started, Server(
                serve_unpaid_aio if kind == "aio" else serve_unpaid, "echo"))
            doors = _started(started, _Doors(f"sqlite:///{database}", unpaid.address))
            node, network = doors.urls["node"], doors.urls["network"]
            seller = _started(started, Server(_serve_seller, node, kind))
            path = f"/v1/skills/{_listing_of(node)}/echo"  # every door serves the paid path
            gateway = doors.urls["paid"]  # where sessions are closed
            floors: dict[str, Server] = {}  # by variant (FLOORS)
            wire = None
            if floor:
                wire = asyncio.run(capture(f"{doors.urls['paid']}{path}", gateway, network,
                                           _funded(node)))
                for name in FLOORS:
                    floors[name] = _started(started, Server(functools.partial(
                        serve_floor_variant, variant=name), "echo"))
                    doors.add_floor(name, floors[name].address, wire)
            rounds: dict[str, list[Round]] = {"paid": [], "free": [], **{n: [] for n in floors}}
            postings = []
            for index in range(ROUNDS):
                say(f"x402 gateway, {kind} seller: round {index + 1}/{ROUNDS}")
                seeds = [_funded(node).seed() for _ in range(CLIENTS)]
                before = _postings(database)
                rounds["paid"].append(play_round(f"{doors.urls['paid']}{path}", network, seeds,
                                                 CALLS_PER_CLIENT, gateway, doors.pid,
                                                 seller.pid))
                moved = _postings(database) - before
                postings.append(moved / (CLIENTS * CALLS_PER_CLIENT) * 100)
                rounds["free"].append(play_round(f"{doors.urls['free']}{path}", network,
                                                 [None] * CLIENTS, CALLS_PER_CLIENT, "",
                                                 doors.pid, unpaid.pid))
                for name, floor_server in floors.items():
                    assert wire is not None
                    rounds[name].append(play_round(
                        f"{doors.urls[name]}{path}", network, [None] * CLIENTS,
                        CALLS_PER_CLIENT, "", doors.pid, floor_server.pid,
                        wire.payment_signature))
        finally:
            for server in reversed(started):
                server.close()
    results = _figures(rounds["paid"], rounds["free"], "paid")
    results.update(x402_ledger_postings_per_100_calls=round(statistics.median(postings), 2),
                   x402_clients=CLIENTS,
                   x402_door_cpu_ms_per_session_open=_median(rounds["paid"], "door_open_ms", 2),
                   x402_server_cpu_ms_per_session_open=_median(rounds["paid"], "server_open_ms", 2),
                   x402_door_cpu_us_per_call_close=_median(rounds["paid"], "door_close_us"),
                   x402_server_cpu_us_per_call_close=_median(rounds["paid"], "server_close_us"),
                   x402_client_cpu_us_per_call_close=_median(rounds["paid"], "clients_close_us"))
    for name in floors:
        floor_figures = _figures(rounds[name], rounds["free"], name)
        results.update({f"x402_paid_call_ratio_{name}": floor_figures["x402_paid_call_ratio"],
                        f"x402_{name}_calls_per_s": floor_figures["x402_paid_calls_per_s"],
                        **{key: value for key, value in floor_figures.items()
                           if key.endswith(f"_{name}")}})
    return results


def _figures(paid: list[Round], free: list[Round], name: str
             ) -> dict[str, float]:
    """The medians of rounds of `name` (paid, or the floor) against the unpaid rounds."""
    paid_rate, free_rate = _median(paid, "calls_per_s"), _median(free, "calls_per_s")
    return {"x402_paid_call_ratio": round(paid_rate / free_rate, 3),
            "x402_paid_calls_per_s": paid_rate,
            "x402_unpaid_calls_per_s": free_rate,
            f"x402_door_cpu_us_per_call_{name}": _median(paid, "door_us"),
            "x402_door_cpu_us_per_call_unpaid": _median(free, "door_us"),
            f"x402_server_cpu_us_per_call_{name}": _median(paid, "server_us"),
            "x402_server_cpu_us_per_call_unpaid": _median(free, "server_us"),
            f"x402_client_cpu_us_per_call_{name}": _median(paid, "clients_us"),
            "x402_client_cpu_us_per_call_unpaid": _median(free, "clients_us")}


def _median(rounds: list[Round], figure: str, digits: int = 1) -> float:
    return round(statistics.median(getattr(r, figure) for r in rounds), digits)


def _started(started: list[Any], server: Any) -> Any:
    started.append(server)
    return server


def _funded(node: str) -> AgentKey:
    """A new buyer key holding 1.00 USD at the node at `node`."""
    key = AgentKey.generate()
    with BuyerAgent("bench", marketplace=node, key=key) as buyer:
        buyer.fund("1.00", "USD")
    return key


def _postings(database: Path) -> int:
    """The postings in the node's ledger so far (read from its SQLite file)."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM ledger_postings").fetchone()[0])


def _listing_of(node: str) -> str:
    """The echo seller's agent id (it advertised itself on start)."""
    deadline = time.monotonic() + 30
    with BuyerAgent("bench", marketplace=node) as buyer:
        while time.monotonic() < deadline:
            found = buyer.discover("echo")
            if found:
                return str(found[0].agent_id)
            time.sleep(0.05)
    raise RuntimeError("the seller did not advertise")


if __name__ == "__main__":
    print(json.dumps(run(print), indent=2))
