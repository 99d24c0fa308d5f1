"""A small market with an operator console, seeded over signed gRPC, for the console's tests.

One node (console on, its key trusted as operator and arbiter, spans to a store) and, already
done through the node's public API: funded wallets, a payer whose spend above its approval
threshold waits for a person, a settled agreement, a disputed one and an active one. The
parties' clients trace too, so a posting's trace spans the buyer, the seller and the node.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from marketplace import agreements as ag
from marketplace.auth import signed_channel
from marketplace.console import ConsoleOptions
from marketplace.grpc_tracing import client_interceptors
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.testing import Deal, make_deal, make_listing, make_skill, make_terms
from marketplace.tracing import force_flush, setup_tracing
from marketplace.v1 import (
    registry_pb2,
    registry_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from wallets.grpc_errors import error_info
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

USD = "USD"
CENT = 10_000_000
PRICE = 1_000_000  # 0.001 USD a call
TIMEOUT_S = 10
ROLES = ("buyer", "seller", "payer", "idle")


def key(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:12]}"


def usd(amount_atomic: int) -> wallet_pb2.Money:
    return wallet_pb2.Money(amount_atomic=amount_atomic, currency=USD)


@dataclass
class ConsoleMarket:
    node: MarketplaceNode
    keys: dict[str, AgentKey]
    accounts: dict[str, str]
    approval_id: str
    settled: Deal
    disputed: Deal
    active: Deal
    spans: Path
    providers: dict[str, Any]
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def wallets(self, role: str) -> Any:
        return wallet_pb2_grpc.WalletServiceStub(self.channels[role])

    def escrow(self, role: str) -> Any:
        return settlement_pb2_grpc.SettlementServiceStub(self.channels[role])

    def big_spend(self) -> Any:
        """The payer's spend above its threshold (the same key every time: a retry)."""
        return self.wallets("payer").Transfer(wallet_pb2.TransferRequest(
            idempotency_key="payer-big-spend", debit_account_id=self.accounts["payer"],
            credit_account_id=self.accounts["seller"], amount=usd(2 * CENT)),
            timeout=TIMEOUT_S)

    def approval(self, approval_id: str = "") -> Any:
        """An approval as the wallets see it (default: the payer's first big spend)."""
        from wallets.controls import WalletControls

        wanted = approval_id or self.approval_id
        return next(a for a in WalletControls(self.node.ledger).approvals(limit=1000)
                    if a.approval_id == wanted)

    def balance(self, role: str) -> int:
        return self.node.ledger.balance(self.accounts[role]).posted_atomic

    def flush(self) -> None:
        for provider in self.providers.values():
            force_flush(provider)

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.node.stop(0)
        for provider in self.providers.values():
            provider.shutdown()


def build_console_market(workdir: Path, *, refresh_s: float = 5.0,
                         arbiter: bool = True) -> ConsoleMarket:
    spans = workdir / "spans.db"
    providers = {name: setup_tracing(name, span_store_path=spans, synchronous=True)
                 for name in ("marketplace", "buyer", "seller", "payer", "idle")}
    node = MarketplaceNode(f"sqlite:///{workdir / 'market.db'}", sweep_interval_s=3600,
                           tracer_provider=providers["marketplace"],
                           console=ConsoleOptions(arbiter=arbiter, span_store=spans,
                                                  refresh_s=refresh_s)).start()
    keys = {role: AgentKey.generate() for role in ROLES}
    channels = {role: signed_channel(node.address, k, interceptors=client_interceptors(
        providers[role])) for role, k in keys.items()}
    wallets = {role: wallet_pb2_grpc.WalletServiceStub(channels[role]) for role in keys}
    accounts = {role: wallets[role].OpenAccount(wallet_pb2.OpenAccountRequest(
        idempotency_key=key("open"), owner=keys[role].agent_id, currency=USD),
        timeout=TIMEOUT_S).account_id for role in ROLES}
    for role, cents in (("buyer", 100), ("payer", 10), ("idle", 1)):
        wallets[role].Deposit(wallet_pb2.DepositRequest(
            idempotency_key=key("fund"), account_id=accounts[role], amount=usd(cents * CENT)),
            timeout=TIMEOUT_S)
    wallets["payer"].SetPolicy(wallet_pb2.SetPolicyRequest(
        idempotency_key=key("policy"), account_id=accounts["payer"],
        policy=wallet_pb2.WalletPolicy(approval_threshold_atomic=CENT)), timeout=TIMEOUT_S)
    market = ConsoleMarket(node, keys, accounts, "", *([None] * 3),  # type: ignore[arg-type]
                           spans=spans, providers=providers, channels=channels)
    try:
        market.big_spend()
        raise AssertionError("a spend above the threshold went through without approval")
    except grpc.RpcError as waiting:
        market.approval_id = error_info(waiting).metadata["approval_id"]
    registry_pb2_grpc.RegistryServiceStub(channels["seller"]).Advertise(
        registry_pb2.AdvertiseRequest(idempotency_key=key("advertise"), ttl_s=3600,
                                      listing=make_listing(keys["seller"], make_skill(
                                          "echo", price_atomic=PRICE), name="echo-seller")),
        timeout=TIMEOUT_S)
    deals = [_deal(market) for _ in range(3)]
    market.settled, market.disputed, market.active = deals
    for deal in deals[:2]:
        _redeem(market, deal, 3)
    market.escrow("buyer").Confirm(settlement_pb2.ConfirmRequest(
        idempotency_key=key("confirm"), agreement_id=deals[0].agreement_id,
        buyer_signature=keys["buyer"].sign(ag.request_message(
            "confirm", deals[0].agreement_id))), timeout=TIMEOUT_S)
    reason = "the outputs are in English; I asked for French"
    evidence = [settlement_pb2.Evidence(kind="note", description="what I asked for",
                                        content=b"Traduire en francais, s'il vous plait.")]
    market.escrow("buyer").Dispute(settlement_pb2.DisputeRequest(
        idempotency_key=key("dispute"), agreement_id=deals[1].agreement_id, reason=reason,
        evidence=evidence, buyer_signature=keys["buyer"].sign(ag.dispute_message(
            deals[1].agreement_id, reason, evidence))), timeout=TIMEOUT_S)
    market.flush()
    return market


def _deal(market: ConsoleMarket) -> Deal:
    deal = make_deal(market.keys["buyer"], market.keys["seller"],
                     make_terms(skill="echo", price_atomic=PRICE, quantity=5,
                                dispute_window_s=3600),
                     market.node.ledger.clock_ms())
    market.escrow("buyer").OpenEscrow(settlement_pb2.OpenEscrowRequest(
        idempotency_key=key("escrow"), agreement=deal.signed), timeout=TIMEOUT_S)
    return deal


def _redeem(market: ConsoleMarket, deal: Deal, calls: int) -> None:
    seller = market.keys["seller"]
    voucher = deal.voucher(calls)
    receipts = [deal.receipt(seller, i, {"text": f"output {i}"}) for i in range(1, calls + 1)]
    market.escrow("seller").Redeem(settlement_pb2.RedeemRequest(
        idempotency_key=key("redeem"), agreement_id=deal.agreement_id, voucher=voucher,
        receipts=receipts, seller_signature=deal.redeem_signature(seller, voucher, receipts)),
        timeout=TIMEOUT_S)
