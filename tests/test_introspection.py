"""Every server answers gRPC health checks and server reflection, v1 and v1alpha, as buf curl,
grpcurl and Postman expect: a seller agent and a verifier agent as the node does.

Issue 15 finding 4: a seller's gRPC server answered UNIMPLEMENTED to grpc's health stub and to
reflection clients; the node served only the v1alpha reflection service.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from pydantic import BaseModel

from agents import SellerAgent, per_call, skill
from marketplace.node import MarketplaceNode
from marketplace.v1 import server_reflection_pb2 as v1_pb2
from marketplace.v1 import server_reflection_pb2_grpc as v1_grpc
from marketplace.verifier_agent import VerifierAgent

AGENT_SERVICE = "agents.v1.AgentService"
A2A_SERVICE = "lf.a2a.v1.A2AService"  # every seller speaks A2A too
NODE_SERVICES = {"marketplace.v1.RegistryService", "marketplace.v1.SettlementService",
                 "marketplace.v1.ArbitrationService", "wallets.v1.WalletService",
                 "marketplace.v1.ReceiptService", "wallets.v1.ConditionalHoldService"}
INTROSPECTION = {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                 "grpc.reflection.v1alpha.ServerReflection"}


class Echo(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def echo(text: str) -> Echo:
    """Echo."""
    return Echo(text=text)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, set[str]]]]:
    db = tmp_path_factory.mktemp("introspection") / "m.db"
    with MarketplaceNode(f"sqlite:///{db}", sweep_interval_s=3600) as node, \
            SellerAgent("echo", skills=[echo], marketplace=node.address) as seller, \
            VerifierAgent(lambda output, receipt, body: True) as verifier:
        yield {"seller": (seller.endpoint, {AGENT_SERVICE, A2A_SERVICE}),
               "node": (node.address, NODE_SERVICES),
               "verifier": (verifier.endpoint, {"marketplace.v1.VerifierService"})}


def _list_v1(channel: grpc.Channel) -> set[str]:
    stub = v1_grpc.ServerReflectionStub(channel)
    answers = stub.ServerReflectionInfo(iter([v1_pb2.ServerReflectionRequest(list_services="")]),
                                        timeout=10)
    return {s.name for answer in answers for s in answer.list_services_response.service}


def _file_v1(channel: grpc.Channel, symbol: str) -> descriptor_pb2.FileDescriptorProto:
    stub = v1_grpc.ServerReflectionStub(channel)
    answer = next(iter(stub.ServerReflectionInfo(iter([v1_pb2.ServerReflectionRequest(
        file_containing_symbol=symbol)]), timeout=10)))
    assert answer.WhichOneof("message_response") == "file_descriptor_response", answer
    return descriptor_pb2.FileDescriptorProto.FromString(
        answer.file_descriptor_response.file_descriptor_proto[0])


@pytest.mark.parametrize("server", ["seller", "node", "verifier"])
def test_health_says_serving_for_the_server_and_each_service(servers, server: str):
    address, services = servers[server]
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ["", *services]:
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("server", ["seller", "node", "verifier"])
def test_reflection_v1_lists_and_describes_the_services(servers, server: str):
    address, services = servers[server]
    with grpc.insecure_channel(address) as channel:
        assert _list_v1(channel) == services | INTROSPECTION
        for service in services:
            described = _file_v1(channel, service)
            package, _, name = service.rpartition(".")
            assert described.package == package
            assert name in {s.name for s in described.service}


@pytest.mark.parametrize("server", ["seller", "node", "verifier"])
def test_reflection_v1alpha_answers_grpcs_own_reflection_client(servers, server: str):
    address, services = servers[server]
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) == services | INTROSPECTION
        for service in services:
            assert database.FindFileContainingSymbol(service).package
        stub = v1alpha_grpc.ServerReflectionStub(channel)
        answer = next(iter(stub.ServerReflectionInfo(iter([v1alpha_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection")]), timeout=10)))
        assert answer.WhichOneof("message_response") == "file_descriptor_response"


def test_introspection_needs_no_signature_and_stops_with_the_seller(tmp_path: Path):
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node:
        seller = SellerAgent("echo", skills=[echo], marketplace=node.address).serve()
        with grpc.insecure_channel(seller.endpoint) as channel:  # unsigned, as tools are
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
            seller.stop(0)
            with pytest.raises(grpc.RpcError):
                health.Check(health_pb2.HealthCheckRequest(), timeout=2)
