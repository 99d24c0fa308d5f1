"""The paid call's floor (`benchmarks._paid_floor`) answers as a paid echo does, in a paid
echo's bytes, and each answer's usage record is durable: if it stopped doing so,
`paid_call_ratio_floor` would measure something else."""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from agents.skills import Skill
from benchmarks import _paid_floor as floor
from benchmarks._paid_sides import echo, echo_async, framework_interceptors
from marketplace.v1 import agreement_pb2


def _five_calls(serve: Callable[..., None], served: Skill, workdir: Path,
                **options: bool) -> None:
    """Five calls to the floor `serve` runs (in a thread, with `options`), which then
    stops."""
    ready: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    server = threading.Thread(target=serve, daemon=True,
                              args=(served, framework_interceptors(), ready, stop, workdir),
                              kwargs=options)
    server.start()
    channel = grpc.insecure_channel(ready.get(timeout=30))
    try:
        call = floor.floor_caller(channel, served)
        assert [call(i) for i in range(5)] == [
            {"text": f"call {i}", "length": len(f"call {i}")} for i in range(5)]
    finally:
        channel.close()
        stop.set()
        server.join(timeout=30)
    assert not server.is_alive()


def _calls_recorded(workdir: Path) -> list[tuple[str, bytes, bytes, bytes]]:
    with sqlite3.connect(workdir / "journal.db") as db:
        return db.execute("SELECT agreement_id, voucher, receipt, response "
                          "FROM agentmarket_seller_calls").fetchall()


@pytest.mark.parametrize(("serve", "served"), [(floor.serve_floor, echo),
                                               (floor.serve_floor_aio, echo_async)],
                         ids=["threaded", "aio"])
def test_the_floor_answers_a_paid_echos_bytes_and_records_each_call(
        tmp_path: Path, serve: Callable[..., None], served: Skill):
    _five_calls(serve, served, tmp_path)
    rows = _calls_recorded(tmp_path)
    assert len(rows) == 5 and {row[0] for row in rows} == {floor.AGREEMENT_ID}
    voucher = agreement_pb2.Voucher.FromString(rows[0][1])
    assert voucher.agreement_id == floor.AGREEMENT_ID and len(voucher.payword) == 32
    receipt = agreement_pb2.Receipt.FromString(rows[0][2])
    assert receipt.charged_atomic == floor.CHARGE_ATOMIC and len(receipt.chain_sha256) == 32
    assert sorted(row[3] for row in rows) == sorted(
        f'{{"length": {len(f"call {i}")}, "text": "call {i}"}}'.encode() for i in range(5))


@pytest.mark.parametrize("serve", [floor.serve_floor, floor.serve_floor_aio],
                         ids=["threaded", "aio"])
def test_the_floor_without_its_record_answers_the_same_and_writes_nothing(
        tmp_path: Path, serve: Callable[..., None]):
    _five_calls(serve, echo_async if serve is floor.serve_floor_aio else echo, tmp_path,
                record=False)
    assert not (tmp_path / "journal.db").exists()  # no journal at all, so no row


def test_the_floor_not_waiting_for_its_record_still_writes_every_one(tmp_path: Path):
    """`floor_unwaited` tells the waiting's share from the writing's: it must write the same
    rows (the journal is closed, and so flushed, when the server stops)."""
    _five_calls(floor.serve_floor, echo, tmp_path, wait=False)
    rows = _calls_recorded(tmp_path)
    assert len(rows) == 5 and {row[0] for row in rows} == {floor.AGREEMENT_ID}


def test_the_floor_with_a_file_record_appends_each_answered_call_before_answering(
        tmp_path: Path):
    ready: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    server = threading.Thread(target=floor.serve_floor_file, daemon=True,
                              args=(echo, framework_interceptors(), ready, stop, tmp_path))
    server.start()
    channel = grpc.insecure_channel(ready.get(timeout=30))
    records = tmp_path / "records"
    try:
        call = floor.floor_caller(channel, echo)
        for i in range(5):
            assert call(i) == {"text": f"call {i}", "length": len(f"call {i}")}
            # written (and fdatasync'd) before the answer came back
            assert f'"text": "call {i}"}}\n'.encode() in records.read_bytes()
    finally:
        channel.close()
        stop.set()
        server.join(timeout=30)
    assert not server.is_alive()
