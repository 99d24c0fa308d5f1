"""Attacks: every forbidden action, from every other role, is refused and changes nothing.

A real node (port 0, SQLite in a tmp dir and PostgreSQL) with authentication on, a seller agent
with its own server, and these parties: a buyer and a seller with escrows in every state, a
stranger, a delegate holding a mandate from the buyer, an agent waiting for an approval, an agent
whose wallet is frozen, an operator, an arbiter and the node's own key.

Each forbidden request carries everything a careful attacker could have captured (the buyer's
signature on a confirm, the arbiter's on a decision, a valid voucher) so that only the caller's
identity makes it forbidden. For each action and each other role: PERMISSION_DENIED naming the
rule (or the mandate's refusal), and the whole state the same as before: every account's posted
and pending amounts, the postings count, every hold, escrow and dispute, approvals, freezes,
the mandate, the seller's listing, and the seller agent's payment gate and negotiations.
Transport attacks on each action (unsigned, a forged signature claiming the allowed party,
a stale timestamp, a body changed after signing, a replay of the allowed party's own request):
UNAUTHENTICATED and nothing changed.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import BACKENDS, postgres_schema
from pydantic import BaseModel
from sqlalchemy import func, select

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents._access import seller_rules
from agents.payments import VOUCHER_METADATA_KEY
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace.auth import (
    AGENT_KEY,
    NONCE_KEY,
    SIGNATURE_KEY,
    TIMESTAMP_KEY,
    AccessInterceptor,
    signed_channel,
    signed_message,
)
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.testing import Deal, make_deal, make_listing, make_skill, make_terms
from marketplace.v1 import (
    agreement_pb2,
    dispute_pb2,
    registry_pb2,
    registry_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from wallets.errors import AgentmarketError
from wallets.grpc_errors import error_info
from wallets.ledger import POSTINGS
from wallets.mandates import MandateTerms, sign_mandate
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

TIMEOUT_S = 10.0
USD = "USD"
CENT = 10_000_000
PRICE, QUANTITY = 1_000, 5
ROLES = ("buyer", "seller", "stranger", "delegate", "payer", "idle", "operator", "arbiter")
DENIED, UNAUTHENTICATED = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED


class Shout(BaseModel):
    text: str


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _key(what: str) -> str:
    return f"{what}:{uuid.uuid4().hex}"


def _usd(amount_atomic: int) -> wallet_pb2.Money:
    return wallet_pb2.Money(amount_atomic=amount_atomic, currency=USD)


# ---- the market -----------------------------------------------------------------------------


@dataclass
class Market:
    node: MarketplaceNode
    keys: dict[str, AgentKey]
    accounts: dict[str, str]
    hold_id: str
    active: Deal  # escrow open, nothing delivered
    verified: Deal  # delivered and verified, inside the dispute window
    disputed: Deal  # disputed, waiting for the arbiter
    unopened: Deal  # signed by both, no escrow yet
    mandate_id: str
    approval_id: str
    seller_agent: SellerAgent
    agent_buyer: BuyerAgent
    agent_deal: Any
    rfq_id: str
    runs: list[str]
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def stub(self, role: str, stub_class: Any) -> Any:
        return stub_class(self.channels[role])

    def key_of(self, role: str) -> AgentKey:
        if role == "node":
            return self.node.key
        if role == "agent_buyer":
            return self.agent_buyer.key
        return self.keys[role]

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.seller_agent.stop(0)
        self.agent_buyer.close()
        self.node.stop(0)


def _redeem_request(market_seller: AgentKey, deal: Deal,
                    calls: int) -> settlement_pb2.RedeemRequest:
    voucher = deal.voucher(calls)
    receipts = [deal.receipt(market_seller, i, {"text": "x"}) for i in range(1, calls + 1)]
    return settlement_pb2.RedeemRequest(
        idempotency_key=_key("redeem"), agreement_id=deal.agreement_id, voucher=voucher,
        receipts=receipts, seller_signature=deal.redeem_signature(market_seller, voucher,
                                                                  receipts))


def build_market(db_url: str) -> Market:
    keys = {role: AgentKey.generate() for role in ROLES}
    runs: list[str] = []
    node = MarketplaceNode(db_url, sweep_interval_s=3600, operator_ids=[keys["operator"].agent_id],
                           arbiters=[keys["arbiter"].agent_id]).start()
    channels = {role: signed_channel(node.address, key) for role, key in keys.items()}
    wallets = {role: wallet_pb2_grpc.WalletServiceStub(channels[role]) for role in keys}
    accounts = {}
    for role in ("buyer", "seller", "stranger", "delegate", "payer", "idle"):
        accounts[role] = wallets[role].OpenAccount(wallet_pb2.OpenAccountRequest(
            idempotency_key=_key("open"), owner=keys[role].agent_id, currency=USD),
            timeout=TIMEOUT_S).account_id
    for role, cents in (("buyer", 100), ("stranger", 10), ("payer", 10), ("idle", 1)):
        wallets[role].Deposit(wallet_pb2.DepositRequest(
            idempotency_key=_key("fund"), account_id=accounts[role], amount=_usd(cents * CENT)),
            timeout=TIMEOUT_S)
    hold_id = wallets["buyer"].Hold(wallet_pb2.HoldRequest(
        idempotency_key=_key("hold"), debit_account_id=accounts["buyer"],
        credit_account_id=accounts["stranger"], amount=_usd(CENT), timeout_s=3600),
        timeout=TIMEOUT_S).hold_id
    terms = MandateTerms(account_id=accounts["buyer"], agent_key=keys["delegate"].agent_id,
                         currency=USD, total_limit_atomic=5 * CENT,
                         expires_at_ms=_now_ms() + 3_600_000, per_call_limit_atomic=CENT,
                         counterparties=(keys["stranger"].agent_id,), nonce="attacks")
    data, signature = sign_mandate(keys["buyer"], terms)  # type: ignore[arg-type]
    mandate_id = wallets["buyer"].GrantMandate(wallet_pb2.GrantMandateRequest(
        idempotency_key=_key("mandate"), terms=data, owner_signature=signature),
        timeout=TIMEOUT_S).mandate_id
    wallets["payer"].SetPolicy(wallet_pb2.SetPolicyRequest(
        idempotency_key=_key("policy"), account_id=accounts["payer"],
        policy=wallet_pb2.WalletPolicy(approval_threshold_atomic=CENT)), timeout=TIMEOUT_S)
    with pytest.raises(grpc.RpcError) as waiting:
        wallets["payer"].Transfer(wallet_pb2.TransferRequest(
            idempotency_key="payer-big-spend", debit_account_id=accounts["payer"],
            credit_account_id=accounts["stranger"], amount=_usd(2 * CENT)), timeout=TIMEOUT_S)
    approval_id = error_info(waiting.value).metadata["approval_id"]
    wallets["operator"].Freeze(wallet_pb2.FreezeRequest(
        idempotency_key=_key("freeze"), account_id=accounts["idle"], reason="suspicious",
        actor="ops"), timeout=TIMEOUT_S)

    registry_pb2_grpc.RegistryServiceStub(channels["seller"]).Advertise(
        registry_pb2.AdvertiseRequest(idempotency_key=_key("advertise"), ttl_s=3600, listing=(
            make_listing(keys["seller"], make_skill("echo", price_atomic=PRICE)))),
        timeout=TIMEOUT_S)
    buyer_escrow = settlement_pb2_grpc.SettlementServiceStub(channels["buyer"])
    seller_escrow = settlement_pb2_grpc.SettlementServiceStub(channels["seller"])
    deals = [make_deal(keys["buyer"], keys["seller"],
                       make_terms(skill="echo", price_atomic=PRICE, quantity=QUANTITY),
                       _now_ms()) for _ in range(4)]
    for deal in deals[:3]:
        buyer_escrow.OpenEscrow(settlement_pb2.OpenEscrowRequest(
            idempotency_key=_key("escrow"), agreement=deal.signed), timeout=TIMEOUT_S)
    for deal in deals[1:3]:
        seller_escrow.Redeem(_redeem_request(keys["seller"], deal, 2), timeout=TIMEOUT_S)
    buyer_escrow.Dispute(settlement_pb2.DisputeRequest(
        idempotency_key=_key("dispute"), agreement_id=deals[2].agreement_id, reason="bad",
        buyer_signature=keys["buyer"].sign(ag.dispute_message(deals[2].agreement_id, "bad",
                                                              []))), timeout=TIMEOUT_S)

    @skill(price=per_call("0.001", "USD"))
    def shout(text: str) -> Shout:
        """Upper-case a text."""
        runs.append(text)
        return Shout(text=text.upper())

    seller_agent = SellerAgent("shouter", skills=[shout], marketplace=node.address).serve()
    agent_buyer = BuyerAgent("agent-buyer", marketplace=node.address)
    agent_buyer.fund("1.00", USD)
    listing = agent_buyer.discover("shout", currency=USD)[0]
    agent_deal = agent_buyer.negotiate(listing, "shout", quantity=5, budget="0.05",
                                       currency=USD)
    agent_buyer.hire(agent_deal)
    agent_buyer.call(agent_deal, {"text": "first"})
    rfq_id = f"open-{uuid.uuid4().hex[:8]}"
    agent_buyer._seller(seller_agent.endpoint).Negotiate(agent_pb2.NegotiationMessage(
        rfq=agreement_pb2.Rfq(rfq_id=rfq_id, buyer_id=agent_buyer.agent_id, skill="shout",
                              expected_quantity=3, max_budget_atomic=5 * CENT, currency=USD,
                              deadline_ms=_now_ms() + 600_000, max_rounds=6,
                              verification=registry_pb2.VERIFICATION_METHOD_SCHEMA)),
        timeout=TIMEOUT_S)
    raw = {"node": grpc.insecure_channel(node.address),
           "seller_agent": grpc.insecure_channel(seller_agent.endpoint)}
    return Market(node, keys, accounts, hold_id, *deals, mandate_id=mandate_id,
                  approval_id=approval_id, seller_agent=seller_agent, agent_buyer=agent_buyer,
                  agent_deal=agent_deal, rfq_id=rfq_id, runs=runs,
                  channels={**channels, **raw})


def _markets(request: pytest.FixtureRequest, sqlite_file: Callable[[], Path]
             ) -> Iterator[Market]:
    """A market on the fixture's backend: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        built = build_market(f"sqlite:///{sqlite_file()}")
        yield built
        built.close()
        return
    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        built = build_market(url)
        yield built
        built.close()


@pytest.fixture(scope="module", params=BACKENDS)
def market(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Market]:
    yield from _markets(request, lambda: tmp_path_factory.mktemp("attacks") / "m.db")


# ---- what must not change -------------------------------------------------------------------


def snapshot(m: Market) -> dict[str, Any]:
    node = m.node
    node.registry.flush_leases()  # heartbeats answered so far: their expiries written
    with node.engine.connect().execution_options(agentmarket_read=True) as conn:
        postings = conn.execute(select(func.count()).select_from(POSTINGS)).scalar_one()
    controls = node.wallets.controls
    try:
        listing = node.registry.get(m.keys["seller"].agent_id)
        listed = (listing.endpoint, listing.expires_at_ms, len(listing.skills))
    except AgentmarketError as error:
        listed = (error.reason,)
    gate = m.seller_agent.gate
    return {
        "accounts": sorted((b.account_id, b.owner, b.posted_atomic, b.pending_debits_atomic,
                            b.pending_credits_atomic) for b in node.ledger.accounts()),
        "postings": postings,
        "holds": sorted((h.hold_id, h.status, h.captured_atomic, h.voided_atomic)
                        for h in node.ledger.holds(limit=10_000)),
        "escrows": sorted(tuple(sorted(e.items())) for e in node.settlement.agreements(
            limit=1000)),
        "dispute": node.settlement.disputes.get(m.disputed.agreement_id).status,
        "approvals": sorted((a.approval_id, a.status, a.decided_by)
                            for a in controls.approvals(limit=1000)),
        "controls": sorted((a, controls.policy(a).frozen, str(controls.policy(a).policy))
                           for a in m.accounts.values()),
        "mandates": (controls.mandate(m.mandate_id).status,
                     controls.mandate(m.mandate_id).spent_atomic),
        "listing": listed,
        "seller_gate": (gate.unspent(m.agent_deal.agreement_id), len(m.runs),
                        sorted((k, v.protocol.round) for k, v in
                               m.seller_agent.negotiator.negotiations.items())),
    }


# ---- the forbidden actions ------------------------------------------------------------------

WALLET, REGISTRY = "/wallets.v1.WalletService/", "/marketplace.v1.RegistryService/"
SETTLEMENT, ARBITRATION = "/marketplace.v1.SettlementService/", \
    "/marketplace.v1.ArbitrationService/"
AGENT = "/agents.v1.AgentService/"


@dataclass(frozen=True)
class Action:
    name: str
    method: str
    build: Callable[[Market], Any]
    principal: str | None  # the role allowed to do it (None: nobody may)
    attackers: tuple[str, ...]
    rule: str = ""  # the rule named in the refusal; "" when the ledger refuses (reason below)
    reason: str = "FORBIDDEN"
    target: str = "node"
    extra: Callable[[Market], list[tuple[str, Any]]] = lambda m: []

    def __str__(self) -> str:
        return self.name


def _transfer(m: Market, amount: int = CENT, to: str = "stranger", mandate: bool = False,
              spender: str = "") -> wallet_pb2.TransferRequest:
    return wallet_pb2.TransferRequest(
        idempotency_key=_key("transfer"), debit_account_id=m.accounts["buyer"],
        credit_account_id=m.accounts[to], amount=_usd(amount),
        mandate_id=m.mandate_id if mandate else "",
        spender_id=m.key_of(spender).agent_id if spender else "")


def _leaked_voucher(m: Market) -> list[tuple[str, Any]]:
    """A valid voucher of the buyer's (prepaying one call), as a thief would have it."""
    session = m.agent_buyer.sessions[m.agent_deal.agreement_id]
    voucher = session.next_voucher(m.agent_deal.call_max_atomic)
    session.settle(m.agent_deal.call_max_atomic, 0)  # the buyer's own books stay as they were
    return [(VOUCHER_METADATA_KEY, voucher.SerializeToString())]


def _offer(m: Market) -> agent_pb2.NegotiationMessage:
    state = m.seller_agent.negotiator.negotiations[(m.agent_buyer.agent_id, m.rfq_id)]
    last = state.protocol.last_offer
    counter = agreement_pb2.Offer()
    counter.CopyFrom(last)
    counter.round, counter.from_id = last.round + 1, m.agent_buyer.agent_id
    counter.terms.unit_price_atomic = last.terms.unit_price_atomic - 1
    return agent_pb2.NegotiationMessage(offer=counter)


ACTIONS = [
    # ---- wallets: only the owner (or a delegate within its mandate) spends and reads
    Action("transfer-from-buyer", WALLET + "Transfer", _transfer, "buyer",
           ("stranger", "seller", "operator", "node", "delegate"), "wallet-owner-spends"),
    Action("transfer-as-delegate-naming-the-owner", WALLET + "Transfer",
           lambda m: _transfer(m, mandate=True, spender="buyer"), None, ("delegate",),
           "spender-is-caller"),
    Action("transfer-with-a-stolen-mandate", WALLET + "Transfer",
           lambda m: _transfer(m, mandate=True, spender="stranger"), None, ("stranger",),
           reason="MANDATE_DENIED"),
    Action("transfer-beyond-the-mandate", WALLET + "Transfer",
           lambda m: _transfer(m, 2 * CENT, mandate=True, spender="delegate"), None,
           ("delegate",), reason="MANDATE_DENIED"),
    Action("transfer-outside-the-mandates-counterparties", WALLET + "Transfer",
           lambda m: _transfer(m, to="seller", mandate=True, spender="delegate"), None,
           ("delegate",), reason="MANDATE_DENIED"),
    Action("hold-on-buyer", WALLET + "Hold", lambda m: wallet_pb2.HoldRequest(
        idempotency_key=_key("hold"), debit_account_id=m.accounts["buyer"],
        credit_account_id=m.accounts["stranger"], amount=_usd(CENT), timeout_s=600), "buyer",
        ("stranger", "seller", "operator"), "wallet-owner-spends"),
    Action("withdraw-from-buyer", WALLET + "Withdraw", lambda m: wallet_pb2.WithdrawRequest(
        idempotency_key=_key("withdraw"), account_id=m.accounts["buyer"], amount=_usd(CENT)),
        "buyer", ("stranger", "seller", "operator"), "wallet-owner-spends"),
    Action("convert-from-buyer", WALLET + "Convert", lambda m: wallet_pb2.ConvertRequest(
        idempotency_key=_key("convert"), quote_id="0" * 32, from_account_id=m.accounts["buyer"],
        to_account_id=m.accounts["stranger"], amount=_usd(CENT)), "buyer", ("stranger",),
        "wallet-owner-spends"),
    Action("deposit-into-buyer", WALLET + "Deposit", lambda m: wallet_pb2.DepositRequest(
        idempotency_key=_key("deposit"), account_id=m.accounts["buyer"], amount=_usd(CENT)),
        "buyer", ("stranger",), "deposit-own-wallet"),
    Action("read-buyer-balance", WALLET + "GetBalance", lambda m: wallet_pb2.GetBalanceRequest(
        account_id=m.accounts["buyer"]), "buyer", ("stranger", "seller", "delegate"),
        "wallet-owner-reads"),
    Action("read-buyer-history", WALLET + "History", lambda m: wallet_pb2.HistoryRequest(
        account_id=m.accounts["buyer"]), "buyer", ("stranger", "seller"), "wallet-owner-reads"),
    Action("read-buyer-policy", WALLET + "GetPolicy", lambda m: wallet_pb2.GetPolicyRequest(
        account_id=m.accounts["buyer"]), "buyer", ("stranger",), "wallet-owner-reads"),
    Action("open-a-wallet-for-the-buyer", WALLET + "OpenAccount",
           lambda m: wallet_pb2.OpenAccountRequest(
               idempotency_key=_key("open"), owner=m.keys["buyer"].agent_id, currency="USDC"),
           "buyer", ("stranger",), "open-own-wallet"),
    # ---- wallets: only the marketplace captures or voids holds
    Action("capture-a-hold", WALLET + "Capture", lambda m: wallet_pb2.CaptureRequest(
        idempotency_key=_key("capture"), hold_id=m.hold_id, amount_atomic=CENT), "node",
        ("buyer", "stranger", "seller"), "marketplace-settles-holds"),
    Action("void-a-hold", WALLET + "Void", lambda m: wallet_pb2.VoidRequest(
        idempotency_key=_key("void"), hold_id=m.hold_id), "node", ("buyer", "stranger"),
        "marketplace-settles-holds"),
    Action("capture-an-escrow-hold", WALLET + "Capture", lambda m: wallet_pb2.CaptureRequest(
        idempotency_key=_key("capture"), hold_id=m.node.settlement.get(
            m.active.agreement_id)["hold_id"], amount_atomic=PRICE), "node",
        ("seller", "buyer"), "marketplace-settles-holds"),
    Action("void-an-escrow-hold", WALLET + "Void", lambda m: wallet_pb2.VoidRequest(
        idempotency_key=_key("void"), hold_id=m.node.settlement.get(
            m.active.agreement_id)["hold_id"]), "node", ("buyer",),
        "marketplace-settles-holds"),
    # ---- wallets: the owner or an operator sets policy and freezes; only operators decide
    Action("set-buyer-policy", WALLET + "SetPolicy", lambda m: wallet_pb2.SetPolicyRequest(
        idempotency_key=_key("policy"), account_id=m.accounts["buyer"],
        policy=wallet_pb2.WalletPolicy(deny_counterparties=["x"])), "buyer",
        ("stranger", "seller"), "owner-or-operator-controls"),
    Action("freeze-buyer", WALLET + "Freeze", lambda m: wallet_pb2.FreezeRequest(
        idempotency_key=_key("freeze"), account_id=m.accounts["buyer"], reason="grief",
        actor="someone"), "buyer", ("stranger", "seller"), "owner-or-operator-controls"),
    Action("unfreeze", WALLET + "Unfreeze", lambda m: wallet_pb2.UnfreezeRequest(
        idempotency_key=_key("unfreeze"), account_id=m.accounts["idle"], reason="mine",
        actor="me"), "operator", ("idle", "stranger"), "operator-decides"),
    Action("approve-a-held-payment", WALLET + "Approve", lambda m: wallet_pb2.DecideApprovalRequest(
        idempotency_key=_key("approve"), approval_id=m.approval_id, decided_by="me"),
        "operator", ("payer", "stranger", "node"), "operator-decides"),
    Action("deny-a-held-payment", WALLET + "Deny", lambda m: wallet_pb2.DecideApprovalRequest(
        idempotency_key=_key("deny"), approval_id=m.approval_id, decided_by="me"), "operator",
        ("payer", "stranger"), "operator-decides"),
    Action("list-payer-approvals", WALLET + "ListApprovals",
           lambda m: wallet_pb2.ListApprovalsRequest(account_id=m.accounts["payer"]), "payer",
           ("stranger",), "wallet-owner-reads"),
    Action("list-every-alert", WALLET + "ListAlerts", lambda m: wallet_pb2.ListAlertsRequest(),
           "operator", ("stranger", "buyer"), "operator-lists-all"),
    Action("present-someone-elses-mandate", WALLET + "GrantMandate",
           lambda m: _grant(m, "again"), "buyer", ("stranger",), "mandate-parties-grant"),
    Action("read-the-mandate", WALLET + "GetMandate", lambda m: wallet_pb2.GetMandateRequest(
        mandate_id=m.mandate_id), "buyer", ("stranger",), "mandate-parties-read"),
    # ---- wallets: deposit addresses are the owner's; e-CNY tiers an identity authority's
    Action("register-a-deposit-address-for-the-buyer", WALLET + "RegisterDepositAddress",
           lambda m: wallet_pb2.RegisterDepositAddressRequest(
               idempotency_key=_key("address"), account_id=m.accounts["buyer"],
               address="0x" + "ab" * 20, signature=b"\x01" * 65), "buyer",
           ("stranger", "seller", "operator"), "deposit-own-wallet"),
    Action("read-buyer-deposit-instructions", WALLET + "GetDepositInstructions",
           lambda m: wallet_pb2.GetDepositInstructionsRequest(
               account_id=m.accounts["buyer"], address="0x" + "ab" * 20), "buyer",
           ("stranger", "seller"), "wallet-owner-reads"),
    Action("set-buyer-ecny-tier", WALLET + "SetEcnyTier", lambda m: wallet_pb2.SetEcnyTierRequest(
        idempotency_key=_key("tier"), account_id=m.accounts["buyer"], category=1,
        identity_ref="self-declared"), "operator", ("buyer", "stranger", "seller", "node"),
        "identity-authority-sets-tier"),
    Action("read-buyer-ecny-tier", WALLET + "GetEcnyWallet",
           lambda m: wallet_pb2.GetEcnyWalletRequest(account_id=m.accounts["buyer"]), "buyer",
           ("stranger", "seller"), "wallet-owner-reads"),
    # ---- registry: a listing is its own agent's
    Action("advertise-as-the-seller", REGISTRY + "Advertise",
           lambda m: registry_pb2.AdvertiseRequest(
               idempotency_key=_key("advertise"), ttl_s=3600, listing=make_listing(
                   m.keys["seller"], make_skill("echo", price_atomic=1),
                   endpoint="10.6.6.6:666")), "seller", ("stranger", "buyer"), "own-listing"),
    Action("heartbeat-the-sellers-listing", REGISTRY + "Heartbeat",
           lambda m: registry_pb2.HeartbeatRequest(agent_id=m.keys["seller"].agent_id),
           "seller", ("stranger",), "own-listing"),
    Action("withdraw-the-sellers-listing", REGISTRY + "WithdrawListing",
           lambda m: registry_pb2.WithdrawListingRequest(
               idempotency_key=_key("withdraw"), agent_id=m.keys["seller"].agent_id),
           "seller", ("stranger", "buyer"), "own-listing"),
    # ---- settlement: the buyer opens, confirms and disputes; the seller redeems
    Action("open-escrow", SETTLEMENT + "OpenEscrow", lambda m: settlement_pb2.OpenEscrowRequest(
        idempotency_key=_key("escrow"), agreement=m.unopened.signed), "buyer",
        ("seller", "stranger"), "agreement-buyer-opens-escrow"),
    Action("redeem", SETTLEMENT + "Redeem", lambda m: _redeem_request(
        m.keys["seller"], m.active, 3), "seller", ("buyer", "stranger"),
        "agreement-seller-redeems"),
    Action("redeem-in-a-batch", SETTLEMENT + "RedeemBatch",
           lambda m: settlement_pb2.RedeemBatchRequest(idempotency_key=_key("batch"), redeems=[
               _redeem_request(m.keys["seller"], m.active, 3)]), "seller", ("buyer",),
           "agreement-seller-redeems"),
    Action("confirm", SETTLEMENT + "Confirm", lambda m: settlement_pb2.ConfirmRequest(
        idempotency_key=_key("confirm"), agreement_id=m.verified.agreement_id,
        buyer_signature=m.keys["buyer"].sign(ag.request_message(
            "confirm", m.verified.agreement_id))), "buyer", ("seller", "stranger"),
        "agreement-buyer-decides"),
    Action("dispute", SETTLEMENT + "Dispute", lambda m: settlement_pb2.DisputeRequest(
        idempotency_key=_key("dispute"), agreement_id=m.verified.agreement_id, reason="no",
        buyer_signature=m.keys["buyer"].sign(ag.dispute_message(
            m.verified.agreement_id, "no", []))), "buyer", ("seller", "stranger"),
        "agreement-buyer-decides"),
    Action("read-an-escrow", SETTLEMENT + "GetEscrow", lambda m: settlement_pb2.GetEscrowRequest(
        agreement_id=m.active.agreement_id), "buyer", ("stranger",), "agreement-parties-read"),
    # ---- arbitration: only an operator (or an arbiter) resolves
    Action("resolve-a-dispute", ARBITRATION + "ResolveDispute", lambda m: _resolve(m), "operator",
           ("buyer", "seller", "stranger", "node"), "operator-resolves-disputes"),
    Action("read-a-dispute", ARBITRATION + "GetDispute", lambda m: dispute_pb2.GetDisputeRequest(
        agreement_id=m.disputed.agreement_id), "buyer", ("stranger",),
        "agreement-parties-read"),
    # ---- the seller agent: only the agreement's buyer calls, finishes, negotiates
    Action("invoke-with-a-leaked-voucher", AGENT + "Invoke", lambda m: agent_pb2.InvokeRequest(
        agreement_id=m.agent_deal.agreement_id, input_json=json.dumps({"text": "stolen"}),
        call_id=uuid.uuid4().hex), "agent_buyer", ("stranger", "buyer"),
        "agreement-buyer-calls", target="seller_agent", extra=_leaked_voucher),
    # A caller relaying the buyer's own signed finish may send it (the x402 gateway does), so
    # no attacker here: test_a_finish_signed_by_anyone_but_the_buyer_is_refused.
    Action("finish-someone-elses-task", AGENT + "Finish", lambda m: _finish(m, "agent_buyer"),
           "agent_buyer", (), "agreement-buyer-calls", target="seller_agent"),
    Action("counter-offer-in-someone-elses-negotiation", AGENT + "Negotiate", _offer,
           "agent_buyer", ("stranger",), "negotiate-as-yourself", target="seller_agent"),
    Action("ask-for-quotes-as-another-buyer", AGENT + "Negotiate",
           lambda m: agent_pb2.NegotiationMessage(rfq=agreement_pb2.Rfq(
               rfq_id=uuid.uuid4().hex[:16], buyer_id=m.agent_buyer.agent_id, skill="shout",
               expected_quantity=1, max_budget_atomic=CENT, currency=USD, max_rounds=2,
               deadline_ms=_now_ms() + 60_000,
               verification=registry_pb2.VERIFICATION_METHOD_SCHEMA)), "agent_buyer",
           ("stranger",), "negotiate-as-yourself", target="seller_agent"),
]


def _finish(m: Market, signer: str) -> agent_pb2.FinishRequest:
    agreement = m.agent_deal.agreement_id
    return agent_pb2.FinishRequest(agreement_id=agreement, buyer_signature=m.key_of(
        signer).sign(ag.request_message("finish", agreement)))


def _grant(m: Market, nonce: str) -> wallet_pb2.GrantMandateRequest:
    terms = MandateTerms(account_id=m.accounts["buyer"], agent_key=m.keys["delegate"].agent_id,
                         currency=USD, total_limit_atomic=CENT,
                         expires_at_ms=_now_ms() + 3_600_000, nonce=nonce)
    data, signature = sign_mandate(m.keys["buyer"], terms)  # type: ignore[arg-type]
    return wallet_pb2.GrantMandateRequest(idempotency_key=_key("grant"), terms=data,
                                          owner_signature=signature)


def _resolve(m: Market) -> dispute_pb2.ResolveDisputeRequest:
    outcome, agreement = dispute_pb2.DISPUTE_OUTCOME_SELLER, m.disputed.agreement_id
    return dispute_pb2.ResolveDisputeRequest(
        idempotency_key=_key("resolve"), agreement_id=agreement, outcome=outcome, note="ok",
        arbiter_id=m.keys["arbiter"].agent_id, arbiter_signature=m.keys["arbiter"].sign(
            ag.resolve_message(agreement, outcome, 0, "ok")))


# ---- sending, as anyone -----------------------------------------------------------------------


def auth_metadata(key: AgentKey, method: str, body: bytes, *, claimed: str = "",
                  timestamp_ms: int = 0) -> list[tuple[str, Any]]:
    """What `SigningClientInterceptor` sends, made by hand so it can lie."""
    timestamp_ms = timestamp_ms or _now_ms()
    nonce = os.urandom(16).hex()
    return [(AGENT_KEY, claimed or key.agent_id), (TIMESTAMP_KEY, str(timestamp_ms)),
            (NONCE_KEY, nonce),
            (SIGNATURE_KEY, key.sign(signed_message(method, body, timestamp_ms, nonce)))]


def send(m: Market, action: Action, body: bytes, metadata: list[tuple[str, Any]]) -> bytes:
    call = m.channels[action.target].unary_unary(action.method)
    return call(body, metadata=metadata, timeout=TIMEOUT_S)  # type: ignore


def refused(m: Market, action: Action, body: bytes, metadata: list[tuple[str, Any]],
            code: grpc.StatusCode) -> grpc.RpcError:
    before = snapshot(m)
    with pytest.raises(grpc.RpcError) as caught:
        send(m, action, body, metadata + action.extra(m))
    assert caught.value.code() == code, caught.value.details()
    assert snapshot(m) == before, f"{action.name} changed something"
    return caught.value


CASES = [pytest.param(a, role, id=f"{a.name}-by-{role}") for a in ACTIONS for role in a.attackers]
TRANSPORT = ("unsigned", "forged-signature", "stale-timestamp", "body-changed-after-signing")
GUARDED = [a for a in ACTIONS if a.principal is not None]


@pytest.mark.parametrize(("action", "role"), CASES)
def test_a_forbidden_action_is_refused_and_changes_nothing(market: Market, action: Action,
                                                            role: str):
    body = action.build(market).SerializeToString()
    error = refused(market, action, body, auth_metadata(market.key_of(role), action.method,
                                                          body), DENIED)
    info = error_info(error)
    assert info.reason == action.reason, error.details()
    if action.rule:
        assert info.metadata["rule"] == action.rule and action.rule in error.details()


def test_a_finish_signed_by_anyone_but_the_buyer_is_refused(market: Market) -> None:
    action = next(a for a in ACTIONS if a.name == "finish-someone-elses-task")
    body = _finish(market, "stranger").SerializeToString()
    error = refused(market, action, body, auth_metadata(market.key_of("stranger"), action.method,
                                                          body), DENIED)
    assert error_info(error).metadata["rule"] == "agreement-buyer-calls", error.details()


@pytest.mark.parametrize("attack", TRANSPORT)
@pytest.mark.parametrize("action", GUARDED, ids=str)
def test_a_request_not_signed_by_its_caller_is_refused(market: Market, action: Action,
                                                       attack: str):
    """Claiming to be the one party allowed, without its valid, fresh signature."""
    assert action.principal is not None
    if action.name == "invoke-with-a-leaked-voucher" and attack == "unsigned":
        # A fresh PayWord word is its own proof of payment, so a paid call needs no request
        # signature (SECURITY.md): see test_an_unsigned_call_must_reveal_a_new_payword.
        return
    allowed = market.key_of(action.principal)
    body = action.build(market).SerializeToString()
    metadata = {
        "unsigned": lambda: [],
        "forged-signature": lambda: auth_metadata(market.keys["stranger"], action.method, body,
                                                  claimed=allowed.agent_id),
        "stale-timestamp": lambda: auth_metadata(allowed, action.method, body,
                                                 timestamp_ms=_now_ms() - 10 * 60_000),
        "body-changed-after-signing": lambda: auth_metadata(allowed, action.method, body),
    }[attack]()
    if attack == "body-changed-after-signing":
        body += b"\xa2\x06\x01x"  # an unknown field 100: still a valid message
    refused(market, action, body, metadata, UNAUTHENTICATED)


def test_every_rpc_of_the_node_and_the_seller_has_an_access_rule(market: Market):
    """Deny by default, and no method forgotten in the tables."""
    from marketplace.v1 import dispute_pb2 as disputes
    from wallets.v1 import wallet_pb2 as wallet

    interceptor = market.node.access
    assert interceptor is not None
    seller = AccessInterceptor.of(seller_rules(market.seller_agent))
    for module, rules in ((wallet, interceptor.rules), (registry_pb2, interceptor.rules),
                          (settlement_pb2, interceptor.rules), (disputes, interceptor.rules),
                          (agent_pb2, seller.rules)):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert f"/{service.full_name}/{method.name}" in rules, method.full_name


@pytest.fixture(params=BACKENDS)
def fresh(request: pytest.FixtureRequest, tmp_path) -> Iterator[Market]:  # type: ignore
    yield from _markets(request, lambda: tmp_path / "replay.db")


def test_a_replayed_request_is_refused_once_seen(fresh: Market):
    """The allowed party's own request, captured and sent again: refused, nothing changes.
    (The original goes through; its idempotency key would also keep a replay from paying
    twice, but a replay is refused before that.)"""
    for action in GUARDED:
        body = action.build(fresh).SerializeToString()
        assert action.principal is not None
        metadata = auth_metadata(fresh.key_of(action.principal), action.method, body)
        extra = action.extra(fresh)
        try:
            send(fresh, action, body, metadata + extra)
        except grpc.RpcError as error:  # allowed, though the state may forbid it by now
            assert error.code() not in (DENIED, UNAUTHENTICATED), (action.name,
                                                                   error.details())
        before = snapshot(fresh)
        with pytest.raises(grpc.RpcError) as caught:
            send(fresh, action, body, metadata + extra)
        assert caught.value.code() == UNAUTHENTICATED, (action.name, caught.value.details())
        assert error_info(caught.value).reason == "REPLAYED_REQUEST"
        assert snapshot(fresh) == before, action.name


def test_a_buyer_cannot_squat_the_idempotency_key_of_the_sweep_that_pays_the_seller(tmp_path):
    """Had the buyer's `auto-release:<agreement>` (or any key) been the sweep's, the sweep
    paying the seller would have failed for good and the hold run out back to the buyer. Keys
    are per caller: the buyer's requests under the node's key names are its own requests (they
    go through, as anyone's would), and the sweep still pays the seller."""
    buyer, seller = AgentKey.generate(), AgentKey.generate()
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            signed_channel(node.address, buyer) as buyer_channel, \
            signed_channel(node.address, seller) as seller_channel:
        wallets = wallet_pb2_grpc.WalletServiceStub(buyer_channel)
        account = wallets.OpenAccount(wallet_pb2.OpenAccountRequest(
            idempotency_key="open", owner=buyer.agent_id, currency=USD), timeout=TIMEOUT_S)
        wallets.Deposit(wallet_pb2.DepositRequest(idempotency_key="fund",
                                                  account_id=account.account_id,
                                                  amount=_usd(CENT)), timeout=TIMEOUT_S)
        registry_pb2_grpc.RegistryServiceStub(seller_channel).Advertise(
            registry_pb2.AdvertiseRequest(idempotency_key="ad", listing=make_listing(
                seller, make_skill("echo", price_atomic=PRICE))), timeout=TIMEOUT_S)
        deal = make_deal(buyer, seller, make_terms(skill="echo", price_atomic=PRICE,
                                                   quantity=QUANTITY, dispute_window_s=1),
                         _now_ms())
        settlement_pb2_grpc.SettlementServiceStub(buyer_channel).OpenEscrow(
            settlement_pb2.OpenEscrowRequest(idempotency_key="escrow", agreement=deal.signed),
            timeout=TIMEOUT_S)
        settlement_pb2_grpc.SettlementServiceStub(seller_channel).Redeem(
            _redeem_request(seller, deal, 2), timeout=TIMEOUT_S)
        for key in (f"auto-release:{deal.agreement_id}", f"expire-agreement:{deal.agreement_id}"):
            wallets.SetPolicy(wallet_pb2.SetPolicyRequest(
                idempotency_key=key, account_id=account.account_id,
                policy=wallet_pb2.WalletPolicy()), timeout=TIMEOUT_S)
        time.sleep(1.1)  # the dispute window closes
        assert node.settlement.sweep() == 1
        assert node.settlement.get(deal.agreement_id)["captured_atomic"] == 2 * PRICE


def test_an_unsigned_call_must_reveal_a_new_payword(market: Market):
    """Unsigned paid calls are admitted only with a word the seller has not seen; one that
    spends carried-over prepayment (no new word) must be signed by the buyer."""
    session = market.agent_buyer.sessions[market.agent_deal.agreement_id]
    reserve = market.agent_deal.call_max_atomic
    fresh = session.next_voucher(reserve)
    session.settle(reserve, 0)
    channel = grpc.insecure_channel(market.seller_agent.endpoint)
    call = channel.unary_unary(AGENT + "Invoke", request_serializer=None,
                               response_deserializer=agent_pb2.InvokeResponse.FromString)

    def invoke(voucher: agreement_pb2.Voucher) -> Any:
        request = agent_pb2.InvokeRequest(agreement_id=market.agent_deal.agreement_id,
                                          input_json=json.dumps({"text": "x"}),
                                          call_id=uuid.uuid4().hex)
        return call(request.SerializeToString(), timeout=10,
                    metadata=[(VOUCHER_METADATA_KEY, voucher.SerializeToString())])

    try:
        assert invoke(fresh).usage.calls == 1
        same_word = agreement_pb2.Voucher()
        same_word.CopyFrom(fresh)
        same_word.sequence += 1
        with pytest.raises(grpc.RpcError) as caught:
            invoke(same_word)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "must reveal a new payword" in caught.value.details() or \
            "replay" in caught.value.details()
    finally:
        channel.close()


def test_a_call_refused_for_its_input_uses_up_no_voucher(market: Market):
    """A paid call whose input does not match the skill's schema is refused before its
    voucher is admitted: the same voucher then pays the corrected call."""
    session = market.agent_buyer.sessions[market.agent_deal.agreement_id]
    reserve = market.agent_deal.call_max_atomic
    links = -(-reserve // session.link_value_atomic)
    with session._lock:  # a voucher revealing the words of one call
        session.sequence += 1
        session.index += links
        voucher = session.voucher(session.sequence, session.index)
    channel = signed_channel(market.seller_agent.endpoint, market.agent_buyer.key)
    call = channel.unary_unary(AGENT + "Invoke", request_serializer=None,
                               response_deserializer=agent_pb2.InvokeResponse.FromString)

    def invoke(arguments: Any) -> Any:
        request = agent_pb2.InvokeRequest(agreement_id=market.agent_deal.agreement_id,
                                          input_json=json.dumps(arguments),
                                          call_id=uuid.uuid4().hex)
        return call(request.SerializeToString(), timeout=10,
                    metadata=[(VOUCHER_METADATA_KEY, voucher.SerializeToString())])

    try:
        for wrong in ({"text": 5}, {"nope": "x"}, [1, 2]):
            with pytest.raises(grpc.RpcError) as caught:
                invoke(wrong)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "schema" in caught.value.details()
        assert invoke({"text": "x"}).usage.calls == 1
    finally:
        channel.close()


@pytest.mark.parametrize("kind", ["fx", "fees", "escrow"])
@pytest.mark.parametrize("method", ["Transfer", "Hold"])
def test_a_made_up_mandate_spends_nothing_of_the_markets_own_accounts(market: Market, kind: str,
                                                                      method: str):
    """The market's own accounts (the FX desk's credit line, the fee income, buyers' money in
    dispute) have no owner to grant a mandate: a stranger naming one, with itself as spender,
    is refused at the door, and the ledger would refuse a posting that claims a mandate and
    debits no wallet."""
    from wallets.errors import MandateDenied
    from wallets.guard import SpendContext

    node = market.node
    account = {"fx": lambda: node.wallets.fx.liquidity_account("USD").account_id,
               "fees": lambda: node.settlement.fees_account("USD"),
               "escrow": lambda: node.settlement.dispute_account("USD")}[kind]()
    stranger = market.key_of("stranger").agent_id
    fields = {"idempotency_key": _key("system"), "debit_account_id": account,
              "credit_account_id": market.accounts["stranger"], "amount": _usd(CENT),
              "mandate_id": "ab" * 32, "spender_id": stranger}
    request = (wallet_pb2.TransferRequest(**fields) if method == "Transfer" else
               wallet_pb2.HoldRequest(**fields, timeout_s=60))
    before = snapshot(market)
    with pytest.raises(grpc.RpcError) as caught:
        getattr(market.stub("stranger", wallet_pb2_grpc.WalletServiceStub), method)(
            request, timeout=TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, caught.value.details()
    assert "no mandate spends from it" in caught.value.details()
    with pytest.raises(MandateDenied):
        node.ledger.transfer(_key("in-ledger"), account, market.accounts["stranger"], CENT,
                             spend=SpendContext(mandate_id="ab" * 32, spender_id=stranger))
    assert snapshot(market) == before
