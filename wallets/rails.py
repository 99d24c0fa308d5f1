"""Rails move money between the ledger and the outside world (deposits and withdrawals).

Each rail is an account of kind "rail" in the ledger (it may go negative: it stands for money
outside), so deposits and withdrawals are ordinary balanced postings.

A chain rail (`ChainRail`: USDC on an EVM, `wallets.evm`) works the other way round: a
deposit is claimed by the chain (a token transfer from an address the wallet's owner registered
by signing with its key), and a payout names a destination address.

How a real rail plugs in (a bank, an e-CNY operator, a USDC chain): implement `Rail` and pass it
to `WalletService(ledger, rails=[...])`.
- `name` (unique, e.g. "ecny-pboc") and `currency`; amounts it sees are always whole steps of the
  currency's rail precision (`Currency.rail_step_atomic`).
- `confirm_deposit(reference, amount_atomic, account_id)`: raise unless the external deposit
  `reference` of that amount has arrived, is final, and was made out to wallet `account_id`
  (a reference is the deposit's idempotency key, chosen by the depositor: a rail that did not
  check the beneficiary would let anyone who learns a reference claim that money). The ledger
  credits the wallet only after it returns, so a deposit's own settlement time is the rail's,
  before the ledger sees it: deposits are credited at once on confirmation (the sandbox
  confirms everything immediately, for any wallet: play money). The ledger credits a wallet
  once per (rail, reference), whoever asks (`rail_deposits`): idempotency keys are per caller,
  the money a reference names is not.
- `send_payout(reference, amount_atomic)`: pay out; must be idempotent per `reference`, since a
  sweep that crashed half-way sends it again. The reference is `payout_reference(scope, key)`
  of the withdrawal's request: the same for its retries, different for every other request
  (two agents withdrawing under the same key are two payouts).
- `settlement_delay_s`: 0 pays out as the ledger debits the wallet, in the same request. Above 0,
  a withdrawal becomes a hold from the wallet to the rail account (the money is reserved, not yet
  gone); `WalletService.settle_due()`, run by a sweeper, captures each hold once its delay has
  passed and only then calls `send_payout`. A hold left unsettled past its grace
  (`SETTLEMENT_GRACE_S`) expires and the money returns to the wallet, never paid out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from wallets.currencies import Currency
from wallets.errors import InvalidArgument

MAX_SETTLEMENT_DELAY_S = 7 * 24 * 3600
SETTLEMENT_GRACE_S = 7 * 24 * 3600  # a pending withdrawal's hold lives delay + this


class Rail(Protocol):
    name: str
    currency: Currency
    settlement_delay_s: int

    def confirm_deposit(self, reference: str, amount_atomic: int, account_id: str) -> None:
        """Raise if the external deposit `reference` of `amount_atomic` to `account_id` is not
        confirmed."""

    def send_payout(self, reference: str, amount_atomic: int) -> None:
        """Send a payout (amount on the rail's precision); must be idempotent per reference."""


@dataclass
class SandboxRail:
    """A test rail that accepts every deposit and records every payout, after its
    `settlement_delay_s` (0: at once)."""

    currency: Currency
    settlement_delay_s: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.settlement_delay_s, bool) or not isinstance(
                self.settlement_delay_s, int) or not \
                0 <= self.settlement_delay_s <= MAX_SETTLEMENT_DELAY_S:
            raise InvalidArgument(f"settlement_delay_s must be 0..{MAX_SETTLEMENT_DELAY_S}, "
                                  f"got {self.settlement_delay_s!r}")
        self.name = f"sandbox-{self.currency.code.lower()}"
        self.payouts: dict[str, int] = {}

    def confirm_deposit(self, reference: str, amount_atomic: int, account_id: str) -> None:
        return None

    def send_payout(self, reference: str, amount_atomic: int) -> None:
        self.payouts.setdefault(reference, amount_atomic)


@dataclass(frozen=True, slots=True)
class DepositInstructions:
    """How to fund a wallet through a chain rail: register the sending address by signing
    `message` with its key (EIP-191), then transfer the token to `rail_address`; the deposit is
    credited after `confirmations` blocks."""

    rail: str
    currency: str
    rail_address: str
    token_address: str
    chain_id: int
    confirmations: int
    message: str


@dataclass(frozen=True, slots=True)
class DepositAddress:
    """An address whose transfers to the rail credit `account_id` (of agent `agent_id`)."""

    rail: str
    address: str  # EIP-55 checksummed
    account_id: str
    agent_id: str
    rail_address: str  # where to send the tokens
    confirmations: int


class ChainRail(Rail, Protocol):
    """A rail on a chain (`wallets.evm.UsdcRail`): deposits are claimed by the chain from
    registered addresses, payouts go to a destination address."""

    def deposit_instructions(self, account_id: str, address: str) -> DepositInstructions:
        """Where to send tokens from `address` for `account_id`, and what to sign first."""

    def register_address(self, key: str, account_id: str, address: str,
                         signature: bytes) -> DepositAddress:
        """Credit what `address` sends to the rail to `account_id` (its key signed)."""

    def withdraw(self, key: str, account_id: str, amount_atomic: int,
                 to_address: str) -> Any:
        """Pay out to `to_address`; idempotent under `key`; returns the posting."""


def is_chain_rail(rail: Rail) -> bool:
    return callable(getattr(rail, "register_address", None))


def payout_reference(scope: str, key: str) -> str:
    """The rail reference of a withdrawal: one per (scope, idempotency key), 32 hex characters
    (rails limit their references' length; SEPA's end-to-end id is 35)."""
    return hashlib.sha256(f"payout\n{scope}\n{key}".encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class PendingWithdrawal:
    """A withdrawal waiting out its rail's settlement delay (or already settled)."""

    hold_id: str
    idempotency_key: str
    rail: str
    account_id: str
    currency: str
    amount_atomic: int
    due_at_ms: int
    status: str  # pending | captured | paid | returned
    settled_at_ms: int = 0
    reference: str = ""  # what the rail was (or will be) told: `payout_reference`
