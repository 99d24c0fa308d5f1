"""Whether an agreement's money is held before a seller works for it, asked of the node on a
budget no stranger can turn against the seller.

A paid call with no escrow proof makes the seller ask the node (`GetEscrow`), a request signed
with the seller's key and so drawn from the seller's own rate allowance at the node.
Agreements cost nothing to negotiate and keys nothing to make: unbounded, strangers' calls on
agreements they never hired would spend that allowance, and the node would refuse the seller's
redeems and heartbeats (RATE_LIMITED). So the lookups have a budget of their own, well under a
node's default per-agent rate (500/s). Buyers that send the node's proof (the Python buyers
do) never need a lookup; one that does not may be told to retry (UNAVAILABLE) while strangers
spend the budget. An agreement found without an active escrow is asked about again on its next
call: a buyer that calls, is told to hire, hires and calls again must not be refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from agents.errors import Unavailable
from marketplace import escrow_proof
from marketplace.errors import FailedPrecondition
from marketplace.request_limits import RateLimiter
from marketplace.v1 import settlement_pb2

LOOKUPS_PER_S = 50.0
LOOKUP_BURST = 100
_ALL = "lookups"  # the one bucket every lookup draws from


class EscrowCheck:
    """The agreements whose escrow is known to be held (`active`), and the check a call's
    first admission runs (`check`)."""

    def __init__(self, settlement: Any, agent_id: str, node_id: Callable[[], str],
                 clock_ms: Callable[[], int], timeout_s: float) -> None:
        self.active: set[str] = set()
        self._settlement, self._agent_id, self._node_id = settlement, agent_id, node_id
        self._clock_ms, self._timeout_s = clock_ms, timeout_s
        self._lookups = RateLimiter(LOOKUPS_PER_S, LOOKUP_BURST, max_agents=1)

    def check(self, agreement_id: str, proof: bytes = b"") -> None:
        """Work only for money that is held: the buyer's escrow proof when it holds, else the
        node is asked (once per agreement, on the budget); then remembered."""
        if agreement_id in self.active:
            return
        if proof and escrow_proof.proven(proof, self._node_id(), agreement_id, self._agent_id,
                                         self._clock_ms()):
            self.active.add(agreement_id)
            return
        if not self._lookups.allow(_ALL):
            raise Unavailable("the seller is asking the marketplace about as many escrows as "
                              "it allows; send the escrow proof with the call (OpenEscrow's "
                              "proof) or retry shortly")
        try:
            escrow = self._settlement.GetEscrow(settlement_pb2.GetEscrowRequest(
                agreement_id=agreement_id), timeout=self._timeout_s)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise FailedPrecondition("the agreement has no escrow yet: hire first") from None
            raise Unavailable(f"the marketplace did not answer: {error.details()}") from None
        if escrow.state != settlement_pb2.AGREEMENT_STATE_ACTIVE:
            raise FailedPrecondition("the agreement's escrow is no longer active")
        self.active.add(agreement_id)
