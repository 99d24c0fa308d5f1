"""Streams cannot take a server's threads from everyone else (`marketplace.stream_limits`).

Reflection and health are open without a key, and a stream holds a worker of the server's pool
for as long as its caller keeps it open. Before the bounds, 16 idle reflection streams from a
client with no key stalled every call to the node (and to a seller, either server kind) until
they were let go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_call, skill
from marketplace.introspection import mark_serving, serve_introspection
from marketplace.node import MarketplaceNode
from marketplace.stream_limits import INTROSPECTION_STREAMS, StreamLimits, streams_allowed
from marketplace.v1 import registry_pb2
from wallets.grpc_errors import error_reason


class Echo(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def echo(text: str) -> Echo:
    """Echo."""
    return Echo(text=text)


class _Idle:
    """Reflection streams that send nothing until let go, from a client with no key."""

    def __init__(self, address: str, count: int) -> None:
        self.release = threading.Event()
        self.channel = grpc.insecure_channel(address)
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        self.calls = [stub.ServerReflectionInfo(self._nothing()) for _ in range(count)]

    def _nothing(self) -> Iterator[reflection_pb2.ServerReflectionRequest]:
        self.release.wait()
        yield from ()

    def refused(self, timeout_s: float = 10) -> list[str]:
        """The reasons of the streams the server refused at once (the others stay open)."""
        reasons = []
        for call in self.calls:
            try:
                next(call)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    reasons.append(error_reason(error))
        return reasons

    def close(self) -> None:
        self.release.set()
        for call in self.calls:
            call.cancel()
        self.channel.close()


def _list_services(address: str, wait_s: float = 10) -> list[str]:
    """The services reflection lists, asked again while the server still counts streams
    just let go as open (a cancellation reaches it after the client has moved on)."""
    give_up = time.monotonic() + wait_s
    while True:
        try:
            with grpc.insecure_channel(address) as channel:
                stub = reflection_pb2_grpc.ServerReflectionStub(channel)
                answers = stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                    timeout=10)
                return [s.name for a in answers for s in a.list_services_response.service]
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > give_up:
                raise
        time.sleep(0.05)


def test_sixteen_idle_reflection_streams_without_a_key_do_not_stall_the_node(tmp_path):
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node:
        honest = BuyerAgent("honest", marketplace=node.address)
        idle = _Idle(node.address, 16)
        try:
            time.sleep(0.5)  # the streams reach the server
            honest.registry.Discover(registry_pb2.DiscoverRequest(skill="echo"), timeout=10)
            honest.fund("1", "USD")
            assert str(honest.balance("USD")) == "1.00 USD"
        finally:
            idle.close()
        assert "marketplace.v1.RegistryService" in _list_services(node.address)
        honest.close()


@pytest.mark.parametrize("server", ["threaded", "aio"])
def test_sixteen_idle_reflection_streams_do_not_stall_a_seller(tmp_path, server: str):
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("echo", skills=[echo], marketplace=node.address,
                        server=server) as seller:
        honest = BuyerAgent("honest", marketplace=node.address)
        idle = _Idle(seller.endpoint, 16)
        try:
            time.sleep(0.5)
            honest.fund("1", "USD")
            deal = honest.negotiate(honest.discover("echo")[0], "echo", quantity=2,
                                    budget="0.01", currency="USD")
            honest.hire(deal)
            assert honest.call(deal, {"text": "hi"}) == {"text": "hi"}
            assert honest.finish(deal).captured_atomic == deal.body.terms.unit_price_atomic
        finally:
            idle.close()
        honest.close()


def _introspected(limits: StreamLimits, workers: int = 16) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), interceptors=[limits])
    checker = serve_introspection(server, [])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    mark_serving(checker, [])
    return server, f"127.0.0.1:{port}"


def test_past_their_bound_introspection_streams_are_refused_and_the_rest_still_answer():
    server, address = _introspected(StreamLimits(16))
    idle = _Idle(address, INTROSPECTION_STREAMS + 2)
    watching = grpc.insecure_channel(address)
    try:
        assert idle.refused() == ["STREAMS_BUSY"] * 2
        health = health_pb2_grpc.HealthStub(watching)
        watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=10)
                   for _ in range(INTROSPECTION_STREAMS + 1)]
        statuses = []
        for watch in watches:
            try:
                statuses.append(next(watch).status)
            except grpc.RpcError as error:
                statuses.append(error_reason(error))
        assert statuses.count(health_pb2.HealthCheckResponse.SERVING) == INTROSPECTION_STREAMS
        assert statuses.count("STREAMS_BUSY") == 1  # whichever came last
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        for watch in watches:
            watch.cancel()
    finally:
        idle.close()
        watching.close()
        server.stop(0)


def test_a_quiet_request_stream_is_ended_and_its_worker_given_back():
    server, address = _introspected(StreamLimits(16, idle_s=0.3))
    idle = _Idle(address, INTROSPECTION_STREAMS)
    try:
        for call in idle.calls:  # ended by the server, not by its caller
            with pytest.raises(grpc.RpcError) as ended:
                next(call)
            assert ended.value.code() == grpc.StatusCode.CANCELLED
        assert "grpc.health.v1.Health" in _list_services(address)
    finally:
        idle.close()
        server.stop(0)


def test_a_pool_keeps_workers_for_unary_calls():
    assert streams_allowed(16) == 12
    assert streams_allowed(8) == 6
    assert streams_allowed(4) == 2
    assert streams_allowed(2) == 1
