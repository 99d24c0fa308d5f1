"""The seller's side of negotiation: RFQ -> offers -> countersigned agreement.

The strategy (rule-based or an LLM) only proposes prices and may add a note; `Limits` clamps
every offer and checks the agreement before it is countersigned, so no strategy output can take
the seller below its reservation price.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents.errors import (
    FailedPrecondition,
    InvalidArgument,
    NegotiationFailed,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from agents.metering import CALLS
from agents.negotiation import ConcessionStrategy, Limits, Strategy
from agents.skills import Skill
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace.errors import (
    CurrencyNotAccepted,
    TermsMismatch,
    UnknownSkill,
    VerificationNotOffered,
)
from marketplace.negotiation import Negotiation
from marketplace.v1 import agreement_pb2, registry_pb2
from wallets import attributes as attr
from wallets.caller import current_caller
from wallets.currencies import MAX_AMOUNT_ATOMIC

if TYPE_CHECKING:
    from agents.seller import SellerAgent

MAX_NOTE_CHARS = 500
MAX_OPEN_NEGOTIATIONS = 10_000
# One buyer's open negotiations at once: a key (free to make) cannot take every slot alone.
MAX_NEGOTIATIONS_PER_BUYER = 16
OFFER_TTL_MS = 30_000
# rfq ids of agreements at the list price, made without negotiating (`_countersign_listed`)
LIST_PRICE_PREFIX = "list:"
SUPPORTED = (registry_pb2.VERIFICATION_METHOD_SCHEMA,
             registry_pb2.VERIFICATION_METHOD_BUYER_ACCEPTANCE)


@dataclass
class _Negotiation:
    protocol: Negotiation
    skill: Skill
    strategy: Strategy
    limits: Limits

    @property
    def rfq(self) -> agreement_pb2.Rfq:
        return self.protocol.rfq

    def stale(self, now_ms: int) -> bool:
        """Past its deadline, or its last offer lapsed an offer's lifetime ago with no answer:
        what makes room when the table (or a buyer's share of it) is full."""
        last = self.protocol.last_offer
        return now_ms > self.rfq.deadline_ms or (
            last is not None and now_ms > last.expires_at_ms + OFFER_TTL_MS)


class SellerNegotiator:
    def __init__(self, seller: SellerAgent, reservation_fraction: tuple[int, int],
                 strategy: Any, completion_window_s: int, dispute_window_s: int) -> None:
        self.seller = seller
        self.reservation_fraction = reservation_fraction
        self.strategy = strategy
        self.completion_window_s = completion_window_s
        self.dispute_window_s = dispute_window_s
        # open negotiations by (buyer, rfq id): an rfq id is unique per buyer only
        self.negotiations: dict[tuple[str, str], _Negotiation] = {}
        self._by_buyer: dict[str, int] = {}  # each buyer's open negotiations
        self._lock = threading.Lock()

    def reservation(self, skill: Skill, currency_code: str, quantity: int = 1
                    ) -> tuple[int, int]:
        """(list price at the volume tier `quantity` calls reach, lowest price it signs)."""
        price = skill.price_in(currency_code)
        if price is None:
            raise CurrencyNotAccepted(f"skill {skill.name} is not sold in {currency_code}")
        listed = price.quote(skill.tier_quantity(quantity))[0]
        num, den = self.reservation_fraction
        return listed, -(-listed * num // den)

    def strategy_for(self, skill: Skill, currency_code: str, quantity: int = 1) -> Strategy:
        if self.strategy is None:
            return ConcessionStrategy(*self.reservation(skill, currency_code, quantity))
        if hasattr(self.strategy, "propose"):
            return self.strategy  # type: ignore[no-any-return]
        return self.strategy(skill, currency_code)  # type: ignore[no-any-return]

    def negotiate(self, message: agent_pb2.NegotiationMessage) -> agent_pb2.NegotiationMessage:
        if len(message.note) > MAX_NOTE_CHARS:
            raise InvalidArgument(f"a note is at most {MAX_NOTE_CHARS} characters")
        kind = message.WhichOneof("kind")
        if kind == "rfq":
            return self._on_rfq(message.rfq, message.note)
        if kind == "offer":
            return self._on_counter(message.offer, message.note)
        if kind == "agreement":
            return agent_pb2.NegotiationMessage(agreement=self._countersign(message.agreement))
        if kind == "reject_reason":  # the caller's own, if named; else it lapses at its deadline
            if message.rfq_id:
                self._end(current_caller(), message.rfq_id)
            return agent_pb2.NegotiationMessage(reject_reason="acknowledged")
        raise InvalidArgument("a negotiation message needs rfq, offer, agreement or reject")

    def _on_rfq(self, rfq: agreement_pb2.Rfq, note: str) -> agent_pb2.NegotiationMessage:
        skill = self.seller.skills.get(rfq.skill)
        if skill is None:
            raise UnknownSkill(f"this seller has no skill {rfq.skill!r}")
        protocol = Negotiation.start(rfq, _now_ms())
        if rfq.verification not in skill.verification_methods or \
                rfq.verification not in SUPPORTED:
            raise VerificationNotOffered(f"skill {skill.name} does not offer verification "
                                         f"{_method_name(rfq.verification)}")
        reservation = self.reservation(skill, rfq.currency, rfq.expected_quantity)[1]
        strategy = self.strategy_for(skill, rfq.currency, rfq.expected_quantity)
        key = (rfq.buyer_id, rfq.rfq_id)
        if key in self.negotiations:
            raise FailedPrecondition(f"rfq {rfq.rfq_id} is already open")
        state = _Negotiation(protocol, skill, strategy, Limits(reservation, is_buyer=False))
        _hear(strategy, note)
        first = self._offer(state, None)  # kept only once its first offer stands
        with self._lock:
            if key in self.negotiations:
                raise FailedPrecondition(f"rfq {rfq.rfq_id} is already open")
            self._make_room(rfq.buyer_id)
            self.negotiations[key] = state
            self._by_buyer[rfq.buyer_id] = self._by_buyer.get(rfq.buyer_id, 0) + 1
        return self._message(state, first)

    def _make_room(self, buyer_id: str) -> None:
        """Under the lock: forget stale negotiations when the buyer's share or the table is
        full; refuse the new one if that was not enough."""
        now = _now_ms()
        if self._by_buyer.get(buyer_id, 0) >= MAX_NEGOTIATIONS_PER_BUYER:
            for key in [k for k, v in self.negotiations.items()
                        if k[0] == buyer_id and v.stale(now)]:
                self._drop(key)
            if self._by_buyer.get(buyer_id, 0) >= MAX_NEGOTIATIONS_PER_BUYER:
                raise ResourceExhausted(
                    f"this buyer has {MAX_NEGOTIATIONS_PER_BUYER} negotiations open here "
                    "already; conclude or decline one (reject_reason with its rfq_id), or let "
                    f"one lapse (an offer left unanswered lapses {OFFER_TTL_MS // 1000} s after "
                    "it expires)", reason="TOO_MANY_NEGOTIATIONS")
        if len(self.negotiations) >= MAX_OPEN_NEGOTIATIONS:
            for key in [k for k, v in self.negotiations.items() if v.stale(now)]:
                self._drop(key)
            if len(self.negotiations) >= MAX_OPEN_NEGOTIATIONS:
                self._evict_for(buyer_id)

    def _evict_for(self, buyer_id: str) -> None:
        """The table is full of live negotiations: the oldest of the buyer holding the most
        makes room, if it holds more than this one, so that keys made by the thousand
        (each within its share) cannot lock newcomers out; otherwise the new one is refused."""
        largest = max(self._by_buyer.values(), default=0)
        if largest <= self._by_buyer.get(buyer_id, 0):  # none holds more than this buyer
            raise FailedPrecondition("too many open negotiations; retry later")
        oldest = next(k for k in self.negotiations if self._by_buyer[k[0]] == largest)
        self._drop(oldest)

    def _drop(self, key: tuple[str, str]) -> None:
        if self.negotiations.pop(key, None) is not None:
            left = self._by_buyer[key[0]] - 1
            if left:
                self._by_buyer[key[0]] = left
            else:
                del self._by_buyer[key[0]]

    def _offer(self, state: _Negotiation, opponent_price: int | None,
               price: int | None = None) -> agreement_pb2.Offer:
        """The seller's next offer (at `price`, else the strategy's), recorded in the protocol."""
        rfq, now = state.rfq, _now_ms()
        round_index = state.protocol.round + 1
        if price is None:
            price = state.limits.clamp(state.strategy.propose(round_index, rfq.max_rounds,
                                                              opponent_price))
        tariff = state.skill.tariff(price, rfq.currency)
        if tariff.call_max_atomic * rfq.expected_quantity > MAX_AMOUNT_ATOMIC:
            raise InvalidArgument(f"expected_quantity {rfq.expected_quantity} at up to "
                                  f"{tariff.call_max_atomic} a call passes the largest amount "
                                  f"an agreement can hold ({MAX_AMOUNT_ATOMIC} atomic)")
        listed = state.skill.price_in(rfq.currency)
        assert listed is not None, "checked at the RFQ"
        offer = agreement_pb2.Offer(
            rfq_id=rfq.rfq_id, round=round_index, from_id=self.seller.agent_id,
            expires_at_ms=min(rfq.deadline_ms, now + OFFER_TTL_MS),
            terms=agreement_pb2.Terms(
                skill=rfq.skill, unit_price_atomic=price, unit=listed.unit,
                currency=rfq.currency,
                max_total_atomic=tariff.call_max_atomic * rfq.expected_quantity,
                verification=rfq.verification,
                completion_deadline_ms=rfq.deadline_ms + self.completion_window_s * 1000,
                dispute_window_s=self.dispute_window_s,
                output_unit_price_atomic=tariff.output_unit_price_atomic,
                unit_name=listed.unit_name))
        return state.protocol.offer(offer, now)

    def _message(self, state: _Negotiation, offer: agreement_pb2.Offer
                 ) -> agent_pb2.NegotiationMessage:
        tariff = state.skill.tariff(offer.terms.unit_price_atomic, state.rfq.currency)
        metering = None
        if tariff.unit != CALLS:
            metering = agent_pb2.Metering(max_call_atomic=tariff.call_max_atomic)
        say = getattr(state.strategy, "say", None)
        note = (say() or "")[:MAX_NOTE_CHARS] if callable(say) else ""
        return agent_pb2.NegotiationMessage(offer=offer, metering=metering, note=note)

    def _on_counter(self, counter: agreement_pb2.Offer, note: str
                    ) -> agent_pb2.NegotiationMessage:
        state = self._open_negotiation(counter.from_id, counter.rfq_id)
        rfq = state.rfq
        with self.seller._tracer.start_as_current_span("negotiation.round", attributes={
                attr.ROUND: counter.round, attr.SKILL: rfq.skill,
                attr.AMOUNT_ATOMIC: counter.terms.unit_price_atomic,
                attr.CURRENCY: rfq.currency}):
            state.protocol.offer(counter, _now_ms())
            if state.protocol.rounds_left < 1:
                self._end(rfq.buyer_id, rfq.rfq_id)
                return agent_pb2.NegotiationMessage(reject_reason="no rounds left")
            _hear(state.strategy, note)
            price = counter.terms.unit_price_atomic
            asked = state.protocol.offers[-2].terms.unit_price_atomic  # the seller's last offer
            if price >= state.limits.reservation_price_atomic and (price >= asked or state.strategy
                                                                   .accepts(counter.round,
                                                                            rfq.max_rounds,
                                                                            price)):
                met = min(price, asked)  # meet the buyer, never above what was asked
                return self._message(state, self._offer(state, price, met))
            return self._message(state, self._offer(state, price))

    def _end(self, buyer_id: str, rfq_id: str) -> None:
        with self._lock:
            self._drop((buyer_id, rfq_id))

    def _open_negotiation(self, buyer_id: str, rfq_id: str) -> _Negotiation:
        state = self.negotiations.get((buyer_id, rfq_id))
        if state is None:
            raise NotFound(f"no open negotiation {rfq_id[:64]!r} of this buyer")
        if _now_ms() > state.rfq.deadline_ms:
            self._end(buyer_id, rfq_id)
            raise NegotiationFailed("the negotiation's deadline has passed")
        return state

    def _countersign(self, signed: agreement_pb2.SignedAgreement
                     ) -> agreement_pb2.SignedAgreement:
        body = ag.parse_body(signed)
        ag.check_signatures(signed, body, require_seller=False)
        if body.rfq_id.startswith(LIST_PRICE_PREFIX):
            return self._countersign_listed(signed, body)
        state = self._open_negotiation(body.buyer_id, body.rfq_id)
        last = state.protocol.last_offer
        if body.seller_id != self.seller.agent_id or body.buyer_id != state.rfq.buyer_id:
            raise PermissionDenied("the agreement names other parties")
        if last is None or last.from_id != self.seller.agent_id:
            raise FailedPrecondition("only the seller's own last offer can be accepted")
        if body.seller_endpoint != self.seller.endpoint:
            raise InvalidArgument("the agreement names another endpoint")
        state.limits.check(body.terms.unit_price_atomic, body.terms.max_total_atomic)
        state.protocol.accept(body, _now_ms())
        ag.sign_as_seller(signed, self.seller.key)
        agreement_id = ag.agreement_id(signed.body)
        self.seller.gate.open(agreement_id, body)  # first: it may refuse (a buyer's cap)
        self.seller.tariffs[agreement_id] = state.skill.tariff(body.terms.unit_price_atomic,
                                                               body.terms.currency)
        self._end(body.buyer_id, body.rfq_id)
        return signed


    def _countersign_listed(self, signed: agreement_pb2.SignedAgreement,
                            body: agreement_pb2.AgreementBody) -> agreement_pb2.SignedAgreement:
        """An agreement at the list price, with no negotiation before it (the HTTP/x402
        gateway's buyers): countersigned when its terms are what the listing already offers
        anyone, so no strategy is consulted and nothing is given away."""
        terms, now = body.terms, _now_ms()
        skill = self.seller.skills.get(terms.skill)
        if skill is None:
            raise UnknownSkill(f"this seller has no skill {terms.skill!r}")
        if body.seller_id != self.seller.agent_id:
            raise PermissionDenied("the agreement names another seller")
        if body.seller_endpoint != self.seller.endpoint:
            raise InvalidArgument("the agreement names another endpoint")
        listed_price, _ = self.reservation(skill, terms.currency)
        listed = skill.tariff(listed_price, terms.currency)
        price = skill.price_in(terms.currency)
        assert price is not None, "reservation() checked the currency"
        if terms.unit != price.unit or terms.unit_name != price.unit_name \
                or terms.unit_price_atomic < listed_price \
                or terms.output_unit_price_atomic < listed.output_unit_price_atomic:
            raise TermsMismatch("a list-price agreement pays the listed price and unit")
        if terms.verification not in skill.verification_methods or \
                terms.verification not in SUPPORTED:
            raise VerificationNotOffered(f"skill {skill.name} does not offer that verification")
        if terms.dispute_window_s > self.dispute_window_s or terms.completion_deadline_ms > \
                now + self.completion_window_s * 1000 or not \
                now < body.offer_expires_at_ms <= now + OFFER_TTL_MS:
            raise TermsMismatch("a list-price agreement keeps the seller's windows and "
                                f"expires within {OFFER_TTL_MS // 1000} s")
        if terms.completion_deadline_ms <= now + self.seller.redeem_margin_s * 1000:
            raise TermsMismatch("a list-price agreement's completion deadline must leave time "
                                "to call before the seller's redeem margin "
                                f"({self.seller.redeem_margin_s} s before it)")
        ag.sign_as_seller(signed, self.seller.key)
        agreement_id = ag.agreement_id(signed.body)
        self.seller.gate.open(agreement_id, body)  # first: it may refuse (a buyer's cap)
        self.seller.tariffs[agreement_id] = skill.tariff(terms.unit_price_atomic,
                                                         terms.currency)
        return signed


def _hear(strategy: Strategy, note: str) -> None:
    hear = getattr(strategy, "hear", None)
    if note and callable(hear):
        hear(note)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _method_name(method: int) -> str:
    """A verification method's name, or its number when no name is defined for it."""
    names = registry_pb2.VerificationMethod
    return names.Name(method) if method in names.values() else str(method)
