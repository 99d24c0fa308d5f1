"""Ids and amounts are checked on every RPC, with or without authentication.

Issue 15 finding 11: with `--no-auth`, OpenAccount accepted `owner: "not-a-key"` (and any
other id field reached the domain as it came). Here every method of the node and of a seller
agent, unsigned against servers that authenticate nobody, gets each of its id fields malformed
and then each amount field negative: every one is refused with INVALID_ARGUMENT naming the
field, and nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from pydantic import BaseModel

from agents import SellerAgent, per_call, skill
from agents.v1 import agent_pb2
from marketplace.node import MarketplaceNode
from marketplace.request_fields import MARKET_FIELDS
from marketplace.v1 import dispute_pb2, registry_pb2, settlement_pb2
from wallets.grpc_errors import error_info
from wallets.v1 import wallet_pb2

AGENT = "ab" * 32
VALID = {32: "0" * 32, 64: "0" * 64}


class Echo(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def echo(text: str) -> Echo:
    """Echo."""
    return Echo(text=text)


@dataclass
class Servers:
    node: MarketplaceNode
    node_channel: grpc.Channel
    seller_channel: grpc.Channel


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    db = tmp_path_factory.mktemp("fields") / "m.db"
    node = MarketplaceNode(f"sqlite:///{db}", sweep_interval_s=3600, require_auth=False).start()
    seller = SellerAgent("fields", skills=[echo], marketplace=node.address,
                         require_auth=False).serve()
    with grpc.insecure_channel(node.address) as to_node, \
            grpc.insecure_channel(seller.endpoint) as to_seller:
        yield Servers(node, to_node, to_seller)
    seller.stop(0)
    node.stop(0)


def _methods() -> list[tuple[str, MethodDescriptor]]:
    found = []
    for side, modules in (("node", (wallet_pb2, registry_pb2, settlement_pb2, dispute_pb2)),
                          ("seller", (agent_pb2,))):
        for module in modules:
            for service in module.DESCRIPTOR.services_by_name.values():
                found += [(side, method) for method in service.methods]
    return found


def _cases(method: MethodDescriptor) -> list[tuple[str, str, object]]:
    """(field, why, value): each top-level id field malformed, each amount field negative."""
    cases: list[tuple[str, str, object]] = []
    for field in method.input_type.fields:
        if field.is_repeated:
            continue
        if field.name in MARKET_FIELDS and field.type == FieldDescriptor.TYPE_STRING:
            cases.append((field.name, "MALFORMED_FIELD", "not-a-key"))
        elif field.name.endswith("_atomic") and field.type == FieldDescriptor.TYPE_INT64:
            cases.append((field.name, "INVALID_AMOUNT", -1))
        elif field.type == FieldDescriptor.TYPE_MESSAGE and \
                field.message_type.full_name == "wallets.v1.Money":
            cases.append((f"{field.name}.amount_atomic", "INVALID_AMOUNT", -1))
    return cases


def _request(method: MethodDescriptor, field: str, value: object) -> object:
    request = GetMessageClass(method.input_type)()
    for other in method.input_type.fields:  # the other fields well formed, so only one is bad
        if other.name in MARKET_FIELDS and not other.is_repeated and \
                other.type == FieldDescriptor.TYPE_STRING:
            setattr(request, other.name, AGENT if "agent" in other.name or other.name in (
                "owner", "spender_id", "arbiter_id", "buyer_id", "seller_id") else VALID[
                64 if other.name in ("agreement_id", "mandate_id") else 32])
        if other.name == "idempotency_key":
            request.idempotency_key = "k"
    target = request
    *path, name = field.split(".")
    for part in path:
        target = getattr(target, part)
    if path:
        target.currency = "USD"
    setattr(target, name, value)
    return request


CASES = [(side, method, field, reason, value) for side, method in _methods()
         for field, reason, value in _cases(method)]


def test_there_are_cases_for_every_service():
    services = {method.containing_service.name for _side, method, *_rest in CASES}
    assert {"WalletService", "RegistryService", "SettlementService", "ArbitrationService",
            "AgentService"} <= services
    assert len(CASES) > 40


@pytest.mark.parametrize("side,method,field,reason,value", CASES,
                         ids=[f"{m.containing_service.name}.{m.name}.{f}"
                              for _s, m, f, _r, _v in CASES])
def test_a_malformed_id_or_amount_is_refused_naming_the_field(
        servers: Servers, side: str, method: MethodDescriptor, field: str, reason: str,
        value: object):
    channel = servers.node_channel if side == "node" else servers.seller_channel
    request = _request(method, field, value)
    call = (channel.unary_stream if method.server_streaming else channel.unary_unary)(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda b: b)
    postings = len(servers.node.ledger.postings(limit=100_000))
    accounts = {b.account_id for b in servers.node.ledger.accounts()}
    with pytest.raises(grpc.RpcError) as caught:
        answer = call(request, timeout=10)
        if method.server_streaming:
            list(answer)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert error_info(caught.value).reason == reason, caught.value.details()
    assert caught.value.details().startswith(field), caught.value.details()
    assert dict(error_info(caught.value).metadata)["field"] == field
    assert len(servers.node.ledger.postings(limit=100_000)) == postings
    assert {b.account_id for b in servers.node.ledger.accounts()} == accounts


def test_open_account_for_not_a_key_is_refused_without_auth(servers: Servers):
    stub_call = servers.node_channel.unary_unary(
        "/wallets.v1.WalletService/OpenAccount",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=wallet_pb2.Account.FromString)
    with pytest.raises(grpc.RpcError) as caught:
        stub_call(wallet_pb2.OpenAccountRequest(idempotency_key="k", owner="not-a-key",
                                                currency="USD"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "owner must be an agent id" in caught.value.details()
    assert servers.node.ledger.find_account("not-a-key", "USD") is None
    made = stub_call(wallet_pb2.OpenAccountRequest(idempotency_key="k2", owner=AGENT,
                                                   currency="USD"), timeout=10)
    assert made.owner == AGENT  # a well-formed owner still opens one


def test_the_field_table_covers_every_id_field_of_every_request():
    """A new id field added to a request must join the table (or be named here as free text)."""
    free_text = {"call_id", "rfq_id", "decided_by", "actor"}
    seen = set()

    def walk(descriptor, depth=0):  # type: ignore[no-untyped-def]
        for field in descriptor.fields:
            if field.name.endswith("_id") or field.name == "owner":
                seen.add(field.name)
            if field.type == FieldDescriptor.TYPE_MESSAGE and depth < 4:
                walk(field.message_type, depth + 1)

    for _side, method in _methods():
        walk(method.input_type)
    assert seen - free_text <= set(MARKET_FIELDS), seen - free_text - set(MARKET_FIELDS)
