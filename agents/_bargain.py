"""The buyer's side of negotiation: RFQ, counter-offers, and the hard limits around them.

`bargain` runs rounds until the seller's offer is acceptable (strategy *and* `Limits`) and
returns it as a `Quote`, not yet signed, so a buyer can bargain with several sellers and sign
only the best. The strategy (rule-based or an LLM) proposes prices and may read and write notes;
whatever it says, a counter-offer is clamped to the reservation price and an offer is accepted
only if `Limits.check` passes (unit price, and the maximum total within the budget).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import grpc

from agents import _inputs
from agents.errors import (
    AgentmarketError,
    FailedPrecondition,
    InvalidAmount,
    InvalidArgument,
    NegotiationFailed,
)
from agents.metering import CALLS, TOKENS, Tariff
from agents.negotiation import ConcessionStrategy, Limits, Strategy
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace import pricing
from marketplace.negotiation import MAX_NEGOTIATION_S, MAX_ROUNDS, Negotiation
from marketplace.v1 import agreement_pb2, registry_pb2
from wallets import attributes as attr
from wallets.currencies import MAX_AMOUNT_ATOMIC
from wallets.currencies import currency as _currency

if TYPE_CHECKING:
    from agents.async_buyer import AsyncBuyerAgent
    from agents.buyer import BuyerAgent

RPC_TIMEOUT_S = 10.0
MAX_NOTE_CHARS = 500
COUNTER_TTL_MS = 30_000


@dataclass
class Quote:
    """An acceptable offer from one seller, not yet signed (`BuyerAgent.accept` signs it)."""

    listing: registry_pb2.Listing
    skill: registry_pb2.Skill
    offer: agreement_pb2.Offer
    tariff: Tariff
    rounds: int
    stub: Any  # the seller's stub of the buyer that bargained (sync or grpc.aio)
    protocol: Negotiation

    @property
    def unit_price_atomic(self) -> int:
        return self.offer.terms.unit_price_atomic

    @property
    def max_total_atomic(self) -> int:
        return self.offer.terms.max_total_atomic


def _tariff(reply: agent_pb2.NegotiationMessage, listed: registry_pb2.Price,
            quantity: int) -> Tariff:
    """The offer's billing, checked: a metered offer states its per-call maximum, prices output
    tokens no dearer (relative to input) than listed, and totals max_call x quantity."""
    terms = reply.offer.terms
    if terms.unit != listed.unit:
        raise NegotiationFailed("the offer bills in another unit than the listing")
    if terms.unit == CALLS:
        if terms.max_total_atomic != terms.unit_price_atomic * quantity:
            raise NegotiationFailed("the offer's maximum total is not price x quantity")
        return Tariff(CALLS, terms.unit_price_atomic, 0, terms.unit_price_atomic)
    max_call = reply.metering.max_call_atomic
    if max_call <= 0 or terms.max_total_atomic != max_call * quantity:
        raise NegotiationFailed("a metered offer needs max_call_atomic x quantity = max total")
    output = terms.output_unit_price_atomic
    if terms.unit == TOKENS and output * listed.amount_atomic > \
            terms.unit_price_atomic * listed.output_amount_atomic + listed.amount_atomic:
        raise NegotiationFailed("the offer prices output tokens above the listed ratio")
    return Tariff(terms.unit, terms.unit_price_atomic, output, max_call)


Rounds = Generator[agent_pb2.NegotiationMessage, agent_pb2.NegotiationMessage, Quote]


def rounds(buyer: BuyerAgent | AsyncBuyerAgent, listing: registry_pb2.Listing, skill: str, *,
           quantity: int, budget_atomic: int, currency: str, max_rounds: int = 6,
           strategy: Strategy | None = None, reservation_price_atomic: int | None = None,
           deadline_s: int = 30, verification: int = registry_pb2.VERIFICATION_METHOD_SCHEMA,
           stub: Any = None) -> Rounds:
    """The negotiation as a generator: it yields each message for the seller and is sent the
    seller's reply, and returns the acceptable `Quote`; the sync and the async buyer drive it
    over their own connections (`bargain`, `abargain`), so the rules live once."""
    cur = _currency(currency)
    check_options(max_rounds=max_rounds, deadline_s=deadline_s, verification=verification,
                  strategy=strategy)
    if reservation_price_atomic is not None:
        _inputs.count(reservation_price_atomic, "reservation_price_atomic", minimum=0,
                      maximum=MAX_AMOUNT_ATOMIC)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity <= 0:
        raise InvalidArgument(f"quantity must be a positive number of calls, got {quantity!r}")
    if budget_atomic <= 0:
        raise InvalidAmount("the budget must be positive")
    listed = next((s for s in listing.skills if s.name == skill), None)
    if listed is None:
        raise InvalidArgument(f"the listing has no skill {skill!r}")
    price = next((p for p in listed.prices if p.currency == cur.code), None)
    if price is None or not price.amount_atomic:
        raise InvalidArgument(f"skill {skill} is not sold in {cur.code}")
    listed_atomic = pricing.quote(price, quantity)[0] if price.unit == CALLS \
        else price.amount_atomic  # metered tiers count units the seller's bounds decide
    if reservation_price_atomic is None:
        reservation_price_atomic = budget_atomic // quantity if price.unit == CALLS \
            else listed_atomic
    strategy = strategy or ConcessionStrategy(listed_atomic // 2,
                                              reservation_price_atomic, Fraction(1, 2))
    limits = Limits(reservation_price_atomic, is_buyer=True, budget_atomic=budget_atomic)
    rfq = agreement_pb2.Rfq(
        rfq_id=uuid.uuid4().hex, buyer_id=buyer.agent_id, skill=skill,
        expected_quantity=quantity, max_budget_atomic=budget_atomic, currency=cur.code,
        deadline_ms=buyer._now_ms() + deadline_s * 1000, max_rounds=max_rounds,
        verification=verification)
    protocol = Negotiation.start(rfq, buyer._now_ms())
    with buyer._tracer.start_as_current_span("negotiate", attributes={
            attr.SKILL: skill, attr.PAYEE: listing.agent_id, attr.CURRENCY: cur.code}) as span:
        reply = yield agent_pb2.NegotiationMessage(rfq=rfq, note=_say(strategy))
        while True:
            if reply.WhichOneof("kind") != "offer":
                raise NegotiationFailed(f"the seller ended the negotiation: "
                                        f"{reply.reject_reason[:MAX_NOTE_CHARS] or 'no offer'}")
            offer = reply.offer
            if offer.from_id != listing.agent_id:
                raise NotTheListedAgent(
                    f"{listing.endpoint[:80]} answers as agent {offer.from_id[:12]}…, not as "
                    f"the listing's {listing.agent_id[:12]}…: the listing is not its own",
                    answering_agent=offer.from_id)
            offered = offer.terms.unit_price_atomic
            try:
                protocol.offer(offer, buyer._now_ms())
            except AgentmarketError as error:
                raise NegotiationFailed(f"the seller broke the protocol: {error}") from None
            _check_method(offer.terms, verification)
            _hear(strategy, reply.note)
            with buyer._tracer.start_as_current_span("negotiation.round", attributes={
                    attr.ROUND: offer.round, attr.AMOUNT_ATOMIC: offered,
                    attr.CURRENCY: cur.code}):
                tariff = _tariff(reply, price, quantity)
                # The buyer's strategy counts its own moves: 0 is the opening bid, and the last
                # counter the protocol leaves room for is max_moves.
                move, max_moves = (offer.round - 1) // 2, max(max_rounds // 2 - 1, 1)
                mine = limits.clamp(strategy.propose(move, max_moves, offered))
                if strategy.accepts(move, max_moves, offered) or mine >= offered:
                    try:
                        limits.check(offered, offer.terms.max_total_atomic)
                    except FailedPrecondition:
                        pass  # the strategy would accept; the hard limits do not
                    else:
                        span.set_attribute(attr.AMOUNT_ATOMIC, offered)
                        return Quote(listing, listed, offer, tariff, offer.round, stub,
                                     protocol)
                if protocol.rounds_left < 2:  # no room for a counter and an answer
                    break
                counter = _counter(buyer, offer, min(mine, offered), tariff, quantity)
                protocol.offer(counter, buyer._now_ms())
                reply = yield agent_pb2.NegotiationMessage(offer=counter, note=_say(strategy))
        raise _NoAgreement(f"no agreement within {max_rounds} rounds")


def check_options(*, max_rounds: Any, deadline_s: Any, verification: Any, strategy: Any
                  ) -> None:
    """Refuse a bad negotiation option before the RFQ is built: protobuf would otherwise fail
    with its own error, or the strategy deep inside a round."""
    _inputs.count(max_rounds, "max_rounds", maximum=MAX_ROUNDS)
    _inputs.count(deadline_s, "deadline_s", maximum=MAX_NEGOTIATION_S)
    methods = [number for number in registry_pb2.VerificationMethod.values() if number]
    if isinstance(verification, bool) or not isinstance(verification, int) \
            or verification not in methods:
        allowed = ", ".join(registry_pb2.VerificationMethod.Name(n) for n in methods)
        raise InvalidArgument(f"verification must be a registry_pb2.VerificationMethod "
                              f"({allowed}), got {_inputs.shown(verification)}")
    if strategy is not None and not (callable(getattr(strategy, "propose", None))
                                     and callable(getattr(strategy, "accepts", None))):
        raise InvalidArgument(f"strategy must have propose() and accepts() (a Strategy such "
                              f"as ConcessionStrategy), got {_inputs.shown(strategy)}")


def _check_method(terms: agreement_pb2.Terms, asked: int) -> None:
    """A seller may offer another verification method than the one asked for (one its skill
    supports), but not one that pays a verifier of its choosing out of the buyer's escrow:
    that fee is taken whatever the verdict."""
    if terms.verification == asked:
        return
    if terms.verification == registry_pb2.VERIFICATION_METHOD_THIRD_PARTY \
            or terms.verifier.fee_atomic:
        wanted = registry_pb2.VerificationMethod.Name(asked).removeprefix("VERIFICATION_METHOD_")
        raise NegotiationFailed(f"the seller offered third-party verification (a verifier paid "
                                f"from the escrow) where the buyer asked for {wanted.lower()}")


class NotTheListedAgent(NegotiationFailed):
    """The listing's endpoint is another agent's (a listing parked at someone else's address):
    the buyer tries the next listing (`agents._failover`), not counting this one."""

    def __init__(self, message: str, *, answering_agent: str) -> None:
        super().__init__(message)
        self.answering_agent = answering_agent


class _NoAgreement(NegotiationFailed):
    """Rounds ran out: the driver declines the negotiation, then raises it."""


def bargain(buyer: BuyerAgent, listing: registry_pb2.Listing, skill: str, **options: Any
            ) -> Quote:
    """Negotiate with one seller over the sync buyer's connection (`rounds`)."""
    seller = buyer._seller(listing.endpoint)
    steps = rounds(buyer, listing, skill, stub=seller, **options)
    try:
        message = next(steps)
        rfq_id = message.rfq.rfq_id
        while True:
            try:
                reply = seller.Negotiate(message, timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as error:
                steps.throw(error)  # ends the negotiation's spans with the error; re-raised
            message = steps.send(reply)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    except _NoAgreement as error:
        decline(seller, "no agreement", rfq_id)
        raise NegotiationFailed(error.message) from None
    except NotTheListedAgent:  # free the place the RFQ took at the agent that did answer
        decline(seller, "not the listed agent", rfq_id)
        raise


async def abargain(buyer: AsyncBuyerAgent, listing: registry_pb2.Listing, skill: str,
                   **options: Any) -> Quote:
    """Negotiate with one seller over the async buyer's connection (`rounds`)."""
    seller = buyer._seller(listing.endpoint)
    steps = rounds(buyer, listing, skill, stub=seller, **options)
    try:
        message = next(steps)
        rfq_id = message.rfq.rfq_id
        while True:
            try:
                reply = await seller.Negotiate(message, timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as error:
                steps.throw(error)
            message = steps.send(reply)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    except _NoAgreement as error:
        await adecline(seller, "no agreement", rfq_id)
        raise NegotiationFailed(error.message) from None
    except NotTheListedAgent:
        await adecline(seller, "not the listed agent", rfq_id)
        raise


def _counter(buyer: BuyerAgent | AsyncBuyerAgent, offer: agreement_pb2.Offer, price: int,
             tariff: Tariff, quantity: int) -> agreement_pb2.Offer:
    counter = agreement_pb2.Offer()
    counter.CopyFrom(offer)
    counter.round = offer.round + 1
    counter.from_id = buyer.agent_id
    counter.expires_at_ms = min(offer.expires_at_ms, buyer._now_ms() + COUNTER_TTL_MS)
    price = max(price, 1)
    counter.terms.unit_price_atomic = price
    counter.terms.max_total_atomic = _total_at(tariff, offer.terms.unit_price_atomic, price,
                                               quantity)
    return counter


def _total_at(tariff: Tariff, offered: int, mine: int, quantity: int) -> int:
    """The maximum total a counter-offer at `mine` implies (metered: scaled per-call max)."""
    if tariff.unit == CALLS:
        return mine * quantity
    return -(-tariff.call_max_atomic * mine // max(offered, 1)) * quantity


def decline(seller: agent_pb2_grpc.AgentServiceStub, reason: str, rfq_id: str) -> None:
    """End the negotiation of `rfq_id` at the seller, freeing its place there at once."""
    with contextlib.suppress(grpc.RpcError):  # else it lapses at its deadline anyway
        seller.Negotiate(agent_pb2.NegotiationMessage(
            reject_reason=reason[:MAX_NOTE_CHARS], rfq_id=rfq_id), timeout=RPC_TIMEOUT_S)


async def adecline(seller: Any, reason: str, rfq_id: str) -> None:
    with contextlib.suppress(grpc.RpcError):
        await seller.Negotiate(agent_pb2.NegotiationMessage(
            reject_reason=reason[:MAX_NOTE_CHARS], rfq_id=rfq_id), timeout=RPC_TIMEOUT_S)


def _say(strategy: Any) -> str:
    say = getattr(strategy, "say", None)
    return (say() or "")[:MAX_NOTE_CHARS] if callable(say) else ""


def _hear(strategy: Any, note: str) -> None:
    hear = getattr(strategy, "hear", None)
    if note and callable(hear):
        hear(note[:MAX_NOTE_CHARS])
