"""A buyer agent: funds its wallet, finds sellers, negotiates, hires with escrow, pays per call.

    buyer = BuyerAgent("researcher", marketplace="127.0.0.1:7000")
    buyer.fund("5.00", "USD")
    listing = buyer.discover("summarize", currency="USD")[0]
    deal = buyer.negotiate(listing, "summarize", quantity=10, budget="0.05", currency="USD")
    buyer.hire(deal)
    output = buyer.call(deal, {"text": "..."})
    escrow = buyer.finish(deal)

It never signs above its reservation price or budget (`agents.negotiation.Limits`). Each call
prepays the call's maximum and is charged its metered usage; the buyer checks every receipt
(signature, output hash, charge = tariff x reported usage, at most the reserve). A `Deal` is
plain data (`Deal.state()` / `BuyerAgent.restore_deal`), so a workflow can checkpoint it and a
new process, holding the same key, can continue paying under it.

Every call it makes, to the marketplace and to sellers, is signed with its key
(`marketplace.auth`); `credentials` (`marketplace.auth.channel_credentials`: a root CA, and a
client certificate for mutual TLS) make both connections TLS.
"""

from __future__ import annotations

import functools
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import grpc
from jsonschema import ValidationError
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from agents import _bargain
from agents._bargain import Quote
from agents._grpc_payment import ANSWER_MAY_BE_LOST, VoucherClientInterceptor
from agents._schemas_cache import validator
from agents.errors import (
    AgentmarketError,
    ApprovalRequired,
    InvalidArgument,
    NegotiationFailed,
    Unavailable,
)
from agents.metering import CALLS, Tariff
from agents.negotiation import Strategy
from agents.payments import VOUCHER_METADATA_KEY, PaymentSession, links_for
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace import agreements as ag
from marketplace.auth import SigningClientInterceptor, plain_channel, signed_channel
from marketplace.grpc_tracing import client_interceptors, span_if_active
from marketplace.identity import AgentKey
from marketplace.payword import MAX_CHAIN_LENGTH, PaywordChain
from marketplace.v1 import (
    agreement_pb2,
    registry_pb2,
    registry_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from wallets import attributes as attr
from wallets.currencies import currency as _currency
from wallets.grpc_errors import error_info
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

if TYPE_CHECKING:
    from agents._streaming import StreamedCall

RPC_TIMEOUT_S = 10.0
AWAITING_RELEASE = (settlement_pb2.AGREEMENT_STATE_VERIFIED,
                    settlement_pb2.AGREEMENT_STATE_DELIVERED)
MAX_LINKS_PER_CALL = 64
RETRY_IN_PROGRESS = 100  # x 50 ms: how long a retried call waits for its first attempt


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
    tariff: Tariff | None = None
    seed_hex: str = ""
    problems: list[str] = field(default_factory=list)
    # calls whose answer was lost: call id -> (voucher sequence, payword index) to re-send
    unanswered: dict[str, tuple[int, int]] = field(default_factory=dict)
    # receipts taken so far, their chain and signatures checked in one batch before accepting
    unsigned_receipts: list[agreement_pb2.Receipt] = field(default_factory=list)

    @functools.cached_property
    def output_validator(self) -> Any:
        """The compiled output-schema validator (every call's output meets it)."""
        return validator(self.output_schema)

    @property
    def call_max_atomic(self) -> int:
        """What each call prepays: its maximum charge."""
        return self.tariff.call_max_atomic if self.tariff else self.body.terms.unit_price_atomic

    def state(self) -> dict[str, Any]:
        """JSON-ready, for a checkpoint. It holds the PayWord seed: whoever reads it can spend
        what the agreement's escrow holds, so keep checkpoints as private as the agent's key."""
        tariff = self.tariff or Tariff(CALLS, self.body.terms.unit_price_atomic)
        return {"agreement_hex": self.agreement.SerializeToString().hex(),
                "seed_hex": self.seed_hex, "output_schema": self.output_schema,
                "rounds": self.rounds, "tariff": [tariff.unit, tariff.unit_price_atomic,
                                                  tariff.output_unit_price_atomic,
                                                  tariff.max_call_atomic]}


@dataclass
class _SellerStubs:
    """One connection to a seller, seen through a signing stub and an unsigned one."""

    channel: grpc.Channel
    signed: agent_pb2_grpc.AgentServiceStub
    unsigned: agent_pb2_grpc.AgentServiceStub


@dataclass
class CallResult:
    """One paid call: the output, its metered usage and the seller's receipt."""

    output: Any
    usage: agent_pb2.Usage
    receipt: agreement_pb2.Receipt
    verified: bool
    problem: str = ""


class BuyerAgent:
    def __init__(self, name: str, *, marketplace: str, key: AgentKey | None = None,
                 tracer_provider: TracerProvider | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.name = name
        self.key = key or AgentKey.generate()
        self.agent_id = self.key.agent_id
        self.marketplace = marketplace
        self.credentials = credentials
        self.tracer_provider = tracer_provider
        self._tracer = trace.get_tracer("agentmarket.buyer", tracer_provider=tracer_provider)
        self._interceptors = client_interceptors(tracer_provider)
        self._channel = signed_channel(marketplace, self.key, credentials,
                                       interceptors=self._interceptors)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self.settlement = settlement_pb2_grpc.SettlementServiceStub(self._channel)
        self.wallets = wallet_pb2_grpc.WalletServiceStub(self._channel)
        self.sessions: dict[str, PaymentSession] = {}
        self.deals: dict[str, Deal] = {}
        self._seller_channels: dict[str, _SellerStubs] = {}

    def close(self) -> None:
        for stubs in self._seller_channels.values():
            stubs.channel.close()
        self._channel.close()

    @staticmethod
    def _now_ms() -> int:
        return time.time_ns() // 1_000_000

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

    def _stubs(self, endpoint: str) -> _SellerStubs:
        stubs = self._seller_channels.get(endpoint)
        if stubs is None:
            raw = plain_channel(endpoint, self.credentials)
            voucher = VoucherClientInterceptor(self.sessions, self._reserve_of)
            signed = grpc.intercept_channel(raw, *self._interceptors, voucher,
                                            SigningClientInterceptor(self.key))
            stubs = _SellerStubs(raw, agent_pb2_grpc.AgentServiceStub(signed),
                                 agent_pb2_grpc.AgentServiceStub(
                                     grpc.intercept_channel(raw, *self._interceptors)))
            self._seller_channels[endpoint] = stubs
        return stubs

    def _seller(self, endpoint: str) -> agent_pb2_grpc.AgentServiceStub:
        """The seller's stub whose calls are signed by this buyer's key."""
        return self._stubs(endpoint).signed

    def _reserve_of(self, agreement_id: str, request: Any) -> int:
        return self.deals[agreement_id].call_max_atomic

    def bargain(self, listing: registry_pb2.Listing, skill: str, *, quantity: int,
                budget: str | Decimal, currency: str, max_rounds: int = 6,
                strategy: Strategy | None = None, reservation_price_atomic: int | None = None,
                deadline_s: int = 30,
                verification: int = registry_pb2.VERIFICATION_METHOD_SCHEMA) -> Quote:
        """Negotiate with one seller up to an acceptable offer, without signing it yet."""
        return _bargain.bargain(
            self, listing, skill, quantity=quantity,
            budget_atomic=_currency(currency).atomic(budget), currency=currency,
            max_rounds=max_rounds, strategy=strategy,
            reservation_price_atomic=reservation_price_atomic, deadline_s=deadline_s,
            verification=verification)

    def negotiate(self, listing: registry_pb2.Listing, skill: str, *, quantity: int,
                  budget: str | Decimal, currency: str, max_rounds: int = 6,
                  strategy: Strategy | None = None, reservation_price_atomic: int | None = None,
                  deadline_s: int = 30,
                  verification: int = registry_pb2.VERIFICATION_METHOD_SCHEMA) -> Deal:
        """Negotiate with one seller; return the agreement both signed."""
        return self.accept(self.bargain(
            listing, skill, quantity=quantity, budget=budget, currency=currency,
            max_rounds=max_rounds, strategy=strategy,
            reservation_price_atomic=reservation_price_atomic, deadline_s=deadline_s,
            verification=verification))

    def negotiate_best(self, listings: list[registry_pb2.Listing], skill: str, *,
                       quantity: int, budget: str | Decimal, currency: str,
                       max_rounds: int = 6, strategy_for: Any = None,
                       verification: int = registry_pb2.VERIFICATION_METHOD_SCHEMA) -> Deal:
        """Bargain with every seller, sign with the cheapest (lowest maximum total), decline
        the others. `strategy_for(listing)` gives each negotiation its own strategy."""
        quotes: list[Quote] = []
        failures: list[str] = []
        for listing in listings:
            try:
                quotes.append(self.bargain(
                    listing, skill, quantity=quantity, budget=budget, currency=currency,
                    max_rounds=max_rounds, verification=verification,
                    strategy=strategy_for(listing) if strategy_for else None))
            except (NegotiationFailed, InvalidArgument, grpc.RpcError) as error:
                failures.append(f"{listing.name}: {error}")
        if not quotes:
            raise NegotiationFailed("no seller agreed within the limits: " + "; ".join(failures))
        quotes.sort(key=lambda q: (q.max_total_atomic, q.unit_price_atomic))
        for other in quotes[1:]:
            _bargain.decline(other.stub, "a cheaper offer was accepted")
        return self.accept(quotes[0])

    def accept(self, quote: Quote) -> Deal:
        """Sign the quoted offer (with a fresh PayWord chain) and get it countersigned."""
        terms = quote.offer.terms
        link_value, length = _chain_shape(quote.tariff, terms.max_total_atomic)
        chain = PaywordChain(length)
        listing = quote.listing
        body = agreement_pb2.AgreementBody(
            rfq_id=quote.offer.rfq_id, buyer_id=self.agent_id, seller_id=listing.agent_id,
            seller_endpoint=listing.endpoint, terms=terms, payword_root=chain.root,
            payword_length=length, link_value_atomic=link_value, created_at_ms=self._now_ms(),
            nonce=os.urandom(16), offer_expires_at_ms=quote.offer.expires_at_ms)
        try:
            quote.protocol.accept(body, self._now_ms())
        except AgentmarketError as error:
            raise NegotiationFailed(f"the offer cannot be accepted: {error}") from None
        signed = agreement_pb2.SignedAgreement(body=body.SerializeToString())
        ag.sign_as_buyer(signed, self.key)
        reply = quote.stub.Negotiate(agent_pb2.NegotiationMessage(agreement=signed),
                                     timeout=RPC_TIMEOUT_S)
        if reply.WhichOneof("kind") != "agreement":
            raise NegotiationFailed(f"the seller did not countersign: {reply.reject_reason}")
        countersigned = reply.agreement
        if countersigned.body != signed.body:
            raise NegotiationFailed("the seller changed the agreement")
        ag.check_signatures(countersigned, body)
        schema = json.loads(quote.skill.output_schema_json) if quote.skill.output_schema_json \
            else {}
        deal = Deal(countersigned, body, ag.agreement_id(countersigned.body), schema,
                    quote.rounds, tariff=quote.tariff, seed_hex=chain.seed.hex())
        self._keep(deal, chain)
        return deal

    def _keep(self, deal: Deal, chain: PaywordChain) -> None:
        self.deals[deal.agreement_id] = deal
        if deal.agreement_id not in self.sessions:
            self.sessions[deal.agreement_id] = PaymentSession(
                deal.agreement_id, chain, deal.body.link_value_atomic,
                deal.body.terms.max_total_atomic)

    def restore_deal(self, state: dict[str, Any]) -> Deal:
        """The deal a checkpoint holds (`Deal.state()`), ready to pay under again."""
        signed = agreement_pb2.SignedAgreement.FromString(bytes.fromhex(state["agreement_hex"]))
        body = agreement_pb2.AgreementBody.FromString(signed.body)
        agreement_id = ag.agreement_id(signed.body)
        if body.buyer_id != self.agent_id:
            raise InvalidArgument("the checkpointed agreement belongs to another buyer key")
        known = self.deals.get(agreement_id)
        if known is not None:
            return known
        deal = Deal(signed, body, agreement_id, state["output_schema"], state["rounds"],
                    tariff=Tariff(*state["tariff"]), seed_hex=state["seed_hex"])
        chain = PaywordChain(body.payword_length, seed=bytes.fromhex(state["seed_hex"]))
        if chain.root != body.payword_root:
            raise InvalidArgument("the checkpointed seed does not match the agreement's chain")
        self._keep(deal, chain)
        return deal

    # ---- hire, call, finish ---------------------------------------------------------------

    def hire(self, deal: Deal, *, idempotency_key: str | None = None) -> settlement_pb2.Escrow:
        """Ask the marketplace to hold the agreement's maximum in escrow (idempotent per key,
        by default the agreement id). Raises `ApprovalRequired` when the wallet's policy wants
        a person to approve the payment first; once approved, call again (same key)."""
        key = idempotency_key or f"escrow:{deal.agreement_id}"
        try:
            deal.escrow = self.settlement.OpenEscrow(settlement_pb2.OpenEscrowRequest(
                idempotency_key=key, agreement=deal.agreement), timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as error:
            info = error_info(error)
            reason, metadata = info.reason, dict(info.metadata)
            if reason != ApprovalRequired.reason:
                raise
            from agents.approvals import find_approval

            terms = deal.body.terms
            approval_id = metadata.get("approval_id", "")
            if not approval_id:
                found = find_approval(self, terms.currency, key, error.details() or "")
                approval_id = found.approval_id if found else ""
            raise ApprovalRequired(error.details() or "the payment needs approval",
                                   approval_id=approval_id,
                                   amount_atomic=terms.max_total_atomic,
                                   currency=terms.currency,
                                   counterparty=deal.body.seller_id) from None
        return deal.escrow

    def call(self, deal: Deal, arguments: dict[str, Any], *, call_id: str | None = None
             ) -> dict[str, Any]:
        """One paid call; the output is checked against the skill's output schema."""
        return self.invoke(deal, arguments, call_id=call_id).output  # type: ignore[no-any-return]

    def invoke(self, deal: Deal, arguments: dict[str, Any], *, call_id: str | None = None,
               voucher_at: tuple[int, int] | None = None) -> CallResult:
        """One paid call with its usage and receipt. `voucher_at` = (sequence, payword index)
        re-sends a voucher planned earlier (a resumed workflow); otherwise the session plans
        one that prepays the call's maximum. A retry with the same call id and voucher is
        answered with the first response and charged once."""
        session = self.sessions[deal.agreement_id]
        reserve = deal.call_max_atomic
        lost = deal.unanswered.pop(call_id, None) if call_id else None
        if lost is not None:  # its answer was lost: the same voucher fetches it, charged once
            voucher_at = lost
        if voucher_at is None:
            revealed = session.index
            voucher = session.next_voucher(reserve)
            fresh = voucher.payword_index > revealed  # a new word: proof enough, no signature
        else:
            voucher = session.voucher(*voucher_at)
            fresh = False  # a re-sent voucher proves nothing new: sign it
        request = agent_pb2.InvokeRequest(agreement_id=deal.agreement_id,
                                          input_json=json.dumps(arguments),
                                          call_id=call_id or uuid.uuid4().hex)
        settles = voucher_at is None or lost is not None
        terms = deal.body.terms
        with span_if_active(self._tracer, self.tracer_provider, "paid_call", attributes=lambda: {
                attr.AGREEMENT_ID: deal.agreement_id, attr.SKILL: terms.skill,
                "agentmarket.reserved_atomic": reserve, attr.CURRENCY: terms.currency,
                attr.PAYER: self.agent_id, attr.PAYEE: deal.body.seller_id}) as span:
            try:
                response = self._send(deal, request, voucher, fresh=fresh)
            except grpc.RpcError as error:
                if settles and error.code() in ANSWER_MAY_BE_LOST:
                    # the seller may have run and charged it: keep the reservation; a retry
                    # with this call id re-sends this voucher and gets the first answer
                    deal.unanswered[request.call_id] = (voucher.sequence, voucher.payword_index)
                elif settles:
                    session.settle(reserve, 0)
                raise
            if settles:
                session.settle(reserve, response.usage.charged_atomic)
            result = self._check(deal, response, reserve)
            if span.is_recording():
                span.set_attributes({attr.AMOUNT_ATOMIC: response.usage.charged_atomic,
                                     "agentmarket.verified": result.verified})
                if result.problem:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, result.problem))
        return result

    def _send(self, deal: Deal, request: agent_pb2.InvokeRequest,
              voucher: agreement_pb2.Voucher, *, fresh: bool = False
              ) -> agent_pb2.InvokeResponse:
        stubs = self._stubs(deal.body.seller_endpoint)
        # a new payword is its own proof: sent unsigned, through no interceptor but tracing
        seller = stubs.unsigned if fresh else stubs.signed
        metadata = [(VOUCHER_METADATA_KEY, voucher.SerializeToString())]
        for _attempt in range(RETRY_IN_PROGRESS):
            try:
                return seller.Invoke(request, metadata=metadata, timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as error:
                if error_info(error).reason != "CALL_IN_PROGRESS":
                    raise
                time.sleep(0.05)  # the first attempt is still running: its answer will come
        raise Unavailable("a retried call was still running at the seller; retry later")

    def _check(self, deal: Deal, response: agent_pb2.InvokeResponse, reserve: int
               ) -> CallResult:
        """Verify a call's receipt and output; record problems on the deal."""
        receipt, usage = response.receipt, response.usage
        problem = receipt_problem(deal, receipt, usage, response.output_json, reserve)
        output = json.loads(response.output_json)
        try:
            deal.output_validator.validate(output)
        except ValidationError as error:
            problem = problem or f"output does not match the schema: {error.message}"
            deal.failed_outputs += 1
        if problem:
            deal.problems.append(problem)
        deal.outputs.append(output)
        return CallResult(output, usage, receipt, not problem, problem)

    def stream(self, deal: Deal, arguments: dict[str, Any], *, max_atomic: int | None = None,
               call_id: str | None = None) -> StreamedCall:
        """A streamed paid call: iterate it for text pieces; it stops when the prepaid budget
        (`max_atomic`, at least what is already prepaid; at most the per-call maximum) is
        spent. After iteration `.end` holds the receipt for what was delivered."""
        from agents._streaming import StreamedCall

        return StreamedCall.start(self, deal, arguments, max_atomic=max_atomic, call_id=call_id)

    def finish(self, deal: Deal, *, confirm: bool = True) -> settlement_pb2.Escrow:
        """Tell the seller the task is done; it redeems, the marketplace verifies. With
        `confirm` (and no problem found in any receipt) the buyer then accepts the work, so it
        is paid now rather than when the dispute window closes."""
        signature = self.key.sign(ag.request_message("finish", deal.agreement_id))
        response = self._seller(deal.body.seller_endpoint).Finish(agent_pb2.FinishRequest(
            agreement_id=deal.agreement_id, buyer_signature=signature), timeout=RPC_TIMEOUT_S)
        deal.escrow = response.escrow
        self.check_receipt_signatures(deal)
        if confirm and not deal.problems and deal.escrow.state in AWAITING_RELEASE:
            return self.confirm(deal)
        return deal.escrow

    def check_receipt_signatures(self, deal: Deal) -> list[str]:
        """Verify, in one batch, the receipt chain taken so far: neighbours link and the
        seller's signatures (every RECEIPT_SIGN_EVERY-th receipt) verify. Off the per-call hot
        path: no money is released before the buyer accepts or the window ends."""
        found = []
        # a retried call's answer repeats its receipt: count each receipt once
        distinct = {r.SerializeToString(): r for r in deal.unsigned_receipts}
        try:
            ag.check_receipt_chain(list(distinct.values()), deal.body.seller_id,
                                   complete=False)
        except Exception as error:
            found.append(f"bad receipt: {error}")
        # the chain is checked whole each time: record a problem once however often it runs
        deal.problems.extend(problem for problem in found if problem not in deal.problems)
        return found

    def confirm(self, deal: Deal) -> settlement_pb2.Escrow:
        """Accept delivered work (BUYER_ACCEPTANCE agreements)."""
        deal.escrow = self.settlement.Confirm(settlement_pb2.ConfirmRequest(
            idempotency_key=f"confirm:{deal.agreement_id}", agreement_id=deal.agreement_id,
            buyer_signature=self.key.sign(ag.request_message("confirm", deal.agreement_id))),
            timeout=RPC_TIMEOUT_S)
        return deal.escrow

    def dispute(self, deal: Deal, reason: str) -> settlement_pb2.Escrow:
        """Dispute delivered work inside the dispute window; the earned amount is frozen."""
        reason = reason[:2000] or "disputed"
        deal.escrow = self.settlement.Dispute(settlement_pb2.DisputeRequest(
            idempotency_key=f"dispute:{deal.agreement_id}", agreement_id=deal.agreement_id,
            reason=reason, buyer_signature=self.key.sign(
                ag.dispute_message(deal.agreement_id, reason, []))), timeout=RPC_TIMEOUT_S)
        return deal.escrow


def receipt_problem(deal: Deal, receipt: agreement_pb2.Receipt, usage: agent_pb2.Usage,
                    output_json: str, reserve: int) -> str:
    """Why a receipt does not check out ('' when it does): signature and output hash, the
    charge equal to the tariff applied to the reported usage (capped at the call's reserve)."""
    try:
        ag.check_receipt(receipt, deal.body.seller_id, signature=False)
    except Exception as error:
        return f"bad receipt: {error}"
    deal.unsigned_receipts.append(receipt)  # its signature: checked before accepting
    if receipt.output_json != output_json or receipt.agreement_id != deal.agreement_id:
        return "the receipt commits to another output"
    tariff = deal.tariff or Tariff(CALLS, deal.body.terms.unit_price_atomic)
    expected = min(tariff.charge_atomic(input_tokens=usage.input_tokens,
                                        output_tokens=usage.output_tokens, units=usage.units),
                   max(reserve, usage.reserved_atomic))
    if receipt.charged_atomic != usage.charged_atomic or receipt.charged_atomic != expected:
        return f"charged {receipt.charged_atomic}, the tariff says {expected} for the usage"
    return ""


def _chain_shape(tariff: Tariff, max_total_atomic: int) -> tuple[int, int]:
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

