"""The gateway's waits on sellers: asked on the event loop, bounded per party.

Opening a session asks the seller to countersign (Negotiate) and closing one asks it to finish:
gRPC calls of up to 10 s each. Waiting for them on threads made threads a resource that a few
funded keys and silent listings could take up (a pool of 64 was filled by 8 buyers' opens with
4 sellers that never answer), and every honest open and close then waited behind them. So the
gateway asks over grpc.aio on its event loop, where a silent seller holds no thread, and hands
the answer (`SellerAnswer`, through `ASKED`) to the open's or close's ledger work, which runs
on a worker thread as before. At most `OPENS_PER_SELLER` opens wait on one seller endpoint and
`OPENS_PER_BUYER` for one buyer at a time; past that an open is refused (`seller_refused`:
retry shortly), nothing held.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from agents.v1 import agent_pb2, agent_pb2_grpc
from agents.x402 import network as net
from agents.x402.reasons import Refused
from marketplace import agreements as ag

if TYPE_CHECKING:
    from agents.x402.forward import Channels

RPC_TIMEOUT_S = 10.0
OPENS_PER_SELLER = 16
OPENS_PER_BUYER = 8  # a client with 40 calls at once opens 4 or 5 sessions together


@dataclass(frozen=True)
class SellerAnswer:
    """What a seller answered for one agreement: the agreement it countersigned (an open),
    nothing (a close it finished), or the refusal to report."""

    agreement_id: str
    countersigned: Any = None
    refused: Refused | None = None

    def result(self) -> Any:
        if self.refused is not None:
            raise self.refused
        return self.countersigned


# The seller's answer for the open or close whose ledger work runs in this context
ASKED: ContextVar[SellerAnswer | None] = ContextVar("agentmarket_x402_asked", default=None)


def asked(agreement_id: str) -> SellerAnswer | None:
    """The seller's answer already asked for this agreement, if any."""
    found = ASKED.get()
    return found if found is not None and found.agreement_id == agreement_id else None


class SellerCalls:
    """Ask sellers to countersign and to finish, and count who is waiting on whom."""

    def __init__(self, channels: Channels | None = None) -> None:
        """`channels`: the gateway's aio channels (signed with its key)."""
        self.channels = channels
        self._lock = threading.Lock()
        self._by_seller: Counter[str] = Counter()
        self._by_buyer: Counter[str] = Counter()

    async def countersign(self, payment: net.OpenPayload) -> SellerAnswer:
        """The seller's countersignature of an open's agreement (or the refusal)."""
        body, agreement = payment.body, ag.agreement_id(payment.agreement.body)
        try:
            with self.opening(body.seller_endpoint, body.buyer_id):
                reply = await self._stub(body.seller_endpoint).Negotiate(
                    agent_pb2.NegotiationMessage(agreement=payment.agreement),
                    timeout=RPC_TIMEOUT_S)
            return SellerAnswer(agreement, countersigned=countersigned(reply, payment))
        except Refused as error:
            return SellerAnswer(agreement, refused=error)
        except grpc.RpcError as error:
            return SellerAnswer(agreement, refused=Refused(
                "seller_refused", f"the seller did not countersign: {error.details()}"))

    async def finish(self, endpoint: str, agreement_id: str, finish_signature: bytes
                     ) -> SellerAnswer:
        """The seller's finish of a session (or the refusal)."""
        try:
            await self._stub(endpoint).Finish(agent_pb2.FinishRequest(
                agreement_id=agreement_id, buyer_signature=finish_signature),
                timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as error:
            return SellerAnswer(agreement_id, refused=_not_finished(error))
        return SellerAnswer(agreement_id)

    def _stub(self, endpoint: str) -> agent_pb2_grpc.AgentServiceStub:
        if self.channels is None:
            raise Refused("unsupported_payload_type", "sessions are opened at the gateway")
        return agent_pb2_grpc.AgentServiceStub(self.channels.get(endpoint, signed=True))

    @contextmanager
    def opening(self, seller_endpoint: str, buyer_id: str) -> Iterator[None]:
        """Count an open waiting on `seller_endpoint` for `buyer_id`, or refuse it."""
        with self._lock:
            if self._by_seller[seller_endpoint] >= OPENS_PER_SELLER:
                raise Refused("seller_refused", f"{OPENS_PER_SELLER} sessions are already "
                                                "being opened with this seller; retry shortly")
            if self._by_buyer[buyer_id] >= OPENS_PER_BUYER:
                raise Refused("seller_refused", f"this buyer already has {OPENS_PER_BUYER} "
                                                "sessions being opened; retry shortly")
            self._by_seller[seller_endpoint] += 1
            self._by_buyer[buyer_id] += 1
        try:
            yield
        finally:
            with self._lock:
                for table, key in ((self._by_seller, seller_endpoint),
                                   (self._by_buyer, buyer_id)):
                    table[key] -= 1
                    if table[key] <= 0:
                        del table[key]


def countersigned(reply: agent_pb2.NegotiationMessage, payment: net.OpenPayload) -> Any:
    """The agreement the seller countersigned: the one the buyer signed, or a refusal."""
    signed = reply.agreement
    if reply.WhichOneof("kind") != "agreement" or signed.body != payment.agreement.body:
        raise Refused("seller_refused", "the seller did not countersign the agreement")
    return signed


def _not_finished(error: grpc.RpcError) -> Refused:
    reason = ("invalid_signature" if error.code() in (
        grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        else "seller_refused")
    return Refused(reason, f"the seller did not finish: {error.details()}")


__all__ = ["ASKED", "OPENS_PER_BUYER", "OPENS_PER_SELLER", "SellerAnswer", "SellerCalls",
           "asked"]
