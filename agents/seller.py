"""A seller agent: serves priced skills over gRPC, negotiates, gets paid per call.

    seller = SellerAgent("summarizer", skills=[summarize], marketplace="127.0.0.1:7000")
    seller.serve()        # starts its gRPC server, advertises, heartbeats
    ...
    seller.stop()         # withdraws the listing, redeems what is owed

Negotiation follows the seller's strategy, but it never signs below its reservation price
(`agents.negotiation.Limits`, checked outside the strategy).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from jsonschema import ValidationError
from jsonschema.validators import validator_for
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from agents._grpc_payment import PaymentServerInterceptor, call_sequence
from agents.errors import (
    FailedPrecondition,
    InvalidArgument,
    NegotiationFailed,
    NotFound,
    PermissionDenied,
)
from agents.negotiation import ConcessionStrategy, Limits, Strategy
from agents.payments import PaymentGate
from agents.skills import Skill
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace import agreements as ag
from marketplace.grpc_tracing import client_interceptors, server_interceptor, untraced
from marketplace.identity import AgentKey, verify
from marketplace.v1 import (
    agreement_pb2,
    registry_pb2,
    registry_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from wallets import attributes as attr
from wallets.grpc_errors import grpc_method

RPC_TIMEOUT_S = 10.0
MAX_INPUT_BYTES = 1024 * 1024
MAX_ROUNDS_LIMIT = 20


@dataclass
class _Negotiation:
    rfq: agreement_pb2.Rfq
    skill: Skill
    round: int = 0
    last_offer: agreement_pb2.Offer | None = None
    offers: list[agreement_pb2.Offer] = field(default_factory=list)


class SellerAgent:
    def __init__(self, name: str, *, skills: list[Skill], marketplace: str,
                 key: AgentKey | None = None, host: str = "127.0.0.1", port: int = 0,
                 reservation_fraction: tuple[int, int] = (3, 4),
                 strategy: Strategy | None = None, ttl_s: int = 60,
                 tracer_provider: TracerProvider | None = None) -> None:
        if not skills:
            raise InvalidArgument("a seller needs at least one skill")
        self.name = name
        self.key = key or AgentKey.generate()
        self.agent_id = self.key.agent_id
        self.skills = {s.name: s for s in skills}
        self.marketplace = marketplace
        self.reservation_fraction = reservation_fraction
        self._strategy = strategy
        self.ttl_s = ttl_s
        self.tracer_provider = tracer_provider
        self._tracer = trace.get_tracer("agentmarket.seller", tracer_provider=tracer_provider)
        self.gate = PaymentGate()
        self.negotiations: dict[str, _Negotiation] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        channel = grpc.intercept_channel(grpc.insecure_channel(marketplace),
                                         *client_interceptors(tracer_provider))
        self._channel = channel
        self.registry = registry_pb2_grpc.RegistryServiceStub(channel)
        self.settlement = settlement_pb2_grpc.SettlementServiceStub(channel)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16),
            interceptors=[server_interceptor(tracer_provider),
                          PaymentServerInterceptor(self.gate, self._price_per_call)])
        agent_pb2_grpc.add_AgentServiceServicer_to_server(_AgentServicer(self), self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        self.endpoint = f"{host}:{self.port}"
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                           name=f"heartbeat-{name}")

    # ---- lifecycle ------------------------------------------------------------------------

    def serve(self) -> SellerAgent:
        """Start the gRPC server, advertise the skills, keep the listing alive."""
        self.server.start()
        self.advertise()
        self._heartbeat.start()
        return self

    def listing(self) -> registry_pb2.Listing:
        return registry_pb2.Listing(agent_id=self.agent_id, name=self.name,
                                    endpoint=self.endpoint,
                                    skills=[s.message() for s in self.skills.values()])

    def advertise(self) -> registry_pb2.Listing:
        response = self.registry.Advertise(
            registry_pb2.AdvertiseRequest(idempotency_key=f"advertise:{uuid.uuid4().hex}",
                                          listing=self.listing(), ttl_s=self.ttl_s),
            timeout=RPC_TIMEOUT_S)
        return response.listing

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with untraced():
                try:
                    self.registry.Heartbeat(
                        registry_pb2.HeartbeatRequest(agent_id=self.agent_id),
                        timeout=RPC_TIMEOUT_S)
                except grpc.RpcError:
                    with contextlib.suppress(grpc.RpcError):  # marketplace away: retry next beat
                        self.advertise()

    def stop(self, grace_s: float = 1.0) -> None:
        self._stop.set()
        with untraced(), contextlib.suppress(grpc.RpcError):  # else the listing expires
            self.registry.WithdrawListing(registry_pb2.WithdrawListingRequest(
                idempotency_key=f"withdraw:{uuid.uuid4().hex}", agent_id=self.agent_id),
                timeout=RPC_TIMEOUT_S)
        self.server.stop(grace_s).wait()
        self._channel.close()

    # ---- negotiation ----------------------------------------------------------------------

    def _reservation(self, skill: Skill, currency_code: str) -> tuple[int, int]:
        price = skill.price_in(currency_code)
        if price is None:
            raise InvalidArgument(f"skill {skill.name} is not sold in {currency_code}")
        num, den = self.reservation_fraction
        return price.amount_atomic, -(-price.amount_atomic * num // den)

    def strategy_for(self, skill: Skill, currency_code: str) -> Strategy:
        if self._strategy is not None:
            return self._strategy
        initial, reservation = self._reservation(skill, currency_code)
        return ConcessionStrategy(initial, reservation)

    def negotiate(self, message: agent_pb2.NegotiationMessage) -> agent_pb2.NegotiationMessage:
        kind = message.WhichOneof("kind")
        if kind == "rfq":
            return self._on_rfq(message.rfq)
        if kind == "offer":
            return self._on_counter(message.offer)
        if kind == "agreement":
            return agent_pb2.NegotiationMessage(agreement=self._countersign(message.agreement))
        if kind == "reject_reason":
            return agent_pb2.NegotiationMessage(reject_reason="acknowledged")
        raise InvalidArgument("a negotiation message needs rfq, offer, agreement or reject")

    def _on_rfq(self, rfq: agreement_pb2.Rfq) -> agent_pb2.NegotiationMessage:
        skill = self.skills.get(rfq.skill)
        if skill is None:
            raise NotFound(f"this seller has no skill {rfq.skill!r}")
        if not 1 <= rfq.max_rounds <= MAX_ROUNDS_LIMIT:
            raise InvalidArgument(f"max_rounds must be 1..{MAX_ROUNDS_LIMIT}")
        if rfq.expected_quantity <= 0 or rfq.max_budget_atomic <= 0:
            raise InvalidArgument("expected_quantity and max_budget_atomic must be positive")
        if not rfq.rfq_id or len(rfq.rfq_id) > 64:
            raise InvalidArgument("rfq_id must be 1..64 characters")
        self._reservation(skill, rfq.currency)
        with self._lock:
            if rfq.rfq_id in self.negotiations:
                raise FailedPrecondition(f"rfq {rfq.rfq_id} is already open")
            state = _Negotiation(rfq=rfq, skill=skill)
            self.negotiations[rfq.rfq_id] = state
        return agent_pb2.NegotiationMessage(offer=self._offer(state, None))

    def _offer(self, state: _Negotiation, opponent_price: int | None) -> agreement_pb2.Offer:
        rfq = state.rfq
        strategy = self.strategy_for(state.skill, rfq.currency)
        limits = Limits(self._reservation(state.skill, rfq.currency)[1], is_buyer=False)
        state.round += 1
        price = limits.clamp(strategy.propose(state.round, rfq.max_rounds, opponent_price))
        quantity_total = price * rfq.expected_quantity
        offer = agreement_pb2.Offer(
            rfq_id=rfq.rfq_id, round=state.round, from_id=self.agent_id,
            expires_at_ms=min(rfq.deadline_ms, _now_ms() + 30_000),
            terms=agreement_pb2.Terms(
                skill=rfq.skill, unit_price_atomic=price,
                unit=registry_pb2.PRICE_UNIT_CALL, currency=rfq.currency,
                max_total_atomic=quantity_total, verification=rfq.verification,
                completion_deadline_ms=rfq.deadline_ms + 600_000, dispute_window_s=60))
        state.last_offer = offer
        state.offers.append(offer)
        return offer

    def _on_counter(self, counter: agreement_pb2.Offer) -> agent_pb2.NegotiationMessage:
        state = self._open_negotiation(counter.rfq_id)
        rfq = state.rfq
        with self._tracer.start_as_current_span("negotiation.round", attributes={
                attr.ROUND: state.round, attr.SKILL: rfq.skill,
                attr.AMOUNT_ATOMIC: counter.terms.unit_price_atomic,
                attr.CURRENCY: rfq.currency}):
            if state.round >= rfq.max_rounds:
                self.negotiations.pop(rfq.rfq_id, None)
                return agent_pb2.NegotiationMessage(reject_reason="no rounds left")
            strategy = self.strategy_for(state.skill, rfq.currency)
            limits = Limits(self._reservation(state.skill, rfq.currency)[1], is_buyer=False)
            price = counter.terms.unit_price_atomic
            if price >= limits.reservation_price_atomic and strategy.accepts(
                    state.round, rfq.max_rounds, price):
                offer = self._offer(state, price)
                offer.terms.unit_price_atomic = price  # meet the buyer at its price
                offer.terms.max_total_atomic = price * rfq.expected_quantity
                return agent_pb2.NegotiationMessage(offer=offer)
            return agent_pb2.NegotiationMessage(offer=self._offer(state, price))

    def _open_negotiation(self, rfq_id: str) -> _Negotiation:
        state = self.negotiations.get(rfq_id)
        if state is None:
            raise NotFound(f"no open negotiation {rfq_id!r}")
        if _now_ms() > state.rfq.deadline_ms:
            self.negotiations.pop(rfq_id, None)
            raise NegotiationFailed("the negotiation's deadline has passed")
        return state

    def _countersign(self, signed: agreement_pb2.SignedAgreement
                     ) -> agreement_pb2.SignedAgreement:
        body = ag.parse_body(signed)
        ag.check_signatures(signed, body, require_seller=False)
        state = self._open_negotiation(body.rfq_id)
        offer = state.last_offer
        if body.seller_id != self.agent_id or body.buyer_id != state.rfq.buyer_id:
            raise PermissionDenied("the agreement names other parties")
        if offer is None or body.terms != offer.terms:
            raise FailedPrecondition("the agreement's terms differ from the last offer")
        if _now_ms() > offer.expires_at_ms:
            raise FailedPrecondition("the offer has expired")
        Limits(self._reservation(state.skill, body.terms.currency)[1], is_buyer=False).check(
            body.terms.unit_price_atomic, body.terms.max_total_atomic)
        if body.seller_endpoint != self.endpoint:
            raise InvalidArgument("the agreement names another endpoint")
        ag.sign_as_seller(signed, self.key)
        self.gate.open(ag.agreement_id(signed.body), body)
        self.negotiations.pop(body.rfq_id, None)
        return signed

    # ---- paid calls -----------------------------------------------------------------------

    def _price_per_call(self, agreement_id: str) -> int:
        return self.gate.body(agreement_id).terms.unit_price_atomic

    def invoke(self, request: agent_pb2.InvokeRequest) -> agent_pb2.InvokeResponse:
        body = self.gate.body(request.agreement_id)
        skill = self.skills[body.terms.skill]
        if len(request.input_json) > MAX_INPUT_BYTES:
            raise InvalidArgument(f"input is larger than {MAX_INPUT_BYTES} bytes")
        try:
            arguments = json.loads(request.input_json)
            validator_for(skill.input_schema)(skill.input_schema).validate(arguments)
        except (ValueError, RecursionError) as error:
            raise InvalidArgument(f"input is not valid JSON: {error}") from None
        except ValidationError as error:
            raise InvalidArgument(f"input does not match the skill's schema: {error.message}"
                                  ) from None
        with self._tracer.start_as_current_span(f"skill.{skill.name}", attributes={
                attr.AGREEMENT_ID: request.agreement_id, attr.SKILL: skill.name,
                attr.AMOUNT_ATOMIC: body.terms.unit_price_atomic,
                attr.CURRENCY: body.terms.currency}):
            output_json = json.dumps(skill.run(arguments), sort_keys=True)
        price = body.terms.unit_price_atomic
        receipt = ag.make_receipt(self.key, request.agreement_id, call_sequence.get(),
                                  output_json, price)
        self.gate.record(request.agreement_id, receipt)
        return agent_pb2.InvokeResponse(
            output_json=output_json, receipt=receipt,
            usage=agent_pb2.Usage(calls=1, charged_atomic=price))

    def redeem(self, agreement_id: str) -> settlement_pb2.Escrow:
        """Present the latest voucher and all receipts to the marketplace."""
        voucher, receipts = self.gate.redeemable(agreement_id)
        if voucher is None:
            raise FailedPrecondition("nothing to redeem: no paid call was made")
        return self.settlement.Redeem(settlement_pb2.RedeemRequest(
            idempotency_key=f"redeem:{agreement_id}:{voucher.sequence}",
            agreement_id=agreement_id, voucher=voucher, receipts=receipts),
            timeout=RPC_TIMEOUT_S)

    def finish(self, request: agent_pb2.FinishRequest) -> agent_pb2.FinishResponse:
        body = self.gate.body(request.agreement_id)
        if not verify(body.buyer_id, ag.request_message("finish", request.agreement_id),
                      request.buyer_signature):
            raise PermissionDenied("only the agreement's buyer can finish it")
        try:
            escrow = self.redeem(request.agreement_id)
        except grpc.RpcError as error:
            raise FailedPrecondition(f"redeem failed at the marketplace: {error.details()}"
                                     ) from None
        return agent_pb2.FinishResponse(escrow=escrow)


class _AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, seller: SellerAgent) -> None:
        self.seller = seller

    @grpc_method
    def Negotiate(self, request, context):  # type: ignore[no-untyped-def]
        return self.seller.negotiate(request)

    @grpc_method
    def Invoke(self, request, context):  # type: ignore[no-untyped-def]
        return self.seller.invoke(request)

    @grpc_method
    def Finish(self, request, context):  # type: ignore[no-untyped-def]
        return self.seller.finish(request)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


