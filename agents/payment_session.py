"""The buyer's side of paying per call with PayWord vouchers (`agents.payments` has the rules
and the seller's gate): what the session's vouchers authorised, what is reserved for calls in
flight and what was charged, so each voucher tops the prepayment up only as far as the next
call's maximum needs and a resumed buyer re-sends the very same voucher."""

from __future__ import annotations

import threading

from agents.errors import BudgetExceeded
from marketplace.payword import PaywordChain
from marketplace.v1 import agreement_pb2
from wallets.currencies import format_amount


def links_for(amount_atomic: int, link_value_atomic: int) -> int:
    """Links needed to pay `amount_atomic`: rounded up, so a call is never underpaid."""
    return -(-amount_atomic // link_value_atomic)


class PaymentSession:
    """The buyer's side of one agreement: what its vouchers authorised and what was charged."""

    def __init__(self, agreement_id: str, chain: PaywordChain, link_value_atomic: int,
                 max_total_atomic: int, currency: str = "") -> None:
        """`currency`: the agreement's, so a refusal names amounts as people read them."""
        self.agreement_id = agreement_id
        self.currency = currency
        self.chain = chain
        self.link_value_atomic = link_value_atomic
        self.max_total_atomic = max_total_atomic
        self.index = 0
        self.sequence = 0
        self.charged_atomic = 0
        self.reserved_atomic = 0
        self._lock = threading.Lock()

    @property
    def paid_atomic(self) -> int:
        """Authorised so far by the latest voucher (cumulative)."""
        return self.index * self.link_value_atomic

    @property
    def unspent_atomic(self) -> int:
        return self.paid_atomic - self.charged_atomic - self.reserved_atomic

    def plan(self, reserve_atomic: int, *, index: int | None = None,
             charged_atomic: int | None = None, reserved_atomic: int | None = None,
             fresh: bool = False) -> int:
        """The payword index a voucher must reach so that `reserve_atomic` is prepaid and
        uncharged (the current index when the prepayment already covers it, the next one if
        `fresh`: for a payee that takes each word once); pure, from the session's counters or
        the ones given (a workflow's checkpointed state)."""
        index = self.index if index is None else index
        charged = self.charged_atomic if charged_atomic is None else charged_atomic
        reserved = self.reserved_atomic if reserved_atomic is None else reserved_atomic
        needed = links_for(charged + reserved + reserve_atomic, self.link_value_atomic)
        target = max(index + 1 if fresh else index, needed)
        if target * self.link_value_atomic > self.max_total_atomic or target > self.chain.length:
            held = f", and {self._shown(reserved)} is reserved for calls not yet booked" \
                if reserved else ""  # part of the sum: without it the sum looks in bounds
            raise BudgetExceeded(
                f"prepaying {self._shown(reserve_atomic)} more would exceed the agreement's "
                f"maximum of {self._shown(self.max_total_atomic)} (charged "
                f"{self._shown(charged)} so far){held}")
        return target

    def _shown(self, amount_atomic: int) -> str:
        return format_amount(amount_atomic, self.currency)

    def voucher(self, sequence: int, index: int) -> agreement_pb2.Voucher:
        """The voucher with this sequence revealing the word at `index` (deterministic)."""
        return agreement_pb2.Voucher(
            agreement_id=self.agreement_id, sequence=sequence,
            cumulative_atomic=index * self.link_value_atomic, payword_index=index,
            payword=self.chain.word(index))

    def next_voucher(self, amount_atomic: int, *, fresh: bool = False) -> agreement_pb2.Voucher:
        """Reserve `amount_atomic` for a call and return the voucher that prepays it (with a
        word not sent before if `fresh`)."""
        with self._lock:
            index = self.plan(amount_atomic, fresh=fresh)
            self.index, self.sequence = index, self.sequence + 1
            self.reserved_atomic += amount_atomic
            return self.voucher(self.sequence, index)

    def settle(self, reserve_atomic: int, charged_atomic: int) -> None:
        """Book a call's receipt: its reserve is released, its charge counted (the caller has
        checked the receipt against what the call reserved)."""
        with self._lock:
            self.reserved_atomic -= reserve_atomic
            self.charged_atomic += charged_atomic

    def restore(self, *, sequence: int, index: int, charged_atomic: int) -> None:
        """Continue from a checkpoint: the last voucher sent and the charges booked."""
        with self._lock:
            self.sequence, self.index = sequence, index
            self.charged_atomic, self.reserved_atomic = charged_atomic, 0
