"""The negotiation protocol's rules (marketplace.negotiation): bounded rounds, a deadline,
offers that expire, terms that stay within the RFQ; and the agreement that ends it."""

from __future__ import annotations

import pytest

from marketplace.errors import AgentmarketError
from marketplace.identity import AgentKey
from marketplace.negotiation import MAX_OFFER_TTL_S, Negotiation, check_rfq
from marketplace.testing import make_terms
from marketplace.v1 import agreement_pb2, registry_pb2

NOW = 1_700_000_000_000
BUYER, SELLER = AgentKey.generate(), AgentKey.generate()


def _rfq(**changes) -> agreement_pb2.Rfq:  # type: ignore[no-untyped-def]
    fields = dict(rfq_id="rfq-1", buyer_id=BUYER.agent_id, skill="echo", expected_quantity=5,
                  max_budget_atomic=5_000, currency="USD", deadline_ms=NOW + 60_000,
                  verification=registry_pb2.VERIFICATION_METHOD_SCHEMA, max_rounds=3)
    fields.update(changes)
    return agreement_pb2.Rfq(**fields)


def _offer(round_: int, party: AgentKey, price: int = 1_000, now: int = NOW,
           **changes) -> agreement_pb2.Offer:  # type: ignore[no-untyped-def]
    terms = make_terms(price_atomic=price, deadline_ms=NOW + 3_600_000)
    for name, value in changes.items():
        setattr(terms, name, value)
    return agreement_pb2.Offer(rfq_id="rfq-1", round=round_, from_id=party.agent_id,
                               terms=terms, expires_at_ms=now + 30_000)


def _body(offer: agreement_pb2.Offer) -> agreement_pb2.AgreementBody:
    return agreement_pb2.AgreementBody(rfq_id="rfq-1", buyer_id=BUYER.agent_id,
                                       seller_id=SELLER.agent_id, terms=offer.terms,
                                       offer_expires_at_ms=offer.expires_at_ms)


def _refused(reason: str, attempt) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AgentmarketError) as caught:
        attempt()
    assert caught.value.reason == reason, caught.value


def test_offers_counter_offers_and_acceptance():
    talk = Negotiation.start(_rfq(), NOW)
    talk.offer(_offer(1, SELLER, 1_000), NOW)
    talk.offer(_offer(2, BUYER, 800), NOW + 1)
    last = talk.offer(_offer(3, SELLER, 900), NOW + 2)
    assert talk.rounds_left == 0
    talk.accept(_body(last), NOW + 3)
    assert talk.status == "agreed"
    _refused("ILLEGAL_TRANSITION", lambda: talk.offer(_offer(4, BUYER), NOW + 4))


def test_rounds_turns_and_deadline_are_bounded():
    talk = Negotiation.start(_rfq(max_rounds=2), NOW)
    _refused("OUT_OF_TURN", lambda: talk.offer(_offer(2, SELLER), NOW))  # skips round 1
    talk.offer(_offer(1, SELLER), NOW)
    _refused("ILLEGAL_TRANSITION", lambda: talk.offer(_offer(2, SELLER), NOW))  # not its turn
    talk.offer(_offer(2, BUYER), NOW)
    _refused("FAILED_PRECONDITION", lambda: talk.offer(_offer(3, SELLER), NOW))  # max rounds
    late = Negotiation.start(_rfq(), NOW)
    _refused("ILLEGAL_TRANSITION", lambda: late.offer(_offer(1, SELLER, now=NOW + 61_000),
                                                      NOW + 61_000))
    assert late.status == "expired"


def test_offers_expire_and_cannot_be_accepted_late():
    talk = Negotiation.start(_rfq(), NOW)
    offer = talk.offer(_offer(1, SELLER), NOW)
    _refused("OFFER_EXPIRED", lambda: talk.accept(_body(offer), offer.expires_at_ms + 1))
    forever = _offer(1, SELLER)
    forever.expires_at_ms = NOW + (MAX_OFFER_TTL_S + 1) * 1000
    _refused("INVALID_ARGUMENT", lambda: Negotiation.start(_rfq(), NOW).offer(forever, NOW))


def test_acceptance_must_match_the_offer_and_the_budget():
    talk = Negotiation.start(_rfq(max_budget_atomic=4_000), NOW)
    offer = talk.offer(_offer(1, SELLER, 1_000), NOW)
    changed = _body(offer)
    changed.terms.unit_price_atomic = 1
    _refused("TERMS_MISMATCH", lambda: talk.accept(changed, NOW))
    unstated = _body(offer)
    unstated.offer_expires_at_ms = 0
    _refused("TERMS_MISMATCH", lambda: talk.accept(unstated, NOW))
    _refused("BUDGET_EXCEEDED", lambda: talk.accept(_body(offer), NOW))  # 5 x 1000 > 4000
    other = Negotiation.start(_rfq(), NOW)
    _refused("TERMS_MISMATCH", lambda: other.offer(_offer(1, SELLER, currency="ECNY"), NOW))


@pytest.mark.parametrize(("change", "reason"), [
    ({"max_rounds": 0}, "INVALID_ARGUMENT"), ({"max_rounds": 21}, "INVALID_ARGUMENT"),
    ({"deadline_ms": NOW}, "DEADLINE_PASSED"), ({"deadline_ms": NOW + 7_200_000},
                                                "INVALID_ARGUMENT"),
    ({"currency": "XYZ"}, "UNKNOWN_CURRENCY"), ({"max_budget_atomic": 0}, "INVALID_ARGUMENT"),
    ({"verification": 0}, "INVALID_ARGUMENT"), ({"rfq_id": ""}, "INVALID_ARGUMENT"),
])
def test_bad_rfqs_are_refused(change: dict, reason: str):
    _refused(reason, lambda: check_rfq(_rfq(**change), NOW))


def test_verification_terms_name_what_they_need():
    M = registry_pb2.VerificationMethod
    talk = Negotiation.start(_rfq(), NOW)
    for method, extra in [(M.VERIFICATION_METHOD_CHECKER, {}),
                          (M.VERIFICATION_METHOD_LLM_JUDGE, {}),
                          (M.VERIFICATION_METHOD_THIRD_PARTY, {}),
                          (M.VERIFICATION_METHOD_SCHEMA, {"checker": "x"})]:
        _refused("INVALID_ARGUMENT", lambda m=method, e=extra: talk.offer(
            _offer(1, SELLER, verification=m, **e), NOW))
    judge = _offer(1, SELLER, verification=M.VERIFICATION_METHOD_LLM_JUDGE)
    judge.terms.judge.CopyFrom(agreement_pb2.JudgeTerms(model="m", rubric="r",
                                                        pass_threshold_permille=700))
    talk.offer(judge, NOW)
