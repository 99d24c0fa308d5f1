"""A buyer agent: funds its wallet, finds sellers, negotiates, hires with escrow, pays per call.

    buyer = BuyerAgent("researcher", marketplace="127.0.0.1:7000")
    buyer.fund("5.00", "USD")
    listing = buyer.discover("summarize", currency="USD")[0]
    deal = buyer.negotiate(listing, "summarize", quantity=10, budget="0.05", currency="USD")
    buyer.hire(deal)
    output = buyer.call(deal, {"text": "..."})
    escrow = buyer.finish(deal)

It never signs above its reservation price or budget (`agents.negotiation.Limits`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

import grpc
from jsonschema import ValidationError
from jsonschema.validators import validator_for
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from agents._grpc_payment import VoucherClientInterceptor
from agents.errors import FailedPrecondition, InvalidArgument, NegotiationFailed
from agents.negotiation import ConcessionStrategy, Limits, Strategy
from agents.payments import PaymentSession, links_for
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace import agreements as ag
from marketplace.grpc_tracing import client_interceptors
from marketplace.identity import AgentKey
from marketplace.payword import PaywordChain
from marketplace.v1 import (
    agreement_pb2,
    registry_pb2,
    registry_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from wallets import attributes as attr
from wallets.currencies import currency as _currency
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

RPC_TIMEOUT_S = 10.0


@dataclass
class Deal:
    """An agreement the buyer holds, with what it needs to pay under it."""

    agreement: agreement_pb2.SignedAgreement
    body: agreement_pb2.AgreementBody
    agreement_id: str
    output_schema: dict[str, Any]
    rounds: int
    escrow: settlement_pb2.Escrow | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    failed_outputs: int = 0


class BuyerAgent:
    def __init__(self, name: str, *, marketplace: str, key: AgentKey | None = None,
                 tracer_provider: TracerProvider | None = None) -> None:
        self.name = name
        self.key = key or AgentKey.generate()
        self.agent_id = self.key.agent_id
        self.tracer_provider = tracer_provider
        self._tracer = trace.get_tracer("agentmarket.buyer", tracer_provider=tracer_provider)
        self._interceptors = client_interceptors(tracer_provider)
        self._channel = grpc.intercept_channel(grpc.insecure_channel(marketplace),
                                               *self._interceptors)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self.settlement = settlement_pb2_grpc.SettlementServiceStub(self._channel)
        self.wallets = wallet_pb2_grpc.WalletServiceStub(self._channel)
        self.sessions: dict[str, PaymentSession] = {}
        self.deals: dict[str, Deal] = {}
        self._seller_channels: dict[str, grpc.Channel] = {}

    def close(self) -> None:
        for channel in self._seller_channels.values():
            channel.close()
        self._channel.close()

    # ---- wallet ---------------------------------------------------------------------------

    def wallet(self, currency_code: str) -> wallet_pb2.Account:
        return self.wallets.OpenAccount(wallet_pb2.OpenAccountRequest(
            idempotency_key=f"open:{self.agent_id}:{currency_code}", owner=self.agent_id,
            currency=currency_code, kind=wallet_pb2.ACCOUNT_KIND_WALLET), timeout=RPC_TIMEOUT_S)

    def fund(self, amount: str | Decimal, currency_code: str, *,
             idempotency_key: str | None = None) -> wallet_pb2.Posting:
        """Deposit from the currency's sandbox rail (exact decimal amount, e.g. "5.00")."""
        account = self.wallet(currency_code)
        return self.wallets.Deposit(wallet_pb2.DepositRequest(
            idempotency_key=idempotency_key or f"fund:{uuid.uuid4().hex}",
            account_id=account.account_id,
            amount=wallet_pb2.Money(amount_atomic=_currency(currency_code).atomic(amount),
                                    currency=currency_code)), timeout=RPC_TIMEOUT_S)

    # ---- discover and negotiate -----------------------------------------------------------

    def discover(self, skill: str, *, currency: str = "", max_price_atomic: int = 0,
                 limit: int = 20) -> list[registry_pb2.Listing]:
        with self._tracer.start_as_current_span("discover", attributes={attr.SKILL: skill}):
            return list(self.registry.Discover(registry_pb2.DiscoverRequest(
                skill=skill, currency=currency, max_price_atomic=max_price_atomic, limit=limit),
                timeout=RPC_TIMEOUT_S).listings)

    def _seller(self, endpoint: str) -> agent_pb2_grpc.AgentServiceStub:
        channel = self._seller_channels.get(endpoint)
        if channel is None:
            voucher = VoucherClientInterceptor(self.sessions, self._price_of)
            channel = grpc.intercept_channel(grpc.insecure_channel(endpoint),
                                             *self._interceptors, voucher)
            self._seller_channels[endpoint] = channel
        return agent_pb2_grpc.AgentServiceStub(channel)

    def _price_of(self, agreement_id: str, request: Any) -> int:
        return self.deals[agreement_id].body.terms.unit_price_atomic

    def negotiate(self, listing: registry_pb2.Listing, skill: str, *, quantity: int,
                  budget: str | Decimal, currency: str, max_rounds: int = 6,
                  strategy: Strategy | None = None, reservation_price_atomic: int | None = None,
                  deadline_s: int = 30) -> Deal:
        """Negotiate a per-call price with one seller; return the signed agreement."""
        cur = _currency(currency)
        budget_atomic = cur.atomic(budget)
        listed = next((s for s in listing.skills if s.name == skill), None)
        if listed is None:
            raise InvalidArgument(f"the listing has no skill {skill!r}")
        list_price = next((p.amount_atomic for p in listed.prices if p.currency == cur.code), 0)
        if not list_price:
            raise InvalidArgument(f"skill {skill} is not sold in {cur.code}")
        reservation = reservation_price_atomic or budget_atomic // quantity
        strategy = strategy or ConcessionStrategy(list_price // 2, reservation, Fraction(1, 2))
        limits = Limits(reservation, is_buyer=True, budget_atomic=budget_atomic)
        seller = self._seller(listing.endpoint)
        rfq = agreement_pb2.Rfq(
            rfq_id=uuid.uuid4().hex, buyer_id=self.agent_id, skill=skill,
            expected_quantity=quantity, max_budget_atomic=budget_atomic, currency=cur.code,
            deadline_ms=_now_ms() + deadline_s * 1000, max_rounds=max_rounds,
            verification=registry_pb2.VERIFICATION_METHOD_SCHEMA)
        with self._tracer.start_as_current_span("negotiate", attributes={
                attr.SKILL: skill, attr.PAYEE: listing.agent_id, attr.CURRENCY: cur.code}) as span:
            reply = seller.Negotiate(agent_pb2.NegotiationMessage(rfq=rfq), timeout=RPC_TIMEOUT_S)
            for round_index in range(1, max_rounds + 1):
                if reply.WhichOneof("kind") != "offer":
                    raise NegotiationFailed(f"the seller ended the negotiation: "
                                            f"{reply.reject_reason or 'no offer'}")
                offer = reply.offer
                price = offer.terms.unit_price_atomic
                with self._tracer.start_as_current_span("negotiation.round", attributes={
                        attr.ROUND: round_index, attr.AMOUNT_ATOMIC: price,
                        attr.CURRENCY: cur.code}):
                    if strategy.accepts(round_index, max_rounds, price):
                        try:
                            limits.check(price, offer.terms.max_total_atomic)
                        except FailedPrecondition:
                            pass  # the strategy would accept; the hard limits do not
                        else:
                            deal = self._accept(seller, listing, offer, listed, round_index)
                            span.set_attribute(attr.AGREEMENT_ID, deal.agreement_id)
                            span.set_attribute(attr.AMOUNT_ATOMIC, price)
                            return deal
                    counter = agreement_pb2.Offer()
                    counter.CopyFrom(offer)
                    counter.from_id = self.agent_id
                    mine = limits.clamp(strategy.propose(round_index, max_rounds, price))
                    counter.terms.unit_price_atomic = mine
                    counter.terms.max_total_atomic = mine * quantity
                    reply = seller.Negotiate(agent_pb2.NegotiationMessage(offer=counter),
                                             timeout=RPC_TIMEOUT_S)
            seller.Negotiate(agent_pb2.NegotiationMessage(reject_reason="no agreement"),
                             timeout=RPC_TIMEOUT_S)
            raise NegotiationFailed(f"no agreement within {max_rounds} rounds")

    def _accept(self, seller: agent_pb2_grpc.AgentServiceStub, listing: registry_pb2.Listing,
                offer: agreement_pb2.Offer, skill: registry_pb2.Skill, rounds: int) -> Deal:
        terms = offer.terms
        link_value = terms.unit_price_atomic  # one hash-chain link per call
        length = links_for(terms.max_total_atomic, link_value)
        chain = PaywordChain(length)
        body = agreement_pb2.AgreementBody(
            rfq_id=offer.rfq_id, buyer_id=self.agent_id, seller_id=listing.agent_id,
            seller_endpoint=listing.endpoint, terms=terms, payword_root=chain.root,
            payword_length=length, link_value_atomic=link_value, created_at_ms=_now_ms(),
            nonce=os.urandom(16))
        signed = agreement_pb2.SignedAgreement(body=body.SerializeToString())
        ag.sign_as_buyer(signed, self.key)
        reply = seller.Negotiate(agent_pb2.NegotiationMessage(agreement=signed),
                                 timeout=RPC_TIMEOUT_S)
        if reply.WhichOneof("kind") != "agreement":
            raise NegotiationFailed(f"the seller did not countersign: {reply.reject_reason}")
        countersigned = reply.agreement
        if countersigned.body != signed.body:
            raise NegotiationFailed("the seller changed the agreement")
        ag.check_signatures(countersigned, body)
        agreement_id = ag.agreement_id(countersigned.body)
        schema = json.loads(skill.output_schema_json) if skill.output_schema_json else {}
        deal = Deal(countersigned, body, agreement_id, schema, rounds)
        self.deals[agreement_id] = deal
        self.sessions[agreement_id] = PaymentSession(agreement_id, chain, link_value,
                                                     terms.max_total_atomic)
        return deal

    # ---- hire, call, finish ---------------------------------------------------------------

    def hire(self, deal: Deal) -> settlement_pb2.Escrow:
        """Ask the marketplace to hold the agreement's maximum in escrow."""
        deal.escrow = self.settlement.OpenEscrow(settlement_pb2.OpenEscrowRequest(
            idempotency_key=f"escrow:{deal.agreement_id}", agreement=deal.agreement),
            timeout=RPC_TIMEOUT_S)
        return deal.escrow

    def call(self, deal: Deal, arguments: dict[str, Any]) -> dict[str, Any]:
        """One paid call; the output is checked against the skill's output schema."""
        seller = self._seller(deal.body.seller_endpoint)
        terms = deal.body.terms
        with self._tracer.start_as_current_span("paid_call", attributes={
                attr.AGREEMENT_ID: deal.agreement_id, attr.SKILL: terms.skill,
                attr.AMOUNT_ATOMIC: terms.unit_price_atomic, attr.CURRENCY: terms.currency,
                attr.PAYER: self.agent_id, attr.PAYEE: deal.body.seller_id}):
            response = seller.Invoke(agent_pb2.InvokeRequest(
                agreement_id=deal.agreement_id, input_json=json.dumps(arguments)),
                timeout=RPC_TIMEOUT_S)
        output = json.loads(response.output_json)
        with self._tracer.start_as_current_span("verify.schema", attributes={
                attr.AGREEMENT_ID: deal.agreement_id}) as span:
            try:
                validator_for(deal.output_schema)(deal.output_schema).validate(output)
                span.set_attribute("agentmarket.verified", True)
            except ValidationError as error:
                deal.failed_outputs += 1
                span.set_attribute("agentmarket.verified", False)
                span.set_status(trace.Status(trace.StatusCode.ERROR, error.message))
        deal.outputs.append(output)
        return output

    def finish(self, deal: Deal) -> settlement_pb2.Escrow:
        """Tell the seller the task is done; it redeems and the marketplace settles."""
        signature = self.key.sign(ag.request_message("finish", deal.agreement_id))
        response = self._seller(deal.body.seller_endpoint).Finish(agent_pb2.FinishRequest(
            agreement_id=deal.agreement_id, buyer_signature=signature), timeout=RPC_TIMEOUT_S)
        deal.escrow = response.escrow
        return deal.escrow


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
