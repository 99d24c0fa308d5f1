"""Per-call payment with PayWord vouchers: the buyer's session and the seller's gate.

Buyer: `PaymentSession.next_voucher(amount)` reveals the next hash-chain words to cover a call.
Seller: `PaymentGate.admit(voucher, agreement_id, price)` checks it locally (a few SHA-256s, no
network), refusing missing, forged, replayed and over-budget vouchers, and keeps what it needs
to redeem: the latest voucher and a signed receipt per call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from agents.errors import BudgetExceeded, InvalidVoucher, NotFound, PaymentRequired
from marketplace.payword import PaywordChain, verify_word
from marketplace.v1 import agreement_pb2

VOUCHER_METADATA_KEY = "agentmarket-voucher-bin"


def links_for(amount_atomic: int, link_value_atomic: int) -> int:
    """Links needed to pay `amount_atomic`: rounded up, so a call is never underpaid."""
    return -(-amount_atomic // link_value_atomic)


class PaymentSession:
    """The buyer's side of one agreement: which words it has revealed so far."""

    def __init__(self, agreement_id: str, chain: PaywordChain, link_value_atomic: int,
                 max_total_atomic: int) -> None:
        self.agreement_id = agreement_id
        self.chain = chain
        self.link_value_atomic = link_value_atomic
        self.max_total_atomic = max_total_atomic
        self.index = 0
        self.sequence = 0
        self._lock = threading.Lock()

    @property
    def paid_atomic(self) -> int:
        return self.index * self.link_value_atomic

    def next_voucher(self, amount_atomic: int) -> agreement_pb2.Voucher:
        """A voucher that pays `amount_atomic` more than the last one; refuses past the budget."""
        with self._lock:
            index = self.index + links_for(amount_atomic, self.link_value_atomic)
            if index * self.link_value_atomic > self.max_total_atomic or index > self.chain.length:
                raise BudgetExceeded(
                    f"paying {amount_atomic} more would exceed the agreement's maximum of "
                    f"{self.max_total_atomic}")
            self.index, self.sequence = index, self.sequence + 1
            return agreement_pb2.Voucher(
                agreement_id=self.agreement_id, sequence=self.sequence,
                cumulative_atomic=index * self.link_value_atomic, payword_index=index,
                payword=self.chain.word(index))


@dataclass
class _Account:
    """What the seller knows of one agreement's payments."""

    body: agreement_pb2.AgreementBody
    anchor_word: bytes
    anchor_index: int = 0
    sequence: int = 0
    charged_atomic: int = 0
    latest: agreement_pb2.Voucher | None = None
    receipts: list[agreement_pb2.Receipt] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class PaymentGate:
    """The seller's local voucher check, run before every paid call."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}

    def open(self, agreement_id: str, body: agreement_pb2.AgreementBody) -> None:
        self._accounts.setdefault(agreement_id, _Account(body=body, anchor_word=body.payword_root))

    def known(self, agreement_id: str) -> bool:
        return agreement_id in self._accounts

    def body(self, agreement_id: str) -> agreement_pb2.AgreementBody:
        return self._account(agreement_id).body

    def _account(self, agreement_id: str) -> _Account:
        account = self._accounts.get(agreement_id)
        if account is None:
            raise NotFound(f"no agreement {agreement_id[:12]}… with this seller")
        return account

    def admit(self, voucher: agreement_pb2.Voucher | None, agreement_id: str,
              price_atomic: int) -> int:
        """Accept a voucher that pays `price_atomic` for this call; returns the call's sequence.

        Holds the agreement's lock only for the check itself (microseconds)."""
        if voucher is None:
            raise PaymentRequired("this method is paid: attach a voucher "
                                  f"({VOUCHER_METADATA_KEY} metadata)")
        if voucher.agreement_id != agreement_id:
            raise InvalidVoucher("the voucher is for a different agreement than the request")
        account = self._account(agreement_id)
        body = account.body
        with account.lock:
            if (voucher.sequence <= account.sequence
                    or voucher.payword_index <= account.anchor_index):
                raise InvalidVoucher(f"voucher {voucher.sequence} was already used (replay)")
            if voucher.cumulative_atomic != voucher.payword_index * body.link_value_atomic:
                raise InvalidVoucher("cumulative_atomic does not match the payword index")
            if (voucher.payword_index > body.payword_length
                    or voucher.cumulative_atomic > body.terms.max_total_atomic):
                raise BudgetExceeded("the voucher goes past the agreement's maximum")
            if not verify_word(voucher.payword, voucher.payword_index, account.anchor_word,
                               account.anchor_index):
                raise InvalidVoucher("the voucher's payword is forged")
            if voucher.cumulative_atomic < account.charged_atomic + price_atomic:
                if account.charged_atomic + price_atomic > body.terms.max_total_atomic:
                    raise BudgetExceeded("the agreement's budget is spent")
                raise InvalidVoucher("the voucher does not pay for this call")
            account.anchor_word, account.anchor_index = voucher.payword, voucher.payword_index
            account.sequence = voucher.sequence
            account.charged_atomic += price_atomic
            account.latest = voucher
            return voucher.sequence

    def record(self, agreement_id: str, receipt: agreement_pb2.Receipt) -> None:
        account = self._account(agreement_id)
        with account.lock:
            account.receipts.append(receipt)

    def redeemable(self, agreement_id: str) -> tuple[agreement_pb2.Voucher | None,
                                                      list[agreement_pb2.Receipt]]:
        account = self._account(agreement_id)
        with account.lock:
            return account.latest, sorted(account.receipts, key=lambda r: r.sequence)
