"""A buyer's A2A methods: pay a seller found by its Agent Card, over A2A v1.0's gRPC binding.

`BuyerAgent` and `AsyncBuyerAgent` take these from `A2ABuying` and `AsyncA2ABuying`: a card
fetched and its signature checked, a negotiation with the seller it names, paid calls with the
voucher in the message metadata (the payment extension, PROTOCOL.md) and free calls to any
plain A2A agent. The wire shapes are in `agents._a2a_buyer`; the payment's bookkeeping
(`_plan`, `_answered`, ...) is the buyers' own (`agents._buyer_core`).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import grpc
from a2a.types import a2a_pb2, a2a_pb2_grpc

from agents import _a2a_buyer as _a2a
from agents._async_streaming import AsyncStreamedCall
from agents._buyer_core import MAX_REPLANS, RPC_TIMEOUT_S, STREAM_TIMEOUT_S
from agents._deal import Deal, MalformedAnswer
from agents._rpc import async_sdk_method, sdk_method
from agents.errors import AgentmarketError
from agents.results import CallResult
from marketplace.auth import SigningClientInterceptor
from marketplace.grpc_tracing import span_if_active
from marketplace.intercepted import intercept
from marketplace.v1 import agreement_pb2

if TYPE_CHECKING:
    from agents._streaming import StreamedCall


class A2ABuying:
    """`BuyerAgent`'s A2A methods."""

    @sdk_method
    def card(self, url: str) -> a2a_pb2.AgentCard:
        """An A2A agent's Agent Card from its URL (or its base URL); a card with the payment
        extension must be signed by the agent its params name (BadSignature otherwise)."""
        return _a2a.fetch_card(url)

    @sdk_method
    def negotiate_card(self, url: str, skill: str, *, quantity: int, budget: str | Decimal,
                       currency: str, **options: Any) -> Deal:
        """Negotiate with the seller an Agent Card URL names (the card's payment params are
        its listing); then `hire` and `send` as usual. Options as `negotiate`'s."""
        listing = _a2a.card_listing(_a2a.fetch_card(url))
        return self.negotiate(listing, skill, quantity=quantity, budget=budget,
                              currency=currency, failover=False, **options)

    @sdk_method
    def send(self, deal: Deal, arguments: dict[str, Any], *, message_id: str | None = None
             ) -> CallResult:
        """One paid call over A2A: SendMessage with the voucher in the message metadata (the
        payment extension); the task's receipt is checked as `invoke` checks its own. A
        resend with the same `message_id` is the same task, charged once."""
        planned = self._plan(deal, arguments, message_id, None)
        with span_if_active(self._tracer, self.tracer_provider, "paid_call",
                            attributes=lambda: self._span_attributes(planned)) as span:
            signed, unsigned = self._a2a_stubs(planned.deal.body.seller_endpoint)
            try:
                for attempt in range(MAX_REPLANS + 1):
                    try:
                        task = (unsigned if planned.fresh else signed).SendMessage(
                            _a2a.paid_request(planned), metadata=_a2a.EXTENSION_METADATA,
                            timeout=RPC_TIMEOUT_S).task
                        break
                    except grpc.RpcError as error:  # booked as failed unless sent again
                        planned = self._again_or_failed(planned, error, attempt)
                response = _a2a.paid_response(task)
            except MalformedAnswer as error:
                self._malformed(planned, error)
                raise
            except AgentmarketError:  # a FAILED task: nothing was charged
                if planned.settles:
                    self.sessions[planned.deal.agreement_id].settle(planned.reserve_atomic, 0)
                raise
            return self._answered(planned, response, span)

    @sdk_method
    def send_stream(self, deal: Deal, arguments: dict[str, Any], *,
                    max_atomic: int | None = None, message_id: str | None = None
                    ) -> StreamedCall:
        """A streamed paid call over A2A (SendStreamingMessage), billed as it flows: iterate
        it for text pieces; afterwards `.end` holds the receipt, checked as `stream`'s."""
        from agents._streaming import StreamedCall

        deal, request, voucher, budget = self._stream_plan(self._deal(deal), arguments,
                                                           message_id, max_atomic)
        signed, _unsigned = self._a2a_stubs(deal.body.seller_endpoint)

        def dial(paid_by: agreement_pb2.Voucher) -> _a2a.A2AStream:
            return _a2a.A2AStream(signed.SendStreamingMessage(
                _a2a.stream_request(request, paid_by, deal.body.terms.skill),
                metadata=_a2a.EXTENSION_METADATA, timeout=STREAM_TIMEOUT_S))

        return StreamedCall(self, deal, self.sessions[deal.agreement_id], budget, voucher, dial)

    @sdk_method
    def ask(self, url: str, arguments: dict[str, Any] | str, *, skill: str | None = None
            ) -> Any:
        """Call a plain (unpaid) A2A agent found by its Agent Card URL, or a free skill of a
        seller: the answer's JSON object or text. A priced skill raises PaymentRequired."""
        endpoint = _a2a.grpc_endpoint(_a2a.fetch_card(url))
        _signed, unsigned = self._a2a_stubs(endpoint)
        return _a2a.plain_output(unsigned.SendMessage(_a2a.plain_request(arguments, skill),
                                                      timeout=RPC_TIMEOUT_S))

    def _a2a_stubs(self, endpoint: str) -> tuple[Any, Any]:
        """(signed, unsigned) A2AService stubs over the seller's channel."""
        stubs = self._stubs(endpoint)
        if stubs.a2a is None:
            raw = stubs.channel
            stubs.a2a = (
                a2a_pb2_grpc.A2AServiceStub(intercept(
                    raw, *self._interceptors, SigningClientInterceptor(self.key))),
                a2a_pb2_grpc.A2AServiceStub(intercept(raw, *self._interceptors)))
        return stubs.a2a


class AsyncA2ABuying:
    """`AsyncBuyerAgent`'s A2A methods (the same, awaited)."""

    @async_sdk_method
    async def card(self, url: str) -> a2a_pb2.AgentCard:
        """An A2A agent's Agent Card, its signature checked (`BuyerAgent.card`)."""
        return await _a2a.afetch_card(url)

    @async_sdk_method
    async def negotiate_card(self, url: str, skill: str, *, quantity: int,
                             budget: str | Decimal, currency: str, **options: Any) -> Deal:
        """Negotiate with the seller an Agent Card URL names (`BuyerAgent.negotiate_card`)."""
        listing = _a2a.card_listing(await _a2a.afetch_card(url))
        return await self.negotiate(listing, skill, quantity=quantity, budget=budget,
                                    currency=currency, failover=False, **options)

    @async_sdk_method
    async def send(self, deal: Deal, arguments: dict[str, Any], *,
                   message_id: str | None = None) -> CallResult:
        """One paid call over A2A, the voucher in the message metadata (`BuyerAgent.send`)."""
        planned = self._plan(deal, arguments, message_id, None)
        with span_if_active(self._tracer, self.tracer_provider, "paid_call",
                            attributes=lambda: self._span_attributes(planned)) as span:
            stubs = self._stubs(planned.deal.body.seller_endpoint)
            try:
                for attempt in range(MAX_REPLANS + 1):
                    channel = stubs.unsigned_channel if planned.fresh else stubs.signed_channel
                    try:
                        reply = await a2a_pb2_grpc.A2AServiceStub(channel).SendMessage(
                            _a2a.paid_request(planned), metadata=_a2a.EXTENSION_METADATA,
                            timeout=RPC_TIMEOUT_S)
                        break
                    except grpc.RpcError as error:  # booked as failed unless sent again
                        planned = self._again_or_failed(planned, error, attempt)
                response = _a2a.paid_response(reply.task)
            except asyncio.CancelledError:  # a timeout around it, or the buyer closed
                self._failed(planned, None)
                raise
            except MalformedAnswer as error:
                self._malformed(planned, error)
                raise
            except AgentmarketError:  # a FAILED task: nothing was charged
                if planned.settles:
                    self.sessions[planned.deal.agreement_id].settle(planned.reserve_atomic, 0)
                raise
            return self._answered(planned, response, span)

    @async_sdk_method
    async def send_stream(self, deal: Deal, arguments: dict[str, Any], *,
                          max_atomic: int | None = None, message_id: str | None = None
                          ) -> AsyncStreamedCall:
        """A streamed paid call over A2A (`BuyerAgent.send_stream`):
        `async for piece in await buyer.send_stream(...)`."""
        deal, request, voucher, budget = self._stream_plan(deal, arguments, message_id,
                                                           max_atomic)
        stub = a2a_pb2_grpc.A2AServiceStub(self._stubs(deal.body.seller_endpoint).signed_channel)

        def dial(paid_by: agreement_pb2.Voucher) -> _a2a.AsyncA2AStream:
            return _a2a.AsyncA2AStream(stub.SendStreamingMessage(
                _a2a.stream_request(request, paid_by, deal.body.terms.skill),
                metadata=_a2a.EXTENSION_METADATA, timeout=STREAM_TIMEOUT_S))

        return AsyncStreamedCall(deal, self.sessions[deal.agreement_id], budget, voucher, dial)

    @async_sdk_method
    async def ask(self, url: str, arguments: dict[str, Any] | str, *,
                  skill: str | None = None) -> Any:
        """Call a plain (unpaid) A2A agent by its Agent Card URL (`BuyerAgent.ask`)."""
        endpoint = _a2a.grpc_endpoint(await _a2a.afetch_card(url))
        stub = a2a_pb2_grpc.A2AServiceStub(self._stubs(endpoint).unsigned_channel)
        return _a2a.plain_output(await stub.SendMessage(_a2a.plain_request(arguments, skill),
                                                        timeout=RPC_TIMEOUT_S))
