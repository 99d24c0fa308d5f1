"""What the sync and the async buyer share: identity, deals and their payment sessions, and
every operation's steps that are not I/O (checked inputs, requests, checked answers).

`BuyerAgent` (grpc) and `AsyncBuyerAgent` (grpc.aio) are thin shells over this: each sends the
request built here over its own connection and hands the answer back here, so the money rules
(what a call prepays, how a receipt is checked, when an agreement is over) are written once.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import grpc
from jsonschema import ValidationError
from opentelemetry import trace
from opentelemetry.trace import TracerProvider
from referencing.exceptions import Unresolvable

from agents import _inputs
from agents._bargain import Quote
from agents._deal import (
    Deal,
    MalformedAnswer,
    agreement_body,
    book_malformed,
    booked_charge,
    countersigned_deal,
    parsed_output,
    receipt_chain_problems,
    receipt_problem,
    restored_deal,
)
from agents._grpc_payment import answer_may_be_lost
from agents._outputs import SCHEMA_PROBLEMS
from agents._rpc import trace_id_of
from agents.errors import (
    ApprovalRequired,
    InvalidArgument,
    ServerError,
    Unavailable,
)
from agents.keystore import load_key
from agents.payment_session import PaymentSession
from agents.results import AgreementState, CallResult, Escrow, Usage
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace.grpc_tracing import client_interceptors
from marketplace.identity import AgentKey
from marketplace.payword import PaywordChain
from marketplace.v1 import agreement_pb2, registry_pb2, settlement_pb2
from wallets import attributes as attr
from wallets.grpc_errors import error_reason
from wallets.v1 import wallet_pb2

RPC_TIMEOUT_S = 10.0
STREAM_TIMEOUT_S = 60.0  # a streamed call: a model writing at length takes longer than an RPC
AWAITING_RELEASE = (AgreementState.VERIFIED, AgreementState.DELIVERED)
# How long a call waits in all while the seller says its first attempt still runs
# (CALL_IN_PROGRESS), attempts included: bounded, whatever the seller answers
IN_PROGRESS_WAIT_S = 15.0
RETRY_PAUSE_S = 0.05
MAX_REPLANS = 16  # new vouchers for one call whose earlier ones a later call overtook
MAX_DISCOVER = 100
MAX_REASON_CHARS = 2000


def wait_ran_out(error: grpc.RpcError, in_progress: bool, timeout_s: float) -> bool:
    """Whether `error` ends the wait for a call the seller said still runs (`in_progress`):
    the attempt, given only the wait's last `timeout_s`, hit that deadline. The call is then
    still running, not lost: the buyer says so (`_still_running`), as when the wait ends
    between attempts."""
    return in_progress and timeout_s < RPC_TIMEOUT_S \
        and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@dataclass
class PlannedCall:
    """One paid call, ready to send: the request, the voucher that pays it, what it reserves."""

    deal: Deal
    request: agent_pb2.InvokeRequest
    voucher: agreement_pb2.Voucher
    reserve_atomic: int
    fresh: bool  # a new payword: its own proof, sent unsigned
    settles: bool  # booking the answer settles the session's reservation
    replannable: bool = False  # a voucher planned for this send (not one sent before)
    named: bool = True  # the caller gave the call id (else the SDK drew one it never sees)
    replay: bool = False  # the voucher of an answered call id: its answer is booked already

    @property
    def metadata(self) -> list[tuple[str, bytes]]:
        return call_metadata(self.deal, self.voucher)


def overtaken(error: grpc.RpcError, session: PaymentSession, voucher: agreement_pb2.Voucher,
              attempt: int) -> bool:
    """Whether the seller refused `voucher` only because a later one of the same session
    reached it first (calls on one deal run at once; the seller takes words in order), and
    the call may still be paid again."""
    return attempt < MAX_REPLANS and error_reason(error) == "INVALID_VOUCHER" and \
        session.sequence > voucher.sequence


def call_metadata(deal: Deal, voucher: agreement_pb2.Voucher) -> list[tuple[str, bytes]]:
    """A paid call's metadata: the voucher, and until a call of the deal was answered, the
    node's escrow proof (`marketplace.escrow_proof`: the seller need not ask the node)."""
    from agents.payments import paid_call_metadata

    return paid_call_metadata(voucher, b"" if deal.outputs else deal.escrow_proof)


class BuyerCore:
    """Identity, deals and sessions of a buyer, and the pure half of each operation."""

    def __init__(self, name: str, *, marketplace: str | Sequence[str],
                 key: AgentKey | str | None = None,
                 tracer_provider: TracerProvider | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        """`key`: an AgentKey, or the name under which the keystore keeps this agent's key
        (`agents.keystore`; "" or None: a new key each run, nothing kept). `marketplace`: a node's
        host:port, or several nodes' (a list of IP host:port, or one DNS name `dns:///NAME:PORT`):
        calls go round robin and a node that does not answer costs a retry on another."""
        self.name = _inputs.name(name, "buyer's name")
        self._closed = False  # close() was called: every method refuses (`agents._rpc`)
        self.key = load_key(key)
        self.agent_id = self.key.agent_id
        self.marketplace = _inputs.market(marketplace)
        self.credentials = credentials
        self.tracer_provider = tracer_provider
        self._tracer = trace.get_tracer("agentmarket.buyer", tracer_provider=tracer_provider)
        self._interceptors = client_interceptors(tracer_provider)
        self.sessions: dict[str, PaymentSession] = {}
        self.deals: dict[str, Deal] = {}

    @staticmethod
    def _now_ms() -> int:
        return time.time_ns() // 1_000_000

    def _reserve_of(self, agreement_id: str, request: Any) -> int:
        return self.deals[agreement_id].call_max_atomic

    # ---- wallet ---------------------------------------------------------------------------

    def _open_request(self, currency_code: str) -> wallet_pb2.OpenAccountRequest:
        code = _inputs.currency(currency_code).code
        return wallet_pb2.OpenAccountRequest(
            idempotency_key=f"open:{self.agent_id}:{code}", owner=self.agent_id, currency=code,
            kind=wallet_pb2.ACCOUNT_KIND_WALLET)

    def _deposit_request(self, account_id: str, amount: str | Decimal | int, code: str,
                         idempotency_key: str | None) -> wallet_pb2.DepositRequest:
        key = _inputs.idempotency_key(idempotency_key) if idempotency_key is not None \
            else f"fund:{uuid.uuid4().hex}"
        return wallet_pb2.DepositRequest(
            idempotency_key=key, account_id=account_id,
            amount=wallet_pb2.Money(amount_atomic=_inputs.amount_atomic(amount, code),
                                    currency=code))

    # ---- discover and negotiate -----------------------------------------------------------

    @staticmethod
    def _discover_request(skill: str, currency: str, max_price_atomic: int, limit: int
                          ) -> registry_pb2.DiscoverRequest:
        if not isinstance(skill, str) or len(skill) > 64:
            raise InvalidArgument(f"a skill is a name of at most 64 characters, got "
                                  f"{_inputs.shown(skill)}")
        code = _inputs.currency(currency).code if currency else ""
        _inputs.count(max_price_atomic, "max_price_atomic", minimum=0, maximum=2**62)
        _inputs.count(limit, "limit", maximum=MAX_DISCOVER)
        return registry_pb2.DiscoverRequest(skill=skill, currency=code,
                                            max_price_atomic=max_price_atomic, limit=limit)

    @staticmethod
    def _bargain_options(quantity: int, budget: str | Decimal | int, currency: str,
                         **options: Any) -> dict[str, Any]:
        code = _inputs.currency(currency).code
        _inputs.count(quantity, "quantity")
        return {"quantity": quantity, "currency": code,
                "budget_atomic": _inputs.amount_atomic(budget, code, what="budget"), **options}

    def _sign(self, quote: Quote) -> tuple[agreement_pb2.SignedAgreement,
                                           agreement_pb2.AgreementBody, PaywordChain]:
        if not isinstance(quote, Quote):
            raise InvalidArgument(f"accept() takes a Quote from bargain(), got "
                                  f"{type(quote).__name__}")
        body, chain = agreement_body(self.agent_id, quote, self._now_ms())
        signed = agreement_pb2.SignedAgreement(body=body.SerializeToString())
        ag.sign_as_buyer(signed, self.key)
        return signed, body, chain

    def _accepted(self, quote: Quote, signed: agreement_pb2.SignedAgreement,
                  body: agreement_pb2.AgreementBody, chain: PaywordChain, reply: Any) -> Deal:
        deal = countersigned_deal(quote, signed, body, chain, reply)
        self._keep(deal, chain)
        return deal

    def _keep(self, deal: Deal, chain: PaywordChain) -> None:
        self.deals[deal.agreement_id] = deal
        if deal.agreement_id not in self.sessions:
            self.sessions[deal.agreement_id] = PaymentSession(
                deal.agreement_id, chain, deal.body.link_value_atomic,
                deal.body.terms.max_total_atomic, deal.currency)

    def restore_deal(self, state: dict[str, Any]) -> Deal:
        """The deal a checkpoint holds (`Deal.state()`), ready to pay under again."""
        if not isinstance(state, dict):
            raise InvalidArgument("restore_deal takes the dict Deal.state() returned")
        deal, chain = restored_deal(self.agent_id, state)
        known = self.deals.get(deal.agreement_id)
        if known is not None:
            return known
        self._keep(deal, chain)
        return deal

    def _deal(self, deal: Any) -> Deal:
        """The buyer's own deal (refuses other objects, and deals of another buyer)."""
        if not isinstance(deal, Deal):
            raise InvalidArgument(f"expected a Deal from negotiate(), got {type(deal).__name__}")
        if deal.agreement_id not in self.sessions:
            raise InvalidArgument(f"agreement {deal.agreement_id[:12]}… is not this buyer's; "
                                  "restore_deal(deal.state()) to pay under it here")
        return deal

    # ---- hire -----------------------------------------------------------------------------

    def _escrow_request(self, deal: Deal, idempotency_key: str | None
                        ) -> settlement_pb2.OpenEscrowRequest:
        key = _inputs.idempotency_key(idempotency_key) if idempotency_key is not None \
            else f"escrow:{deal.agreement_id}"
        return settlement_pb2.OpenEscrowRequest(idempotency_key=key, agreement=deal.agreement)

    @staticmethod
    def _approval_needed(deal: Deal, message: str, approval_id: str) -> ApprovalRequired:
        terms = deal.body.terms
        return ApprovalRequired(message or "the payment needs approval", approval_id=approval_id,
                                amount_atomic=terms.max_total_atomic, currency=terms.currency,
                                counterparty=deal.body.seller_id)

    @staticmethod
    def _escrowed(deal: Deal, message: settlement_pb2.Escrow) -> Escrow:
        if message.proof:
            deal.escrow_proof = message.proof
        deal.escrow = Escrow.from_message(message)
        return deal.escrow

    # ---- paid calls -----------------------------------------------------------------------

    def _plan(self, deal: Deal, arguments: dict[str, Any], call_id: str | None,
              voucher_at: tuple[int, int] | None) -> PlannedCall:
        """The call's request and voucher. `voucher_at` = (sequence, payword index) re-sends
        a voucher planned earlier (a resumed workflow); a call id whose answer was lost, or
        that was answered, re-sends its own (the seller answers it once, charged once: an
        answered one is not booked again); otherwise the session plans one prepaying the
        call's maximum."""
        deal = self._deal(deal)
        deal.check_open()
        request = self._plan_request(deal, arguments, call_id)
        session = self.sessions[deal.agreement_id]
        reserve = deal.call_max_atomic
        named = call_id is not None
        lost = deal.unanswered.pop(call_id, None) if call_id else None
        if lost is not None:  # its answer was lost: the same voucher fetches it, charged once
            voucher_at = lost
        answered = deal.answered.get(call_id) if voucher_at is None and call_id else None
        if answered is not None:  # answered: the seller replays it, booked already
            voucher_at = answered
        if voucher_at is None:
            return self._with_new_voucher(deal, request, reserve, named)
        return PlannedCall(deal, request, session.voucher(*voucher_at), reserve,
                           False,  # a re-sent voucher proves nothing new: sign it
                           settles=lost is not None, named=named, replay=answered is not None)

    def _with_new_voucher(self, deal: Deal, request: agent_pb2.InvokeRequest, reserve: int,
                          named: bool = True) -> PlannedCall:
        """The call paid by the session's next voucher, prepaying `reserve`."""
        session = self.sessions[deal.agreement_id]
        revealed = session.index
        voucher = session.next_voucher(reserve)
        return PlannedCall(deal, request, voucher, reserve,
                           voucher.payword_index > revealed,  # a new word: proof enough
                           settles=True, replannable=True, named=named)

    def _again_or_failed(self, planned: PlannedCall, error: grpc.RpcError, attempt: int
                         ) -> PlannedCall:
        """The call again with a new voucher, when the seller refused its voucher only
        because a later one of this buyer's reached it first (calls on one deal run at once;
        the seller takes words in order): the refused one was planned for this send, and
        others were planned after it. Nothing was reserved at the seller for a refused
        voucher, so its reserve comes back here first. Otherwise the refusal stands: the call
        is booked as failed (`_failed`) and `error` raised."""
        session = self.sessions[planned.deal.agreement_id]
        if not planned.replannable or not overtaken(error, session, planned.voucher, attempt):
            self._failed(planned, error)
            raise error
        session.settle(planned.reserve_atomic, 0)
        return self._with_new_voucher(planned.deal, planned.request, planned.reserve_atomic,
                                      planned.named)

    def _stream_plan(self, deal: Deal, arguments: dict[str, Any], call_id: str | None,
                     max_atomic: int | None) -> tuple[Deal, agent_pb2.InvokeRequest,
                                                      agreement_pb2.Voucher, int]:
        """A streamed call's request and the voucher prepaying its budget (`max_atomic`, at
        most the per-call maximum)."""
        deal = self._deal(deal)
        deal.check_open()
        if max_atomic is not None:
            _inputs.count(max_atomic, "max_atomic", maximum=2**62)
        budget = min(max_atomic or deal.call_max_atomic, deal.call_max_atomic)
        request = self._plan_request(deal, arguments, call_id)
        return deal, request, self.sessions[deal.agreement_id].next_voucher(budget), budget

    def _plan_request(self, deal: Deal, arguments: dict[str, Any], call_id: str | None
                      ) -> agent_pb2.InvokeRequest:
        if not isinstance(arguments, dict):
            raise InvalidArgument(f"a call's arguments are a dict, got {type(arguments).__name__}")
        if call_id is not None and (not isinstance(call_id, str) or not 0 < len(call_id) <= 128):
            raise InvalidArgument(f"a call id is text of 1..128 characters, got "
                                  f"{_inputs.shown(call_id)}")
        try:
            input_json = json.dumps(arguments)
        except (TypeError, ValueError) as error:
            raise InvalidArgument(f"the arguments are not JSON: {error}") from None
        return agent_pb2.InvokeRequest(agreement_id=deal.agreement_id, input_json=input_json,
                                       call_id=call_id or secrets.token_hex(16))

    def _span_attributes(self, planned: PlannedCall) -> dict[str, Any]:
        deal, terms = planned.deal, planned.deal.body.terms
        return {attr.AGREEMENT_ID: deal.agreement_id, attr.SKILL: terms.skill,
                "agentmarket.reserved_atomic": planned.reserve_atomic,
                attr.CURRENCY: terms.currency, attr.PAYER: self.agent_id,
                attr.PAYEE: deal.body.seller_id}

    def _still_running(self, planned: PlannedCall) -> Unavailable:
        """The error for a call the seller kept saying runs still: booked as possibly answered
        (its reservation kept, its call id remembered), so a retry with the same call id
        re-sends the same voucher and gets the one answer, charged once."""
        self._failed(planned, None)
        return Unavailable(f"call {planned.request.call_id!r} was still running at the seller "
                           f"after {IN_PROGRESS_WAIT_S:g} s; retry later with the same call id")

    def _failed(self, planned: PlannedCall, error: grpc.RpcError | None) -> None:
        """Book a call that got no answer: if the seller may have run it (`error` None: the
        call was cancelled under way), keep the reservation (a retry with the same call id
        re-sends this voucher and gets the first answer; finish releases what the seller
        did not charge)."""
        if not planned.settles:
            return
        if error is None or answer_may_be_lost(error):
            planned.deal.unanswered[planned.request.call_id] = (planned.voucher.sequence,
                                                                planned.voucher.payword_index)
        else:
            self.sessions[planned.deal.agreement_id].settle(planned.reserve_atomic, 0)

    def _malformed(self, planned: PlannedCall, error: MalformedAnswer) -> None:
        """Book an answer whose payment metadata does not parse (`book_malformed`)."""
        if planned.settles:
            book_malformed(planned.deal, self.sessions[planned.deal.agreement_id],
                           planned.reserve_atomic, error)
        else:
            planned.deal.problems.append(error.message)

    def _answered(self, planned: PlannedCall, response: agent_pb2.InvokeResponse,
                  span: Any) -> CallResult:
        """Book the charge, check the receipt and the output; record problems on the deal."""
        deal = planned.deal
        receipt, usage = response.receipt, response.usage
        if planned.settles:  # never past what the buyer may owe, whatever the seller says
            self.sessions[deal.agreement_id].settle(planned.reserve_atomic, booked_charge(
                deal, planned.reserve_atomic, usage, receipt))
        if planned.named and planned.request.call_id:
            deal.remember_answered(planned.request.call_id,
                                   (planned.voucher.sequence, planned.voucher.payword_index))
        problem = receipt_problem(deal, receipt, usage, response.output_json,
                                  planned.reserve_atomic, planned.voucher.sequence)
        output = parsed_output(deal, response.output_json)
        try:
            deal.output_validator.validate(output)
        except ValidationError as error:
            problem = problem or f"{SCHEMA_PROBLEMS[0]}: {error.message}"
            deal.failed_outputs += 1
        except (RecursionError, Unresolvable):  # the seller's schema refers to itself, or away
            problem = problem or f"{SCHEMA_PROBLEMS[1]} (its $ref)"
            deal.failed_outputs += 1
        if problem and not (planned.replay and problem in deal.problems):
            deal.problems.append(problem)
        if not planned.replay:  # a replayed answer was received (and counted) before
            deal.outputs.append(output)
        if span.is_recording():
            span.set_attributes({attr.AMOUNT_ATOMIC: usage.charged_atomic,
                                 "agentmarket.verified": not problem})
            if problem:
                span.set_status(trace.Status(trace.StatusCode.ERROR, problem))
        return CallResult(output, Usage.from_message(usage, deal.currency), receipt,
                          not problem, problem, trace_id_of(span))

    # ---- finish, confirm, dispute ---------------------------------------------------------

    def _finish_request(self, deal: Deal, confirm: bool) -> agent_pb2.FinishRequest:
        """Finish, checking the receipt chain first: with `confirm` and no problem in it, the
        buyer's confirm goes with it, so the seller's redeem pays the work at once."""
        receipt_chain_problems(deal)
        request = agent_pb2.FinishRequest(
            agreement_id=deal.agreement_id,
            buyer_signature=self.key.sign(ag.request_message("finish", deal.agreement_id)))
        if confirm and not deal.problems:
            request.confirm_signature = self.key.sign(
                ag.request_message("confirm", deal.agreement_id))
        return request

    def _finished(self, deal: Deal, response: agent_pb2.FinishResponse, confirm: bool) -> bool:
        """Record the escrow after Finish; True when the buyer should still confirm (a seller
        or marketplace that did not pay on its confirmation). The escrow comes from the
        seller: one of another agreement, or in no known state, is a problem on the deal."""
        escrow = response.escrow
        if escrow.agreement_id != deal.agreement_id or \
                escrow.state not in AgreementState._value2member_map_:
            problem = "the seller's Finish answer is not this agreement's escrow"
            deal.problems.append(problem)
            raise ServerError(f"{problem}; the marketplace has the escrow (`escrow(deal)`)")
        self._escrowed(deal, escrow)
        assert deal.escrow is not None
        return confirm and not deal.problems and deal.escrow.state in AWAITING_RELEASE

    def check_receipt_signatures(self, deal: Deal) -> list[str]:
        """Verify, in one batch, the receipt chain taken so far (links and signatures)."""
        return receipt_chain_problems(self._deal(deal))

    @staticmethod
    def _idempotency_key(deal: Deal, operation: str) -> str:
        """`operation:agreement` until the node definitely refused it, then a key per try
        (`:1`, `:2` ...): the node replays a key's recorded outcome, refusals included, so a
        try after a refusal (the agreement finished since, another reason) needs its own."""
        tries = deal.refusals.get(operation, 0)
        return f"{operation}:{deal.agreement_id}" + (f":{tries}" if tries else "")

    @staticmethod
    @contextlib.contextmanager
    def _counting_refusals(deal: Deal, operation: str) -> Iterator[None]:
        """Count a definite refusal of `operation` sent inside; an answer that may have been
        lost is not one: its retry must send the same key to get the first outcome."""
        try:
            yield
        except grpc.RpcError as error:
            if not answer_may_be_lost(error):
                deal.refusals[operation] = deal.refusals.get(operation, 0) + 1
            raise

    def _confirm_request(self, deal: Deal) -> settlement_pb2.ConfirmRequest:
        return settlement_pb2.ConfirmRequest(
            idempotency_key=self._idempotency_key(deal, "confirm"),
            agreement_id=deal.agreement_id,
            buyer_signature=self.key.sign(ag.request_message("confirm", deal.agreement_id)))

    def _dispute_request(self, deal: Deal, reason: str) -> settlement_pb2.DisputeRequest:
        if not isinstance(reason, str):
            raise InvalidArgument(f"a dispute's reason is text, got {_inputs.shown(reason)}")
        reason = reason[:MAX_REASON_CHARS] or "disputed"
        return settlement_pb2.DisputeRequest(
            idempotency_key=self._idempotency_key(deal, "dispute"),
            agreement_id=deal.agreement_id,
            reason=reason, buyer_signature=self.key.sign(
                ag.dispute_message(deal.agreement_id, reason, [])))
