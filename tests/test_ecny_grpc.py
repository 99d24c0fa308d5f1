"""e-CNY wallet tiers over gRPC, on a node run with the e-CNY rules and signed calls.

As in the real e-CNY, a wallet's category is raised by a verified identity, not by its holder:
only an identity authority (an operator, or a configured identity provider) may set it, never
the wallet's own agent. The tier's caps then apply to payments made over gRPC. Refusals change
nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from marketplace.auth import signed_channel
from marketplace.cli.main import app
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from wallets.ecny import CNY_ATOMIC, DEFAULT_TIERS, EcnyRules
from wallets.errors import InvalidArgument
from wallets.grpc_errors import error_info
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

TIMEOUT_S = 10


def cny(amount: str) -> int:
    return int(Decimal(amount) * CNY_ATOMIC)


@dataclass
class Market:
    node: MarketplaceNode
    operator: AgentKey
    provider: AgentKey
    channels: list[grpc.Channel]

    def stub(self, key: AgentKey) -> Any:
        channel = signed_channel(self.node.address, key)
        self.channels.append(channel)
        return wallet_pb2_grpc.WalletServiceStub(channel)


@pytest.fixture
def market(db_url: str) -> Iterator[Market]:
    operator, provider = AgentKey.generate(), AgentKey.generate()
    node = MarketplaceNode(db_url, ecny=EcnyRules(), operator_ids=[operator.agent_id],
                           ecny_identity_providers=[provider.agent_id],
                           sweep_interval_s=3600).start()
    found = Market(node, operator, provider, [])
    try:
        yield found
    finally:
        for channel in found.channels:
            channel.close()
        node.stop(0)


def _key() -> str:
    return f"test:{uuid.uuid4().hex}"


def _wallet(stub: Any, agent: AgentKey, top_up: str = "0") -> str:
    account = stub.OpenAccount(wallet_pb2.OpenAccountRequest(
        idempotency_key=_key(), owner=agent.agent_id, currency="ECNY"),
        timeout=TIMEOUT_S).account_id
    if top_up != "0":
        stub.Deposit(wallet_pb2.DepositRequest(
            idempotency_key=_key(), account_id=account,
            amount=wallet_pb2.Money(amount_atomic=cny(top_up), currency="ECNY")),
            timeout=TIMEOUT_S)
    return account


def _pay(stub: Any, payer: str, payee: str, amount: str) -> Any:
    return stub.Transfer(wallet_pb2.TransferRequest(
        idempotency_key=_key(), debit_account_id=payer, credit_account_id=payee,
        amount=wallet_pb2.Money(amount_atomic=cny(amount), currency="ECNY")),
        timeout=TIMEOUT_S)


def _set_tier(stub: Any, account: str, category: int, identity_ref: str = "",
              key: str = "") -> Any:
    return stub.SetEcnyTier(wallet_pb2.SetEcnyTierRequest(
        idempotency_key=key or _key(), account_id=account, category=category,
        identity_ref=identity_ref), timeout=TIMEOUT_S)


def _state(node: MarketplaceNode) -> tuple[Any, ...]:
    from sqlalchemy import select

    from wallets.ecny import WALLETS

    with node.engine.connect() as conn:
        tiers = sorted((r.account_id, r.category, r.identity_ref)
                       for r in conn.execute(select(WALLETS)))
    return (sorted((b.account_id, b.posted_atomic, b.pending_debits_atomic)
                   for b in node.ledger.accounts()), len(node.ledger.postings(limit=10_000)),
            tiers)


def _refused(node: MarketplaceNode, call: Any, code: grpc.StatusCode, reason: str) -> str:
    before = _state(node)
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == code, raised.value.details()
    assert error_info(raised.value).reason == reason, raised.value.details()
    assert _state(node) == before
    return str(raised.value.details())


def test_an_identity_authority_raises_a_tier_and_the_caps_follow_over_grpc(market: Market):
    buyer, seller = AgentKey.generate(), AgentKey.generate()
    as_buyer, as_seller = market.stub(buyer), market.stub(seller)
    as_provider, as_operator = market.stub(market.provider), market.stub(market.operator)
    payer, payee = _wallet(as_buyer, buyer, "9000"), _wallet(as_seller, seller)
    node = market.node

    anonymous = as_buyer.GetEcnyWallet(wallet_pb2.GetEcnyWalletRequest(account_id=payer),
                                       timeout=TIMEOUT_S)
    assert (anonymous.category, anonymous.registered, anonymous.verified_identity) == \
        (4, False, False)
    assert anonymous.per_payment_cap_atomic == DEFAULT_TIERS[4].per_payment_cap_atomic
    _pay(as_buyer, payer, payee, "2000")  # the anonymous limit itself
    _refused(node, lambda: _pay(as_buyer, payer, payee, "2000.01"),
             grpc.StatusCode.FAILED_PRECONDITION, "ECNY_IDENTITY_REQUIRED")

    # the holder never raises its own tier, nor does another agent
    for stub in (as_buyer, as_seller):
        details = _refused(node, lambda s=stub: _set_tier(s, payer, 2, "id-and-bank"),
                           grpc.StatusCode.PERMISSION_DENIED, "FORBIDDEN")
        assert "identity-authority-sets-tier" in details
    _refused(node, lambda: _set_tier(as_provider, payer, 2),
             grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")  # no verified identity
    _refused(node, lambda: _set_tier(as_provider, payer, 9, "x"),
             grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")

    raised = _set_tier(as_provider, payer, 2, "kyc-record-7", key="kyc-1")
    assert (raised.category, raised.registered, raised.verified_identity,
            raised.identity_ref) == (2, True, True, "kyc-record-7")
    assert raised.per_payment_cap_atomic == cny("50000")
    assert _set_tier(as_provider, payer, 2, "kyc-record-7", key="kyc-1") == raised  # retry
    assert as_buyer.GetEcnyWallet(wallet_pb2.GetEcnyWalletRequest(account_id=payer),
                                  timeout=TIMEOUT_S) == raised

    _pay(as_buyer, payer, payee, "2000.01")  # verified now
    as_buyer.Deposit(wallet_pb2.DepositRequest(  # past category 4's 10,000
        idempotency_key=_key(), account_id=payer,
        amount=wallet_pb2.Money(amount_atomic=cny("60000"), currency="ECNY")),
        timeout=TIMEOUT_S)
    _refused(node, lambda: _pay(as_buyer, payer, payee, "6000"),  # the payee's balance cap
             grpc.StatusCode.FAILED_PRECONDITION, "ECNY_BALANCE_CAP")
    _set_tier(as_operator, payee, 3, "merchant-licence")  # an operator may too
    _pay(as_buyer, payer, payee, "6000")  # category 3 holds 20,000
    _set_tier(as_operator, payee, 1, "merchant-at-the-counter")  # no caps
    _refused(node, lambda: _pay(as_buyer, payer, payee, "50000.01"),  # the payer's own cap
             grpc.StatusCode.FAILED_PRECONDITION, "ECNY_PAYMENT_CAP")
    records = node.wallets.ecny_wallets().payments(payer)
    assert {r["identity_ref"] for r in records} == {"", "kyc-record-7"}  # traced above 2,000


def test_an_authority_never_sets_its_own_wallets_tier(market: Market):
    as_provider = market.stub(market.provider)
    own = _wallet(as_provider, market.provider)
    details = _refused(market.node, lambda: _set_tier(as_provider, own, 1, "self"),
                       grpc.StatusCode.PERMISSION_DENIED, "FORBIDDEN")
    assert "its own wallet" in details


def test_a_node_without_the_ecny_rules_has_no_tiers(db_url: str):
    operator = AgentKey.generate()
    with MarketplaceNode(db_url, operator_ids=[operator.agent_id],
                         sweep_interval_s=3600) as node:
        market = Market(node, operator, operator, [])
        try:
            as_operator = market.stub(operator)
            holder = AgentKey.generate()
            account = _wallet(market.stub(holder), holder)
            _refused(node, lambda: _set_tier(as_operator, account, 2, "id"),
                     grpc.StatusCode.FAILED_PRECONDITION, "ECNY_NOT_ENABLED")
        finally:
            for channel in market.channels:
                channel.close()
    with pytest.raises(InvalidArgument, match="e-CNY"):
        MarketplaceNode(db_url, ecny_identity_providers=[operator.agent_id])


def test_serve_refuses_an_identity_provider_without_ecny(tmp_path: Path):
    result = CliRunner().invoke(app, [
        "serve", "--db", f"sqlite:///{tmp_path / 'm.db'}", "--port", "0", "--spans",
        str(tmp_path / "s.db"), "--ecny-identity-provider", "ab" * 32])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--ecny-identity-provider needs --ecny" in lines[0]
    assert not (tmp_path / "m.db").exists()
