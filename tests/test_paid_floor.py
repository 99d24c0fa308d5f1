"""The paid call's floor (`benchmarks._paid_floor`) answers as a paid echo does, in a paid
echo's bytes, and each answer's usage record is durable: if it stopped doing so,
`paid_call_ratio_floor` would measure something else."""

from __future__ import annotations

import queue
import sqlite3
import threading
from pathlib import Path

import grpc

from benchmarks import _paid_floor as floor
from benchmarks.paid_call import echo, framework_interceptors
from marketplace.v1 import agreement_pb2


def test_the_floor_answers_a_paid_echos_bytes_and_records_each_call(tmp_path: Path):
    ready: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    server = threading.Thread(target=floor.serve_floor,
                              args=(echo, framework_interceptors(), ready, stop, tmp_path),
                              daemon=True)
    server.start()
    channel = grpc.insecure_channel(ready.get(timeout=30))
    try:
        call = floor.floor_caller(channel, echo)
        assert [call(i) for i in range(5)] == [
            {"text": f"call {i}", "length": len(f"call {i}")} for i in range(5)]
    finally:
        channel.close()
        stop.set()
        server.join(timeout=30)
    assert not server.is_alive()
    with sqlite3.connect(tmp_path / "journal.db") as db:
        rows = db.execute("SELECT agreement_id, voucher, receipt, response "
                          "FROM agentmarket_seller_calls").fetchall()
    assert len(rows) == 5 and {row[0] for row in rows} == {floor.AGREEMENT_ID}
    voucher = agreement_pb2.Voucher.FromString(rows[0][1])
    assert voucher.agreement_id == floor.AGREEMENT_ID and len(voucher.payword) == 32
    receipt = agreement_pb2.Receipt.FromString(rows[0][2])
    assert receipt.charged_atomic == floor.CHARGE_ATOMIC and len(receipt.chain_sha256) == 32
    assert sorted(row[3] for row in rows) == sorted(
        f'{{"length": {len(f"call {i}")}, "text": "call {i}"}}'.encode() for i in range(5))
