"""A paid HTTP call through the x402 gateway against the same call unpaid, in the same run.

Paid: an HTTP client in x402 v2 (the `x402` package's client with agentmarket's scheme, each
call prepaid with the session's next PayWord voucher) calls `POST /v1/skills/{listing}/echo` on
the gateway, which checks the payment through x402's resource server and agentmarket's
facilitator scheme, forwards the call to the seller over gRPC with the voucher (the seller checks
it again, meters and journals the call) and answers with PAYMENT-RESPONSE. Unpaid: the same
HTTP request (the same path, listing id included) to a door of the same shape on the same
kind of server (uvicorn, Starlette with the gateway's host check and security headers, JSON in
and out) forwarding to the same skill
behind a bare gRPC server (`benchmarks.paid_call`'s unpaid side): so the ratio is what paying
over HTTP costs.

16 clients, each its own HTTP connection and (paid) its own buyer key and session: a session's
calls are one hold and one capture on the ledger, reported as postings per 100 calls. The
clients run in a process of their own, the seller and the unpaid server in theirs; the node and
both doors share this process. Measured for both kinds of seller server, each against an
unpaid server of its kind: threaded (`x402_paid_call_ratio`) and grpc.aio (`..._aio`).
Run: `python -m benchmarks.x402_gateway` (or `make bench`).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
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
from agents.v1 import agent_pb2, agent_pb2_grpc
from agents.x402 import Gateway
from benchmarks.paid_call import SKILLS, _cpu_s, _serve_unpaid, _serve_unpaid_aio, _Server
from marketplace import MarketplaceNode
from marketplace.aio_client import aio_channel
from marketplace.http import HttpServer
from marketplace.http.app import LOOPBACK_HOSTS, SecurityHeaders
from marketplace.identity import AgentKey

CLIENTS = 16
CALLS_PER_CLIENT = 150
ROUNDS = 5


def _serve_seller(marketplace: str, kind: str, ready: Any, stop: Any) -> None:
    """Child process: the echo seller on `kind` of server, settling at redeem (dispute
    window 0)."""
    seller = SellerAgent("echo", skills=[SKILLS["echo"]], marketplace=marketplace,
                         dispute_window_s=0, server=kind).serve()
    ready.put(seller.endpoint)
    stop.wait()
    seller.stop(0)


def _unpaid_door(endpoint_box: dict[str, str]) -> Starlette:
    """The unpaid side's door: JSON in, the skill over gRPC, JSON out."""
    channels: dict[str, Any] = {}

    async def call(request: Request) -> Response:
        arguments = json.loads(await request.body())
        if "stub" not in channels:
            channels["stub"] = agent_pb2_grpc.AgentServiceStub(
                aio_channel(endpoint_box["endpoint"], None))
        reply = await channels["stub"].Invoke(agent_pb2.InvokeRequest(
            input_json=json.dumps(arguments), call_id="free"), timeout=30)
        body = {"output": json.loads(reply.output_json)}
        return Response(json.dumps(body), media_type="application/json")

    # the gateway's own path and middleware, so that only paying differs
    return Starlette(routes=[Route("/v1/skills/{listing}/{skill}", call, methods=["POST"])],
                     middleware=[Middleware(SecurityHeaders), Middleware(
                         TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS))])


def _clients(url: str, network: str, seeds: list[Any], calls: int, close_base: str,
             out: Any) -> None:
    """Child process: CLIENTS concurrent clients, `calls` each; the first call of each is a
    warm-up (a paid one opens the session); reports the timed calls' wall time."""
    import httpx

    from agents.x402 import http_client

    async def one(seed: bytes | None, started: asyncio.Event, ready: list[int]) -> None:
        if seed is None:
            client, schemes = httpx.AsyncClient(), {}
        else:
            client, schemes = http_client(AgentKey.from_seed(seed), network,
                                          calls_per_session=calls + 1)
        async with client:
            first = await client.post(url, json={"text": "hello"})
            assert first.status_code == 200, first.text
            ready.append(1)
            await started.wait()
            for _ in range(calls - 1):
                response = await client.post(url, json={"text": "hello"})
                assert response.status_code == 200, response.text
            for scheme in schemes.values():
                for agreement in scheme.open_sessions():
                    closed = await client.post(f"{close_base}/{agreement}/close", json={
                        "finish": scheme.finish_signature(agreement)})
                    assert closed.status_code == 200, closed.text

    async def main() -> float:
        started, ready = asyncio.Event(), []
        tasks = [asyncio.create_task(one(seed, started, ready)) for seed in seeds]
        while len(ready) < len(seeds):
            await asyncio.sleep(0.01)
        begin, cpu = time.perf_counter(), time.process_time()
        started.set()
        await asyncio.gather(*tasks)
        return time.perf_counter() - begin, time.process_time() - cpu

    out.put(asyncio.run(main()))


def _round(url: str, network: str, seeds: list[Any], close_base: str, server_pid: int
           ) -> tuple[float, float, float, float]:
    """(calls per second, then CPU us per call of the door's process, the server's and the
    clients') of one round; the warm-up calls count in the door's and server's CPU (and
    the sessions' closing), not in the rate nor the clients' CPU."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_clients, args=(url, network, seeds, CALLS_PER_CLIENT,
                                                     close_base, out))
    door, server = _cpu_s(os.getpid()), _cpu_s(server_pid)
    process.start()
    wall_s, clients = out.get(timeout=600)
    door, server = _cpu_s(os.getpid()) - door, _cpu_s(server_pid) - server
    process.join(timeout=60)
    calls, timed = len(seeds) * CALLS_PER_CLIENT, len(seeds) * (CALLS_PER_CLIENT - 1)
    return timed / wall_s, door / calls * 1e6, server / calls * 1e6, clients / timed * 1e6


def run(progress: Any = None) -> dict[str, float]:
    """Both kinds of seller server, each against an unpaid server of its kind: the threaded
    one (the headline `x402_paid_call_ratio`) and grpc.aio (keys ending `_aio`)."""
    results = _measure("threaded", progress)
    results.update({f"{key}_aio": value for key, value in _measure("aio", progress).items()
                    if key != "x402_clients"})
    return results


def _measure(kind: str, progress: Any) -> dict[str, float]:
    say = progress or (lambda text: None)
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        node = MarketplaceNode(f"sqlite:///{Path(tmp) / 'market.db'}",
                               sweep_interval_s=3600).start()
        seller = _Server(_serve_seller, node.address, kind)
        unpaid = _Server(_serve_unpaid_aio if kind == "aio" else _serve_unpaid, "echo")
        gateway = Gateway(node)
        paid_http = HttpServer(gateway.app()).start()
        free_http = HttpServer(_unpaid_door({"endpoint": unpaid.address})).start()
        try:
            listing = _listing_of(node)
            paid_url = f"{paid_http.url}/v1/skills/{listing}/echo"
            free_url = f"{free_http.url}/v1/skills/{listing}/echo"  # the paid call's path
            close_base = f"{paid_http.url}/v1/sessions"
            paid, free, postings = [], [], []
            for index in range(ROUNDS):
                say(f"x402 gateway, {kind} seller: round {index + 1}/{ROUNDS}")
                seeds = [os.urandom(32) for _ in range(CLIENTS)]
                for seed in seeds:
                    with BuyerAgent("bench", marketplace=node.address,
                                    key=AgentKey.from_seed(seed)) as buyer:
                        buyer.fund("1.00", "USD")
                before = len(node.ledger.postings(limit=10_000_000))
                paid.append(_round(paid_url, gateway.network, seeds, close_base, seller.pid))
                moved = len(node.ledger.postings(limit=10_000_000)) - before
                postings.append(moved / (CLIENTS * CALLS_PER_CLIENT) * 100)
                free.append(_round(free_url, gateway.network, [None] * CLIENTS, "",
                                   unpaid.pid))
        finally:
            paid_http.stop(0)
            free_http.stop(0)
            seller.close()
            unpaid.close()
            node.stop(0)
    def median(rounds: list[tuple[float, ...]], index: int) -> float:
        return round(statistics.median(r[index] for r in rounds), 1)

    return {"x402_paid_call_ratio": round(median(paid, 0) / median(free, 0), 3),
            "x402_paid_calls_per_s": median(paid, 0),
            "x402_unpaid_calls_per_s": median(free, 0),
            "x402_ledger_postings_per_100_calls": round(statistics.median(postings), 2),
            "x402_clients": CLIENTS,
            "x402_door_cpu_us_per_call_paid": median(paid, 1),
            "x402_door_cpu_us_per_call_unpaid": median(free, 1),
            "x402_server_cpu_us_per_call_paid": median(paid, 2),
            "x402_server_cpu_us_per_call_unpaid": median(free, 2),
            "x402_client_cpu_us_per_call_paid": median(paid, 3),
            "x402_client_cpu_us_per_call_unpaid": median(free, 3)}


def _listing_of(node: MarketplaceNode) -> str:
    """The echo seller's agent id (it advertised itself on start)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = node.registry.discover(skill="echo")
        if found:
            return str(found[0].agent_id)
        time.sleep(0.05)
    raise RuntimeError("the seller did not advertise")


if __name__ == "__main__":
    print(json.dumps(run(print), indent=2))
