"""The negotiation protocol's rules, shared by buyers, sellers and the marketplace.

    buyer                         seller
    RFQ (skill, quantity, budget, currency, deadline, verification, max_rounds) ->
                               <- offer, round 1 (terms, expires_at_ms)
    counter-offer, round 2     ->
                               <- offer, round 3 ...
    accept: agreement signed by the buyer over the last offer's terms ->
                               <- countersigned agreement
    (either side may reject at any time; the RFQ's deadline or max_rounds ends it)

Rules, checked by `Negotiation` on either side and again by the marketplace at OpenEscrow:
- 1..MAX_ROUNDS offers in total, numbered 1, 2, 3 ... with no gaps; the RFQ sets the bound.
- The RFQ's deadline is at most MAX_NEGOTIATION_S ahead; nothing is offered or accepted after it.
- Every offer expires (at most MAX_OFFER_TTL_S after it is made, never after the deadline);
  an expired offer cannot be accepted (OFFER_EXPIRED), and the agreement records when the
  accepted offer lapsed, so the marketplace refuses escrow for it afterwards too.
- Terms: skill and currency are the RFQ's; unit price, max total, verification method (and its
  checker / judge / verifier), completion deadline and dispute window are negotiated within the
  bounds of `marketplace.agreements.check_terms`. An accepted agreement's max total never exceeds
  the RFQ's budget.
Strategies (how prices move) are not here: they are pluggable in the agent SDK, and bounded by
reservation prices there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from marketplace.agreements import MAX_RFQ_ID_CHARS as MAX_RFQ_ID
from marketplace.agreements import check_terms
from marketplace.errors import (
    BudgetExceeded,
    DeadlinePassed,
    FailedPrecondition,
    IllegalTransition,
    InvalidArgument,
    OfferExpired,
    TermsMismatch,
)
from marketplace.identity import check_agent_id
from marketplace.v1 import agreement_pb2, registry_pb2
from wallets.currencies import MAX_AMOUNT_ATOMIC, currency

MAX_ROUNDS = 20
MAX_NEGOTIATION_S = 3600
MAX_OFFER_TTL_S = 300


def check_rfq(rfq: agreement_pb2.Rfq, now_ms: int) -> agreement_pb2.Rfq:
    """Validate an RFQ (the currency code is normalised in place)."""
    if not 1 <= len(rfq.rfq_id) <= MAX_RFQ_ID:
        raise InvalidArgument(f"rfq_id must be 1..{MAX_RFQ_ID} characters")
    check_agent_id(rfq.buyer_id, "buyer_id")
    if not rfq.skill:
        raise InvalidArgument("rfq.skill is required")
    rfq.currency = currency(rfq.currency).code
    if not 0 < rfq.expected_quantity <= MAX_AMOUNT_ATOMIC:
        raise InvalidArgument("expected_quantity must be positive")
    if not 0 < rfq.max_budget_atomic <= MAX_AMOUNT_ATOMIC:
        raise InvalidArgument("max_budget_atomic must be positive")
    if not 1 <= rfq.max_rounds <= MAX_ROUNDS:
        raise InvalidArgument(f"max_rounds must be 1..{MAX_ROUNDS}")
    if rfq.verification == registry_pb2.VERIFICATION_METHOD_UNSPECIFIED:
        raise InvalidArgument("rfq.verification is required")
    if rfq.deadline_ms <= now_ms:
        raise DeadlinePassed("the RFQ's deadline has passed")
    if rfq.deadline_ms > now_ms + MAX_NEGOTIATION_S * 1000:
        raise InvalidArgument(f"a negotiation lasts at most {MAX_NEGOTIATION_S} s")
    return rfq


def check_offer(rfq: agreement_pb2.Rfq, offer: agreement_pb2.Offer, *, now_ms: int,
                expected_round: int) -> None:
    """An offer (or counter-offer) that may be made now as round `expected_round`."""
    if offer.rfq_id != rfq.rfq_id:
        raise InvalidArgument("the offer is for another RFQ")
    if offer.round != expected_round:  # well formed, but not this negotiation's next round
        raise FailedPrecondition(f"expected round {expected_round}, got {offer.round}",
                                 reason="OUT_OF_TURN")
    if offer.round > rfq.max_rounds:
        raise FailedPrecondition(f"the negotiation allows {rfq.max_rounds} rounds")
    check_agent_id(offer.from_id, "from_id")
    if now_ms > rfq.deadline_ms:
        raise DeadlinePassed("the negotiation's deadline has passed")
    if not now_ms < offer.expires_at_ms <= min(rfq.deadline_ms,
                                                now_ms + MAX_OFFER_TTL_S * 1000):
        raise InvalidArgument(f"an offer must expire within {MAX_OFFER_TTL_S} s and no later "
                              "than the RFQ's deadline")
    check_terms(offer.terms)
    if offer.terms.skill != rfq.skill or offer.terms.currency != rfq.currency:
        raise TermsMismatch("an offer keeps the RFQ's skill and currency")
    if offer.terms.completion_deadline_ms <= offer.expires_at_ms:
        raise InvalidArgument("the completion deadline must come after the offer expires")


def check_acceptance(rfq: agreement_pb2.Rfq, offer: agreement_pb2.Offer,
                     body: agreement_pb2.AgreementBody, *, now_ms: int) -> None:
    """An agreement body that accepts `offer` now: same terms, in time, within budget."""
    if now_ms > offer.expires_at_ms:
        raise OfferExpired("the offer has expired")
    if now_ms > rfq.deadline_ms:
        raise DeadlinePassed("the negotiation's deadline has passed")
    if body.rfq_id != rfq.rfq_id or body.buyer_id != rfq.buyer_id:
        raise TermsMismatch("the agreement names another RFQ or buyer")
    if body.terms != offer.terms:
        raise TermsMismatch("the agreement's terms differ from the offer's")
    if body.offer_expires_at_ms != offer.expires_at_ms:
        raise TermsMismatch("the agreement must record when the accepted offer lapses")
    if body.terms.max_total_atomic > rfq.max_budget_atomic:
        raise BudgetExceeded("the agreement's maximum is above the RFQ's budget")


@dataclass
class Negotiation:
    """One negotiation as either party sees it; refuses every move the rules forbid.

    `status` is "open", then "agreed", "rejected" or "expired" (final).
    """

    rfq: agreement_pb2.Rfq
    offers: list[agreement_pb2.Offer] = field(default_factory=list)
    status: str = "open"

    @classmethod
    def start(cls, rfq: agreement_pb2.Rfq, now_ms: int) -> Negotiation:
        return cls(check_rfq(rfq, now_ms))

    @property
    def round(self) -> int:
        return len(self.offers)

    @property
    def last_offer(self) -> agreement_pb2.Offer | None:
        return self.offers[-1] if self.offers else None

    def _open(self, now_ms: int) -> None:
        if self.status == "open" and now_ms > self.rfq.deadline_ms:
            self.status = "expired"
        if self.status != "open":
            raise IllegalTransition(f"the negotiation is {self.status}")

    def offer(self, offer: agreement_pb2.Offer, now_ms: int) -> agreement_pb2.Offer:
        """Record an offer or counter-offer made now (by either side)."""
        self._open(now_ms)
        if self.offers and offer.from_id == self.offers[-1].from_id:
            raise IllegalTransition("parties take turns: wait for the other side's offer")
        check_offer(self.rfq, offer, now_ms=now_ms, expected_round=self.round + 1)
        self.offers.append(offer)
        return offer

    def accept(self, body: agreement_pb2.AgreementBody, now_ms: int) -> None:
        """Accept the last offer with this agreement body."""
        self._open(now_ms)
        last = self.last_offer
        if last is None:
            raise IllegalTransition("there is no offer to accept")
        check_acceptance(self.rfq, last, body, now_ms=now_ms)
        self.status = "agreed"

    def reject(self) -> None:
        if self.status == "open":
            self.status = "rejected"

    @property
    def rounds_left(self) -> int:
        return self.rfq.max_rounds - self.round
