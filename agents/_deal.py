"""A deal: an agreement the buyer holds, and the pure rules a buyer applies to it.

Shared by the sync and the async buyer: building the agreement it signs from a quote, the
shape of its PayWord chain, checking each receipt against the tariff and the output, and what
a call after the agreement ended is told. No I/O here.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any

from agents._bargain import MAX_NOTE_CHARS, Quote
from agents.errors import (
    AgentmarketError,
    AgreementEnded,
    InvalidArgument,
    NegotiationFailed,
    ServerError,
)
from agents.metering import CALLS, Tariff
from agents.payment_session import links_for
from agents.results import AgreementState, Escrow
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace.payword import MAX_CHAIN_LENGTH, PaywordChain
from marketplace.schema_validators import validator
from marketplace.v1 import agreement_pb2

MAX_LINKS_PER_CALL = 64
MAX_ANSWERED_IDS = 512  # answered call ids a deal remembers, for a retry to re-send the voucher
REFUSAL_OPERATIONS = ("confirm", "dispute")


@dataclass
class Deal:
    """An agreement the buyer holds, with what it needs to pay under it.

    `agreement_id`, `body.terms` (skill, unit price, maximum total, currency), `escrow` (the
    last `Escrow` seen: after `hire` and `finish`), the outputs received and any `problems`
    found in receipts or outputs. Plain data: `state()` / `BuyerAgent.restore_deal`."""

    agreement: agreement_pb2.SignedAgreement
    body: agreement_pb2.AgreementBody
    agreement_id: str
    output_schema: dict[str, Any]
    rounds: int
    escrow: Escrow | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    failed_outputs: int = 0
    tariff: Tariff | None = None
    seed_hex: str = field(default="", repr=False)  # spends the escrow: never in a repr
    problems: list[str] = field(default_factory=list)
    # calls whose answer was lost: call id -> (voucher sequence, payword index) to re-send
    unanswered: dict[str, tuple[int, int]] = field(default_factory=dict)
    # the caller's call ids answered lately -> their voucher: a retry re-sends it (answered
    # once, charged once); at most MAX_ANSWERED_IDS, the oldest forgotten first
    answered: dict[str, tuple[int, int]] = field(default_factory=dict)
    # definite refusals per operation ("confirm", "dispute"): each next try takes a new
    # idempotency key, so a refusal the node recorded is not replayed for good
    refusals: dict[str, int] = field(default_factory=dict)
    # receipts taken so far, their chain and signatures checked in one batch before accepting
    unsigned_receipts: list[agreement_pb2.Receipt] = field(default_factory=list)
    # the node's proof that the escrow is held (marketplace.escrow_proof), sent to the seller
    # with the first calls so that it need not ask the marketplace; not checkpointed
    escrow_proof: bytes = b""

    @functools.cached_property
    def output_validator(self) -> Any:
        """The compiled output-schema validator (every call's output meets it)."""
        return validator(self.output_schema)

    @property
    def call_max_atomic(self) -> int:
        """What each call prepays: its maximum charge."""
        return self.tariff.call_max_atomic if self.tariff else self.body.terms.unit_price_atomic

    @property
    def currency(self) -> str:
        return self.body.terms.currency

    def state(self) -> dict[str, Any]:
        """JSON-ready, for a checkpoint. It holds the PayWord seed: whoever reads it can spend
        what the agreement's escrow holds, so keep checkpoints as private as the agent's key."""
        tariff = self.tariff or Tariff(CALLS, self.body.terms.unit_price_atomic)
        return {"agreement_hex": self.agreement.SerializeToString().hex(),
                "seed_hex": self.seed_hex, "output_schema": self.output_schema,
                "rounds": self.rounds, "tariff": [tariff.unit, tariff.unit_price_atomic,
                                                  tariff.output_unit_price_atomic,
                                                  tariff.max_call_atomic],
                "refusals": dict(self.refusals)}

    def remember_answered(self, call_id: str, voucher_at: tuple[int, int]) -> None:
        """Keep the voucher of an answered call id (bounded), for a retry to re-send."""
        self.answered.pop(call_id, None)
        self.answered[call_id] = voucher_at
        if len(self.answered) > MAX_ANSWERED_IDS:  # one in, one out: the oldest
            self.answered.pop(next(iter(self.answered)), None)

    def check_open(self) -> None:
        """Refuse a call once the agreement is known to have ended, naming its state."""
        escrow = self.escrow
        if escrow is not None and AgreementState(escrow.state).ended:
            raise AgreementEnded(
                f"agreement {self.agreement_id[:12]}… is {AgreementState(escrow.state)} "
                f"({escrow}); it takes no more calls: negotiate a new one")


def agreement_body(buyer_id: str, quote: Quote, now_ms: int
                   ) -> tuple[agreement_pb2.AgreementBody, PaywordChain]:
    """The agreement the buyer signs for an acceptable quote, with a fresh PayWord chain."""
    terms = quote.offer.terms
    link_value, length = chain_shape(quote.tariff, terms.max_total_atomic)
    chain = PaywordChain(length)
    listing = quote.listing
    body = agreement_pb2.AgreementBody(
        rfq_id=quote.offer.rfq_id, buyer_id=buyer_id, seller_id=listing.agent_id,
        seller_endpoint=listing.endpoint, terms=terms, payword_root=chain.root,
        payword_length=length, link_value_atomic=link_value, created_at_ms=now_ms,
        nonce=os.urandom(16), offer_expires_at_ms=quote.offer.expires_at_ms)
    try:
        quote.protocol.accept(body, now_ms)
    except AgentmarketError as error:
        raise NegotiationFailed(f"the offer cannot be accepted: {error}") from None
    return body, chain


def countersigned_deal(quote: Quote, signed: agreement_pb2.SignedAgreement,
                       body: agreement_pb2.AgreementBody, chain: PaywordChain,
                       reply: Any) -> Deal:
    """The deal once the seller answered the signed agreement: countersigned, unchanged."""
    if reply.WhichOneof("kind") != "agreement":
        raise NegotiationFailed("the seller did not countersign: "
                                f"{reply.reject_reason[:MAX_NOTE_CHARS]}")
    countersigned = reply.agreement
    if countersigned.body != signed.body:
        raise NegotiationFailed("the seller changed the agreement")
    if countersigned.buyer_signature != signed.buyer_signature:
        raise NegotiationFailed("the seller changed the buyer's signature")
    ag.check_signatures(countersigned, body, buyer_signed_here=True)
    schema = json.loads(quote.skill.output_schema_json) if quote.skill.output_schema_json \
        else {}
    return Deal(countersigned, body, ag.agreement_id(countersigned.body), schema,
                quote.rounds, tariff=quote.tariff, seed_hex=chain.seed.hex())


def restored_deal(buyer_id: str, state: dict[str, Any]) -> tuple[Deal, PaywordChain]:
    """The deal a checkpoint holds (`Deal.state()`), with its chain, checked."""
    try:
        signed = agreement_pb2.SignedAgreement.FromString(bytes.fromhex(state["agreement_hex"]))
        body = agreement_pb2.AgreementBody.FromString(signed.body)
        seed = bytes.fromhex(state["seed_hex"])
        deal = Deal(signed, body, ag.agreement_id(signed.body), state["output_schema"],
                    state["rounds"], tariff=Tariff(*state["tariff"]),
                    seed_hex=state["seed_hex"], refusals=_refusals(state.get("refusals", {})))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InvalidArgument(f"not a deal checkpoint (Deal.state()): {error}") from None
    if body.buyer_id != buyer_id:
        raise InvalidArgument("the checkpointed agreement belongs to another buyer key")
    chain = PaywordChain(body.payword_length, seed=seed)
    if chain.root != body.payword_root:
        raise InvalidArgument("the checkpointed seed does not match the agreement's chain")
    return deal, chain


def _refusals(saved: Any) -> dict[str, int]:
    """A checkpoint's refusal counts (absent in older checkpoints: none)."""
    counts = {op: saved[op] for op in REFUSAL_OPERATIONS if op in saved}
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
               for n in counts.values()):
        raise ValueError("refusals are counts")
    return counts


def _tariff(deal: Deal) -> Tariff:
    return deal.tariff or Tariff(CALLS, deal.body.terms.unit_price_atomic)


def charge_cap(deal: Deal, reserve: int, usage: Any) -> int:
    """The most a call may cost, by what the buyer knows: what it reserved, or the seller's
    larger reservation (prepayment carried over), never past the terms' per-call maximum: the
    seller's `reserved_atomic` is the seller's word, not a ceiling it may set."""
    return min(max(reserve, usage.reserved_atomic), _tariff(deal).call_max_atomic)


def booked_charge(deal: Deal, reserve: int, usage: Any, receipt: Any) -> int:
    """What the buyer books for a call: what the seller could redeem (its receipt's charge),
    or its usage's when that says more, never below 0 nor past `charge_cap`: the usage is the
    seller's unsigned word, and booking it alone let a seller that said 0 (or less) leave the
    buyer's books short of what it then redeemed."""
    claimed = max(receipt.charged_atomic, usage.charged_atomic)
    return max(0, min(claimed, charge_cap(deal, reserve, usage)))


def receipt_problem(deal: Deal, receipt: agreement_pb2.Receipt, usage: Any,
                    output_json: str, reserve: int, sequence: int = 0) -> str:
    """Why a receipt does not check out ('' when it does): signature and output hash, the
    call it answers (`sequence`: the voucher's, when known), the charge equal to the tariff
    applied to the reported usage (capped by `charge_cap`)."""
    try:
        ag.check_receipt(receipt, deal.body.seller_id, signature=False)
    except Exception as error:
        return f"bad receipt: {error}"
    deal.unsigned_receipts.append(receipt)  # its signature: checked before accepting
    if receipt.output_json != output_json or receipt.agreement_id != deal.agreement_id:
        return "the receipt commits to another output"
    if sequence and receipt.sequence != sequence:
        return f"the receipt answers call {receipt.sequence}, not this call ({sequence})"
    expected = min(_tariff(deal).charge_atomic(input_tokens=usage.input_tokens,
                                        output_tokens=usage.output_tokens, units=usage.units),
                   charge_cap(deal, reserve, usage))
    if receipt.charged_atomic != usage.charged_atomic or receipt.charged_atomic != expected:
        return (f"the receipt charges {receipt.charged_atomic} and the usage says "
                f"{usage.charged_atomic}; the tariff says {expected} for the usage")
    return ""


def parsed_output(deal: Deal, output_json: str) -> Any:
    """The seller's output; one that is not JSON is a problem on the deal (so it is not
    confirmed) and a `ServerError` to the caller."""
    try:
        return json.loads(output_json)
    except (ValueError, RecursionError):  # not JSON, nested too deep, a 5,000-digit number
        deal.problems.append("the seller's output is not JSON")
        deal.failed_outputs += 1
        raise ServerError("the seller answered with an output that is not JSON; it is "
                          "recorded as a problem, so the deal is not confirmed") from None


class MalformedAnswer(ServerError):
    """A seller's answer whose payment fields do not parse (an A2A task's metadata: the
    receipt, the usage, a charge): the seller may still redeem the call."""


def book_malformed(deal: Deal, session: Any, reserve: int, error: MalformedAnswer) -> None:
    """Book an answer that does not parse at the most it may cost (its reserve: the seller
    may redeem the call all the same), and record it on the deal (so it is not confirmed)."""
    session.settle(reserve, reserve)
    deal.problems.append(error.message)


def cut_overlong_stream(deal: Deal, session: Any, budget: int, call: Any) -> ServerError:
    """A stream past what a receipt can carry: cancelled, its budget released, a problem on
    the deal; returns the error to raise."""
    call.cancel()
    session.settle(budget, 0)
    problem = f"the seller streamed more than {ag.MAX_OUTPUT_BYTES} bytes"
    deal.problems.append(problem)
    return ServerError(f"{problem}; the stream was cut")


def book_stream(deal: Deal, session: Any, budget: int, end: agent_pb2.StreamEnd,
                text: str, sequence: int = 0) -> str:
    """Book a stream's end: its charge, never past `charge_cap`, its receipt and its output
    (the text sent, as a JSON object) checked; returns the problem ('' if none)."""
    session.settle(budget, booked_charge(deal, budget, end.usage, end.receipt))
    problem = receipt_problem(deal, end.receipt, end.usage, end.output_json, budget, sequence)
    output = parsed_output(deal, end.output_json)
    if not isinstance(output, dict) or output.get("text") != text:
        problem = problem or "the receipt commits to other text than was sent"
    if problem:
        deal.problems.append(problem)
    deal.outputs.append(output)
    return problem


def receipt_chain_problems(deal: Deal) -> list[str]:
    """Verify, in one batch, the receipt chain taken so far: neighbours link and the seller's
    signatures (every RECEIPT_SIGN_EVERY-th receipt) verify. Off the per-call hot path: no
    money is released before the buyer accepts or the window ends."""
    found = []
    # a retried call's answer repeats its receipt: count each receipt once
    distinct = {r.SerializeToString(): r for r in deal.unsigned_receipts}
    try:
        ag.check_receipt_chain(list(distinct.values()), deal.body.seller_id, complete=False,
                               signed_every=True)
    except Exception as error:
        found.append(f"bad receipt: {error}")
    # the chain is checked whole each time: record a problem once however often it runs
    deal.problems.extend(problem for problem in found if problem not in deal.problems)
    return found


def chain_shape(tariff: Tariff, max_total_atomic: int) -> tuple[int, int]:
    """(link value, chain length). Per-call: one link per call, worth the price. Metered: each
    call's maximum is a whole number of links, at most MAX_LINKS_PER_CALL (finer links prepay
    less beyond what a call needs), and the chain is no longer than MAX_CHAIN_LENGTH."""
    max_call_atomic = tariff.call_max_atomic
    if tariff.unit == CALLS:
        return max_call_atomic, links_for(max_total_atomic, max_call_atomic)
    calls = max(1, links_for(max_total_atomic, max_call_atomic))
    cap = max(1, min(MAX_LINKS_PER_CALL, MAX_CHAIN_LENGTH // calls, max_call_atomic))
    divisor = next(d for d in range(cap, 0, -1) if max_call_atomic % d == 0)
    link_value = max_call_atomic // divisor
    return link_value, links_for(max_total_atomic, link_value)
