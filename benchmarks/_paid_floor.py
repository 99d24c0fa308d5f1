"""The floor under `paid_call_ratio`: a paid call whose payment does no work.

The unpaid echo server of `benchmarks.paid_call` (the same interceptors, input checks and
skill), but every call carries what a paid echo carries on the wire (the agreement and call
ids in the request, a voucher in its metadata; the usage and a chained receipt in the answer),
and the server writes the same durable usage record a seller writes, through the seller's own
`UsageJournal` paced by the seller's own executor, and answers only once it committed. Nothing
is checked, reserved, metered, billed, hashed or chained: the messages are copies of templates
built once. What separates this floor from the unpaid call is only the bytes and the record,
so its ratio to the unpaid call is the most that a payment doing any work per call could reach
on this server kind, whatever language that work were written in.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from agents._aio_server import AioServer, SyncBridge
from agents._grpc_payment import INVOKE
from agents.payments import VOUCHER_METADATA_KEY
from agents.skills import Skill
from agents.usage_journal import LOOP_GROUP_WAIT_S, JournalPacedExecutor, Pending, UsageJournal
from agents.v1 import agent_pb2, agent_pb2_grpc
from benchmarks.durable_record import GroupFile
from marketplace.agreements import CHAIN_GENESIS, chain_receipt, new_receipt
from marketplace.grpc_tracing import client_interceptors
from marketplace.intercepted import intercept
from marketplace.schema_validators import validator
from marketplace.v1 import agreement_pb2
from wallets.grpc_errors import grpc_method

AGREEMENT_ID = "8a" * 32  # the shape of a real one: 64 hex digits
SELLER_ID = "floor-seller"
CHARGE_ATOMIC = 8_750  # the echo's price per call, as the paid side's receipts charge it
MAX_WORKERS = 16  # as the seller's pool
VOUCHERS = 64  # built once per client and sent in turn
_CALL_IDS = itertools.count(1)  # unique across the clients' threads (a call id is 32 hex digits)


def voucher_bytes(sequence: int) -> bytes:
    """A voucher of a paid call's size: the agreement, its sequence and running total, and a
    PayWord word (random bytes: nobody checks it)."""
    return agreement_pb2.Voucher(
        agreement_id=AGREEMENT_ID, sequence=sequence, cumulative_atomic=sequence * CHARGE_ATOMIC,
        payword_index=sequence, payword=os.urandom(32)).SerializeToString()


def voucher_metadata() -> list[tuple[tuple[str, bytes]]]:
    """VOUCHERS calls' metadata, each with a voucher of its own, sent in turn."""
    return [((VOUCHER_METADATA_KEY, voucher_bytes(n + 1)),) for n in range(VOUCHERS)]


def answer_template(sequence: int) -> agent_pb2.InvokeResponse:
    """An answer of a paid echo's shape: its usage and an unsigned chained receipt, as 15 of
    every 16 receipts are (the output is set per call)."""
    output_json = json.dumps({"length": 7, "text": "call 19"}, sort_keys=True)
    receipt = new_receipt(AGREEMENT_ID, sequence, output_json, CHARGE_ATOMIC)
    chain_receipt(receipt, sequence, CHAIN_GENESIS, None)
    usage = agent_pb2.Usage(calls=1, charged_atomic=CHARGE_ATOMIC, reserved_atomic=CHARGE_ATOMIC)
    return agent_pb2.InvokeResponse(output_json=output_json, usage=usage, receipt=receipt)


class _FloorServicer(agent_pb2_grpc.AgentServiceServicer):
    """The unpaid echo's work, answered with a paid answer's bytes once a usage record of a
    paid call's size committed."""

    def __init__(self, served: Skill, journal: UsageJournal | None,
                 log: GroupFile | None = None, *, wait: bool = True) -> None:
        self.skill = served
        self.journal = journal
        self.log = log  # instead of the journal: the record appended to a file, fdatasync'd
        self.wait = wait  # False: answer without waiting for the record (not durable then)
        self.check = validator(served.input_schema)
        self.template = answer_template(20)
        self.receipt = self.template.receipt.SerializeToString()

    @grpc_method
    def Invoke(self, request, context):  # type: ignore[no-untyped-def]
        answer = self._answer(self.skill.run(self._arguments(request)))
        if self.log is not None:
            self.log.record(self._row(request, context, answer))
            return answer
        pending = self._record(request, context, answer)
        if pending is not None and self.wait:
            pending.wait()
        return answer

    async def invoke_async(self, request: agent_pb2.InvokeRequest,
                           context: grpc.aio.ServicerContext) -> agent_pb2.InvokeResponse:
        """`Invoke` of an async skill on the aio server's loop, the record awaited."""
        answer = self._answer(await self.skill.run_async(self._arguments(request)))
        pending = self._record(request, context, answer)
        if pending is not None:
            await pending.wait_async()
        return answer

    def _arguments(self, request: agent_pb2.InvokeRequest) -> Any:
        arguments = json.loads(request.input_json)
        self.check.validate(arguments)
        return arguments

    def _answer(self, output: Any) -> agent_pb2.InvokeResponse:
        answer = agent_pb2.InvokeResponse()
        answer.CopyFrom(self.template)
        answer.output_json = json.dumps(output, sort_keys=True)
        return answer

    def _record(self, request: agent_pb2.InvokeRequest, context: Any,
                answer: agent_pb2.InvokeResponse) -> Pending | None:
        """The call's usage record, queued with its voucher (None: the floor records none)."""
        if self.journal is None:
            return None
        return self.journal.record_call(AGREEMENT_ID, request.call_id, 0, 0, _voucher(context),
                                        self.receipt, answer.output_json.encode())

    def _row(self, request: agent_pb2.InvokeRequest, context: Any,
             answer: agent_pb2.InvokeResponse) -> bytes:
        """The same record as one line of the file (`log`): the journal's columns, joined."""
        return b"".join((AGREEMENT_ID.encode(), request.call_id.encode(), _voucher(context),
                         self.receipt, answer.output_json.encode(), b"\n"))


def _voucher(context: Any) -> bytes:
    """The voucher the call carried in its metadata (the floor's callers always send one)."""
    return next(v for k, v in context.invocation_metadata() if k == VOUCHER_METADATA_KEY)


def serve_until_stopped(server: Any, ready: Any, stop: Any) -> None:
    """Start `server` (its servicers added) on a loopback port, put its address on `ready`,
    and stop it once `stop` is set."""
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready.put(f"127.0.0.1:{port}")
    stop.wait()
    server.stop(0)


@contextmanager
def _floor_journal(workdir: Path | None, record: bool, group_wait_s: float = 0.0
                   ) -> Iterator[UsageJournal | None]:
    """The floor's journal, its agreement open (in `workdir`, or in a temporary directory),
    closed afterwards; None without `record` (the floor's bytes alone: nothing written)."""
    if not record:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        journal = UsageJournal(f"sqlite:///{Path(workdir or tmp) / 'journal.db'}",
                               group_wait_s=group_wait_s)
        try:
            journal.open_agreement(AGREEMENT_ID, SELLER_ID, b"floor")
            yield journal
        finally:
            journal.close()


def serve_floor(served: Skill, interceptors: list[Any], ready: Any, stop: Any,
                workdir: Path | None = None, record: bool = True, wait: bool = True) -> None:
    """In a child process: the floor server behind `interceptors` (the unpaid side's), until
    `stop` is set (its journal in `workdir`, or in a temporary directory). With `record`
    false, nothing is written: the floor's bytes alone, without the durable record. With
    `wait` false, the record is written but the answer does not wait for it: what the
    waiting costs, apart from the writing (no seller may answer so: it is not durable)."""
    with _floor_journal(workdir, record) as journal:
        executor = (JournalPacedExecutor(journal, MAX_WORKERS) if journal is not None
                    else futures.ThreadPoolExecutor(max_workers=MAX_WORKERS))
        _serve_threaded(_FloorServicer(served, journal, wait=wait), executor, interceptors,
                        ready, stop)


def serve_floor_file(served: Skill, interceptors: list[Any], ready: Any, stop: Any,
                     workdir: Path | None = None) -> None:
    """`serve_floor` with the least a durable record can be instead of the journal: each
    record appended to one file and fdatasync'd, a batch at a time, by the first waiting
    call (`benchmarks.durable_record`'s group commit, no database): what is left of the
    record's share under any store (the file `records` in `workdir`, or in a temporary
    directory)."""
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        log = GroupFile(Path(workdir or tmp) / "records")
        try:
            _serve_threaded(_FloorServicer(served, None, log),
                            futures.ThreadPoolExecutor(max_workers=MAX_WORKERS), interceptors,
                            ready, stop)
        finally:
            log.close()


def _serve_threaded(floor: _FloorServicer, executor: futures.Executor, interceptors: list[Any],
                    ready: Any, stop: Any) -> None:
    """`floor` on a threaded gRPC server running its calls in `executor`, until `stop`."""
    server = grpc.server(executor, interceptors=interceptors)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(floor, server)
    serve_until_stopped(server, ready, stop)


def serve_floor_aio(served: Skill, interceptors: list[Any], ready: Any, stop: Any,
                    workdir: Path | None = None, record: bool = True) -> None:
    """In a child process: the floor on grpc.aio, as an aio seller serves an async skill (the
    interceptors' checks and the skill on the loop, the record awaited: one wake-up of the loop
    per batch), until `stop` is set. `workdir` and `record` as in `serve_floor`."""
    with _floor_journal(workdir, record, LOOP_GROUP_WAIT_S) as journal:
        floor = _FloorServicer(served, journal)
        executor = futures.ThreadPoolExecutor(max_workers=MAX_WORKERS)
        server = AioServer(SyncBridge(interceptors, executor, {INVOKE: floor.invoke_async},
                                      None), [])
        agent_pb2_grpc.add_AgentServiceServicer_to_server(floor, server)
        serve_until_stopped(server, ready, stop)


def floor_caller(channel: grpc.Channel, served: Skill) -> Any:
    """One client's call: a paid call's request and voucher, its output parsed and checked as
    the unpaid side's is (the receipt is not checked: that is payment work)."""
    stub = agent_pb2_grpc.AgentServiceStub(intercept(channel, *client_interceptors()))
    check = validator(served.output_schema)
    vouchers = voucher_metadata()

    def call(i: int) -> Any:
        request = agent_pb2.InvokeRequest(agreement_id=AGREEMENT_ID,
                                          input_json=json.dumps({"text": f"call {i}"}),
                                          call_id=f"{next(_CALL_IDS):032x}")
        answer = stub.Invoke(request, metadata=vouchers[i % VOUCHERS], timeout=10)
        output = json.loads(answer.output_json)
        check.validate(output)
        return output

    return call
