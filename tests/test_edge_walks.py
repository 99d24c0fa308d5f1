"""The edge's request walks (`nul_field`, `check_fields`) visit only the fields that can matter,
planned once per message type; they must answer exactly as a walk over every present field
(`ListFields`) does. Checked on every request and message type of the three services, filled
at random (NULs in strings, malformed ids, negative and huge amounts, repeated and nested
fields, maps, oneofs), against those reference walks kept here."""

from __future__ import annotations

import random
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor

from agents.v1 import agent_pb2
from marketplace.request_fields import MARKET_FIELDS
from marketplace.v1 import (
    agreement_pb2,
    dispute_pb2,
    receipt_pb2,
    registry_pb2,
    settlement_pb2,
    verifier_pb2,
)
from wallets.grpc_errors import nul_field
from wallets.grpc_fields import MAX_DEPTH, WALLET_FIELDS, InvalidArgument, amount, check_fields
from wallets.v1 import conditional_pb2, wallet_pb2

MODULES = (agent_pb2, agreement_pb2, dispute_pb2, receipt_pb2, registry_pb2, settlement_pb2,
           verifier_pb2, conditional_pb2, wallet_pb2)
TYPES = sorted({descriptor.full_name: getattr(module, name)
                for module in MODULES for name, descriptor in
                module.DESCRIPTOR.message_types_by_name.items()}.items())


def reference_nul_field(message: Any, prefix: str = "") -> str:
    for field, value in message.ListFields():
        name = f"{prefix}{field.name}"
        if field.type == field.TYPE_STRING:
            values = value if field.is_repeated else (value,)
            if any("\x00" in text for text in values):
                return name
        elif field.type == field.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                found = next((f"{name}[{k!r}]" for k, v in value.items()
                              if "\x00" in str(k) or (isinstance(v, str) and "\x00" in v)), "")
            else:
                items = value if field.is_repeated else (value,)
                found = next((path for path in (reference_nul_field(item, f"{name}.")
                                                for item in items) if path), "")
            if found:
                return found
    return ""


def reference_check_fields(message: Any, rules: Any, path: str = "", depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        return
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue
            items = value if field.is_repeated else [value]
            for index, item in enumerate(items):
                where = f"{name}[{index}]." if field.is_repeated else f"{name}."
                reference_check_fields(item, rules, where, depth + 1)
            continue
        rule = rules.get(field.name)
        if rule is None and field.name.endswith("_atomic"):
            rule = amount
        if rule is None:
            continue
        for item in (value if field.is_repeated else [value]):
            problem = rule(item)
            if problem:
                raise InvalidArgument(f"{name} {problem}")


def _strict(value: Any) -> str:
    """A rule that refuses a default value: a field present at its default (a oneof member,
    an optional) is checked, one absent at it is not."""
    return "is empty" if value in ("", 0, b"", False) else ""


STRICT = {field.name: _strict for _, cls in TYPES for field in cls.DESCRIPTOR.fields
          if field.type != FieldDescriptor.TYPE_MESSAGE}


def _text(rng: random.Random) -> str:
    return rng.choice(["", "ok", "ab" * 32, "0f" * 16, "AB" * 32, "a\x00b", "\x00", "é" * 3,
                       "not-an-id", "cd" * 16])


def _scalar(field: FieldDescriptor, rng: random.Random) -> Any:
    if field.type == field.TYPE_STRING:
        return _text(rng)
    if field.type == field.TYPE_BYTES:
        return rng.choice([b"", b"\x00\x01", bytes(range(32))])
    if field.type == field.TYPE_BOOL:
        return rng.random() < 0.5
    if field.type == field.TYPE_ENUM:
        return rng.choice(field.enum_type.values).number
    if field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return rng.choice([0.0, 1.5])
    unsigned = field.type in (field.TYPE_UINT32, field.TYPE_UINT64, field.TYPE_FIXED32,
                              field.TYPE_FIXED64)
    wide = field.type in (field.TYPE_INT64, field.TYPE_SINT64, field.TYPE_SFIXED64,
                          field.TYPE_UINT64, field.TYPE_FIXED64)
    top = 2 ** 62 if wide else 2 ** 30
    values = [0, 1, 250, top] + ([] if unsigned else [-1, -top])
    return rng.choice(values)


def _fill(message: Any, rng: random.Random, depth: int = 0) -> Any:
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.35:
            continue
        if field.type == field.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                key_field, value_field = field.message_type.fields
                target = getattr(message, field.name)
                for _ in range(rng.randint(0, 2)):
                    key = _scalar(key_field, rng)
                    if value_field.type == value_field.TYPE_MESSAGE:
                        _fill(target[key], rng, depth + 1)
                    else:
                        target[key] = _scalar(value_field, rng)
            elif depth > MAX_DEPTH + 2:
                continue
            elif field.is_repeated:
                for _ in range(rng.randint(0, 3)):
                    _fill(getattr(message, field.name).add(), rng, depth + 1)
            elif rng.random() < 0.8:
                _fill(getattr(message, field.name), rng, depth + 1)
                getattr(message, field.name).SetInParent()
        elif field.is_repeated:
            values = [_scalar(field, rng) for _ in range(rng.randint(0, 3))]
            getattr(message, field.name).extend(values)
        else:
            setattr(message, field.name, _scalar(field, rng))
    return message


def _outcome(walk: Any, message: Any, rules: Any) -> str:
    try:
        walk(message, rules)
    except InvalidArgument as error:
        return error.message
    return ""


@pytest.mark.parametrize(("name", "cls"), TYPES, ids=[name for name, _ in TYPES])
def test_the_planned_walks_answer_as_the_full_walks_do(name: str, cls: Any):
    rng = random.Random(name)
    refused = 0
    for _ in range(40):
        message = _fill(cls(), rng)
        assert nul_field(message) == reference_nul_field(message), message
        for rules in (MARKET_FIELDS, WALLET_FIELDS, STRICT):
            expected = _outcome(reference_check_fields, message, rules)
            assert _outcome(check_fields, message, rules) == expected, message
            refused += bool(expected)
    if any(f.name in MARKET_FIELDS or f.name.endswith("_atomic") for f in cls.DESCRIPTOR.fields):
        assert refused, f"no {name} broke a rule: the corpus would not tell a difference"


def test_a_field_at_its_default_is_checked_only_when_present():
    # proto3 scalars without presence are absent at their default; a oneof member is present
    check_fields(agent_pb2.NegotiationMessage(note=""), {"note": _strict})
    with pytest.raises(InvalidArgument, match="reject_reason is empty"):
        check_fields(agent_pb2.NegotiationMessage(reject_reason=""), {"reject_reason": _strict})
    with pytest.raises(InvalidArgument, match="amount_atomic must be positive"):
        check_fields(wallet_pb2.Money(amount_atomic=-1, currency="USD"), WALLET_FIELDS)
