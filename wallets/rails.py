"""Rails move money between the ledger and the outside world (deposits and withdrawals).

Each rail is an account of kind "rail" in the ledger (it may go negative: it stands for money
outside), so deposits and withdrawals are ordinary balanced postings. A real rail (a bank, an
e-CNY operator, a USDC chain) implements `Rail`: `confirm_deposit` proves funds arrived before
the ledger credits them; `send_payout` is called after the ledger debits the wallet, with the
amount already rounded to the rail's precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from wallets.currencies import Currency


class Rail(Protocol):
    name: str
    currency: Currency

    def confirm_deposit(self, reference: str, amount_atomic: int) -> None:
        """Raise if the external deposit `reference` of `amount_atomic` is not confirmed."""

    def send_payout(self, reference: str, amount_atomic: int) -> None:
        """Send a payout (amount on the rail's precision); must be idempotent per reference."""


@dataclass
class SandboxRail:
    """A test rail that accepts every deposit and records every payout."""

    currency: Currency
    settlement_delay_s: int = 0

    def __post_init__(self) -> None:
        self.name = f"sandbox-{self.currency.code.lower()}"
        self.payouts: dict[str, int] = {}

    def confirm_deposit(self, reference: str, amount_atomic: int) -> None:
        return None

    def send_payout(self, reference: str, amount_atomic: int) -> None:
        self.payouts.setdefault(reference, amount_atomic)
