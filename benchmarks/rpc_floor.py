"""What gRPC alone costs on this machine: the floor under every task, paid or not.

A bare server (no interceptors, no framework: a generic handler echoing an InvokeRequest's
input as an InvokeResponse) in a process of its own, and clients in another, as parties are
deployed. Measured the same run, in CPU per call of both processes together (from /proc):

- a unary call, as every RPC of a task is made today;
- a message on a bidirectional stream kept open (one request, one answer, in lockstep), as
  the calls of one agreement could be carried;
- a unary call signed by the caller's agent key through the node's own interceptors
  (malformed-request guard, tracing switched off, signature check, access rule) and the
  client's (tracing, signing): what the framework adds to every signed RPC before its handler.

A full task of `benchmarks.deployed` makes `TASK_UNARY_RPCS` unary calls: Discover,
OpenEscrow and Redeem at the node, `NEGOTIATE_ROUNDS` Negotiate, 10 Invoke and Finish at the
seller (the seller takes the node's signed escrow proof, so no GetEscrow). So
`task_rpc_floor_cpu_ms` is the CPU a task spends in gRPC before any of its own work
(signatures, postings, journal, discovery), and `task_rpc_floor_tasks_per_s` what the
machine's cores could carry if that work cost nothing. The `_streamed` pair is the
same with a task's calls as messages on one stream. Run: `python -m benchmarks.rpc_floor`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import statistics
import threading
import time
from concurrent import futures
from typing import Any

import grpc

from agents.v1 import agent_pb2
from benchmarks._paid_sides import Server
from benchmarks._process import cpu_s_so_far
from marketplace.auth import AccessInterceptor, AuthServerInterceptor, signed_channel
from marketplace.grpc_tracing import client_interceptors, server_interceptor
from marketplace.identity import AgentKey
from wallets.grpc_errors import MalformedRequestInterceptor

CLIENTS = 8
CALLS_PER_CLIENT = 1500
ROUNDS = 3
CALLS_PER_TASK = 10
NEGOTIATE_ROUNDS = 3
NODE_RPCS = 3  # Discover, OpenEscrow, Redeem
TASK_UNARY_RPCS = NODE_RPCS + NEGOTIATE_ROUNDS + CALLS_PER_TASK + 1  # + Finish
UNARY = "/agentmarket.bench.Floor/Call"
STREAM = "/agentmarket.bench.Floor/Stream"


def _echo(request: agent_pb2.InvokeRequest) -> agent_pb2.InvokeResponse:
    return agent_pb2.InvokeResponse(output_json=request.input_json)


def _serve(framework: bool, ready: Any, stop: Any) -> None:
    """Child process: the bare server (`framework`: with the node's interceptors, callers
    signed), until `stop` is set."""

    def stream(requests: Any, _context: Any) -> Any:
        for request in requests:
            yield _echo(request)

    handler = grpc.method_handlers_generic_handler("agentmarket.bench.Floor", {
        "Call": grpc.unary_unary_rpc_method_handler(
            lambda request, _context: _echo(request),
            request_deserializer=agent_pb2.InvokeRequest.FromString,
            response_serializer=agent_pb2.InvokeResponse.SerializeToString),
        "Stream": grpc.stream_stream_rpc_method_handler(
            stream, request_deserializer=agent_pb2.InvokeRequest.FromString,
            response_serializer=agent_pb2.InvokeResponse.SerializeToString)})
    interceptors = [MalformedRequestInterceptor(), server_interceptor(),
                    AuthServerInterceptor(required=True),
                    AccessInterceptor({UNARY: lambda _caller, _request: None},
                                      ("agentmarket.bench.Floor",))] if framework else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2 * CLIENTS),
                         interceptors=interceptors)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready.put(f"127.0.0.1:{port}")
    stop.wait()
    server.stop(0)


def _unary_client(channel: grpc.Channel, calls: int, started: threading.Event) -> None:
    call = channel.unary_unary(UNARY, request_serializer=agent_pb2.InvokeRequest.
                               SerializeToString,
                               response_deserializer=agent_pb2.InvokeResponse.FromString)
    call(agent_pb2.InvokeRequest(input_json='{"text": "warm"}'), timeout=30)
    started.wait()
    for i in range(calls):
        call(agent_pb2.InvokeRequest(input_json=f'{{"text": "call {i}"}}'), timeout=30)


def _stream_client(channel: grpc.Channel, calls: int, started: threading.Event) -> None:
    """One stream, `calls` request/answer pairs in lockstep (the next request is sent once
    the answer to the last one arrived, as a buyer's next call would be)."""
    call = channel.stream_stream(STREAM, request_serializer=agent_pb2.InvokeRequest.
                                 SerializeToString,
                                 response_deserializer=agent_pb2.InvokeResponse.FromString)
    outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def requests() -> Any:
        while (request := outbox.get()) is not None:
            yield request

    answers = call(requests(), timeout=300)
    outbox.put(agent_pb2.InvokeRequest(input_json='{"text": "warm"}'))
    next(answers)
    started.wait()
    for i in range(calls):
        outbox.put(agent_pb2.InvokeRequest(input_json=f'{{"text": "call {i}"}}'))
        next(answers)
    outbox.put(None)
    for _ in answers:  # the server ends the stream once the requests end
        pass


def _clients(address: str, kind: str, calls: int, out: Any) -> None:
    """Child process: CLIENTS threads, each on its own channel, `calls` timed calls each;
    reports (wall s, this process's CPU s) of the timed part."""
    target = _stream_client if kind == "stream" else _unary_client
    if kind == "framework":  # each client its own agent key, as buyers are
        channels = [signed_channel(address, AgentKey.generate(),
                                   interceptors=client_interceptors())
                    for _ in range(CLIENTS)]
    else:
        channels = [grpc.insecure_channel(address) for _ in range(CLIENTS)]
    started = threading.Event()
    threads = [threading.Thread(target=target, args=(channel, calls, started))
               for channel in channels]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # every client has made its warm-up call
    begin, cpu = time.perf_counter(), time.process_time()
    started.set()
    for thread in threads:
        thread.join()
    out.put((time.perf_counter() - begin, time.process_time() - cpu))
    for channel in channels:
        channel.close()


def _round(server: Server, kind: str) -> tuple[float, float, float]:
    """(calls/s, server CPU us per call, clients' CPU us per call) of one round."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_clients, args=(server.address, kind, CALLS_PER_CLIENT,
                                                     out))
    before = cpu_s_so_far(server.pid)  # includes the clients' few warm-up calls
    process.start()
    wall_s, client_s = out.get(timeout=600)
    server_s = cpu_s_so_far(server.pid) - before
    process.join(timeout=60)
    calls = CLIENTS * CALLS_PER_CLIENT
    return calls / wall_s, server_s / calls * 1e6, client_s / calls * 1e6


def run(progress: Any = None) -> dict[str, float]:
    say = progress or (lambda text: None)
    bare, framework = Server(_serve, False), Server(_serve, True)
    try:
        rounds: dict[str, list[tuple[float, float, float]]] = {
            "unary": [], "stream": [], "framework": []}
        for index in range(ROUNDS):
            for kind in rounds:
                say(f"gRPC floor: {kind}, round {index + 1}/{ROUNDS}")
                rounds[kind].append(_round(framework if kind == "framework" else bare, kind))
    finally:
        bare.close()
        framework.close()

    def median(kind: str, index: int) -> float:
        return statistics.median(r[index] for r in rounds[kind])

    unary = median("unary", 1) + median("unary", 2)
    signed = median("framework", 1) + median("framework", 2)
    message = median("stream", 1) + median("stream", 2)
    cores = os.cpu_count() or 1
    task_ms = TASK_UNARY_RPCS * unary / 1000
    # streamed: the node's RPCs, negotiation and Finish stay unary; the calls go as messages
    # on one stream, opened once (counted as one unary call)
    streamed_ms = ((TASK_UNARY_RPCS - CALLS_PER_TASK + 1) * unary
                   + CALLS_PER_TASK * message) / 1000
    return {"rpc_floor_unary_calls_per_s": round(median("unary", 0), 1),
            "rpc_floor_unary_cpu_us_per_call": round(unary, 1),
            "rpc_floor_unary_server_cpu_us_per_call": round(median("unary", 1), 1),
            "rpc_floor_unary_client_cpu_us_per_call": round(median("unary", 2), 1),
            "rpc_floor_stream_messages_per_s": round(median("stream", 0), 1),
            "rpc_floor_stream_cpu_us_per_message": round(message, 1),
            "rpc_floor_stream_server_cpu_us_per_message": round(median("stream", 1), 1),
            "rpc_floor_stream_client_cpu_us_per_message": round(median("stream", 2), 1),
            "rpc_framework_signed_cpu_us_per_call": round(signed, 1),
            "rpc_framework_signed_server_cpu_us_per_call": round(median("framework", 1), 1),
            "rpc_framework_signed_client_cpu_us_per_call": round(median("framework", 2), 1),
            "rpc_framework_signed_vs_bare_ratio": round(signed / unary, 2),
            "task_unary_rpcs": TASK_UNARY_RPCS,
            "task_rpc_floor_cpu_ms": round(task_ms, 2),
            "task_rpc_floor_tasks_per_s": round(cores * 1000 / task_ms, 1),
            "task_rpc_floor_streamed_cpu_ms": round(streamed_ms, 2),
            "task_rpc_floor_streamed_tasks_per_s": round(cores * 1000 / streamed_ms, 1)}


if __name__ == "__main__":
    print(json.dumps(run(print), indent=2))
