"""A paid call against the same call unpaid, on the same machine, in the same run.

Paid: a SellerAgent's Invoke through the buyer's voucher interceptor and the seller's
authentication, access and payment checks (PayWord word, sequence, budget), metering and a
signed receipt per call. Unpaid: the same skill behind a gRPC server with the framework's
interceptors that are not about payment (malformed-request guard, tracing on both sides), so
the ratio is the cost of paying. Each of `CLIENTS` threads makes calls on its own channel
(paid: its own agreement). Tracing is off in both (AGENTMARKET_TRACING=off by `make bench`).

Each server runs in a process of its own, as a seller does: the buyers' threads (and the
marketplace) are in this process, so the seller's work does not queue on the same interpreter
lock as its callers'.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
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
ROUNDS = 7


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


def _serve_unpaid(ready: Any, stop: Any) -> None:
    """Child process: the bare server, until `stop` is set."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=[
        MalformedRequestInterceptor(), server_interceptor()])
    agent_pb2_grpc.add_AgentServiceServicer_to_server(_Unpaid(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready.put(f"127.0.0.1:{port}")
    stop.wait()
    server.stop(0)


def _serve_paid(marketplace: str, journal: str, ready: Any, stop: Any) -> None:
    """Child process: the seller (it advertises itself at the marketplace), until `stop`."""
    seller = SellerAgent("echo", skills=[echo], marketplace=marketplace, journal=journal).serve()
    ready.put(seller.endpoint)
    stop.wait()
    seller.stop(0)


class _Server:
    """A server in a child process of its own."""

    def __init__(self, target: Any, *args: Any) -> None:
        context = multiprocessing.get_context("spawn")  # no fork after gRPC started
        self._ready, self._stop = context.Queue(), context.Event()
        self._process = context.Process(target=target, args=(*args, self._ready, self._stop),
                                        daemon=True)
        self._process.start()
        self.address: str = self._ready.get(timeout=120)

    def close(self) -> None:
        self._stop.set()
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()


class _UnpaidSide:
    """The bare server and one channel per client."""

    def __init__(self) -> None:
        self.server = _Server(_serve_unpaid)
        self.channels = [grpc.intercept_channel(grpc.insecure_channel(self.server.address),
                                                *client_interceptors()) for _ in range(CLIENTS)]
        stubs = [agent_pb2_grpc.AgentServiceStub(c) for c in self.channels]
        self.callers = [self._caller(s) for s in stubs]

    @staticmethod
    def _caller(stub: Any) -> Any:
        return lambda i: stub.Invoke(agent_pb2.InvokeRequest(
            agreement_id="x", input_json=json.dumps({"text": f"call {i}"})), timeout=10)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.close()


class _PaidSide:
    """A marketplace node, a seller and one buyer with its own agreement per client, each
    agreement large enough for every round."""

    def __init__(self, workdir: Path, rounds: int) -> None:
        self.node = MarketplaceNode(f"sqlite:///{workdir / 'paid.db'}").start()
        self.seller = _Server(_serve_paid, self.node.address, str(workdir / "journal.db"))
        self.buyers = []
        calls = (rounds + 1) * CALLS_PER_CLIENT
        for n in range(CLIENTS):
            buyer = BuyerAgent(f"buyer-{n}", marketplace=self.node.address)
            buyer.fund("10.00", "USD")
            listing = buyer.discover("echo", currency="USD")[0]
            deal = buyer.negotiate(listing, "echo", quantity=calls, budget="1.00",
                                   currency="USD")
            buyer.hire(deal)
            self.buyers.append((buyer, deal))
        self.callers = [self._caller(b, d) for b, d in self.buyers]

    @staticmethod
    def _caller(buyer: BuyerAgent, deal: Any) -> Any:
        return lambda i: buyer.call(deal, {"text": f"call {i}"})

    def close(self) -> None:
        for buyer, _ in self.buyers:
            buyer.close()
        self.seller.close()
        self.node.stop(0)


def run(progress: Any = None) -> dict[str, float]:
    """Alternate rounds of unpaid and paid calls (so both see the same machine weather) and
    compare the medians."""
    say = progress or (lambda _text: None)
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        unpaid_side, paid_side = _UnpaidSide(), _PaidSide(Path(tmp), ROUNDS)
        try:
            _drive(unpaid_side.callers[:1])  # warm up
            _drive(paid_side.callers[:1])
            unpaid, paid = [], []
            for n in range(ROUNDS):
                say(f"paid vs unpaid calls, round {n + 1} of {ROUNDS}")
                unpaid.append(_drive(unpaid_side.callers))
                paid.append(_drive(paid_side.callers))
        finally:
            unpaid_side.close()
            paid_side.close()
    unpaid_rate, paid_rate = statistics.median(unpaid), statistics.median(paid)
    return {"unpaid_calls_per_s": round(unpaid_rate), "paid_calls_per_s": round(paid_rate),
            "paid_call_ratio": round(paid_rate / unpaid_rate, 3)}


if __name__ == "__main__":
    for name, value in run(print).items():
        print(f"{name}: {value}")
