"""The buyer's side of a streamed paid call (InvokeStream).

    stream = buyer.stream(deal, {"topic": "agents"}, max_atomic=budget)
    for piece in stream:
        print(piece, end="")
    stream.stop_reason      # "complete"; "budget": the prepaid budget ran out first; "size":
                            # the output reached what a receipt carries (64 KiB of JSON);
                            # "ended": the agreement's redeem began while it ran
    stream.end.receipt      # the seller's signed receipt for exactly what was delivered
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from agents._buyer_core import STREAM_TIMEOUT_S, call_metadata
from agents._deal import (
    Deal,
    MalformedAnswer,
    book_malformed,
    book_stream,
    cut_overlong_stream,
)
from agents._rpc import sdk_error
from agents._serving import STOP_REASON_KEY
from agents.errors import FailedPrecondition
from agents.payment_session import PaymentSession
from agents.results import Usage
from agents.v1 import agent_pb2
from marketplace import agreements as ag

if TYPE_CHECKING:
    from agents.buyer import BuyerAgent


class StreamedCall:
    def __init__(self, buyer: BuyerAgent, deal: Deal, session: PaymentSession, budget: int,
                 call: Any, *, sequence: int = 0) -> None:
        """`sequence`: the voucher's, which the stream's receipt must name."""
        self.buyer, self.deal, self.session = buyer, deal, session
        self.budget_atomic, self.sequence = budget, sequence
        self._call = call
        self.pieces: list[str] = []
        self._size = 0  # bytes of text so far
        self.end: agent_pb2.StreamEnd | None = None
        self.stop_reason = ""
        self.problem = ""

    @classmethod
    def start(cls, buyer: BuyerAgent, deal: Deal, arguments: dict[str, Any], *,
              max_atomic: int | None, call_id: str | None) -> StreamedCall:
        deal, request, voucher, budget = buyer._stream_plan(deal, arguments, call_id,
                                                            max_atomic)
        session = buyer.sessions[deal.agreement_id]
        try:
            call = buyer._seller(deal.body.seller_endpoint).InvokeStream(
                request, metadata=call_metadata(deal, voucher), timeout=STREAM_TIMEOUT_S)
        except grpc.RpcError as error:
            session.settle(budget, 0)
            raise sdk_error(error) from None
        return cls(buyer, deal, session, budget, call, sequence=voucher.sequence)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def charged_atomic(self) -> int:
        return self.end.usage.charged_atomic if self.end else 0

    @property
    def usage(self) -> Usage | None:
        """What the delivered text used and cost (after iteration)."""
        return Usage.from_message(self.end.usage, self.deal.currency) if self.end else None

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._call:
                if chunk.HasField("end"):
                    self.end = chunk.end
                    continue
                self._size += len(chunk.text_delta.encode())
                if self._size > ag.MAX_OUTPUT_BYTES:  # a receipt cannot carry it
                    raise cut_overlong_stream(self.deal, self.session, self.budget_atomic,
                                              self._call)
                self.pieces.append(chunk.text_delta)
                yield chunk.text_delta
        except grpc.RpcError as error:
            self.session.settle(self.budget_atomic, 0)
            raise sdk_error(error) from None
        except MalformedAnswer as error:
            self._call.cancel()
            book_malformed(self.deal, self.session, self.budget_atomic, error)
            raise
        if self.end is None:
            self.session.settle(self.budget_atomic, 0)
            raise FailedPrecondition("the stream ended without a receipt")
        trailers = dict(self._call.trailing_metadata() or ())
        self.stop_reason = trailers.get(STOP_REASON_KEY, "")
        self._book()

    def _book(self) -> None:
        assert self.end is not None
        self.problem = book_stream(self.deal, self.session, self.budget_atomic, self.end,
                                   self.text, self.sequence)
