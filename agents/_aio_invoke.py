"""A paid Invoke on the seller's event loop (`agents._aio_server`).

The same steps as `agents._serving.PaidCalls.invoke`, in the same order: admit the voucher and
reserve (on the loop: checks and hashing, no waiting), run the skill, bill and book the receipt
(in the bounded executor: a skill may block, and the first call of an agreement asks the
marketplace about its escrow), give back what was not charged, and answer only once the usage
record is durable. The wait for the record blocks no thread: the call awaits its batch, and the
journal's writer wakes the loop once per batch.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import grpc

from agents._aio_server import Aborted, SyncContext
from agents.errors import AgentmarketError
from agents.payments import Admission
from agents.v1 import agent_pb2
from wallets.grpc_errors import abort, abort_internal

if TYPE_CHECKING:
    from agents.seller import SellerAgent


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
    admission = calls.admitter.admit(request, context, partial=False)
    if admission.replay is not None:
        await _durable(admission)
        return admission.replay  # type: ignore[no-any-return]
    try:
        run = contextvars.copy_context().run  # the meter and trace context go with the call
        response = await asyncio.get_running_loop().run_in_executor(
            executor, run, calls._invoke, request, admission)
    finally:
        seller.gate.release(request.agreement_id, admission)  # no-op once completed
    await _durable(admission)  # answer only once the usage record is durable
    return response  # type: ignore[no-any-return]


async def _durable(admission: Admission) -> None:
    if admission.durable is not None:
        await admission.durable.wait_async()
