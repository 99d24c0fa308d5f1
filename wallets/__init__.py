"""Money for agents: currencies, a double-entry ledger with two-phase holds, rails, wallets."""

from wallets.currencies import CURRENCIES, Currency, currency, split
from wallets.errors import (
    AgentmarketError,
    FailedPrecondition,
    HoldClosed,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    UnknownCurrency,
)
from wallets.ledger import Ledger
from wallets.models import Balance, CheckReport, Hold, Leg, Posting, Transfer
from wallets.rails import Rail, SandboxRail
from wallets.service import WalletService
from wallets.store import make_engine, sqlite_url

__all__ = [
    "CURRENCIES",
    "AgentmarketError",
    "Balance",
    "CheckReport",
    "Currency",
    "FailedPrecondition",
    "Hold",
    "HoldClosed",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidArgument",
    "Ledger",
    "Leg",
    "NotFound",
    "PermissionDenied",
    "Posting",
    "Rail",
    "ResourceExhausted",
    "SandboxRail",
    "Transfer",
    "Unauthenticated",
    "UnknownCurrency",
    "WalletService",
    "currency",
    "make_engine",
    "split",
    "sqlite_url",
]
