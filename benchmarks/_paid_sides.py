"""The servers and clients that `benchmarks.paid_call` compares, and other benchmarks reuse.

The skills measured (an echo, the same echo as a coroutine, an LLM skill priced per token),
the unpaid servicer that does a paid Invoke's work but the payment, each kind of server in a
child process of its own (unpaid threaded, bare, grpc.aio, the floors, a real seller), and the
sides a round drives: a server and one client per channel (unpaid) or per buyer (paid).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import multiprocessing
import tempfile
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents._aio_server import AioServer, SyncBridge, SyncContext
from agents._grpc_payment import INVOKE
from agents.llm import complete, text_of
from agents.skills import Skill, model_price
from agents.v1 import agent_pb2, agent_pb2_grpc
from benchmarks._paid_floor import (
    floor_caller,
    serve_floor,
    serve_floor_aio,
    serve_floor_file,
    serve_until_stopped,
)
from marketplace import MarketplaceNode
from marketplace.auth import AccessInterceptor, AuthServerInterceptor
from marketplace.grpc_tracing import client_interceptors, server_interceptor
from marketplace.heap import settle_heap
from marketplace.intercepted import intercept
from marketplace.schema_validators import validator
from wallets.grpc_errors import MalformedRequestInterceptor, grpc_method

SATURATING = 16  # clients that keep one server busy: a side opens a channel (or buyer) each


class Reply(BaseModel):
    text: str
    length: int


@skill(price=per_call("0.00001", "USD"))
def echo(text: str) -> Reply:
    """Echo a text with its length."""
    return Reply(text=text, length=len(text))


class Summary(BaseModel):
    summary: str


@skill(price=model_price("gpt-4o-mini", "USD", markup_bps=2_000), max_input_tokens=1_000,
       max_output_tokens=100)
def summarize(text: str) -> Summary:
    """Summarise a text in one sentence (litellm, offline)."""
    reply = complete("gpt-4o-mini", [{"role": "user", "content": f"Summarise: {text}"}],
                     mock_response=f"In short: {text[:48]}")
    return Summary(summary=text_of(reply))


@skill(price=per_call("0.00001", "USD"))
async def echo_async(text: str) -> Reply:
    """`echo` as a coroutine (run on the aio servers' event loop)."""
    return Reply(text=text, length=len(text))


SKILLS: dict[str, Skill] = {"echo": echo, "echo_async": echo_async, "summarize": summarize}


class UnpaidServicer(agent_pb2_grpc.AgentServiceServicer):
    """The same work as a paid Invoke: parse, validate input, run the skill, dump the output."""

    def __init__(self, served: Skill) -> None:
        self.skill = served

    @grpc_method
    def Invoke(self, request, context):  # type: ignore[no-untyped-def]
        return self._answer(self.skill.run(self._arguments(request)))

    async def invoke_async(self, request: agent_pb2.InvokeRequest) -> agent_pb2.InvokeResponse:
        """`Invoke` of an async skill, awaited on the caller's loop."""
        return self._answer(await self.skill.run_async(self._arguments(request)))

    def _arguments(self, request: agent_pb2.InvokeRequest) -> Any:
        arguments = json.loads(request.input_json)
        validator(self.skill.input_schema).validate(arguments)  # cached, as the seller does
        return arguments

    @staticmethod
    def _answer(output: Any) -> agent_pb2.InvokeResponse:
        return agent_pb2.InvokeResponse(output_json=json.dumps(output, sort_keys=True))


def framework_interceptors() -> list[Any]:
    """The unpaid sides' server interceptors, outermost first: the framework's guard,
    tracing, authentication and access (an unsigned Invoke passes them, as a paid one does)."""
    auth = AuthServerInterceptor(optional_methods=(INVOKE,))
    access = AccessInterceptor({INVOKE: lambda _caller, _request: None},
                               ("agents.v1.AgentService",), anonymous_methods=(INVOKE,))
    return [MalformedRequestInterceptor(), server_interceptor(), auth, access]


def serve_unpaid(skill_name: str, ready: Any, stop: Any) -> None:
    """Child process: the unpaid server with the framework's interceptors, until `stop`."""
    _serve_threaded(skill_name, framework_interceptors(), ready, stop)


def serve_bare(skill_name: str, ready: Any, stop: Any) -> None:
    """Child process: the unpaid servicer with no interceptor (their share of the unpaid
    call), until `stop`."""
    _serve_threaded(skill_name, [], ready, stop)


def _serve_threaded(skill_name: str, interceptors: list[Any], ready: Any, stop: Any) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=interceptors)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(UnpaidServicer(SKILLS[skill_name]), server)
    serve_until_stopped(server, ready, stop)


def serve_unpaid_aio(skill_name: str, ready: Any, stop: Any) -> None:
    """Child process: the unpaid server on grpc.aio, as an aio seller serves (the interceptors'
    checks on the loop, the skill in a bounded pool), until `stop` is set."""
    executor = futures.ThreadPoolExecutor(max_workers=16)
    unpaid = UnpaidServicer(SKILLS[skill_name])

    async def invoke(request: Any, context: Any) -> Any:
        if unpaid.skill.kind == "async":  # on the loop, as the aio seller runs one
            return await unpaid.invoke_async(request)
        return await asyncio.get_running_loop().run_in_executor(
            executor, contextvars.copy_context().run, unpaid.Invoke, request,
            SyncContext(context))

    server = AioServer(SyncBridge(framework_interceptors(), executor, {INVOKE: invoke}, None),
                       [])
    agent_pb2_grpc.add_AgentServiceServicer_to_server(unpaid, server)
    serve_until_stopped(server, ready, stop)


def serve_floor_variant(skill_name: str, ready: Any, stop: Any, variant: str = "floor") -> None:
    """Child process: a floor (`benchmarks._paid_floor`), until `stop`: "floor" (threaded) or
    "floor_aio" (grpc.aio, the skill on the loop); with "_bytes", without the durable record;
    "floor_file": threaded, the record in a plain file instead of the journal;
    "floor_unwaited": threaded, the record written but not waited for."""
    served, record = SKILLS[skill_name], not variant.endswith("_bytes")
    if variant == "floor_file":
        serve_floor_file(served, framework_interceptors(), ready, stop)
        return
    if variant == "floor_unwaited":
        serve_floor(served, framework_interceptors(), ready, stop, wait=False)
        return
    serve = serve_floor_aio if variant.startswith("floor_aio") else serve_floor
    serve(served, framework_interceptors(), ready, stop, record=record)


def serve_paid(marketplace: str, journal: str | None, skill_name: str, kind: str,
                ready: Any, stop: Any) -> None:
    """Child process: the seller (it advertises itself at the marketplace), until `stop`;
    `journal` None: its usage journal switched off (to measure what the journal costs)."""
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as spare:
        seller = SellerAgent(skill_name, skills=[SKILLS[skill_name]], marketplace=marketplace,
                             journal=journal or Path(spare) / "unused.db", server=kind)
        if journal is None:
            seller.gate.journal = None
        seller.serve()
        ready.put(seller.endpoint)
        stop.wait()
        seller.stop(0)


class _SettledWhenReady:
    """The child's ready queue: the server settles its heap (`marketplace.heap`) just before
    it says it is ready, as README tells a deployed seller to once started."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def put(self, item: Any) -> None:
        settle_heap()
        self.queue.put(item)


class Server:
    """A server in a child process of its own; it settles its heap once started
    (`_SettledWhenReady`). Every benchmark server started here does: the paid-call, x402,
    A2A and rpc-floor benchmarks', on each side."""

    def __init__(self, target: Any, *args: Any) -> None:
        context = multiprocessing.get_context("spawn")  # no fork after gRPC started
        self._ready, self._stop = context.Queue(), context.Event()
        self._process = context.Process(target=target,
                                        args=(*args, _SettledWhenReady(self._ready), self._stop),
                                        daemon=True)
        self._process.start()
        self.address: str = self._ready.get(timeout=120)
        self.pid: int = self._process.pid or 0

    def close(self) -> None:
        self._stop.set()
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()


class UnpaidSide:
    """An unpaid server and one channel per client."""

    def __init__(self, served: Skill, kind: str = "threaded") -> None:
        """`kind`: "threaded", "aio", "bare" (no interceptors on either end), or a floor
        (`benchmarks._paid_floor`: a paid call's bytes and record, no payment work): "floor",
        "floor_aio", and each with "_bytes" (no record)."""
        serve = {"aio": serve_unpaid_aio, "bare": serve_bare}.get(kind, serve_unpaid)
        if kind.startswith("floor"):
            serve = functools.partial(serve_floor_variant, variant=kind)
        self.server = Server(serve, served.name)
        self.pid = self.server.pid
        self.channels = [grpc.insecure_channel(self.server.address) for _ in range(SATURATING)]
        if kind.startswith("floor"):
            self.callers = [floor_caller(c, served) for c in self.channels]
            return
        layers = () if kind == "bare" else client_interceptors()
        stubs = [agent_pb2_grpc.AgentServiceStub(intercept(c, *layers)) for c in self.channels]
        self.callers = [self._caller(s, served) for s in stubs]

    @staticmethod
    def _caller(stub: Any, served: Skill) -> Any:
        check = validator(served.output_schema)

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


def hired_buyers(node: MarketplaceNode, endpoint: str, skill_name: str, calls: int,
                 count: int, prefix: str) -> list[tuple[BuyerAgent, Any]]:
    """`count` funded buyers, each with an agreement for `calls` calls of the seller at
    `endpoint`, held in escrow."""
    hired = []
    for n in range(count):
        buyer = BuyerAgent(f"{prefix}-{n}", marketplace=node.address)
        buyer.fund("10.00", "USD")
        listing = next(found for found in buyer.discover(skill_name, currency="USD")
                       if found.endpoint == endpoint)
        deal = buyer.negotiate(listing, skill_name, quantity=calls, budget="1.00",
                               currency="USD")
        buyer.hire(deal)
        hired.append((buyer, deal))
    return hired


class PaidSide:
    """A marketplace node, a seller and one buyer with its own agreement per client, each
    agreement large enough for every round."""

    def __init__(self, node: MarketplaceNode, calls: int, journal: Path | None,
                 served: Skill, kind: str = "threaded") -> None:
        """`calls`: the most any one buyer will make; `kind`: the seller's server."""
        self.seller = Server(serve_paid, node.address, str(journal) if journal else None,
                             served.name, kind)
        self.pid = self.seller.pid
        self.buyers = hired_buyers(node, self.seller.address, served.name, calls, SATURATING,
                                   "buyer")
        self.callers = [self._caller(b, d) for b, d in self.buyers]

    @staticmethod
    def _caller(buyer: BuyerAgent, deal: Any) -> Any:
        return lambda i: buyer.call(deal, {"text": f"call {i}"})

    def close(self) -> None:
        for buyer, _ in self.buyers:
            buyer.close()
        self.seller.close()
