"""What an escrow's money does at each transition, inside that transition's transaction
(`Settlement` opens it, checks the request and writes the receipt): release captures the earned
amount (seller, marketplace fee, verifier fee) as one posting and voids the rest back to the
buyer; refund returns the hold less a consulted verifier's fee; expire voids an undelivered
agreement's hold. When the hold lapsed before release, verified work is paid from the buyer's
wallet instead, in one linked posting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from marketplace.agreement_states import next_state
from marketplace.escrows import Pending, escrow_of, locked_row
from marketplace.escrows import set_values as _set
from marketplace.reputation import record_outcome
from wallets import attributes as attr
from wallets.currencies import split
from wallets.ledger import Ledger
from wallets.metrics import MarketMetrics
from wallets.models import Transfer


class Payouts:
    """The postings of release, refund and expire, for `Settlement`."""

    def __init__(self, ledger: Ledger, *, fee_bps: int, clock_ms: Callable[[], int],
                 metrics: MarketMetrics, span: Callable[[str, Callable[[], dict[str, Any]]], Any]
                 ) -> None:
        """`span(name, attributes)`: a current span, built only if it can be recorded."""
        self.ledger = ledger
        self.fee_bps = fee_bps
        self.clock_ms = clock_ms
        self.metrics = metrics
        self._span = span

    def release_in(self, conn: Connection, key: str, agreement: str, event: str,
                   parties: dict[str, str], pending: Pending | None = None) -> dict[str, Any]:
        """Capture the earned amount (seller + fee + verifier fee, one posting), void the
        rest back to the buyer, and rate the seller; returns the escrow now. `pending`: the
        row, locked, with changes of the caller's not yet written (written with these)."""
        row = locked_row(conn, agreement) if pending is None else pending
        state = next_state(row.state, event)
        seller_part, fee = split(row.earned_atomic, self.fee_bps)
        verifier_fee = row.verifier_fee_atomic
        splits = [(parties["seller"], seller_part), (parties["fees"], fee)]
        if verifier_fee:
            splits.append((parties["verifier"], verifier_fee))
        # The agreement's and the seller's rating rows first, the money last: the capture
        # locks the seller's account (which its holds also take) and the market's fee account
        # (which every settlement takes), so they stay locked only from the capture to the
        # commit (SCALING.md, "Hot rows").
        refunded = row.held_atomic - row.earned_atomic - verifier_fee
        with self._span("escrow.release", lambda: {
            attr.AGREEMENT_ID: agreement, attr.AMOUNT_ATOMIC: refunded,
            attr.CURRENCY: row.currency, attr.HOLD_ID: row.hold_id, attr.PAYEE: row.buyer_id,
        }):
            changes = dict(state=state, captured_atomic=row.earned_atomic, fee_atomic=fee,
                           refunded_atomic=refunded, verifier_paid_atomic=verifier_fee,
                           updated_at_ms=self.clock_ms())
            written = changes if pending is None else pending.unwritten(changes)
            _set(conn, agreement, **written)
        record_outcome(conn, row.seller_id, 1000)
        with self._span("escrow.capture", lambda: {
            attr.AGREEMENT_ID: agreement, attr.AMOUNT_ATOMIC: row.earned_atomic,
            attr.CURRENCY: row.currency, attr.FEE_ATOMIC: fee, attr.HOLD_ID: row.hold_id,
            attr.PAYER: row.buyer_id, attr.PAYEE: row.seller_id,
            "agentmarket.verifier_fee_atomic": verifier_fee,
        }):
            paid = [s for s in splits if s[1]]
            locked, hold = self.ledger.locked_hold(conn, row.hold_id)  # the capture reuses it
            if hold.status == "open" and hold.expires_at_ms > self.clock_ms():
                self.ledger.capture_in(conn, f"{key}:capture", row.hold_id,
                                       row.earned_atomic + verifier_fee, paid, final=True,
                                       locked=locked)
            else:
                self._collect_lapsed_in(conn, key, row, hold, parties["buyer"], paid)
        self.metrics.volume.add(seller_part, {"currency": row.currency})
        self.metrics.fees.add(fee, {"currency": row.currency})
        self.metrics.settlement_duration.record(self.clock_ms() - row.created_at_ms,
                                                {"outcome": state})
        return escrow_of(row._mapping, **changes)

    def _collect_lapsed_in(self, conn: Connection, key: str, row: Any, hold: Any, buyer: str,
                           paid: list[tuple[str, int]]) -> None:
        """The hold ran out before release (the node was down past its grace): the money went
        back to the buyer, so the verified work is paid from the buyer's wallet instead, in one
        linked posting, past the wallet's spending controls as the capture would have been (the
        hold passed them when placed: a freeze or a policy set since cannot refuse work the
        buyer already owes). If the wallet cannot pay, the error leaves the agreement as it was
        and the next sweep tries again; the shortfall shows in `agentmarket agreements`."""
        if hold.status == "open":  # past its timeout, not yet swept: release it first
            self.ledger.void_in(conn, f"expire:{row.hold_id}", row.hold_id, kind="expire")
        transfers = [Transfer(buyer, account, amount) for account, amount in paid]
        if transfers:
            self.ledger.post_linked_in(conn, f"{key}:lapsed-capture", transfers,
                                       kind="capture", memo="verified work after a lapsed hold",
                                       guarded=False)

    def refund_in(self, conn: Connection, key: str, agreement: str,
                   parties: dict[str, str]) -> None:
        """Nothing verified: the hold goes back, less a consulted verifier's fee."""
        row = locked_row(conn, agreement)
        fee = row.verifier_fee_atomic
        with self._span("escrow.refund", lambda: {
            attr.AGREEMENT_ID: agreement, attr.AMOUNT_ATOMIC: row.held_atomic - fee,
            attr.CURRENCY: row.currency, attr.HOLD_ID: row.hold_id, attr.PAYEE: row.buyer_id,
        }):
            if fee:
                self.ledger.capture_in(conn, f"{key}:capture", row.hold_id, fee,
                                       [(parties["verifier"], fee)], final=True)
            else:
                self.ledger.void_in(conn, f"{key}:void", row.hold_id)
        _set(conn, agreement, refunded_atomic=row.held_atomic - fee, verifier_paid_atomic=fee)
        record_outcome(conn, row.seller_id, 0)

    def expire_in(self, conn: Connection, key: str, agreement: str) -> None:
        row = locked_row(conn, agreement)
        state = next_state(row.state, "expire")
        with self._span("escrow.expire", lambda: {
            attr.AGREEMENT_ID: agreement, attr.AMOUNT_ATOMIC: row.held_atomic,
            attr.CURRENCY: row.currency, attr.HOLD_ID: row.hold_id, attr.PAYEE: row.buyer_id,
        }):
            hold = self.ledger._hold_row(conn, row.hold_id)
            if hold.status == "open":  # else the ledger's own timeout already returned it
                timed_out = hold.expires_at_ms <= self.clock_ms()
                self.ledger.void_in(conn, f"{key}:void", row.hold_id,
                                    kind="expire" if timed_out else "void")
        _set(conn, agreement, state=state, refunded_atomic=row.held_atomic,
             updated_at_ms=self.clock_ms())
