"""The async buyer's side of a streamed paid call (InvokeStream on grpc.aio).

    stream = await buyer.stream(deal, {"topic": "agents"})
    async for piece in stream:
        print(piece, end="")
    stream.stop_reason      # "complete", "budget" (the prepaid budget ran out first), "size"
                            # or "ended" (see agents._streaming)
    stream.usage            # what the delivered text used and cost

Stopping early (a `break`) hangs up as `agents._streaming` describes, once the event loop
finalises the abandoned iterator (at once with `await stream.aclose()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from agents._buyer_core import MAX_REPLANS, overtaken
from agents._deal import (
    Deal,
    MalformedAnswer,
    book_malformed,
    book_stream,
    cut_overlong_stream,
)
from agents._rpc import closed_under_call, sdk_error
from agents._serving import STOP_REASON_KEY
from agents._streaming import HANG_UP_WAIT_S, book_fetched, cut_off, replanned
from agents.errors import CallInProgress, FailedPrecondition
from agents.payment_session import PaymentSession
from agents.results import Usage
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace.v1 import agreement_pb2


class AsyncStreamedCall:
    """A streamed paid call: `async for piece in call` yields text as the seller produces it;
    afterwards `.text`, `.usage`, `.stop_reason` ("complete", "budget", "size", "ended") and
    `.end` (the receipt for exactly what was delivered)."""

    def __init__(self, deal: Deal, session: PaymentSession, budget_atomic: int,
                 voucher: agreement_pb2.Voucher, dial: Callable[[agreement_pb2.Voucher], Any]
                 ) -> None:
        """`dial(voucher)` makes the call paid by `voucher`, as `StreamedCall`'s does."""
        self.deal, self.session = deal, session
        self.budget_atomic, self.sequence = budget_atomic, voucher.sequence
        self._voucher, self._dial = voucher, dial
        self._call = dial(voucher)
        # the iterator `async for` took, weakly: an abandoned one is finalised (hangs up)
        self._iterator: weakref.ref[Any] | None = None
        self._over = asyncio.Event()  # the reading ended (however), its end booked if it could
        self._closing = False  # aclose() cancelled the call under a reading task
        self.pieces: list[str] = []
        self._size = 0  # bytes of text so far
        self.end: agent_pb2.StreamEnd | None = None
        self.stop_reason = ""
        self.problem = ""

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def charged_atomic(self) -> int:
        return self.end.usage.charged_atomic if self.end else 0

    @property
    def usage(self) -> Usage | None:
        return Usage.from_message(self.end.usage, self.deal.currency) if self.end else None

    def __aiter__(self) -> AsyncIterator[str]:
        if self._iterator is not None or self._closing:
            return _nothing()  # read (or being read) already, or closed
        pieces = self._pieces()
        self._iterator = weakref.ref(pieces)
        return pieces

    async def aclose(self) -> None:
        """Stop the stream now (`StreamedCall.close`): a task reading it ends its loop (no
        error), billed and booked for what the seller sent; a stream not read yet is hung up
        here; an abandoned loop is hung up now rather than when the event loop finalises it."""
        if self._iterator is None:  # never read: hang up here
            if not self._closing:
                self._closing = True
                await self._hang_up()
                self._over.set()
            return
        pieces = self._iterator()
        if pieces is not None and pieces.ag_running:  # read by another task meanwhile:
            self._closing = True                        # it hangs up as its call is cancelled
            self._call.cancel()
        elif pieces is not None:
            await pieces.aclose()
        with contextlib.suppress(TimeoutError):  # dropped already: the loop finalises it
            await asyncio.wait_for(self._over.wait(), HANG_UP_WAIT_S + 1)

    async def _pieces(self) -> AsyncIterator[str]:
        reading = self._read()
        try:
            async for piece in reading:
                yield piece
        finally:
            try:
                await reading.aclose()  # a GeneratorExit reaches it now: it hangs up
            finally:
                self._over.set()

    async def _chunks(self) -> AsyncIterator[Any]:
        """`StreamedCall._chunks` on the event loop."""
        for attempt in range(MAX_REPLANS + 1):
            started = False
            try:
                async for chunk in self._call:
                    started = True
                    yield chunk
                return
            except grpc.RpcError as error:
                if started or not overtaken(error, self.session, self._voucher, attempt):
                    raise
            self._call = self._dial(replanned(self))

    async def _read(self) -> AsyncIterator[str]:
        chunks = self._chunks()
        try:
            async for chunk in chunks:
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
            if cut_off(error, self.pieces):
                await self._hang_up()  # the seller bills what it sent: book that
            else:
                self.session.settle(self.budget_atomic, 0)
            raise sdk_error(error) from None
        except asyncio.CancelledError:  # aclose() from another task, a timeout, or closing
            if self._closing:  # the call was cancelled by aclose(): the stream ends here
                await self._hang_up()
                return
            closed = closed_under_call()
            if closed is not None:  # the buyer closed: its channels are gone
                self.session.settle(self.budget_atomic, 0)
                raise closed from None
            if self.pieces:  # a timeout around it: the seller bills what it sent
                await asyncio.shield(self._hang_up())
            else:
                self.session.settle(self.budget_atomic, 0)
            raise
        except MalformedAnswer as error:
            self._call.cancel()
            book_malformed(self.deal, self.session, self.budget_atomic, error)
            raise
        except GeneratorExit:  # the caller stopped reading
            await chunks.aclose()  # type: ignore[attr-defined]
            await self._hang_up()
            raise
        if self.end is None:
            self.session.settle(self.budget_atomic, 0)
            raise FailedPrecondition("the stream ended without a receipt")
        self.stop_reason = dict(trailers or ()).get(STOP_REASON_KEY, "")
        self._book(self.end)

    def _book(self, end: agent_pb2.StreamEnd) -> None:
        self.problem = book_stream(self.deal, self.session, self.budget_atomic, end, self.text,
                                   self.sequence)

    async def _hang_up(self) -> None:
        """`StreamedCall._hang_up` on the event loop."""
        self._call.cancel()
        self.stop_reason = "cancelled"
        deadline = asyncio.get_running_loop().time() + HANG_UP_WAIT_S
        while True:
            try:
                end = None
                async for chunk in self._dial(self._voucher):
                    if chunk.HasField("end"):
                        end = chunk.end
            except grpc.RpcError as error:
                problem = sdk_error(error)
                if isinstance(problem, CallInProgress) and \
                        asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.01)
                    continue
                return book_fetched(self, None, problem)
            except Exception as error:  # the buyer was closed meanwhile: its channel is gone
                return book_fetched(self, None, error)
            return book_fetched(self, end)


async def _nothing() -> AsyncIterator[str]:
    return
    yield  # an async generator that yields nothing
