"""Registry, settlement and arbitration over gRPC: thin adapters from messages to the domain."""

from __future__ import annotations

from typing import Any

from marketplace.discover_cache import DiscoverCache
from marketplace.escrow_proof import with_proof
from marketplace.escrows import STATES, escrow_message
from marketplace.identity import AgentKey
from marketplace.liveness import Liveness
from marketplace.registry import Registry
from marketplace.settlement import Settlement
from marketplace.v1 import (
    dispute_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from wallets.caller import current_caller
from wallets.errors import InvalidArgument
from wallets.grpc_errors import grpc_method

__all__ = ["STATES", "ArbitrationServicer", "RegistryServicer", "SettlementServicer",
           "escrow_message"]


def _key(request: Any) -> str:
    if not request.idempotency_key:
        raise InvalidArgument("idempotency_key is required on every mutating request")
    return request.idempotency_key


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry, liveness: Liveness | None = None, *,
                 node_id: str = "", discover_cache: DiscoverCache | None = None) -> None:
        """`node_id`: the node's agent id, told to each advertising seller (the key of its
        escrow proofs); `discover_cache`: how Discover answers are kept (default: 1 s)."""
        self.registry = registry
        self.liveness = liveness or Liveness(registry)
        self.node_id = node_id
        self.discover_cache = discover_cache or DiscoverCache(registry)

    @grpc_method
    def ReportUnreachable(self, request, context):  # type: ignore[no-untyped-def]
        return registry_pb2.ReportUnreachableResponse(
            withdrawn=self.liveness.report(request.agent_id, request.endpoint,
                                           reporter=current_caller()))

    @grpc_method
    def Advertise(self, request, context):  # type: ignore[no-untyped-def]
        _key(request)
        return registry_pb2.AdvertiseResponse(
            listing=self.registry.advertise(request.listing, request.ttl_s),
            node_id=self.node_id)

    @grpc_method
    def Heartbeat(self, request, context):  # type: ignore[no-untyped-def]
        return registry_pb2.HeartbeatResponse(
            expires_at_ms=self.registry.heartbeat(request.agent_id))

    @grpc_method
    def WithdrawListing(self, request, context):  # type: ignore[no-untyped-def]
        _key(request)
        self.registry.withdraw(request.agent_id)
        return registry_pb2.WithdrawListingResponse()

    @grpc_method
    def Discover(self, request, context):  # type: ignore[no-untyped-def]
        return self.discover_cache.answer(request)


class SettlementServicer(settlement_pb2_grpc.SettlementServiceServicer):
    def __init__(self, settlement: Settlement, key: AgentKey | None = None) -> None:
        """`key`: the node's, which signs the escrow proof of each escrow opened."""
        self.settlement = settlement
        self.key = key

    @grpc_method
    def OpenEscrow(self, request, context):  # type: ignore[no-untyped-def]
        return with_proof(self.key, escrow_message(
            self.settlement.open_escrow(_key(request), request.agreement)))

    @grpc_method
    def Redeem(self, request, context):  # type: ignore[no-untyped-def]
        return escrow_message(self.settlement.redeem(
            _key(request), request.agreement_id, request.voucher, list(request.receipts),
            request.seller_signature, request.buyer_confirmation))

    @grpc_method
    def RedeemBatch(self, request, context):  # type: ignore[no-untyped-def]
        _key(request)
        return settlement_pb2.RedeemBatchResponse(
            results=self.settlement.redeem_batch(list(request.redeems)))

    @grpc_method
    def Confirm(self, request, context):  # type: ignore[no-untyped-def]
        return escrow_message(self.settlement.confirm(
            _key(request), request.agreement_id, request.buyer_signature))

    @grpc_method
    def Dispute(self, request, context):  # type: ignore[no-untyped-def]
        return escrow_message(self.settlement.dispute(
            _key(request), request.agreement_id, request.reason, request.buyer_signature,
            list(request.evidence)))

    @grpc_method
    def GetEscrow(self, request, context):  # type: ignore[no-untyped-def]
        return escrow_message(self.settlement.get(request.agreement_id))


class ArbitrationServicer(dispute_pb2_grpc.ArbitrationServiceServicer):
    def __init__(self, settlement: Settlement) -> None:
        self.disputes = settlement.disputes

    @grpc_method
    def GetDispute(self, request, context):  # type: ignore[no-untyped-def]
        return self.disputes.get(request.agreement_id)

    @grpc_method
    def ResolveDispute(self, request, context):  # type: ignore[no-untyped-def]
        return escrow_message(self.disputes.resolve(
            _key(request), request.agreement_id, request.outcome, request.seller_atomic,
            request.note, request.arbiter_id, request.arbiter_signature))
