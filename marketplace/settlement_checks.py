"""What opening and redeeming an escrow check before any money moves: the accepted offer and
the deadline at opening, that the seller's live listing sells the terms, that a redeem's
voucher is genuine and within the hold, and that its receipts are the seller's, one per paid
call, each charging no more than the terms price its usage."""

from __future__ import annotations

from typing import Any

from marketplace import agreements as ag
from marketplace import pricing
from marketplace.errors import (
    BudgetExceeded,
    CurrencyNotAccepted,
    DeadlinePassed,
    InvalidArgument,
    InvalidVoucher,
    OfferExpired,
    TermsMismatch,
    UnknownSkill,
    VerificationNotOffered,
)
from marketplace.payword import verify_word
from marketplace.v1 import agreement_pb2, registry_pb2


def check_open(body: agreement_pb2.AgreementBody, now: int) -> None:
    """The accepted offer and the completion deadline, at opening."""
    terms = body.terms
    if body.offer_expires_at_ms <= now:
        raise OfferExpired("the accepted offer has lapsed (or the agreement does not say "
                           "when): negotiate again")
    if terms.completion_deadline_ms <= now:
        raise DeadlinePassed("the agreement's completion deadline has already passed")
    if terms.completion_deadline_ms > now + ag.MAX_COMPLETION_S * 1000:
        raise InvalidArgument(f"the completion deadline is at most {ag.MAX_COMPLETION_S} s "
                              "ahead")


def listed_skill(listing: registry_pb2.Listing, terms: agreement_pb2.Terms) -> registry_pb2.Skill:
    """The seller's live listing must sell these terms."""
    skill = next((s for s in listing.skills if s.name == terms.skill), None)
    if skill is None:
        raise UnknownSkill(f"the seller does not list skill {terms.skill!r}")
    price = pricing.price_in(skill, terms.currency)
    if price is None:
        raise CurrencyNotAccepted(f"skill {skill.name} is not sold in {terms.currency}")
    if price.unit != terms.unit or (terms.unit_name and price.unit_name != terms.unit_name):
        raise TermsMismatch(f"skill {skill.name} is priced per "
                            f"{price.unit_name or registry_pb2.PriceUnit.Name(price.unit)}")
    if terms.verification not in skill.verification_methods:
        raise VerificationNotOffered(f"skill {skill.name} does not offer the agreed "
                                     "verification method")
    return skill


def check_voucher(row: Any, body: agreement_pb2.AgreementBody,
                   voucher: agreement_pb2.Voucher) -> int:
    """What the buyer authorised: the voucher's payword proves it, bounded by the hold."""
    if voucher.agreement_id != row.agreement_id:
        raise InvalidVoucher("the voucher is for a different agreement")
    if voucher.payword_index > body.payword_length:
        raise InvalidVoucher(f"the voucher's payword_index {voucher.payword_index} is past the "
                             f"agreement's chain of {body.payword_length} words")
    if not verify_word(voucher.payword, voucher.payword_index, body.payword_root, 0):
        raise InvalidVoucher("the voucher's payword does not hash to the agreement's root")
    authorised = voucher.payword_index * body.link_value_atomic
    if voucher.cumulative_atomic != authorised:
        raise InvalidVoucher("cumulative_atomic does not match the payword index")
    if authorised > row.held_atomic:
        raise BudgetExceeded("the voucher authorises more than the agreement holds")
    return authorised

def check_receipts(row: Any, terms: agreement_pb2.Terms, voucher: agreement_pb2.Voucher,
                    receipts: list[agreement_pb2.Receipt]) -> None:
    seen: set[int] = set()
    ag.check_receipt_chain(receipts, row.seller_id, complete=True)
    for receipt in receipts:
        if receipt.agreement_id != row.agreement_id or receipt.sequence in seen:
            raise InvalidArgument(f"receipt {receipt.sequence} is duplicated or misfiled")
        if not 1 <= receipt.sequence <= voucher.sequence:
            raise InvalidArgument(f"receipt {receipt.sequence} was not paid by the voucher "
                                  f"(sequence {voucher.sequence})")
        seen.add(receipt.sequence)
        ceiling = pricing.receipt_ceiling_atomic(terms, receipt)
        if receipt.charged_atomic < 0 or (ceiling is not None
                                          and receipt.charged_atomic > ceiling):
            raise InvalidArgument(f"receipt {receipt.sequence} charges "
                                  f"{receipt.charged_atomic}; the terms price its usage at "
                                  f"{ceiling}")
