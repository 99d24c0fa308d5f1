"""A buyer agent: funds its wallet, finds sellers, negotiates, hires with escrow, pays per call.

    with BuyerAgent("researcher", marketplace="127.0.0.1:7000") as buyer:
        buyer.fund("5.00", "USD")
        print(buyer.balance("USD"))                       # Money: 5.00 USD
        listings = buyer.discover("summarize", currency="USD")
        deal = buyer.negotiate(listings, "summarize", quantity=10, budget="0.05",
                               currency="USD")             # the first seller that answers
        buyer.hire(deal)                                  # Escrow: the maximum is held
        output = buyer.call(deal, {"text": "..."})        # a dict, checked against the schema
        escrow = buyer.finish(deal)                       # Escrow: captured, fee, refunded

Over A2A v1.0, from an Agent Card URL alone: `negotiate_card(url, skill, ...)`, `hire`, then
`send(deal, arguments)` pays each SendMessage with the voucher in the message metadata and
checks the receipt the task brings back; `ask(url, arguments)` calls a free skill or any plain
A2A agent (`agents._a2a_buying`, PROTOCOL.md "The A2A payment extension").

It never signs above its reservation price or budget (`agents.negotiation.Limits`). Each call
prepays the call's maximum and is charged its metered usage; the buyer checks every receipt
(signature, output hash, charge = tariff x reported usage, at most the reserve). A `Deal` is
plain data (`Deal.state()` / `BuyerAgent.restore_deal`), so a workflow can checkpoint it and a
new process, holding the same key, can continue paying under it.

Errors: every method raises only `agents.errors` (the tree is drawn there), never grpc's.
The signed gRPC stubs (`registry`, `settlement`, `wallets`) stay available for what the SDK
does not wrap (wallet policies, approvals); called directly, they raise grpc.RpcError.

Every call it makes, to the marketplace and to sellers, is signed with its key
(`marketplace.auth`); `credentials` (`marketplace.auth.channel_credentials`: a root CA, and a
client certificate for mutual TLS) make both connections TLS. `key`: see `agents.keystore`.
The async twin, with the same methods, is `agents.AsyncBuyerAgent`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from opentelemetry.trace import TracerProvider

from agents import _bargain
from agents._a2a_buying import A2ABuying
from agents._bargain import Quote
from agents._buyer_core import (
    IN_PROGRESS_WAIT_S,
    MAX_REPLANS,
    RETRY_PAUSE_S,
    RPC_TIMEOUT_S,
    BuyerCore,
    PlannedCall,
    wait_ran_out,
)
from agents._deal import Deal, receipt_problem
from agents._failover import Failover, unreachable
from agents._grpc_payment import VoucherClientInterceptor
from agents._outputs import output_of
from agents._rpc import sdk_error, sdk_method
from agents.errors import NegotiationFailed, SellerUnavailable
from agents.negotiation import Strategy
from agents.results import CallResult, Escrow, Money, Posting, Wallet, posting_from_message
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace.auth import SigningClientInterceptor, plain_channel, signed_channel
from marketplace.channel_cache import ChannelCache
from marketplace.grpc_tracing import span_if_active, tracing_active, untraced
from marketplace.identity import AgentKey
from marketplace.intercepted import intercept
from marketplace.market_channel import market_options, node_retry
from marketplace.v1 import registry_pb2, registry_pb2_grpc, settlement_pb2_grpc
from wallets.grpc_errors import error_info, error_reason
from wallets.v1 import wallet_pb2_grpc

if TYPE_CHECKING:
    from agents._streaming import StreamedCall

T = TypeVar("T")
_SCHEMA = registry_pb2.VERIFICATION_METHOD_SCHEMA

__all__ = ["BuyerAgent", "CallResult", "Deal", "receipt_problem"]


@dataclass
class _SellerStubs:
    """One connection to a seller, seen through a signing stub, an unsigned one (tracing
    only) and a bare one (no interceptor: an unsigned call while tracing is off)."""

    channel: grpc.Channel
    signed: agent_pb2_grpc.AgentServiceStub
    unsigned: agent_pb2_grpc.AgentServiceStub
    bare: agent_pb2_grpc.AgentServiceStub | None = None  # None: calls go through `unsigned`
    a2a: tuple[Any, Any] | None = None  # (signed, unsigned) A2AService stubs, made on first use


class BuyerAgent(A2ABuying, BuyerCore):
    def __init__(self, name: str, *, marketplace: str | Sequence[str],
                 key: AgentKey | str | None = None,
                 tracer_provider: TracerProvider | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        super().__init__(name, marketplace=marketplace, key=key,
                         tracer_provider=tracer_provider, credentials=credentials)
        self._channel = signed_channel(
            self.marketplace, self.key, credentials, options=market_options(self.marketplace),
            interceptors=[*node_retry(self.marketplace), *self._interceptors])
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self.settlement = settlement_pb2_grpc.SettlementServiceStub(self._channel)
        self.wallets = wallet_pb2_grpc.WalletServiceStub(self._channel)
        # one connection per seller dialed, the least recently used closed beyond MAX_CHANNELS
        self._seller_channels: ChannelCache[_SellerStubs] = ChannelCache(
            self._open_seller, lambda stubs: stubs.channel.close())

    def close(self) -> None:
        """Close the connections (to the marketplace and every seller); the buyer is done."""
        self._closed = True
        self._seller_channels.close()
        self._channel.close()

    def __enter__(self) -> BuyerAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- wallet ---------------------------------------------------------------------------

    @sdk_method
    def wallet(self, currency_code: str) -> Wallet:
        """The buyer's wallet in a currency (opened on first use), with its balances."""
        return Wallet.from_message(self.wallets.OpenAccount(self._open_request(currency_code),
                                                            timeout=RPC_TIMEOUT_S))

    @sdk_method
    def balance(self, currency_code: str) -> Money:
        """What the wallet can spend now (posted minus what escrow holds), exact:
        `print(buyer.balance("USD"))` shows "0.99 USD"; `.amount_atomic` is the integer."""
        return self.wallet(currency_code).available

    @sdk_method
    def fund(self, amount: str | Decimal | int, currency_code: str, *,
             idempotency_key: str | None = None) -> Posting:
        """Deposit from the currency's sandbox rail: an exact decimal amount ("5.00"; floats
        are refused). Returns the ledger posting."""
        request = self._deposit_request("", amount, currency_code, idempotency_key)
        request.account_id = self.wallet(currency_code).account_id
        return posting_from_message(self.wallets.Deposit(request, timeout=RPC_TIMEOUT_S))

    # ---- discover and negotiate -----------------------------------------------------------

    @sdk_method
    def discover(self, skill: str, *, currency: str = "", max_price_atomic: int = 0,
                 limit: int = 20) -> list[registry_pb2.Listing]:
        """Live listings selling `skill`, cheapest first, then by earned reputation."""
        request = self._discover_request(skill, currency, max_price_atomic, limit)
        with self._tracer.start_as_current_span("discover", attributes={"agentmarket.skill":
                                                                        request.skill}):
            return list(self.registry.Discover(request, timeout=RPC_TIMEOUT_S).listings)

    def _stubs(self, endpoint: str) -> _SellerStubs:
        return self._seller_channels.get(endpoint)

    def _open_seller(self, endpoint: str) -> _SellerStubs:
        raw = plain_channel(endpoint, self.credentials)
        voucher = VoucherClientInterceptor(self.sessions, self._reserve_of)
        signed = intercept(raw, *self._interceptors, voucher, SigningClientInterceptor(self.key))
        return _SellerStubs(raw, agent_pb2_grpc.AgentServiceStub(signed),
                            agent_pb2_grpc.AgentServiceStub(intercept(raw, *self._interceptors)),
                            agent_pb2_grpc.AgentServiceStub(raw))

    def _seller(self, endpoint: str) -> agent_pb2_grpc.AgentServiceStub:
        """The seller's stub whose calls are signed by this buyer's key."""
        return self._stubs(endpoint).signed

    @sdk_method
    def bargain(self, listing: registry_pb2.Listing, skill: str, *, quantity: int,
                budget: str | Decimal, currency: str, max_rounds: int = 6,
                strategy: Strategy | None = None, reservation_price_atomic: int | None = None,
                deadline_s: int = 30, verification: int = _SCHEMA) -> Quote:
        """Negotiate with one seller up to an acceptable offer, without signing it yet."""
        return _bargain.bargain(self, listing, skill, **self._bargain_options(
            quantity, budget, currency, max_rounds=max_rounds, strategy=strategy,
            reservation_price_atomic=reservation_price_atomic, deadline_s=deadline_s,
            verification=verification))

    @sdk_method
    def negotiate(self, listing: registry_pb2.Listing | Sequence[registry_pb2.Listing],
                  skill: str, *, quantity: int, budget: str | Decimal, currency: str,
                  max_rounds: int = 6, strategy: Strategy | None = None,
                  reservation_price_atomic: int | None = None, deadline_s: int = 30,
                  verification: int = _SCHEMA, failover: bool = True) -> Deal:
        """Negotiate and return the agreement both signed. `listing` is one listing or a
        ranked list (`discover`'s). A seller that cannot be reached is reported to the
        marketplace (which checks it itself before it stops ranking it) and the next listing
        is tried: those given, then, with `failover`, the skill's other live listings.
        Raises SellerUnavailable only when none answers, NegotiationFailed when the one that
        answered made no acceptable offer."""
        options = self._bargain_options(
            quantity, budget, currency, max_rounds=max_rounds, strategy=strategy,
            reservation_price_atomic=reservation_price_atomic, deadline_s=deadline_s,
            verification=verification)
        tried = Failover(listing, skill, options["currency"])
        while True:
            if failover and tried.wants_more():
                tried.add(self.discover(skill, currency=options["currency"],
                                        limit=tried.refill_limit))
            candidate = tried.next()
            if candidate is None:
                raise tried.exhausted()
            try:
                return self._accept(_bargain.bargain(self, candidate, skill, **options))
            except _bargain.NotTheListedAgent as error:  # reachable, and not that seller
                tried.parked_at(candidate, error.answering_agent, error.message)
                continue
            except grpc.RpcError as error:
                if not unreachable(error):
                    raise
                tried.failed(candidate, sdk_error(error).message)
                self._report_unreachable(candidate)


    def _report_unreachable(self, listing: registry_pb2.Listing) -> None:
        """Tell the registry a seller did not answer; it checks for itself (never our word
        alone) and stops ranking the listing if it cannot reach it either."""
        with untraced(), contextlib.suppress(grpc.RpcError):
            self.registry.ReportUnreachable(registry_pb2.ReportUnreachableRequest(
                agent_id=listing.agent_id, endpoint=listing.endpoint), timeout=RPC_TIMEOUT_S)

    @sdk_method
    def negotiate_best(self, listings: list[registry_pb2.Listing], skill: str, *,
                       quantity: int, budget: str | Decimal, currency: str,
                       max_rounds: int = 6, strategy_for: Any = None,
                       verification: int = _SCHEMA) -> Deal:
        """Bargain with every seller, sign with the cheapest (lowest maximum total), decline
        the others. SellerUnavailable when none answered at all (an outage: retry),
        NegotiationFailed when none agreed. `strategy_for(listing)` gives each negotiation its
        own strategy."""
        options = self._bargain_options(quantity, budget, currency, max_rounds=max_rounds,
                                        verification=verification)
        quotes: list[Quote] = []
        failures: list[str] = []
        silent: list[str] = []  # the sellers that did not answer at all
        for listing in listings:
            try:
                quotes.append(_bargain.bargain(
                    self, listing, skill, strategy=strategy_for(listing) if strategy_for
                    else None, **options))
            except NegotiationFailed as error:
                failures.append(f"{listing.name}: {error}")
            except grpc.RpcError as error:
                failures.append(f"{listing.name}: {sdk_error(error).message}")
                if unreachable(error):
                    silent.append(listing.agent_id)
                    self._report_unreachable(listing)
        if not quotes and failures and len(silent) == len(failures):  # an outage: retry
            raise SellerUnavailable("no seller answered: " + "; ".join(failures))
        if not quotes:
            raise NegotiationFailed("no seller agreed within the limits: " + "; ".join(failures))
        quotes.sort(key=lambda q: (q.max_total_atomic, q.unit_price_atomic))
        for other in quotes[1:]:
            _bargain.decline(other.stub, "a cheaper offer was accepted", other.offer.rfq_id)
        return self._accept(quotes[0])

    @sdk_method
    def accept(self, quote: Quote) -> Deal:
        """Sign the quoted offer (with a fresh PayWord chain) and get it countersigned."""
        return self._accept(quote)

    def _accept(self, quote: Quote) -> Deal:
        signed, body, chain = self._sign(quote)
        reply = quote.stub.Negotiate(agent_pb2.NegotiationMessage(agreement=signed),
                                     timeout=RPC_TIMEOUT_S)
        return self._accepted(quote, signed, body, chain, reply)

    # ---- hire, call, finish ---------------------------------------------------------------

    @sdk_method
    def hire(self, deal: Deal, *, idempotency_key: str | None = None) -> Escrow:
        """Ask the marketplace to hold the agreement's maximum in escrow (idempotent per key,
        by default the agreement id). Raises `ApprovalRequired` when the wallet's policy wants
        a person to approve the payment first; once approved, call again (same key)."""
        deal = self._deal(deal)
        request = self._escrow_request(deal, idempotency_key)
        try:
            reply = self.settlement.OpenEscrow(request, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as error:
            if error_reason(error) != "APPROVAL_REQUIRED":
                raise
            approval_id = dict(error_info(error).metadata).get("approval_id", "")
            if not approval_id:
                from agents.approvals import find_approval

                found = find_approval(self, deal.body.terms.currency, request.idempotency_key,
                                      error.details() or "")
                approval_id = found.approval_id if found else ""
            raise self._approval_needed(deal, error.details() or "", approval_id) from None
        return self._escrowed(deal, reply)

    @sdk_method
    def call(self, deal: Deal, arguments: dict[str, Any], *, call_id: str | None = None,
             output_type: type[T] | None = None) -> Any:
        """One paid call; returns the skill's output (a dict, checked against its output
        schema), or an `output_type` (a pydantic model, dataclass ...) built from it. An answer
        that fails its checks raises SchemaViolation or ServerError (BAD_RECEIPT), its `result`
        the call (`invoke` returns it instead)."""
        return output_of(self.invoke(deal, arguments, call_id=call_id), output_type)

    @sdk_method
    def invoke(self, deal: Deal, arguments: dict[str, Any], *, call_id: str | None = None,
               voucher_at: tuple[int, int] | None = None) -> CallResult:
        """One paid call with its usage and receipt. `voucher_at` = (sequence, payword index)
        re-sends a voucher planned earlier (a resumed workflow); otherwise the session plans
        one that prepays the call's maximum. A retry with the same call id and voucher is
        answered with the first response and charged once."""
        planned = self._plan(deal, arguments, call_id, voucher_at)
        with span_if_active(self._tracer, self.tracer_provider, "paid_call",
                            attributes=lambda: self._span_attributes(planned)) as span:
            for attempt in range(MAX_REPLANS + 1):
                try:
                    response = self._send(planned)
                    break
                except grpc.RpcError as error:
                    planned = self._again_or_failed(planned, error, attempt)
            return self._answered(planned, response, span)

    def _send(self, planned: PlannedCall) -> agent_pb2.InvokeResponse:
        stubs = self._stubs(planned.deal.body.seller_endpoint)
        # a new payword is its own proof: sent unsigned, through no interceptor but tracing
        # (none while tracing is off: grpc's interceptor machinery costs more than the call)
        if planned.fresh:
            seller = stubs.unsigned if stubs.bare is None or \
                tracing_active(self.tracer_provider) else stubs.bare
        else:
            seller = stubs.signed
        deadline, in_progress = time.monotonic() + IN_PROGRESS_WAIT_S, False
        while (left := deadline - time.monotonic()) > 0:
            timeout = min(RPC_TIMEOUT_S, left)
            try:
                return seller.Invoke(planned.request, metadata=planned.metadata,  # type: ignore[no-any-return]
                                     timeout=timeout)
            except grpc.RpcError as error:
                if wait_ran_out(error, in_progress, timeout):
                    break
                if error_reason(error) != "CALL_IN_PROGRESS":
                    raise
                in_progress = True
                time.sleep(RETRY_PAUSE_S)  # the first attempt is still running: it will answer
        raise self._still_running(planned)

    @sdk_method
    def stream(self, deal: Deal, arguments: dict[str, Any], *, max_atomic: int | None = None,
               call_id: str | None = None) -> StreamedCall:
        """A streamed paid call: iterate it for text pieces; it stops when the prepaid budget
        (`max_atomic`, at least what is already prepaid; at most the per-call maximum) is
        spent. After iteration `.end` holds the receipt for what was delivered."""
        from agents._streaming import StreamedCall

        return StreamedCall.start(self, self._deal(deal), arguments, max_atomic=max_atomic,
                                  call_id=call_id)

    @sdk_method
    def finish(self, deal: Deal, *, confirm: bool = True) -> Escrow:
        """Tell the seller the task is done; it redeems, the marketplace verifies. With
        `confirm` (and no problem found in any receipt) the buyer then accepts the work, so it
        is paid now rather than when the dispute window closes."""
        deal = self._deal(deal)
        response = self._seller(deal.body.seller_endpoint).Finish(
            self._finish_request(deal, confirm), timeout=RPC_TIMEOUT_S)
        if self._finished(deal, response, confirm):
            return self.confirm(deal)
        assert deal.escrow is not None
        return deal.escrow

    @sdk_method
    def confirm(self, deal: Deal) -> Escrow:
        """Accept delivered work (BUYER_ACCEPTANCE agreements)."""
        deal = self._deal(deal)
        with self._counting_refusals(deal, "confirm"):
            reply = self.settlement.Confirm(self._confirm_request(deal), timeout=RPC_TIMEOUT_S)
        return self._escrowed(deal, reply)

    @sdk_method
    def dispute(self, deal: Deal, reason: str) -> Escrow:
        """Dispute delivered work inside the dispute window; the earned amount is frozen."""
        deal = self._deal(deal)
        with self._counting_refusals(deal, "dispute"):
            reply = self.settlement.Dispute(self._dispute_request(deal, reason),
                                            timeout=RPC_TIMEOUT_S)
        return self._escrowed(deal, reply)

    @sdk_method
    def escrow(self, deal: Deal) -> Escrow:
        """The agreement's escrow as the marketplace has it now."""
        from marketplace.v1 import settlement_pb2

        deal = self._deal(deal)
        return self._escrowed(deal, self.settlement.GetEscrow(settlement_pb2.GetEscrowRequest(
            agreement_id=deal.agreement_id), timeout=RPC_TIMEOUT_S))

