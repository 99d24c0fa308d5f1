"""Generated protobuf code must match protos/ (regenerate with `make protos`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generate_module():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path):
    generate = _generate_module()
    generate.generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "protoc produced nothing"
    stale = [str(rel) for rel in fresh
             if (ROOT / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, f"stale generated code, run `make protos`: {stale}"
    for package in generate.PACKAGES:
        committed = {p.name for p in (ROOT / package / "v1").iterdir() if p.is_file()}
        generated = {p.name for p in (tmp_path / package / "v1").iterdir()}
        assert committed == generated, f"{package}/v1 holds files protoc does not make"


def test_every_mutating_request_carries_an_idempotency_key():
    from agents.v1 import agent_pb2  # noqa: F401  (registers its descriptors)
    from marketplace.v1 import dispute_pb2, registry_pb2, settlement_pb2, verifier_pb2
    from wallets.v1 import wallet_pb2

    # ReportUnreachable asks the registry to check a listing: its effect is the registry's own
    # finding (the same each time it is checked), not the caller's request
    reads = {"GetDispute", "GetBalance", "History", "ListCurrencies", "Discover", "Heartbeat",
             "GetEscrow", "GetPolicy", "ListAlerts", "ListApprovals", "GetMandate",
             "ReportUnreachable", "GetDepositInstructions", "GetEcnyWallet"}
    for module in (wallet_pb2, registry_pb2, settlement_pb2, dispute_pb2, verifier_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.name in reads:
                    continue
                fields = {f.name for f in method.input_type.fields}
                assert "idempotency_key" in fields, f"{service.name}.{method.name}"


def test_money_is_never_a_float_on_the_wire():
    from google.protobuf.descriptor import FieldDescriptor

    from agents.v1 import agent_pb2
    from marketplace.v1 import (
        agreement_pb2,
        dispute_pb2,
        registry_pb2,
        settlement_pb2,
        verifier_pb2,
    )
    from wallets.v1 import wallet_pb2

    floats = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
    for module in (wallet_pb2, registry_pb2, settlement_pb2, agreement_pb2, agent_pb2,
                   dispute_pb2, verifier_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for field in message.fields:
                assert field.type not in floats, f"{message.name}.{field.name} is a float"
