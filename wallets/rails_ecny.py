"""The e-CNY sandbox rail: top-ups into e-CNY wallets and redemptions out of them, in fen.

It stands for an authorised operator's exchange service in the e-CNY two-tier system (white
paper, July 2021, section 3.3: the PBOC issues to operators, operators exchange with the
public). Amounts crossing it are whole fen, the RMB's smallest unit (RMB Administration
Regulations, 2000, article 3): a top-up finer than the fen is refused, and a redemption of an
amount finer than the fen pays the whole fen below it, the rest staying in the wallet
(`WalletService.withdraw`, `Currency.to_rail`). The wallet rules the e-CNY system enforces on
those wallets (tiers, caps, controllable anonymity) are the ledger's spend guard: `wallets.ecny`.

Like the other sandbox rails it confirms every top-up at once and records every redemption,
once per reference; a node runs it in place of the plain ECNY sandbox rail when it applies the
e-CNY rules (`MarketplaceNode(ecny=EcnyRules())`, `agentmarket serve --ecny`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wallets.currencies import Currency, currency
from wallets.errors import FailedPrecondition, InvalidAmount

FEN_ATOMIC = currency("ECNY").rail_step_atomic


@dataclass
class EcnyRail:
    name: str = "sandbox-ecny"
    settlement_delay_s: int = 0
    currency: Currency = field(default_factory=lambda: currency("ECNY"))
    payouts: dict[str, int] = field(default_factory=dict)
    top_ups: dict[str, tuple[int, str]] = field(default_factory=dict)  # amount, wallet

    def confirm_deposit(self, reference: str, amount_atomic: int, account_id: str) -> None:
        """Confirm a top-up once per reference: the same reference again is confirmed only for
        the wallet it was first made out to (an operator's top-up pays one wallet; the ledger
        then answers a retry for that wallet as its first deposit)."""
        _whole_fen(amount_atomic)
        first = self.top_ups.setdefault(reference, (amount_atomic, account_id))
        if first[1] != account_id:
            raise FailedPrecondition(f"top-up {reference!r} was made out to another wallet, "
                                     f"not {account_id}", reason="DEPOSIT_REFERENCE_USED")

    def send_payout(self, reference: str, amount_atomic: int) -> None:
        _whole_fen(amount_atomic)
        self.payouts.setdefault(reference, amount_atomic)


def _whole_fen(amount_atomic: int) -> None:
    if amount_atomic % FEN_ATOMIC:
        raise InvalidAmount(f"e-CNY moves whole fen (0.01 CNY = {FEN_ATOMIC} atomic); "
                            f"{amount_atomic} atomic is finer")
