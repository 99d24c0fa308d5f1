"""The gateway's hop to the seller: the call over gRPC with the buyer's voucher, as a gRPC
buyer makes it, and the answer as the gateway's JSON body.

A call whose answer may have been lost on the way (the transport failed) is asked again under
the same call id, as a gRPC buyer retries: the seller answers from its record if it ran the
call, charged once, so what the gateway reports as charged is what the seller will redeem.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, NamedTuple

import grpc

from agents._grpc_payment import answer_may_be_lost
from agents.payments import paid_call_metadata
from agents.v1 import agent_pb2, agent_pb2_grpc
from agents.x402 import network as net
from marketplace.aio_client import aio_channel
from marketplace.channel_cache import ChannelCache, GracefulClose
from marketplace.grpc_tracing import tracing_active
from marketplace.identity import AgentKey
from marketplace.v1 import agreement_pb2
from wallets.grpc_errors import error_reason

CALL_TIMEOUT_S = 30.0
# How long a lost answer is asked for again: the channel reconnects with a backoff (a second,
# then more) and the seller may still be running the call; its charge is what is asked for
REFETCH_WAIT_S = 15.0
_LOST_IN_TRANSPORT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN})
HTTP_OF_GRPC = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
                grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
                grpc.StatusCode.DEADLINE_EXCEEDED: 504,
                grpc.StatusCode.FAILED_PRECONDITION: 409}

# The seller refused a voucher the gateway had checked against the chain: a later word of the
# same session reached the seller first (a buyer's calls running at once), and the seller takes
# words in order. A 402 whose `error` is payload_replayed: the buyer pays again with its next;
# session_ended (the seller takes no more calls under the agreement): in a new session.
VOUCHER_REFUSED = 402
# the seller's reasons for such a refusal, as x402 errors (AGREEMENT_ENDED: it redeemed, or the
# agreement is in its redeem margin)
_REFUSED_VOUCHERS = {"INVALID_VOUCHER": "payload_replayed", "AGREEMENT_ENDED": "session_ended"}


class Channels:
    """The aio channels to seller endpoints (signed with the gateway's key, or plain), at
    most MAX_CHANNELS of each kind: listings, and so endpoints, are anyone's to advertise. An
    evicted channel is closed once its running calls end (or LINGER_S)."""

    def __init__(self, key: AgentKey, tracer_provider: Any = None) -> None:
        self.key = key
        self.tracer_provider = tracer_provider
        self._retired = GracefulClose()
        self._channels: ChannelCache[grpc.aio.Channel] = ChannelCache(
            self._open, self._retired.retire, linger_s=0)
        self._stubs: ChannelCache[_Stub] = ChannelCache(
            self._open_stub, lambda stub: self._retired.retire(stub.channel), linger_s=0)

    def __len__(self) -> int:
        """The channels open to sellers, of both kinds (not those evicted and closing)."""
        return len(self._channels) + len(self._stubs)

    def get(self, endpoint: str, *, signed: bool = False) -> grpc.aio.Channel:
        return self._channels.get(f"{'signed' if signed else 'plain'}:{endpoint}")

    def _open(self, name: str) -> grpc.aio.Channel:
        kind, _, endpoint = name.partition(":")
        return aio_channel(endpoint, self.key if kind == "signed" else None,
                           tracer_provider=self.tracer_provider)

    def stub(self, endpoint: str) -> agent_pb2_grpc.AgentServiceStub:
        """The plain channel's stub (a voucher is the call's own proof); while tracing is
        off, over a channel without interceptors (grpc.aio's cost one task per call)."""
        traced = tracing_active(self.tracer_provider)
        return self._stubs.get(f"{'traced' if traced else 'bare'}:{endpoint}").stub

    def _open_stub(self, name: str) -> _Stub:
        kind, _, endpoint = name.partition(":")
        channel = (aio_channel(endpoint, None, tracer_provider=self.tracer_provider)
                   if kind == "traced" else grpc.aio.insecure_channel(endpoint))
        return _Stub(channel, agent_pb2_grpc.AgentServiceStub(channel))

    async def aclose(self) -> None:
        await self._retired.aclose(*self._channels.drain(),
                                   *(s.channel for s in self._stubs.drain()))


class _Stub(NamedTuple):
    channel: grpc.aio.Channel
    stub: agent_pb2_grpc.AgentServiceStub


def invoke_request(arguments: dict[str, Any], voucher: agreement_pb2.Voucher
                   ) -> agent_pb2.InvokeRequest:
    return agent_pb2.InvokeRequest(agreement_id=voucher.agreement_id,
                                   input_json=json.dumps(arguments),
                                   call_id=f"x402:{voucher.payword_index}")


async def invoke(channels: Channels, endpoint: str, arguments: dict[str, Any],
                 voucher: agreement_pb2.Voucher, proof: bytes = b""
                 ) -> tuple[int, dict[str, Any], int]:
    """(HTTP status, body, charged atomic) of the seller's answer."""
    stub, request = channels.stub(endpoint), invoke_request(arguments, voucher)
    metadata = paid_call_metadata(voucher, proof)
    try:
        try:
            response = await stub.Invoke(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            if error.code() not in _LOST_IN_TRANSPORT:
                raise
            response = await _asked_again(
                lambda: stub.Invoke(request, timeout=REFETCH_WAIT_S, metadata=metadata,
                                    wait_for_ready=True))  # while the channel reconnects
    except grpc.aio.AioRpcError as error:
        refused = _REFUSED_VOUCHERS.get(error_reason(error))
        if refused is not None:
            return VOUCHER_REFUSED, {"error": refused, "message": error.details() or ""}, 0
        return (HTTP_OF_GRPC.get(error.code(), 502),
                {"error": error.code().name.lower(), "message": error.details() or ""}, 0)
    return 200, answer_body(response), response.usage.charged_atomic


def answer_body(response: agent_pb2.InvokeResponse) -> dict[str, Any]:
    """The gateway's JSON body of a seller's answer: the output, its usage and the seller's
    receipt."""
    usage = response.usage
    return {"output": json.loads(response.output_json),
            "usage": {"inputTokens": usage.input_tokens, "outputTokens": usage.output_tokens,
                      "units": usage.units, "charged": str(usage.charged_atomic)},
            "receipt": net.b64(response.receipt.SerializeToString())}


async def refetched_end(stub: agent_pb2_grpc.AgentServiceStub, request: agent_pb2.InvokeRequest,
                        metadata: Any, error: grpc.aio.AioRpcError) -> agent_pb2.StreamEnd | None:
    """The end a seller recorded for a stream cut off after some of it came (`error`): what
    it sent, billed; asked for under the same call id. None when the seller cannot have
    billed anything (it refused or failed the call) or the end could not be had."""
    if not answer_may_be_lost(error):
        return None

    async def end() -> agent_pb2.StreamEnd | None:
        async for chunk in stub.InvokeStream(request, timeout=REFETCH_WAIT_S,
                                             metadata=metadata, wait_for_ready=True):
            if chunk.HasField("end"):
                return chunk.end
        return None

    try:
        return await _asked_again(end)
    except grpc.aio.AioRpcError:
        return None


async def _asked_again(ask: Any) -> Any:
    """`ask()` again until the seller has finished the call it is still running
    (CALL_IN_PROGRESS), or while the connection the first answer was lost on is still being
    torn down (UNAVAILABLE from the transport: the channel had not yet seen the socket close
    and sent the question on it), for at most REFETCH_WAIT_S."""
    deadline = time.monotonic() + REFETCH_WAIT_S
    while True:
        try:
            return await ask()
        except grpc.aio.AioRpcError as error:
            reason = error_reason(error)
            lost = error.code() == grpc.StatusCode.UNAVAILABLE and not reason
            if not (reason == "CALL_IN_PROGRESS" or lost) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.01)
