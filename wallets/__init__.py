"""Money for agents: currencies, a double-entry ledger with two-phase holds, rails, wallets
an owner can program (policies, approvals, velocity freezes, mandates), and FX."""

from wallets import _stack  # noqa: F401  (the recursion limit, read before a library raises it)
from wallets.anomaly import Alert
from wallets.approvals import Approval
from wallets.conditional import ConditionalHold, ConditionalHolds
from wallets.controls import WalletControls
from wallets.currencies import CURRENCIES, Currency, currency, split
from wallets.ecny import EcnyGuard, EcnyRules, EcnyWallets, TierLimit, WalletTier
from wallets.errors import (
    AgentmarketError,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalRequired,
    FailedPrecondition,
    Forbidden,
    HoldClosed,
    HoldExceeded,
    HoldLocked,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
    InvalidSignature,
    MandateDenied,
    NotFound,
    PermissionDenied,
    PolicyDenied,
    QuoteExpired,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    UnknownCurrency,
    WalletFrozen,
)
from wallets.fx import Conversion, FixedRateProvider, FxDesk, FxProvider, FxQuote, convert_amount
from wallets.guard import SpendContext, SpendGuard
from wallets.ledger import Ledger
from wallets.mandates import Mandate, MandateTerms, sign_mandate, sign_revocation
from wallets.models import Balance, CheckReport, Hold, Leg, Posting, Transfer
from wallets.policies import ControlState, Policy
from wallets.rails import PendingWithdrawal, Rail, SandboxRail
from wallets.rails_ecny import EcnyRail
from wallets.service import WalletService
from wallets.store import make_engine, sqlite_url

__all__ = [
    "CURRENCIES",
    "AgentmarketError",
    "Alert",
    "Approval",
    "ApprovalDenied",
    "ApprovalExpired",
    "ApprovalRequired",
    "Balance",
    "CheckReport",
    "ConditionalHold",
    "ConditionalHolds",
    "ControlState",
    "Conversion",
    "Currency",
    "EcnyGuard",
    "EcnyRail",
    "EcnyRules",
    "EcnyWallets",
    "FailedPrecondition",
    "FixedRateProvider",
    "Forbidden",
    "FxDesk",
    "FxProvider",
    "FxQuote",
    "Hold",
    "HoldClosed",
    "HoldExceeded",
    "HoldLocked",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InvalidAmount",
    "InvalidArgument",
    "InvalidSignature",
    "Ledger",
    "Leg",
    "Mandate",
    "MandateDenied",
    "MandateTerms",
    "NotFound",
    "PendingWithdrawal",
    "PermissionDenied",
    "Policy",
    "PolicyDenied",
    "Posting",
    "QuoteExpired",
    "Rail",
    "ResourceExhausted",
    "SandboxRail",
    "SpendContext",
    "SpendGuard",
    "TierLimit",
    "Transfer",
    "Unauthenticated",
    "Unavailable",
    "UnknownCurrency",
    "WalletControls",
    "WalletFrozen",
    "WalletService",
    "WalletTier",
    "convert_amount",
    "currency",
    "make_engine",
    "sign_mandate",
    "sign_revocation",
    "split",
    "sqlite_url",
]
