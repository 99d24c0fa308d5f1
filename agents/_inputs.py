"""What the SDK checks before anything is sent: each malformed amount, currency, id, key or
count is refused with the project's own error and a one-line message naming the bad value."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from agents.errors import InvalidAmount, InvalidArgument
from marketplace.identity import check_agent_id
from wallets.currencies import Currency
from wallets.currencies import currency as _currency

MAX_KEY_CHARS = 256
MAX_NAME_CHARS = 128
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+):\d{1,5}\Z|^unix:.+\Z|^dns:.+\Z")


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def currency(code: Any) -> Currency:
    """The currency a code names (UnknownCurrency, listing the known ones, otherwise)."""
    return _currency(code)


def amount_atomic(amount: str | int | Decimal, code: Any, *, what: str = "amount",
                  positive: bool = True) -> int:
    """A decimal amount of `code` in atomic units, exact (InvalidAmount names the value)."""
    value = currency(code).atomic(amount)
    if positive and value <= 0:
        raise InvalidAmount(f"the {what} must be more than zero, got {shown(amount)}")
    return value


def idempotency_key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_CHARS:
        raise InvalidArgument(f"an idempotency key is a string of 1..{MAX_KEY_CHARS} "
                              f"characters, got {shown(key)}")
    return key


def agent_id(value: Any, what: str = "agent id") -> str:
    """A 64-hex ed25519 public key."""
    if not isinstance(value, str):
        raise InvalidArgument(f"the {what} must be a 64-hex-character key, got {shown(value)}")
    try:
        return check_agent_id(value, what)
    except InvalidArgument:
        raise InvalidArgument(f"the {what} must be a 64-hex-character ed25519 public key, "
                              f"got {shown(value)}") from None


def count(value: Any, what: str, *, minimum: int = 1, maximum: int = 2**31) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidArgument(f"{what} must be a whole number {minimum}..{maximum}, "
                              f"got {shown(value)}")
    return value


def name(value: Any, what: str = "name") -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_CHARS:
        raise InvalidArgument(f"the {what} must be text of 1..{MAX_NAME_CHARS} characters, "
                              f"got {shown(value)}")
    return value


def market(value: Any) -> str:
    """The marketplace's gRPC target: one node's host:port (or unix:, dns: target), or a list
    of nodes' IP host:port (`marketplace.market_channel.market_target`)."""
    from marketplace.market_channel import market_target
    from wallets.errors import AgentmarketError

    if isinstance(value, (list, tuple)):
        for node in value:
            address(node, "node address")
        try:
            return market_target(value)
        except AgentmarketError as error:
            raise InvalidArgument(error.message) from None
    return address(value)


def address(value: Any, what: str = "marketplace address") -> str:
    """host:port (or a grpc target such as unix:/path)."""
    if not isinstance(value, str) or not _ADDRESS.match(value.strip()):
        raise InvalidArgument(f"the {what} must be host:port, got {shown(value)}")
    return value.strip()
