"""A paid call against the same call unpaid, on the same machine, in the same run.

Paid: a SellerAgent's Invoke through the buyer's voucher interceptor and the seller's
authentication, access and payment checks (PayWord word, sequence, budget), metering and a
signed receipt per call. Unpaid: the same skill behind a gRPC server with the framework's
interceptors that are not about payment (malformed-request guard, tracing on both sides), so
the ratio is the cost of paying. Each of `CLIENTS` threads makes calls on its own channel
(paid: its own agreement). Tracing is off in both (AGENTMARKET_TRACING=off by `make bench`).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents._schemas_cache import validator
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace import MarketplaceNode
from marketplace.grpc_tracing import client_interceptors, server_interceptor
from wallets.grpc_errors import MalformedRequestInterceptor

CLIENTS = 4
CALLS_PER_CLIENT = 400


class Reply(BaseModel):
    text: str
    length: int


@skill(price=per_call("0.00001", "USD"))
def echo(text: str) -> Reply:
    """Echo a text with its length."""
    return Reply(text=text, length=len(text))


class _Unpaid(agent_pb2_grpc.AgentServiceServicer):
    """The same work as a paid Invoke: parse, validate input, run the skill, dump the output."""

    def Invoke(self, request, context):  # type: ignore[no-untyped-def]
        arguments = json.loads(request.input_json)
        validator(echo.input_schema).validate(arguments)  # cached, as the seller does
        output = json.dumps(echo.run(arguments), sort_keys=True)
        return agent_pb2.InvokeResponse(output_json=output)


def _drive(call_fns: list[Any]) -> float:
    """Run each client's calls in its own thread; calls per second overall."""
    def worker(fn: Any) -> None:
        for i in range(CALLS_PER_CLIENT):
            fn(i)

    threads = [threading.Thread(target=worker, args=(fn,)) for fn in call_fns]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(call_fns) * CALLS_PER_CLIENT / (time.perf_counter() - start)


def bench_unpaid() -> float:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=[
        MalformedRequestInterceptor(), server_interceptor()])
    agent_pb2_grpc.add_AgentServiceServicer_to_server(_Unpaid(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channels = [grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}"),
                                       *client_interceptors()) for _ in range(CLIENTS)]
    stubs = [agent_pb2_grpc.AgentServiceStub(c) for c in channels]

    def caller(stub: Any) -> Any:
        return lambda i: stub.Invoke(agent_pb2.InvokeRequest(
            agreement_id="x", input_json=json.dumps({"text": f"call {i}"})), timeout=10)

    try:
        _drive([caller(s) for s in stubs[:1]])  # warm up
        return _drive([caller(s) for s in stubs])
    finally:
        for channel in channels:
            channel.close()
        server.stop(0)


def bench_paid(workdir: Path) -> float:
    node = MarketplaceNode(f"sqlite:///{workdir / 'paid.db'}").start()
    seller = SellerAgent("echo", skills=[echo], marketplace=node.address).serve()
    buyers = []
    try:
        for n in range(CLIENTS + 1):
            buyer = BuyerAgent(f"buyer-{n}", marketplace=node.address)
            buyer.fund("10.00", "USD")
            listing = buyer.discover("echo", currency="USD")[0]
            deal = buyer.negotiate(listing, "echo", quantity=CALLS_PER_CLIENT, budget="1.00",
                                   currency="USD")
            buyer.hire(deal)
            buyers.append((buyer, deal))

        def caller(buyer: BuyerAgent, deal: Any) -> Any:
            return lambda i: buyer.call(deal, {"text": f"call {i}"})

        _drive([caller(*buyers[0])])  # warm up
        return _drive([caller(b, d) for b, d in buyers[1:]])
    finally:
        for buyer, _ in buyers:
            buyer.close()
        seller.stop(0)
        node.stop(0)


def run(progress: Any = None) -> dict[str, float]:
    say = progress or (lambda _text: None)
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        say("unpaid calls")
        unpaid = bench_unpaid()
        say("paid calls")
        paid = bench_paid(Path(tmp))
    return {"unpaid_calls_per_s": round(unpaid), "paid_calls_per_s": round(paid),
            "paid_call_ratio": round(paid / unpaid, 3)}


if __name__ == "__main__":
    for name, value in run(print).items():
        print(f"{name}: {value}")
