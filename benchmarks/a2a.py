"""A paid A2A SendMessage against unpaid ones, same payload, same clients, in the same run.

Three servers, each in a process of its own, driven by the same number of client threads, each
thread on its own channel, sending the same message (a data part {"text": "call N"}):

- `sdk_unpaid`: a2a-sdk's own server machinery: `DefaultRequestHandler` (in-memory task
  store) behind its `GrpcHandler` on grpc.aio, with an AgentExecutor that runs the echo skill
  and adds its output as an artifact: what an A2A agent written with the SDK costs, unpaid.
- `own_unpaid`: an agentmarket seller whose echo skill is `free()`: our A2A door, unpaid.
- `paid`: an agentmarket seller whose echo skill is priced; each client thread is a buyer with
  its own agreement, calling `BuyerAgent.send` (the voucher in the message metadata, the
  receipt checked, a durable usage record before the answer).

`a2a_paid_vs_sdk_unpaid_ratio` is paid over sdk_unpaid (the goal: at least 1.0, a paid call
through agentmarket as fast as an unpaid one through the SDK's handler);
`a2a_paid_call_ratio` is paid over own_unpaid (what paying costs behind the same door).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import grpc
from a2a.types import a2a_pb2, a2a_pb2_grpc

from agents import BuyerAgent, SellerAgent, free, skill
from benchmarks._paid_sides import Reply, Server, echo, hired_buyers
from benchmarks.paid_call import _compare, _median
from marketplace import MarketplaceNode

CLIENTS = 16
CALLS_PER_ROUND = 1600
ROUNDS = 5


@skill(price=free(), name="echo")
def free_echo(text: str) -> Reply:
    """Echo a text with its length, for nothing."""
    return Reply(text=text, length=len(text))


def _message(i: int) -> a2a_pb2.SendMessageRequest:
    part = a2a_pb2.Part(media_type="application/json")
    part.data.struct_value.update({"text": f"call {i}"})
    return a2a_pb2.SendMessageRequest(message=a2a_pb2.Message(
        message_id=uuid.uuid4().hex, role=a2a_pb2.ROLE_USER, parts=[part]))


def _serve_sdk(ready: Any, stop: Any) -> None:
    """Child process: a2a-sdk's DefaultRequestHandler behind its GrpcHandler on grpc.aio."""
    from a2a.helpers.proto_helpers import new_task
    from a2a.server.agent_execution import AgentExecutor
    from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
    from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
    from google.protobuf import json_format

    class Echo(AgentExecutor):
        async def execute(self, context: Any, event_queue: Any) -> None:
            arguments = json_format.MessageToDict(context.message.parts[0].data)
            output = json.dumps(echo.run(arguments), sort_keys=True)
            await event_queue.enqueue_event(new_task(
                context.task_id, context.context_id, a2a_pb2.TASK_STATE_SUBMITTED,
                history=[context.message]))
            updater = TaskUpdater(event_queue, context.task_id, context.context_id)
            await updater.add_artifact([a2a_pb2.Part(text=output,
                                                     media_type="application/json")],
                                       name="output")
            await updater.complete()

        async def cancel(self, context: Any, event_queue: Any) -> None:
            raise NotImplementedError

    card = a2a_pb2.AgentCard(
        name="sdk-echo", version="1.0.0", description="echo",
        supported_interfaces=[a2a_pb2.AgentInterface(url="127.0.0.1", protocol_binding="GRPC",
                                                     protocol_version="1.0")],
        capabilities=a2a_pb2.AgentCapabilities(), default_input_modes=["application/json"],
        default_output_modes=["application/json"],
        skills=[a2a_pb2.AgentSkill(id="echo", name="echo", description="echo", tags=["echo"])])

    async def main() -> None:
        handler = DefaultRequestHandler(Echo(), InMemoryTaskStore(), card)
        server = grpc.aio.server()
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(GrpcHandler(handler), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.put(f"127.0.0.1:{port}")
        while not stop.is_set():
            await asyncio.sleep(0.2)
        await server.stop(0)

    asyncio.run(main())


def _serve_seller(marketplace: str, journal: str, priced: bool, ready: Any, stop: Any) -> None:
    """Child process: an agentmarket seller, its echo skill priced or free."""
    seller = SellerAgent("echo", skills=[echo if priced else free_echo],
                         marketplace=marketplace, journal=journal).serve()
    ready.put(seller.endpoint)
    stop.wait()
    seller.stop(0)


class _Unpaid:
    """Plain A2A clients of one server: SendMessage, the output parsed from the artifact."""

    def __init__(self, server: Server) -> None:
        self.server, self.pid = server, server.pid
        self.channels = [grpc.insecure_channel(server.address) for _ in range(CLIENTS)]
        self.callers = [self._caller(a2a_pb2_grpc.A2AServiceStub(c)) for c in self.channels]

    @staticmethod
    def _caller(stub: Any) -> Any:
        def call(i: int) -> Any:
            task = stub.SendMessage(_message(i), timeout=10).task
            assert task.status.state == a2a_pb2.TASK_STATE_COMPLETED, task.status
            return json.loads(task.artifacts[0].parts[0].text)

        return call

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.close()


class _Paid:
    """Buyers, one agreement each, paying over A2A (`BuyerAgent.send`)."""

    def __init__(self, node: MarketplaceNode, server: Server, calls: int) -> None:
        self.server, self.pid = server, server.pid
        self.buyers = hired_buyers(node, server.address, "echo", calls, CLIENTS, "a2a-buyer")
        self.callers = [self._caller(b, d) for b, d in self.buyers]

    @staticmethod
    def _caller(buyer: BuyerAgent, deal: Any) -> Any:
        return lambda i: buyer.send(deal, {"text": f"call {i}"}).output

    def close(self) -> None:
        for buyer, _ in self.buyers:
            buyer.close()
        self.server.close()


def run(progress: Any = None) -> dict[str, float]:
    say = progress or (lambda _text: None)
    calls = (ROUNDS + 1) * CALLS_PER_ROUND // CLIENTS + 400
    built: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-a2a-") as tmp:
        node = MarketplaceNode(f"sqlite:///{Path(tmp) / 'market.db'}").start()
        try:
            built.append(_Unpaid(Server(_serve_sdk)))
            built.append(_Unpaid(Server(_serve_seller, node.address,
                                        str(Path(tmp) / "free.db"), False)))
            built.append(_Paid(node, Server(_serve_seller, node.address,
                                            str(Path(tmp) / "paid.db"), True), calls))
            sides = dict(zip(("sdk_unpaid", "own_unpaid", "paid"), built, strict=True))
            measured = _compare(sides, (CLIENTS,), ROUNDS, CALLS_PER_ROUND, say,
                                "A2A paid vs unpaid SendMessage")
        finally:
            for side in built:
                side.close()
            node.stop(0)
    rates = {name: _median(measured, name, CLIENTS, "rate") for name in sides}
    results: dict[str, float] = {"a2a_clients": CLIENTS}
    for name, rate in rates.items():
        results[f"a2a_{name}_calls_per_s"] = round(rate)
        results[f"a2a_{name}_server_cpu_us_per_call"] = round(
            _median(measured, name, CLIENTS, "server_cpu_us"))
    results["a2a_paid_vs_sdk_unpaid_ratio"] = round(rates["paid"] / rates["sdk_unpaid"], 3)
    results["a2a_paid_call_ratio"] = round(rates["paid"] / rates["own_unpaid"], 3)
    return results


if __name__ == "__main__":
    for key, value in run(print).items():
        print(f"{key}: {value}")
