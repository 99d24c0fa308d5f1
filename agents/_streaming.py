"""The buyer's side of a streamed paid call (InvokeStream).

    stream = buyer.stream(deal, {"topic": "agents"}, max_atomic=budget)
    for piece in stream:
        print(piece, end="")
    stream.stop_reason      # "complete"; "budget": the prepaid budget ran out first; "size":
                            # the output reached what a receipt carries (64 KiB of JSON);
                            # "ended": the agreement's redeem began while it ran
    stream.end.receipt      # the seller's signed receipt for exactly what was delivered

Stopping early (a `break`, `stream.close()` from any thread, or a deadline after some text
came) hangs up: the seller stops producing and
bills what it had sent, and the buyer fetches that receipt by asking again under the same call
id (answered from the seller's record, charged once), so the unspent part of the call's
prepaid budget is free again for the next call.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from agents._buyer_core import MAX_REPLANS, STREAM_TIMEOUT_S, call_metadata, overtaken
from agents._deal import (
    Deal,
    MalformedAnswer,
    book_malformed,
    book_stream,
    cut_overlong_stream,
)
from agents._rpc import sdk_error
from agents._serving import STOP_REASON_KEY
from agents.errors import CallInProgress, FailedPrecondition
from agents.payment_session import PaymentSession
from agents.results import Usage
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace.v1 import agreement_pb2

if TYPE_CHECKING:
    from agents.buyer import BuyerAgent

HANG_UP_WAIT_S = 5.0  # how long a stream cut short waits for the seller to record its end


class StreamedCall:
    def __init__(self, buyer: BuyerAgent, deal: Deal, session: PaymentSession, budget: int,
                 voucher: agreement_pb2.Voucher, dial: Callable[[agreement_pb2.Voucher], Any]
                 ) -> None:
        """`dial(voucher)` makes the call paid by `voucher` (the receipt must name its
        sequence): here, again under the same call id to fetch its end after a hang-up, and
        with a new voucher when a later one of this buyer's overtook it at the seller."""
        self.buyer, self.deal, self.session = buyer, deal, session
        self.budget_atomic, self.sequence = budget, voucher.sequence
        self._voucher, self._dial = voucher, dial
        self.pieces: list[str] = []
        self._size = 0  # bytes of text so far
        self.end: agent_pb2.StreamEnd | None = None
        self.stop_reason = ""
        self.problem = ""
        self._state = threading.Lock()
        self._reading = self._over = self._closing = False  # `_over`: read or hung up
        self._read_over = threading.Event()  # a reading loop ended, its end booked if it could
        try:
            self._call = dial(voucher)
        except grpc.RpcError as error:
            session.settle(budget, 0)
            raise sdk_error(error) from None

    @classmethod
    def start(cls, buyer: BuyerAgent, deal: Deal, arguments: dict[str, Any], *,
              max_atomic: int | None, call_id: str | None) -> StreamedCall:
        deal, request, voucher, budget = buyer._stream_plan(deal, arguments, call_id,
                                                            max_atomic)

        def dial(paid_by: agreement_pb2.Voucher) -> Any:
            return buyer._seller(deal.body.seller_endpoint).InvokeStream(
                request, metadata=call_metadata(deal, paid_by), timeout=STREAM_TIMEOUT_S)

        return cls(buyer, deal, buyer.sessions[deal.agreement_id], budget, voucher, dial)

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

    def close(self) -> None:
        """Stop the stream now, from any thread: a loop reading it ends (no error), billed and
        booked for what the seller sent; a stream not read yet is hung up here."""
        with self._state:
            if self._over:
                return
            reading, self._closing = self._reading, True
            if not reading:
                self._over = True
        if reading:
            self._call.cancel()
            self._read_over.wait(HANG_UP_WAIT_S + 1)
        else:
            self._hang_up()

    def __iter__(self) -> Iterator[str]:
        with self._state:
            if self._over or self._reading:
                return  # read (or being read) already, or closed
            self._reading = True
        try:
            yield from self._read()
        finally:
            with self._state:
                self._reading, self._over = False, True
            self._read_over.set()

    def _read(self) -> Iterator[str]:
        try:
            for chunk in self._chunks():
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
            if self._closing:  # close() cancelled the call: the stream ends here
                self._hang_up()
                return
            if cut_off(error, self.pieces):
                self._hang_up()  # the seller bills what it sent: book that, not nothing
            else:
                self.session.settle(self.budget_atomic, 0)
            raise sdk_error(error) from None
        except MalformedAnswer as error:
            self._call.cancel()
            book_malformed(self.deal, self.session, self.budget_atomic, error)
            raise
        except GeneratorExit:  # the caller stopped reading
            self._hang_up()
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

    def _chunks(self) -> Iterator[Any]:
        """The call's chunks; a call refused before its first chunk because a later voucher
        of this buyer's reached the seller first is made again with a new voucher."""
        for attempt in range(MAX_REPLANS + 1):
            started = False
            try:
                for chunk in self._call:
                    started = True
                    yield chunk
                return
            except grpc.RpcError as error:
                if started or not overtaken(error, self.session, self._voucher, attempt):
                    raise
            self._call = self._dial(replanned(self))

    def _hang_up(self) -> None:
        """Cancel the call, then fetch the end the seller recorded for it (what it sent, at
        most the budget) and book it; if that cannot be had, the budget stays reserved (the
        charge is not known) and `problem` says why."""
        self._call.cancel()
        self.stop_reason = "cancelled"
        deadline = time.monotonic() + HANG_UP_WAIT_S
        while True:
            try:
                end = next((c.end for c in self._dial(self._voucher) if c.HasField("end")),
                           None)
            except grpc.RpcError as error:
                problem = sdk_error(error)
                if isinstance(problem, CallInProgress) and time.monotonic() < deadline:
                    time.sleep(0.01)  # the seller is still billing the pieces it sent
                    continue
                return book_fetched(self, None, problem)
            except Exception as error:  # the buyer was closed meanwhile: its channel is gone
                return book_fetched(self, None, error)
            return book_fetched(self, end)


def replanned(call: Any) -> agreement_pb2.Voucher:
    """A new voucher for an overtaken stream, now the call's (nothing was reserved at the
    seller for the refused one: its reserve comes back first)."""
    call.session.settle(call.budget_atomic, 0)
    call._voucher = call.session.next_voucher(call.budget_atomic)
    call.sequence = call._voucher.sequence
    return call._voucher  # type: ignore[no-any-return]


def book_fetched(call: Any, end: agent_pb2.StreamEnd | None, failure: object = None) -> None:
    """Book the end a hung-up stream's re-fetch brought (`failure`: why none came; the budget
    then stays reserved, its charge unknown, and `problem` says so)."""
    if failure is not None:
        call.problem = f"the end of a stream cut short could not be fetched: {failure}"
    elif end is None:
        call.problem = "the end of a stream cut short came without a receipt"
    else:
        call.end = end
        call.problem = book_stream(call.deal, call.session, call.budget_atomic, end,
                                   sent_text(end, call.text), call.sequence)


# A stream ended by these after some pieces came: the seller ran it and bills what it sent
# (any other status is a refusal or a failed skill, neither charged)
_CUT_OFF = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                      grpc.StatusCode.UNAVAILABLE})


def cut_off(error: grpc.RpcError, pieces: list[str]) -> bool:
    """Whether a stream that failed with `error` was cut off while running (its end is then
    fetched as a hang-up's is) rather than refused."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    return bool(pieces) and code in _CUT_OFF


def sent_text(end: agent_pb2.StreamEnd, read: str) -> str:
    """The text a stream cut short was billed for: what the seller sent, of which the buyer
    read a beginning (the rest was on its way); `read` itself if the two disagree, so that
    the receipt is reported as committing to other text."""
    try:
        sent = json.loads(end.output_json).get("text")
    except (ValueError, AttributeError, RecursionError):  # a seller's bad JSON
        return read
    return sent if isinstance(sent, str) and sent.startswith(read) else read
