"""Every RPC of every service, driven with malformed and hostile input.

Structured messages are drawn from each method's descriptor (extreme and negative integers,
unknown enum values, unicode oddities, huge strings and lists, deeply nested JSON where a field
carries JSON), and raw byte strings are sent straight onto the wire. The server must answer each
with a status that is not INTERNAL or UNKNOWN, keep serving, and change no money: the posting
count and every balance stay as they were.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from pydantic import BaseModel

from agents.seller import SellerAgent
from agents.skills import per_call, skill
from agents.v1 import agent_pb2
from marketplace.node import MarketplaceNode
from marketplace.v1 import dispute_pb2, registry_pb2, settlement_pb2
from wallets.v1 import wallet_pb2

SEED = 20261122
STRUCTURED_PER_METHOD = 60
RAW_PER_METHOD = 15
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
STRINGS = ["", "USD", "usd", "E-CNY", "\x00", "\u202e\u0301", "\U0001d518\U0001d52b",
           "a" * 70_000, " ", "../../etc/passwd", "'; DROP TABLE ledger_accounts; --", "0" * 64,
           "ff" * 32, "sqlite:///x", "\ud7ff", "NaN", "-1", "1e400"]
INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**62, 2**62 + 1, 2**63 - 1, -(2**63)]


def _nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


JSONS = [_nested_json(10_000), _nested_json(100), json.dumps({"a": "b" * 100_000}), "{", "null",
         "[]", '{"text": 1}', '{"text": "' + "x" * 2_000_000 + '"}']


class Echo(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def echo(text: str) -> Echo:
    """Echo."""
    return Echo(text=text)


@dataclass
class Target:
    channel: grpc.Channel
    node: MarketplaceNode
    seller_channel: grpc.Channel


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    # raw unsigned stubs, so every input reaches the domain: authentication off on both
    node = MarketplaceNode(f"sqlite:///{db}", sweep_interval_s=3600, require_auth=False).start()
    seller = SellerAgent("fuzzed", skills=[echo], marketplace=node.address,
                         require_auth=False).serve()
    owner = "ab" * 32
    account = node.ledger.open_account(owner, "USD")
    node.wallets.deposit("fuzz-fund", account.account_id, 10_000_000_000, "USD")
    channel = grpc.insecure_channel(node.address, options=[
        ("grpc.max_send_message_length", 16 * 1024 * 1024)])
    seller_channel = grpc.insecure_channel(seller.endpoint, options=[
        ("grpc.max_send_message_length", 16 * 1024 * 1024)])
    yield Target(channel, node, seller_channel)
    channel.close()
    seller_channel.close()
    seller.stop(0)
    node.stop(0)


def _methods() -> list[tuple[str, MethodDescriptor]]:
    found = []
    for module, is_agent in ((wallet_pb2, False), (registry_pb2, False),
                             (settlement_pb2, False), (dispute_pb2, False), (agent_pb2, True)):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.server_streaming or method.client_streaming:
                    continue  # unary RPCs here; streaming ones are fuzzed by their own tests
                found.append(("agent" if is_agent else "node", method))
    return found


METHODS = _methods()


def _value(field: FieldDescriptor, rng: random.Random, depth: int):  # type: ignore[no-untyped-def]
    t = field.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        return _message(GetMessageClass(field.message_type), rng, depth + 1)
    if t == FieldDescriptor.TYPE_ENUM:
        return rng.choice([0, 1, 2, 99, -5, 2**31 - 1])
    if t in (FieldDescriptor.TYPE_STRING,):
        if field.name.endswith("_json"):
            return rng.choice(JSONS + STRINGS[:4])
        return rng.choice(STRINGS)
    if t == FieldDescriptor.TYPE_BYTES:
        return rng.choice([b"", b"\x00" * 32, rng.randbytes(rng.randint(1, 64)),
                           b"\xff" * 100_000])
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.choice([True, False])
    unsigned = t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
                     FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64)
    bits = 32 if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32,
                       FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_FIXED32,
                       FieldDescriptor.TYPE_SFIXED32) else 64
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return max(low, min(high, rng.choice([*INTS, rng.randint(low, high)])))


def _message(cls: type[Message], rng: random.Random, depth: int = 0) -> Message:
    message = cls()
    if depth > 4:
        return message
    for field in cls.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        if field.is_repeated:
            count = rng.choice([0, 1, 3, 50 if depth == 0 else 2])
            container = getattr(message, field.name)
            for _ in range(count):
                value = _value(field, rng, depth)
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    container.add().CopyFrom(value)
                else:
                    container.append(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, field.name).CopyFrom(_value(field, rng, depth))
        else:
            setattr(message, field.name, _value(field, rng, depth))
    return message


def _books(node: MarketplaceNode) -> tuple[int, dict[str, tuple[int, int, int]]]:
    postings = len(node.ledger.postings(limit=100_000))
    balances = {b.account_id: (b.posted_credits_atomic, b.posted_debits_atomic,
                               b.pending_debits_atomic) for b in node.ledger.accounts()}
    # an empty account opened by a well-formed OpenAccount moves no money
    return postings, {k: v for k, v in balances.items() if any(v)}


@pytest.mark.parametrize(("side", "method"), METHODS,
                         ids=[f"{m.containing_service.name}.{m.name}" for _, m in METHODS])
def test_hostile_input_is_refused_cleanly(target: Target, side: str, method: MethodDescriptor,
                                          record_property):  # type: ignore[no-untyped-def]
    rng = random.Random(f"{SEED}:{method.full_name}")
    channel = target.seller_channel if side == "agent" else target.channel
    path = f"/{method.containing_service.full_name}/{method.name}"
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    request_cls = GetMessageClass(method.input_type)
    payloads = [_message(request_cls, rng).SerializeToString()
                for _ in range(STRUCTURED_PER_METHOD)]
    payloads += [rng.randbytes(rng.randint(0, 512)) for _ in range(RAW_PER_METHOD)]
    before = _books(target.node)
    seen: dict[grpc.StatusCode, int] = {}
    for payload in payloads:
        try:
            call(payload, timeout=20)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            assert code not in FORBIDDEN, f"{path}: {code} {error.details()}"
        seen[code] = seen.get(code, 0) + 1
    assert _books(target.node) == before, f"{path} changed the ledger"
    record_property("inputs_tried", len(payloads))
    record_property("statuses", {c.name: n for c, n in seen.items()})


def test_total_inputs_tried():
    """The count the suite reports: structured + raw inputs over every unary RPC."""
    total = len(METHODS) * (STRUCTURED_PER_METHOD + RAW_PER_METHOD)
    print(f"fuzz: {total} inputs over {len(METHODS)} RPCs")
    assert len(METHODS) >= 20 and total >= 1500
