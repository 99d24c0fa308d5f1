"""A paid call against the same call unpaid, on the same machine, in the same run.

Paid: a BuyerAgent's call to a SellerAgent: the payment check (PayWord word, sequence,
budget), metering, a chained receipt per call (signed every 16th) checked by the buyer, and a
durable usage record, committed before the answer. Unpaid: the same skill behind a gRPC server
with everything of the framework that is not about payment: the malformed-request guard,
tracing, authentication and access interceptors (an unsigned call passes them, as a paid one
does), the error mapping, input validation on the server, and on the client the output parsed
and checked against the skill's schema, as `BuyerAgent.call` returns it. So the ratio is the
cost of paying. A third side is the paid call with the seller's usage journal switched off
(`paid_call_ratio_no_journal`): what the durable record costs, not a mode the framework
offers. Each client thread makes calls on its own channel (paid: its own agreement, one buyer
each). Tracing is off everywhere (AGENTMARKET_TRACING=off by `make bench`).

Two loads: `SATURATING` clients keep the server busy (the headline `paid_call_ratio`: what a
seller serving many buyers keeps of its unpaid throughput), and `FEW` closed-loop clients,
where each call's latency (a paid call waits for its usage record's commit) limits throughput.
CPU time per call is reported for the server's process and the clients' process.

Each server runs in a process of its own, as a seller does: the buyers' threads (and the
marketplace) are in this process, so the seller's work does not queue on the same interpreter
lock as its callers'.
"""

from __future__ import annotations

import json
import multiprocessing
import os
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
from agents._grpc_payment import INVOKE
from agents._schemas_cache import validator
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace import MarketplaceNode
from marketplace.auth import AccessInterceptor, AuthServerInterceptor
from marketplace.grpc_tracing import client_interceptors, server_interceptor
from wallets.grpc_errors import MalformedRequestInterceptor, grpc_method

SATURATING = 16
FEW = 4
CALLS_PER_ROUND = 2400  # shared out between the clients of a round
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

    @grpc_method
    def Invoke(self, request, context):  # type: ignore[no-untyped-def]
        arguments = json.loads(request.input_json)
        validator(echo.input_schema).validate(arguments)  # cached, as the seller does
        output = json.dumps(echo.run(arguments), sort_keys=True)
        return agent_pb2.InvokeResponse(output_json=output)


class _Round:
    """One round's throughput and CPU time per call (server's process, clients' process)."""

    def __init__(self, calls: int, wall_s: float, server_cpu_s: float, client_cpu_s: float
                 ) -> None:
        self.rate = calls / wall_s
        self.server_cpu_us = server_cpu_s / calls * 1e6
        self.client_cpu_us = client_cpu_s / calls * 1e6


def _drive(call_fns: list[Any], server_pid: int, calls_per_client: int) -> _Round:
    """Run each client's calls in its own thread."""
    def worker(fn: Any) -> None:
        for i in range(calls_per_client):
            fn(i)

    threads = [threading.Thread(target=worker, args=(fn,)) for fn in call_fns]
    server_cpu, client_cpu = _cpu_s(server_pid), time.process_time()
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return _Round(len(call_fns) * calls_per_client, wall, _cpu_s(server_pid) - server_cpu,
                  time.process_time() - client_cpu)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve_unpaid(ready: Any, stop: Any) -> None:
    """Child process: the bare server, until `stop` is set."""
    auth = AuthServerInterceptor(optional_methods=(INVOKE,))
    access = AccessInterceptor({INVOKE: lambda _caller, _request: None},
                               ("agents.v1.AgentService",), anonymous_methods=(INVOKE,))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=[
        MalformedRequestInterceptor(), server_interceptor(), auth, access])
    agent_pb2_grpc.add_AgentServiceServicer_to_server(_Unpaid(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready.put(f"127.0.0.1:{port}")
    stop.wait()
    server.stop(0)


def _serve_paid(marketplace: str, journal: str | None, ready: Any, stop: Any) -> None:
    """Child process: the seller (it advertises itself at the marketplace), until `stop`;
    `journal` None: its usage journal switched off (to measure what the journal costs)."""
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as spare:
        seller = SellerAgent("echo", skills=[echo], marketplace=marketplace,
                             journal=journal or Path(spare) / "unused.db")
        if journal is None:
            seller.gate.journal = None
        seller.serve()
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
        self.pid: int = self._process.pid or 0

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
                                                *client_interceptors())
                         for _ in range(SATURATING)]
        stubs = [agent_pb2_grpc.AgentServiceStub(c) for c in self.channels]
        self.callers = [self._caller(s) for s in stubs]

    @staticmethod
    def _caller(stub: Any) -> Any:
        check = validator(echo.output_schema)

        def call(i: int) -> Any:
            response = stub.Invoke(agent_pb2.InvokeRequest(
                agreement_id="x", input_json=json.dumps({"text": f"call {i}"})), timeout=10)
            output = json.loads(response.output_json)
            check.validate(output)
            return output

        return call

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.close()


class _PaidSide:
    """A marketplace node, a seller and one buyer with its own agreement per client, each
    agreement large enough for every round."""

    def __init__(self, node: MarketplaceNode, rounds: int, journal: Path | None) -> None:
        self.seller = _Server(_serve_paid, node.address, str(journal) if journal else None)
        self.buyers = []
        calls = (rounds + 1) * 2 * CALLS_PER_ROUND // FEW
        for n in range(SATURATING):
            buyer = BuyerAgent(f"buyer-{n}", marketplace=node.address)
            buyer.fund("10.00", "USD")
            listing = next(found for found in buyer.discover("echo", currency="USD")
                           if found.endpoint == self.seller.address)
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


def run(progress: Any = None) -> dict[str, float]:
    """Alternate rounds of the sides (so all see the same machine weather) and compare the
    medians, under both loads."""
    say = progress or (lambda _text: None)
    rounds: dict[tuple[str, int], list[_Round]] = {}
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        node = MarketplaceNode(f"sqlite:///{Path(tmp) / 'market.db'}").start()
        built: list[Any] = []
        try:
            built.append(_UnpaidSide())
            built.append(_PaidSide(node, ROUNDS, Path(tmp) / "journal.db"))
            built.append(_PaidSide(node, ROUNDS, None))
            unpaid, paid, no_journal = built
            sides = {"unpaid": (unpaid.callers, unpaid.server.pid),
                     "paid": (paid.callers, paid.seller.pid),
                     "no_journal": (no_journal.callers, no_journal.seller.pid)}
            for callers, pid in sides.values():  # warm up
                _drive(callers[:1], pid, 200)
            for n in range(ROUNDS):
                say(f"paid vs unpaid calls, round {n + 1} of {ROUNDS}")
                for clients in (SATURATING, FEW):
                    for name, (callers, pid) in sides.items():
                        rounds.setdefault((name, clients), []).append(
                            _drive(callers[:clients], pid, CALLS_PER_ROUND // clients))
        finally:
            for side in built:
                side.close()
            node.stop(0)

    def median(name: str, clients: int, figure: str) -> float:
        return statistics.median(getattr(r, figure) for r in rounds[(name, clients)])

    results: dict[str, float] = {"paid_call_clients": SATURATING}
    for clients, suffix in ((SATURATING, ""), (FEW, f"_{FEW}_clients")):
        unpaid_rate = median("unpaid", clients, "rate")
        results[f"unpaid_calls_per_s{suffix}"] = round(unpaid_rate)
        for name, key in (("paid", "paid"), ("no_journal", "paid_no_journal")):
            rate = median(name, clients, "rate")
            results[f"{key}_calls_per_s{suffix}"] = round(rate)
            results[f"{key.replace('paid', 'paid_call_ratio', 1)}{suffix}"] = round(
                rate / unpaid_rate, 3)
    for name in ("unpaid", "paid", "no_journal"):
        key = "paid_no_journal" if name == "no_journal" else name
        results[f"{key}_server_cpu_us_per_call"] = round(
            median(name, SATURATING, "server_cpu_us"))
        results[f"{key}_client_cpu_us_per_call"] = round(
            median(name, SATURATING, "client_cpu_us"))
    return results


if __name__ == "__main__":
    for name, value in run(print).items():
        print(f"{name}: {value}")
