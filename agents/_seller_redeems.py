"""A seller's redeems: its latest voucher and receipts presented to the marketplace.

An agreement is redeemed once, when its buyer calls Finish or, if the buyer never does, by the
seller itself before the completion deadline (`settle_due`); later redeems are answered from
the first outcome. A redeem whose answer may have been lost keeps the agreement closed and is
sent again as the same request, so the marketplace answers it with its first outcome. An
agreement the marketplace no longer holds is given up, and settled ones are forgotten after
the journal's retention.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from agents._grpc_payment import answer_may_be_lost
from agents._rpc import sdk_error
from agents.errors import AgentmarketError, FailedPrecondition, PermissionDenied, Unavailable
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace.identity import AgentKey, verify
from marketplace.v1 import settlement_pb2, settlement_pb2_grpc

if TYPE_CHECKING:
    from agents.payments import PaymentGate

RPC_TIMEOUT_S = 10.0
MAX_FINISHES_REMEMBERED = 512
# A redeem the marketplace refused for good (no such escrow, say) is answered from memory for
# this long, and only while the seller has seen no escrow of the agreement: a buyer's Finish
# repeated on an agreement it never hired cannot spend the seller's own request quota at the
# marketplace, which its heartbeats and other buyers' redeems draw on too
REDEEM_REFUSAL_KEPT_S = 30.0
MAX_REDEEM_REFUSALS_KEPT = 4096
log = logging.getLogger("agentmarket.seller")


def redeem_may_have_landed(error: grpc.RpcError) -> bool:
    """Whether a redeem the marketplace did not answer with a refusal may have landed: an
    answer that may be lost, or its INTERNAL (what failed may have been after its commit):
    the agreement then stays closed and the same request is sent again for the outcome."""
    return answer_may_be_lost(error) or error.code() == grpc.StatusCode.INTERNAL


class SellerRedeems:
    """Redeem, finish and settle a seller's agreements at its marketplace."""

    def __init__(self, key: AgentKey, gate: PaymentGate,
                 settlement: settlement_pb2_grpc.SettlementServiceStub, escrowed: set[str],
                 forgotten: Callable[[list[str]], None]) -> None:
        """`escrowed`: the agreements whose escrow the seller has seen held; `forgotten`:
        told of the agreements dropped after their retention (to drop its own state)."""
        self.key, self.gate, self.settlement = key, gate, settlement
        self.escrowed, self.forgotten = escrowed, forgotten
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._finishes_checked: dict[str, bytes] = {}  # agreement id: its buyer's signature
        self._refusals: dict[str, tuple[float, FailedPrecondition]] = {}  # until, why

    def redeem(self, agreement_id: str, confirmation: bytes = b"") -> settlement_pb2.Escrow:
        """Redeem once, raising gRPC's error as the marketplace answered it; `confirmation`:
        the buyer's signed confirm from Finish, passed on so that the work is paid at once."""
        with self._lock(agreement_id):
            done = self.gate.redeemed(agreement_id)
            if done is not None:
                return done  # type: ignore[no-any-return]
            voucher, receipts = self.gate.begin_redeem(agreement_id)
            try:
                request = ag.signed_redeem(self.key, agreement_id, voucher, list(receipts),
                                           f"redeem:{agreement_id}:{voucher.sequence}")
                request.buyer_confirmation = confirmation
                escrow = self.settlement.Redeem(request, timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as error:
                if not redeem_may_have_landed(error):
                    self.gate.end_redeem(agreement_id, None)  # refused: take calls again
                # else it may have landed: stay closed; the next redeem re-sends this same
                # request (same key), and the marketplace answers it with the first outcome
                raise
            except BaseException:
                self.gate.end_redeem(agreement_id, None)
                raise
            self.gate.end_redeem(agreement_id, escrow)
            return escrow

    def _lock(self, agreement_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(agreement_id, threading.Lock())

    def buyer_signed_finish(self, agreement_id: str, signature: bytes) -> bool:
        """Whether `signature` is the agreement's buyer's signature of its finish. The access
        rule and Finish both ask it of one request, and each answer is an ed25519 check, so
        the last good signature per agreement is remembered (at most MAX_FINISHES_REMEMBERED)."""
        if signature and self._finishes_checked.get(agreement_id) == signature:
            return True
        if not verify(self.gate.body(agreement_id).buyer_id,
                      ag.request_message("finish", agreement_id), signature):
            return False
        if len(self._finishes_checked) >= MAX_FINISHES_REMEMBERED:
            self._finishes_checked.clear()
        self._finishes_checked[agreement_id] = signature
        return True

    def finish(self, request: agent_pb2.FinishRequest) -> agent_pb2.FinishResponse:
        """The buyer's Finish: its signatures checked, the agreement redeemed (a refusal for
        good is remembered for REDEEM_REFUSAL_KEPT_S)."""
        body = self.gate.body(request.agreement_id)
        if not self.buyer_signed_finish(request.agreement_id, request.buyer_signature):
            raise PermissionDenied("buyer_signature is not the agreement's buyer's signature "
                                   "of its finish", reason="BAD_SIGNATURE")
        if request.confirm_signature and not verify(
                body.buyer_id, ag.request_message("confirm", request.agreement_id),
                request.confirm_signature):
            raise PermissionDenied("confirm_signature is not the buyer's signature of its "
                                   "confirm", reason="BAD_SIGNATURE")
        kept = self._refusals.get(request.agreement_id)
        if kept is not None and kept[0] > time.monotonic() \
                and request.agreement_id not in self.escrowed:
            raise type(kept[1])(kept[1].message, reason=kept[1].reason)
        try:
            escrow = self.redeem(request.agreement_id, request.confirm_signature)
        except grpc.RpcError as error:
            if redeem_may_have_landed(error) or \
                    error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # not an answer
                raise Unavailable(f"the marketplace did not take the redeem "
                                  f"({error.code().name}): {error.details()}; finish again"
                                  ) from None
            refusal = _finish_refusal(sdk_error(error))
            if len(self._refusals) >= MAX_REDEEM_REFUSALS_KEPT:
                self._refusals.clear()
            self._refusals[request.agreement_id] = \
                (time.monotonic() + REDEEM_REFUSAL_KEPT_S, refusal)
            raise refusal from None
        return agent_pb2.FinishResponse(escrow=escrow)

    def settle_due(self, now_ms: int, margin_ms: int, retention_ms: int) -> None:
        """Redeem the agreements whose buyer never called Finish, `margin_ms` before their
        deadline; forget those settled longer than `retention_ms` ago."""
        for agreement_id in self.gate.due(now_ms, margin_ms):
            try:
                self.redeem(agreement_id)
            except grpc.RpcError as error:
                if redeem_may_have_landed(error) or not self._given_up(agreement_id):
                    log.warning("redeeming %s before its deadline failed: %s",
                                agreement_id[:12], error.details())
            except AgentmarketError as error:  # refused here, or the journal failed
                log.warning("redeeming %s before its deadline failed: %s",
                            agreement_id[:12], error)
        self._forget_settled(now_ms, retention_ms)

    def _given_up(self, agreement_id: str) -> bool:
        """After a refused redeem: if the marketplace no longer holds the agreement's escrow
        (expired, refunded, settled), no redeem can succeed. Record its final escrow, so the
        agreement is settled here and the seller stops retrying, with one error record."""
        try:
            escrow = self.settlement.GetEscrow(settlement_pb2.GetEscrowRequest(
                agreement_id=agreement_id), timeout=RPC_TIMEOUT_S)
        except grpc.RpcError:
            return False  # ask again next round
        if escrow.state == settlement_pb2.AGREEMENT_STATE_ACTIVE:
            return False
        self.gate.end_redeem(agreement_id, escrow)
        log.error("agreement %s can no longer be redeemed (its escrow is %s; %d atomic %s "
                  "captured): the seller stops redeeming it", agreement_id[:12],
                  settlement_pb2.AgreementState.Name(escrow.state), escrow.captured_atomic,
                  escrow.currency)
        return True

    def _forget_settled(self, now_ms: int, retention_ms: int) -> None:
        """Drop agreements settled for longer than the retention, with their state here."""
        settled = self.gate.settled(now_ms, retention_ms)
        if not settled:
            return
        try:
            forgotten = self.gate.forget(settled)
        except AgentmarketError as error:  # the journal failed: try again next round
            log.warning("forgetting %d settled agreements failed: %s", len(settled), error)
            return
        with self._locks_guard:
            for agreement_id in forgotten:
                self._locks.pop(agreement_id, None)
        self.forgotten(list(forgotten))


def _finish_refusal(refused: AgentmarketError) -> FailedPrecondition:
    message = f"redeem failed at the marketplace: {refused.message}"
    if isinstance(refused, FailedPrecondition):  # keeps its reason (DEADLINE_PASSED)
        return type(refused)(message, reason=refused.reason)
    return FailedPrecondition(message)


__all__ = ["SellerRedeems", "redeem_may_have_landed"]
