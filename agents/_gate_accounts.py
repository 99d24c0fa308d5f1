"""What a seller's payment gate knows of each agreement (`agents.payments.PaymentGate`): the
account of its vouchers, reserves, charges and receipt chain, and each paid call's payment,
with the helpers that read and repair them under the account's lock."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from agents.errors import ResourceExhausted
from agents.usage_journal import Pending
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace.v1 import agreement_pb2


@dataclass(slots=True)
class CallPayment:
    """One call id's payment. Kept for every answered call (retries are answered from it), so
    it holds bytes, not messages: compact and invisible to the garbage collector (as messages,
    a kept call took 5.5 KB and four tracked objects; as bytes, 1.8 KB and one)."""

    sequence: int
    payword: bytes
    reserve_atomic: int
    voucher: bytes = b""  # the serialized Voucher that paid it
    in_flight: bool = True
    response: bytes | None = None  # the first response, encoded (`encode_response`)
    durable: Pending | None = None  # its record on the way to the journal (None: written)


@dataclass
class AgreementAccount:
    """What the seller knows of one agreement's payments."""

    body: agreement_pb2.AgreementBody
    anchor_word: bytes
    anchor_index: int = 0
    sequence: int = 0
    authorised_atomic: int = 0
    charged_atomic: int = 0
    reserved_atomic: int = 0
    latest: agreement_pb2.Voucher | None = None
    receipts: list[bytes] = field(default_factory=list)  # serialized Receipts, chain order
    chain_calls: list[str] = field(default_factory=list)  # the call id of each receipt
    chain_index: int = 0  # receipts chained so far
    chain_head: bytes = ag.CHAIN_GENESIS  # the last receipt's chain digest
    chain_bytes: int = 0  # what the receipts add to the redeem (ag.receipt_bytes)
    calls: dict[str, CallPayment] = field(default_factory=dict)
    closed: bool = False
    # A redeem took its receipts (`begin_redeem`): a call finishing after that is not in it,
    # so it is neither charged nor answered (its work would otherwise be free).
    sealed: bool = False
    redeemed: Any = None
    opened: Pending | None = None  # its journal record, until seen written
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def available_atomic(self) -> int:
        return self.authorised_atomic - self.charged_atomic - self.reserved_atomic


def truncate_chain(account: AgreementAccount, position: int) -> None:
    """Take the receipts from chain `position` on out of the account (under its lock): their
    charges are no longer booked and their calls are unanswered."""
    for kept, call_id in zip(account.receipts[position - 1:],
                             account.chain_calls[position - 1:], strict=True):
        receipt = agreement_pb2.Receipt.FromString(kept)
        account.charged_atomic -= receipt.charged_atomic
        account.chain_bytes -= ag.receipt_bytes(receipt)
        call = account.calls.get(call_id)
        if call is not None:
            call.response = call.durable = None
            call.in_flight, call.reserve_atomic = False, 0
    del account.receipts[position - 1:], account.chain_calls[position - 1:]
    account.chain_index = position - 1
    account.chain_head = ag.CHAIN_GENESIS if position == 1 else \
        agreement_pb2.Receipt.FromString(account.receipts[-1]).chain_sha256


def receipts_by_sequence(account: AgreementAccount) -> list[agreement_pb2.Receipt]:
    """The agreement's receipts, by voucher sequence."""
    receipts = [agreement_pb2.Receipt.FromString(kept) for kept in account.receipts]
    return sorted(receipts, key=lambda r: r.sequence)


def encode_response(response: Any) -> bytes:
    """A paid call's response for the journal: unary (U) or a stream's last chunk (S)."""
    kind = b"S" if isinstance(response, agent_pb2.StreamChunk) else b"U"
    return kind + response.SerializeToString()


def decode_response(data: bytes) -> Any:
    message = agent_pb2.StreamChunk if data[:1] == b"S" else agent_pb2.InvokeResponse
    return message.FromString(data[1:])


def replay_as(response: Any, streamed: bool) -> Any:
    """A recorded answer in the shape its retry asks for: a unary call retried as a stream
    gets it as the stream's one, last chunk; a stream retried as a unary call gets its end
    as the response. Either way the same output, usage and receipt, charged once."""
    if streamed and isinstance(response, agent_pb2.InvokeResponse):
        return agent_pb2.StreamChunk(end=agent_pb2.StreamEnd(
            stop_reason=agent_pb2.STOP_REASON_COMPLETE, output_json=response.output_json,
            usage=response.usage, receipt=response.receipt))
    if not streamed and isinstance(response, agent_pb2.StreamChunk):
        end = response.end
        return agent_pb2.InvokeResponse(output_json=end.output_json, usage=end.usage,
                                        receipt=end.receipt)
    return response


class FreshAgreements:
    """Each buyer's countersigned agreements whose offer is still open and that had no call
    yet: all one key can make a seller keep without paying, so it is bounded per key
    (`PaymentGate.open`). An agreement leaves at its first call or when its offer lapses (no
    escrow can be opened for it after that)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_buyer: dict[str, dict[str, int]] = {}  # buyer -> {agreement: offer expiry}
        self._lock = threading.Lock()

    def add(self, buyer_id: str, agreement_id: str, offer_expires_ms: int, now_ms: int) -> None:
        with self._lock:
            mine = self._by_buyer.setdefault(buyer_id, {})
            _drop_lapsed(mine, now_ms)
            if len(mine) >= self.limit:
                raise ResourceExhausted(
                    f"this buyer has {self.limit} agreements here with no call yet whose "
                    "offers are still open; call under one, or wait for their offers to lapse",
                    reason="TOO_MANY_FRESH_AGREEMENTS")
            mine[agreement_id] = offer_expires_ms

    def called(self, buyer_id: str, agreement_id: str) -> None:
        with self._lock:
            mine = self._by_buyer.get(buyer_id)
            if mine is not None and mine.pop(agreement_id, None) is not None and not mine:
                del self._by_buyer[buyer_id]

    def prune(self, now_ms: int) -> None:
        """Forget lapsed offers of every buyer (the seller's settle loop)."""
        with self._lock:
            for buyer_id, mine in list(self._by_buyer.items()):
                _drop_lapsed(mine, now_ms)
                if not mine:
                    del self._by_buyer[buyer_id]


def _drop_lapsed(offers: dict[str, int], now_ms: int) -> None:
    """Take out of `offers` (agreement -> offer expiry) those whose offer has lapsed."""
    for lapsed in [a for a, until in offers.items() if until < now_ms]:
        del offers[lapsed]
