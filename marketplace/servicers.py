"""Registry and settlement over gRPC: thin adapters from messages to the domain services."""

from __future__ import annotations

from typing import Any

from marketplace.registry import Registry
from marketplace.settlement import Settlement
from marketplace.v1 import (
    registry_pb2,
    registry_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from wallets.errors import InvalidArgument
from wallets.grpc_errors import grpc_method

STATES = {
    "active": settlement_pb2.AGREEMENT_STATE_ACTIVE,
    "delivered": settlement_pb2.AGREEMENT_STATE_DELIVERED,
    "settled": settlement_pb2.AGREEMENT_STATE_SETTLED,
    "refunded": settlement_pb2.AGREEMENT_STATE_REFUNDED,
    "disputed": settlement_pb2.AGREEMENT_STATE_DISPUTED,
    "expired": settlement_pb2.AGREEMENT_STATE_EXPIRED,
}


def escrow_message(e: dict[str, Any]) -> settlement_pb2.Escrow:
    return settlement_pb2.Escrow(
        agreement_id=e["agreement_id"], state=STATES[e["state"]], hold_id=e["hold_id"],
        currency=e["currency"], held_atomic=e["held_atomic"],
        captured_atomic=e["captured_atomic"], fee_atomic=e["fee_atomic"],
        refunded_atomic=e["refunded_atomic"], verified_outputs=e["verified_outputs"],
        failed_outputs=e["failed_outputs"])


def _key(request: Any) -> str:
    if not request.idempotency_key:
        raise InvalidArgument("idempotency_key is required on every mutating request")
    return request.idempotency_key


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @grpc_method
    def Advertise(self, request, context):  # type: ignore[no-untyped-def]
        _key(request)
        return registry_pb2.AdvertiseResponse(
            listing=self.registry.advertise(request.listing, request.ttl_s))

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
        return registry_pb2.DiscoverResponse(listings=self.registry.discover(
            request.skill, request.currency, request.max_price_atomic, request.limit))


class SettlementServicer(settlement_pb2_grpc.SettlementServiceServicer):
    def __init__(self, settlement: Settlement) -> None:
        self.settlement = settlement

    @grpc_method
    def OpenEscrow(self, request, context):  # type: ignore[no-untyped-def]
        return escrow_message(self.settlement.open_escrow(_key(request), request.agreement))

    @grpc_method
    def Redeem(self, request, context):  # type: ignore[no-untyped-def]
        return escrow_message(self.settlement.redeem(
            _key(request), request.agreement_id, request.voucher, list(request.receipts)))

    @grpc_method
    def Confirm(self, request, context):  # type: ignore[no-untyped-def]
        return escrow_message(self.settlement.confirm(
            _key(request), request.agreement_id, request.buyer_signature))

    @grpc_method
    def Dispute(self, request, context):  # type: ignore[no-untyped-def]
        return escrow_message(self.settlement.dispute(
            _key(request), request.agreement_id, request.reason, request.buyer_signature))

    @grpc_method
    def GetEscrow(self, request, context):  # type: ignore[no-untyped-def]
        return escrow_message(self.settlement.get(request.agreement_id))
