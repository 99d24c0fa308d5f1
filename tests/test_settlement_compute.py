"""Compute by the hour, sold per GPU-second with volume tiers, through the same machinery as any
skill: listing, discovery, escrow for the maximum, metered receipts, verified settlement. All
over the marketplace's gRPC services (the agent SDK's own example is the agents' business)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from marketplace import agreements as ag
from marketplace import pricing
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.testing import make_deal, make_listing, make_skill, make_terms
from marketplace.v1 import (
    registry_pb2,
    registry_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from wallets.currencies import currency, split

USD = currency("USD")
LIST_PER_S = USD.atomic("0.0006")  # 2.16 USD per GPU-hour
HOUR_TIER_PER_S = USD.atomic("0.0005")  # from one hour on
JOB_SCHEMA = {"type": "object", "required": ["job_id", "gpu_seconds"],
              "properties": {"job_id": {"type": "string"},
                             "gpu_seconds": {"type": "integer", "minimum": 1}}}


def test_gpu_seconds_are_escrowed_metered_and_settled(tmp_path: Path):
    buyer, seller = AgentKey.generate(), AgentKey.generate()
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600,
                           require_auth=False).start()  # raw unsigned stubs
    channel = grpc.insecure_channel(node.address)
    registry = registry_pb2_grpc.RegistryServiceStub(channel)
    settlement = settlement_pb2_grpc.SettlementServiceStub(channel)
    try:
        gpu = make_skill("gpu.a100", price_atomic=LIST_PER_S, unit=registry_pb2.PRICE_UNIT_UNIT,
                         unit_name="gpu_second", tiers=[(3600, HOUR_TIER_PER_S)],
                         tags=["gpu", "compute", "a100"], output_schema=JOB_SCHEMA,
                         description="An NVIDIA A100 80GB by the second, for training jobs.",
                         methods=[registry_pb2.VERIFICATION_METHOD_SCHEMA])
        gpu.max_concurrency = 1
        registry.Advertise(registry_pb2.AdvertiseRequest(
            idempotency_key="ad", listing=make_listing(seller, gpu, name="gpu-farm"),
            ttl_s=600), timeout=10)
        found = registry.Discover(registry_pb2.DiscoverRequest(
            text="a100 training", tags=["gpu"], currency="USD",
            max_price_atomic=LIST_PER_S), timeout=10).listings
        assert [listing.agent_id for listing in found] == [seller.agent_id]
        price = found[0].skills[0].prices[0]
        assert (price.unit_name, price.tiers[0].min_quantity) == ("gpu_second", 3600)
        # An hour and a half of GPU time reaches the hour tier.
        unit_price, _ = pricing.quote(price, quantity=5400)
        assert unit_price == HOUR_TIER_PER_S

        account = node.ledger.open_account(buyer.agent_id, "USD").account_id
        node.wallets.deposit("fund", account, USD.atomic("10"), "USD")
        terms = make_terms(skill="gpu.a100", price_atomic=unit_price, quantity=5400,
                           unit=registry_pb2.PRICE_UNIT_UNIT, unit_name="gpu_second")
        deal = make_deal(buyer, seller, terms, node.ledger.clock_ms(),
                         link_value_atomic=unit_price * 60)  # one voucher word per GPU-minute
        escrow = settlement.OpenEscrow(settlement_pb2.OpenEscrowRequest(
            idempotency_key="open", agreement=deal.signed), timeout=10)
        assert escrow.held_atomic == 5400 * HOUR_TIER_PER_S

        jobs = [("warmup", 600), ("train", 2400), ("eval", 300)]  # 3300 GPU-seconds
        receipts = [deal.receipt(seller, i, {"job_id": job, "gpu_seconds": seconds},
                                 seconds * unit_price, units=seconds)
                    for i, (job, seconds) in enumerate(jobs, 1)]
        voucher = deal.voucher(55, sequence=3)  # 55 GPU-minutes prepaid by the buyer
        escrow = settlement.Redeem(ag.signed_redeem(seller, deal.agreement_id, voucher,
                                                    receipts, "redeem"), timeout=10)
        assert escrow.state == settlement_pb2.AGREEMENT_STATE_VERIFIED
        used = 3300 * HOUR_TIER_PER_S
        assert escrow.earned_atomic == used and escrow.verified_outputs == 3
        escrow = settlement.Confirm(settlement_pb2.ConfirmRequest(
            idempotency_key="confirm", agreement_id=deal.agreement_id,
            buyer_signature=buyer.sign(ag.request_message("confirm", deal.agreement_id))),
            timeout=10)
        seller_part, fee = split(used, node.settlement.fee_bps)
        assert escrow.state == settlement_pb2.AGREEMENT_STATE_SETTLED
        assert (escrow.captured_atomic, escrow.fee_atomic) == (used, fee)
        assert escrow.refunded_atomic == (5400 - 3300) * HOUR_TIER_PER_S
        wallet = node.ledger.find_account(seller.agent_id, "USD")
        assert wallet is not None and wallet.posted_atomic == seller_part
        assert USD.format(used) == "1.65 USD"  # 3300 s at 0.0005 USD/s
        assert json.loads(receipts[1].output_json)["gpu_seconds"] == 2400
    finally:
        channel.close()
        node.stop(0)
