"""The Node.js client (examples/node-client), written from protos/ and PROTOCOL.md, completes a
paid task against a real `agentmarket serve` node and a Python seller (negotiation with a
counter-offer, escrow, paid calls with vouchers, signed and unsigned, the receipt chain, finish
and confirm, and a streamed call), and
recomputes every protocol test vector; and buf (an npm package of the same install) builds and
lints the contract in protos/ as any client's tooling would. Needs `node` and `npm` (its
packages come from the registry with `npm ci`, kept in the example's node_modules); skipped
without them, except on CI (CI=true), where they must be there."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from marketplace.receipt_verify import verify_receipt
from marketplace.v1 import receipt_pb2, receipt_pb2_grpc, settlement_pb2, settlement_pb2_grpc
from tests.processes.node import NodeProcess

ROOT = Path(__file__).resolve().parent.parent
SELLER = ROOT / "examples" / "node-client" / "seller.py"  # sells upper and spell
CLIENT = ROOT / "examples" / "node-client"
STAMP = CLIENT / "node_modules" / ".installed-lock-sha256"
CALLS = 17


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run the Node.js client")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> str:
    """The `node` binary, with the client's packages installed (`npm ci`, once per lock)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are not installed: the Node.js client is not run")
    lock = hashlib.sha256((CLIENT / "package-lock.json").read_bytes()).hexdigest()
    with open(Path(os.environ.get("TMPDIR", "/tmp")) / "agentmarket-node-client.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # one install at a time
        if not STAMP.exists() or STAMP.read_text() != lock:
            done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                                  cwd=CLIENT, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                _unavailable(f"npm ci failed (is the registry reachable?): "
                             f"{done.stderr.strip()[-500:]}")
            STAMP.write_text(lock)
    return node  # type: ignore[return-value]


def test_buf_builds_and_lints_the_contract(node: str):
    """`buf build` and `buf lint` (protos/buf.yaml: buf's STANDARD rules, the exceptions named
    there and why) pass on protos/ as published."""
    buf = CLIENT / "node_modules" / ".bin" / "buf"
    for command in ("build", "lint"):
        done = subprocess.run([str(buf), command], cwd=ROOT / "protos", capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"buf {command}:\n{done.stdout}{done.stderr}"


def test_the_node_client_recomputes_every_protocol_vector(node: str):
    done = subprocess.run([node, "vectors.js", str(ROOT / "tests/vectors/protocol.json")],
                          cwd=CLIENT, capture_output=True, text=True, timeout=60)
    result = json.loads(done.stdout)
    assert result["failures"] == [] and done.returncode == 0
    assert result["checked"] > 100


def test_the_node_client_completes_a_paid_task(node: str, tmp_path: Path):
    operator = AgentKey.generate()
    with NodeProcess(f"sqlite:///{tmp_path / 'market.db'}", tmp_path / "node",
                     operators=(operator.agent_id,)) as market:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTMARKET_TRACING": "off",
               "AGENTMARKET_HOME": str(tmp_path / "home")}
        seller = subprocess.Popen([sys.executable, str(SELLER),
                                   market.address, str(tmp_path / "seller-spans.db")],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert seller.stdout is not None
            assert seller.stdout.readline().strip()  # its endpoint: serving and advertised
            done = subprocess.run([node, "client.js", market.address, "upper", str(CALLS)],
                                  cwd=CLIENT, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            task = json.loads(done.stdout)
            channel = signed_channel(market.address, operator)
            escrow = settlement_pb2_grpc.SettlementServiceStub(channel).GetEscrow(
                settlement_pb2.GetEscrowRequest(agreement_id=task["agreement_id"]), timeout=10)
            receipt = receipt_pb2_grpc.ReceiptServiceStub(channel).GetReceipt(
                receipt_pb2.GetReceiptRequest(subject=task["agreement_id"], kind="capture"),
                timeout=10)
            channel.close()
        finally:
            seller.send_signal(signal.SIGTERM)
            seller.wait(timeout=20)

    listed, asked, countered, agreed = (int(task["listed_atomic"]),
                                        *map(int, task["offers_atomic"]))
    assert countered < asked <= listed and countered <= agreed <= asked  # a real counter-offer
    assert task["calls"] == CALLS and task["signed_receipts"] == [16]
    assert task["refusals"] == ["PERMISSION_DENIED INVALID_VOUCHER",  # a replayed voucher
                                "UNAUTHENTICATED PAYMENT_REQUIRED"]  # none at all
    assert int(task["charged_atomic"]) == CALLS * agreed
    # the marketplace's own view, read by an operator: settled as the Node buyer saw it
    assert escrow.state == settlement_pb2.AGREEMENT_STATE_SETTLED
    assert escrow.buyer_id == task["buyer"] and escrow.seller_id == task["seller"]
    assert escrow.captured_atomic == int(task["captured_atomic"]) == CALLS * agreed
    assert escrow.refunded_atomic == int(task["refunded_atomic"]) == \
        escrow.held_atomic - escrow.captured_atomic
    assert escrow.fee_atomic == int(task["fee_atomic"]) == escrow.captured_atomic * 250 // 10_000
    assert task["stream"]["pieces"] == list("NODE")  # InvokeStream, under a second agreement
    assert int(task["balance_atomic"]) == 1_000_000_000 - escrow.captured_atomic - int(
        task["stream"]["captured_atomic"])
    verified = verify_receipt(receipt.file)  # the node's signed capture receipt
    assert (verified.subject, verified.kind) == (task["agreement_id"], "capture")
