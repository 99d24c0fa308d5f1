"""The async buyer's side of a streamed paid call (InvokeStream on grpc.aio).

    stream = await buyer.stream(deal, {"topic": "agents"})
    async for piece in stream:
        print(piece, end="")
    stream.stop_reason      # "complete", "budget" (the prepaid budget ran out first), "size"
                            # or "ended" (see agents._streaming)
    stream.usage            # what the delivered text used and cost
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agents._deal import (
    Deal,
    MalformedAnswer,
    book_malformed,
    book_stream,
    cut_overlong_stream,
)
from agents._rpc import closed_under_call, sdk_error
from agents._serving import STOP_REASON_KEY
from agents.errors import FailedPrecondition
from agents.payment_session import PaymentSession
from agents.results import Usage
from agents.v1 import agent_pb2
from marketplace import agreements as ag


class AsyncStreamedCall:
    """A streamed paid call: `async for piece in call` yields text as the seller produces it;
    afterwards `.text`, `.usage`, `.stop_reason` ("complete", "budget", "size", "ended") and
    `.end` (the receipt for exactly what was delivered)."""

    def __init__(self, deal: Deal, session: PaymentSession, budget_atomic: int,
                 call: Any, *, sequence: int = 0) -> None:
        """`sequence`: the voucher's, which the stream's receipt must name."""
        self.deal, self.session = deal, session
        self.budget_atomic, self.sequence = budget_atomic, sequence
        self._call = call
        self.pieces: list[str] = []
        self._size = 0  # bytes of text so far
        self.end: agent_pb2.StreamEnd | None = None
        self.stop_reason = ""
        self.problem = ""

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def usage(self) -> Usage | None:
        return Usage.from_message(self.end.usage, self.deal.currency) if self.end else None

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for chunk in self._call:
                if chunk.HasField("end"):
                    self.end = chunk.end
                    continue
                self._size += len(chunk.text_delta.encode())
                if self._size > ag.MAX_OUTPUT_BYTES:  # a receipt cannot carry it
                    raise cut_overlong_stream(self.deal, self.session, self.budget_atomic,
                                              self._call)
                self.pieces.append(chunk.text_delta)
                yield chunk.text_delta
            trailers = await self._call.trailing_metadata()
        except grpc.RpcError as error:
            self.session.settle(self.budget_atomic, 0)
            raise sdk_error(error) from None
        except asyncio.CancelledError:  # a timeout around it, or the buyer closed
            self.session.settle(self.budget_atomic, 0)
            closed = closed_under_call()
            if closed is None:
                raise
            raise closed from None
        except MalformedAnswer as error:
            self._call.cancel()
            book_malformed(self.deal, self.session, self.budget_atomic, error)
            raise
        if self.end is None:
            self.session.settle(self.budget_atomic, 0)
            raise FailedPrecondition("the stream ended without a receipt")
        self.stop_reason = dict(trailers or ()).get(STOP_REASON_KEY, "")
        self._book(self.end)

    def _book(self, end: agent_pb2.StreamEnd) -> None:
        self.problem = book_stream(self.deal, self.session, self.budget_atomic, end, self.text,
                                   self.sequence)
