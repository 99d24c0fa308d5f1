"""The buyer on grpc.aio: `BuyerAgent`'s methods as coroutines, for asyncio programs (LangGraph
graphs run with `ainvoke`, A2A servers, agent frameworks that are async throughout).

    async with AsyncBuyerAgent("researcher", marketplace="127.0.0.1:7000") as buyer:
        await buyer.fund("5.00", "USD")
        print(await buyer.balance("USD"))
        listings = await buyer.discover("summarize", currency="USD")
        deal = await buyer.negotiate(listings, "summarize", quantity=10, budget="0.05",
                                     currency="USD")
        await buyer.hire(deal)
        output = await buyer.call(deal, {"text": "..."})
        async for piece in await buyer.stream(deal, {"topic": "agents"}):
            ...
        escrow = await buyer.finish(deal)

The same arguments, results (`Money`, `Escrow`, `CallResult` ...), errors (`agents.errors`),
failover and checks as the sync buyer: both are shells over `agents._buyer_core`. Its
connections are made on first use, inside the running event loop; `close()` (or leaving the
`async with`) closes them. One instance belongs to one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, TypeVar

import grpc
from opentelemetry.trace import TracerProvider

from agents import _bargain
from agents._a2a_buying import AsyncA2ABuying
from agents._aio_sellers import Market, Seller, SellerChannels
from agents._async_streaming import AsyncStreamedCall
from agents._bargain import Quote
from agents._buyer_core import (
    IN_PROGRESS_WAIT_S,
    MAX_REPLANS,
    RETRY_PAUSE_S,
    RPC_TIMEOUT_S,
    STREAM_TIMEOUT_S,
    BuyerCore,
    PlannedCall,
    call_metadata,
    wait_ran_out,
)
from agents._deal import Deal
from agents._failover import Failover, unreachable
from agents._outputs import output_of
from agents._rpc import async_sdk_method, sdk_error
from agents.errors import (
    FailedPrecondition,
    NegotiationFailed,
    SellerUnavailable,
)
from agents.negotiation import Strategy
from agents.results import CallResult, Escrow, Money, Posting, Wallet, posting_from_message
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace.aio_client import aio_channel
from marketplace.grpc_tracing import span_if_active, tracing_active, untraced
from marketplace.identity import AgentKey
from marketplace.market_channel import aio_node_retry, market_options
from marketplace.v1 import (
    agreement_pb2,
    registry_pb2,
    registry_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from wallets.grpc_errors import error_info, error_reason
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

T = TypeVar("T")
_SCHEMA = registry_pb2.VERIFICATION_METHOD_SCHEMA

__all__ = ["AsyncBuyerAgent", "AsyncStreamedCall"]


class AsyncBuyerAgent(AsyncA2ABuying, BuyerCore):
    def __init__(self, name: str, *, marketplace: str | Sequence[str],
                 key: AgentKey | str | None = None,
                 tracer_provider: TracerProvider | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        super().__init__(name, marketplace=marketplace, key=key,
                         tracer_provider=tracer_provider, credentials=credentials)
        self._market_stubs: Market | None = None
        self._sellers = SellerChannels(self.key, self.credentials, self.tracer_provider)
        self._loop: asyncio.AbstractEventLoop | None = None  # its channels' loop, once made

    # ---- connections ----------------------------------------------------------------------

    def _check_loop(self) -> None:
        """grpc.aio channels serve the event loop they were made in: refuse another loop
        (a second asyncio.run, a thread of its own) with a clear error, not asyncio's."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise FailedPrecondition("this AsyncBuyerAgent's connections belong to the event "
                                     "loop it first ran in: make one per event loop")

    @property
    def _market(self) -> Market:
        if self._market_stubs is None:
            channel = aio_channel(self.marketplace, self.key, self.credentials,
                                  tracer_provider=self.tracer_provider,
                                  options=market_options(self.marketplace),
                                  interceptors=aio_node_retry(self.marketplace))
            self._market_stubs = Market(channel, registry_pb2_grpc.RegistryServiceStub(channel),
                                         settlement_pb2_grpc.SettlementServiceStub(channel),
                                         wallet_pb2_grpc.WalletServiceStub(channel))
        return self._market_stubs

    def _stubs(self, endpoint: str) -> Seller:
        return self._sellers.get(endpoint)

    def _seller(self, endpoint: str) -> agent_pb2_grpc.AgentServiceStub:
        return self._stubs(endpoint).signed

    async def close(self) -> None:
        """Close the connections (to the marketplace and every seller); the buyer is done."""
        self._closed = True
        market, self._market_stubs = self._market_stubs, None
        await self._sellers.aclose(*([market.channel] if market is not None else []))

    async def __aenter__(self) -> AsyncBuyerAgent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- wallet ---------------------------------------------------------------------------

    @async_sdk_method
    async def wallet(self, currency_code: str) -> Wallet:
        """The buyer's wallet in a currency (opened on first use), with its balances."""
        return Wallet.from_message(await self._market.wallets.OpenAccount(
            self._open_request(currency_code), timeout=RPC_TIMEOUT_S))

    @async_sdk_method
    async def balance(self, currency_code: str) -> Money:
        """What the wallet can spend now (posted minus what escrow holds), exact."""
        return (await self.wallet(currency_code)).available

    @async_sdk_method
    async def fund(self, amount: str | Decimal | int, currency_code: str, *,
                   idempotency_key: str | None = None) -> Posting:
        """Deposit from the currency's sandbox rail (exact decimal amount, e.g. "5.00")."""
        request = self._deposit_request("", amount, currency_code, idempotency_key)
        request.account_id = (await self.wallet(currency_code)).account_id
        return posting_from_message(await self._market.wallets.Deposit(
            request, timeout=RPC_TIMEOUT_S))

    # ---- discover and negotiate -----------------------------------------------------------

    @async_sdk_method
    async def discover(self, skill: str, *, currency: str = "", max_price_atomic: int = 0,
                       limit: int = 20) -> list[registry_pb2.Listing]:
        """Live listings selling `skill`, cheapest first, then by earned reputation."""
        request = self._discover_request(skill, currency, max_price_atomic, limit)
        with self._tracer.start_as_current_span("discover", attributes={
                "agentmarket.skill": request.skill}):
            return list((await self._market.registry.Discover(
                request, timeout=RPC_TIMEOUT_S)).listings)

    @async_sdk_method
    async def bargain(self, listing: registry_pb2.Listing, skill: str, *, quantity: int,
                      budget: str | Decimal, currency: str, max_rounds: int = 6,
                      strategy: Strategy | None = None,
                      reservation_price_atomic: int | None = None, deadline_s: int = 30,
                      verification: int = _SCHEMA) -> Quote:
        """Negotiate with one seller up to an acceptable offer, without signing it yet."""
        return await _bargain.abargain(self, listing, skill, **self._bargain_options(
            quantity, budget, currency, max_rounds=max_rounds, strategy=strategy,
            reservation_price_atomic=reservation_price_atomic, deadline_s=deadline_s,
            verification=verification))

    @async_sdk_method
    async def negotiate(self, listing: registry_pb2.Listing | Sequence[registry_pb2.Listing],
                        skill: str, *, quantity: int, budget: str | Decimal, currency: str,
                        max_rounds: int = 6, strategy: Strategy | None = None,
                        reservation_price_atomic: int | None = None, deadline_s: int = 30,
                        verification: int = _SCHEMA, failover: bool = True) -> Deal:
        """`BuyerAgent.negotiate`: the first listed seller that answers, failing over."""
        options = self._bargain_options(
            quantity, budget, currency, max_rounds=max_rounds, strategy=strategy,
            reservation_price_atomic=reservation_price_atomic, deadline_s=deadline_s,
            verification=verification)
        tried = Failover(listing, skill, options["currency"])
        while True:
            if failover and tried.wants_more():
                tried.add(await self.discover(skill, currency=options["currency"],
                                              limit=tried.refill_limit))
            candidate = tried.next()
            if candidate is None:
                raise tried.exhausted()
            try:
                return await self._accept(await _bargain.abargain(self, candidate, skill,
                                                                  **options))
            except _bargain.NotTheListedAgent as error:  # reachable, and not that seller
                tried.parked_at(candidate, error.answering_agent, error.message)
                continue
            except grpc.RpcError as error:
                if not unreachable(error):
                    raise
                tried.failed(candidate, sdk_error(error).message)
                await self._report_unreachable(candidate)

    async def _report_unreachable(self, listing: registry_pb2.Listing) -> None:
        with untraced(), contextlib.suppress(grpc.RpcError):
            await self._market.registry.ReportUnreachable(
                registry_pb2.ReportUnreachableRequest(agent_id=listing.agent_id,
                                                      endpoint=listing.endpoint),
                timeout=RPC_TIMEOUT_S)

    @async_sdk_method
    async def negotiate_best(self, listings: list[registry_pb2.Listing], skill: str, *,
                             quantity: int, budget: str | Decimal, currency: str,
                             max_rounds: int = 6, strategy_for: Any = None,
                             verification: int = _SCHEMA) -> Deal:
        """Bargain with every seller at once, sign with the cheapest, decline the others.
        SellerUnavailable when none answered at all (an outage: retry)."""
        options = self._bargain_options(quantity, budget, currency, max_rounds=max_rounds,
                                        verification=verification)
        outcomes = await asyncio.gather(*(_bargain.abargain(
            self, listing, skill, strategy=strategy_for(listing) if strategy_for else None,
            **options) for listing in listings), return_exceptions=True)
        quotes = [q for q in outcomes if isinstance(q, Quote)]
        failures = []
        silent = []  # the sellers that did not answer at all
        for listing, outcome in zip(listings, outcomes, strict=True):
            if isinstance(outcome, grpc.RpcError):
                failures.append(f"{listing.name}: {sdk_error(outcome).message}")
                if unreachable(outcome):
                    silent.append(listing.agent_id)
                    await self._report_unreachable(listing)
            elif isinstance(outcome, NegotiationFailed):
                failures.append(f"{listing.name}: {outcome}")
            elif isinstance(outcome, BaseException):
                raise outcome
        if not quotes and failures and len(silent) == len(failures):  # an outage: retry
            raise SellerUnavailable("no seller answered: " + "; ".join(failures))
        if not quotes:
            raise NegotiationFailed("no seller agreed within the limits: " + "; ".join(failures))
        quotes.sort(key=lambda q: (q.max_total_atomic, q.unit_price_atomic))
        await asyncio.gather(*(_bargain.adecline(q.stub, "a cheaper offer was accepted",
                                                 q.offer.rfq_id) for q in quotes[1:]))
        return await self._accept(quotes[0])

    @async_sdk_method
    async def accept(self, quote: Quote) -> Deal:
        """Sign the quoted offer (with a fresh PayWord chain) and get it countersigned."""
        return await self._accept(quote)

    async def _accept(self, quote: Quote) -> Deal:
        signed, body, chain = self._sign(quote)
        reply = await quote.stub.Negotiate(agent_pb2.NegotiationMessage(agreement=signed),
                                           timeout=RPC_TIMEOUT_S)
        return self._accepted(quote, signed, body, chain, reply)

    # ---- hire, call, finish ---------------------------------------------------------------

    @async_sdk_method
    async def hire(self, deal: Deal, *, idempotency_key: str | None = None) -> Escrow:
        """Hold the agreement's maximum in escrow (`BuyerAgent.hire`)."""
        deal = self._deal(deal)
        request = self._escrow_request(deal, idempotency_key)
        try:
            reply = await self._market.settlement.OpenEscrow(request, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as error:
            if error_reason(error) != "APPROVAL_REQUIRED":
                raise
            approval_id = dict(error_info(error).metadata).get("approval_id", "") or \
                await self._pending_approval(deal, request.idempotency_key)
            raise self._approval_needed(deal, error.details() or "", approval_id) from None
        return self._escrowed(deal, reply)

    async def _pending_approval(self, deal: Deal, spend_key: str) -> str:
        wallet = await self.wallet(deal.currency)
        with contextlib.suppress(grpc.RpcError):
            listed = await self._market.wallets.ListApprovals(wallet_pb2.ListApprovalsRequest(
                account_id=wallet.account_id, status="pending", limit=100),
                timeout=RPC_TIMEOUT_S)
            for approval in listed.approvals:
                if approval.spend_idempotency_key == spend_key:
                    return str(approval.approval_id)
        return ""

    @async_sdk_method
    async def call(self, deal: Deal, arguments: dict[str, Any], *, call_id: str | None = None,
                   output_type: type[T] | None = None) -> Any:
        """One paid call; the skill's output (or an `output_type` built from it). An answer
        that fails its checks raises as `BuyerAgent.call` says."""
        result = await self.invoke(deal, arguments, call_id=call_id)
        return output_of(result, output_type)

    @async_sdk_method
    async def invoke(self, deal: Deal, arguments: dict[str, Any], *,
                     call_id: str | None = None,
                     voucher_at: tuple[int, int] | None = None) -> CallResult:
        """One paid call with its usage and receipt (`BuyerAgent.invoke`)."""
        planned = self._plan(deal, arguments, call_id, voucher_at)
        with span_if_active(self._tracer, self.tracer_provider, "paid_call",
                            attributes=lambda: self._span_attributes(planned)) as span:
            for attempt in range(MAX_REPLANS + 1):
                try:
                    response = await self._send(planned)
                    break
                except grpc.RpcError as error:
                    planned = self._again_or_failed(planned, error, attempt)
                except asyncio.CancelledError:  # a timeout around it, or the buyer closed
                    self._failed(planned, None)
                    raise
            return self._answered(planned, response, span)

    async def _send(self, planned: PlannedCall) -> agent_pb2.InvokeResponse:
        stubs = self._stubs(planned.deal.body.seller_endpoint)
        # a new payword is its own proof: sent unsigned, through no interceptor but tracing
        # (none while tracing is off)
        if planned.fresh:
            seller = stubs.unsigned if tracing_active(self.tracer_provider) else stubs.bare
        else:
            seller = stubs.signed
        deadline, in_progress = time.monotonic() + IN_PROGRESS_WAIT_S, False
        while (left := deadline - time.monotonic()) > 0:
            timeout = min(RPC_TIMEOUT_S, left)
            try:
                return await seller.Invoke(planned.request,  # type: ignore[no-any-return]
                                           metadata=planned.metadata,
                                           timeout=timeout)
            except grpc.RpcError as error:
                if wait_ran_out(error, in_progress, timeout):
                    break
                if error_reason(error) != "CALL_IN_PROGRESS":
                    raise
                in_progress = True
                await asyncio.sleep(RETRY_PAUSE_S)
        raise self._still_running(planned)

    @async_sdk_method
    async def stream(self, deal: Deal, arguments: dict[str, Any], *,
                     max_atomic: int | None = None,
                     call_id: str | None = None) -> AsyncStreamedCall:
        """A streamed paid call: `async for piece in await buyer.stream(...)`."""
        deal, request, voucher, budget = self._stream_plan(deal, arguments, call_id, max_atomic)
        seller = self._seller(deal.body.seller_endpoint)

        def dial(paid_by: agreement_pb2.Voucher) -> Any:
            return seller.InvokeStream(request, metadata=call_metadata(deal, paid_by),
                                       timeout=STREAM_TIMEOUT_S)

        return AsyncStreamedCall(deal, self.sessions[deal.agreement_id], budget, voucher, dial)

    @async_sdk_method
    async def finish(self, deal: Deal, *, confirm: bool = True) -> Escrow:
        """Tell the seller the task is done (`BuyerAgent.finish`)."""
        deal = self._deal(deal)
        response = await self._seller(deal.body.seller_endpoint).Finish(
            self._finish_request(deal, confirm), timeout=RPC_TIMEOUT_S)
        if self._finished(deal, response, confirm):
            return await self.confirm(deal)
        assert deal.escrow is not None
        return deal.escrow

    @async_sdk_method
    async def confirm(self, deal: Deal) -> Escrow:
        """Accept delivered work now rather than when the dispute window closes."""
        deal = self._deal(deal)
        with self._counting_refusals(deal, "confirm"):
            reply = await self._market.settlement.Confirm(self._confirm_request(deal),
                                                          timeout=RPC_TIMEOUT_S)
        return self._escrowed(deal, reply)

    @async_sdk_method
    async def dispute(self, deal: Deal, reason: str) -> Escrow:
        """Dispute delivered work inside the dispute window; the earned amount is frozen."""
        deal = self._deal(deal)
        with self._counting_refusals(deal, "dispute"):
            reply = await self._market.settlement.Dispute(self._dispute_request(deal, reason),
                                                          timeout=RPC_TIMEOUT_S)
        return self._escrowed(deal, reply)

    @async_sdk_method
    async def escrow(self, deal: Deal) -> Escrow:
        """The agreement's escrow as the marketplace has it now."""
        deal = self._deal(deal)
        return self._escrowed(deal, await self._market.settlement.GetEscrow(
            settlement_pb2.GetEscrowRequest(agreement_id=deal.agreement_id),
            timeout=RPC_TIMEOUT_S))
