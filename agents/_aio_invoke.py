"""A paid Invoke on the seller's event loop (`agents._aio_server`).

The same steps as `agents._serving.PaidCalls.invoke`, in the same order: admit the voucher and
reserve (on the loop: checks and hashing, no waiting), run the skill, bill and book the receipt
(a synchronous skill in the bounded executor, as it may block; an async skill awaited on the
loop, and billed there too unless its bill may wait for litellm's usage reports or count
tokens: a hop to the executor and back costs about as much as the rest of the payment), give back
what was not charged, and answer only once the usage record is durable. The wait for the
record blocks no thread: the call awaits its batch, and the journal's writer wakes the loop
once per batch.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from agents._aio_server import Aborted, SyncContext
from agents.errors import AgentmarketError
from agents.llm import traced_by
from agents.metering import TOKENS, metering
from agents.payments import Admission
from agents.skills import Skill
from agents.v1 import agent_pb2
from wallets.grpc_errors import abort, abort_internal

if TYPE_CHECKING:
    from agents._serving import PaidCalls
    from agents.seller import SellerAgent

T = TypeVar("T")


def fast_invoke(seller: SellerAgent, executor: Executor):  # type: ignore[no-untyped-def]
    """AgentService.Invoke for the aio server, errors mapped as `grpc_method` maps them."""

    async def invoke(request: agent_pb2.InvokeRequest, context: grpc.aio.ServicerContext
                     ) -> agent_pb2.InvokeResponse:
        try:
            return await _invoke(seller, executor, request, context)
        except AgentmarketError as error:
            refusal = _refusal(functools.partial(abort, error=error), context)
        except Exception:
            refusal = _refusal(functools.partial(abort_internal, where="AgentServicer.Invoke"),
                               context)
        await refusal.answer(context)
        raise AssertionError("unreachable: answer aborts the call")

    return invoke


def _refusal(refuse: Callable[..., None], context: grpc.aio.ServicerContext) -> Aborted:
    """The status `refuse` (wallets.grpc_errors' abort) answers with."""
    try:
        refuse(context=SyncContext(context))
    except Aborted as aborted:
        return aborted
    raise AssertionError("abort did not raise")


async def _invoke(seller: SellerAgent, executor: Executor, request: agent_pb2.InvokeRequest,
                  context: grpc.aio.ServicerContext) -> agent_pb2.InvokeResponse:
    calls = seller.calls
    calls.admitter.vouch(request, context)
    checked = calls.checked_input(request)
    admission = calls.admitter.admit(request, context, partial=False)
    if admission.replay is not None:
        await _durable(admission)
        return admission.replay  # type: ignore[no-any-return]
    admission.checked_input = checked
    proof = calls.proof_of(request, context)
    if _kind(seller, request) == "async":
        try:
            response = await _on_loop(seller, executor, request, admission, proof)
        finally:
            seller.gate.release(request.agreement_id, admission)  # no-op once completed
    else:  # released by the pool's job: a caller that hangs up does not cut it short
        response = await _in_pool(executor, _invoke_released, calls, request, admission,
                                  proof)
    await _durable(admission)  # answer only once the usage record is durable
    return response  # type: ignore[no-any-return]


def _invoke_released(calls: PaidCalls, request: agent_pb2.InvokeRequest,
                     admission: Admission, proof: bytes) -> agent_pb2.InvokeResponse:
    try:
        return calls._invoke(request, admission, proof)
    finally:
        calls.seller.gate.release(request.agreement_id, admission)  # no-op once completed


def _kind(seller: SellerAgent, request: agent_pb2.InvokeRequest) -> str:
    served: Skill | None = seller.skills.get(seller.gate.body(request.agreement_id).terms.skill)
    return "" if served is None else served.kind


async def _on_loop(seller: SellerAgent, executor: Executor, request: agent_pb2.InvokeRequest,
                   admission: Admission, proof: bytes) -> agent_pb2.InvokeResponse:
    """An async skill's call: the skill awaited on the loop; its billing in the pool when it
    may wait for litellm's usage reports or count tokens, on the loop otherwise."""
    calls = seller.calls
    if request.agreement_id not in seller._escrowed:  # asks the marketplace once
        await _in_pool(executor, seller.check_escrow, request.agreement_id, proof)
    skill, arguments, meter = calls._prepare(request, admission)
    with calls._span(request, skill, meter) as span, metering(meter), \
            traced_by(seller.tracer_provider):
        output = await skill.run_async(arguments)
        if meter.tariff.unit != TOKENS and meter.settle_if_reported():
            # nothing to wait for and no tokenizer to run: billed here, no hop to the pool
            billed = calls.bill_output(request, admission, skill, meter, span, output)
        else:
            billed = await _in_pool(executor, calls.bill_output, request, admission, skill,
                                    meter, span, output)
    return calls.book(request, admission, billed)


def _in_pool(executor: Executor, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """`fn(*args)` in the bounded pool, with this call's context variables (its meter, its
    trace context)."""
    return asyncio.get_running_loop().run_in_executor(
        executor, contextvars.copy_context().run, fn, *args)


async def _durable(admission: Admission) -> None:
    if admission.durable is not None:
        await admission.durable.wait_async()
