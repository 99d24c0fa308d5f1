"""A NUL character in any string of a request is refused at the edge (INVALID_ARGUMENT, naming
the field) and changes nothing: PostgreSQL's text columns refuse NUL with a bare DataError, which
reached callers as INTERNAL, or (raised inside an access rule) as UNKNOWN with the exception's
text. On SQLite and PostgreSQL; seller agents run the same interceptor (their usage journal may
be a PostgreSQL database too).
"""

from __future__ import annotations

import grpc
import pytest

from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.v1 import settlement_pb2
from wallets.grpc_errors import error_reason, nul_field
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

USD = "USD"


def _money(amount_atomic: int) -> wallet_pb2.Money:
    return wallet_pb2.Money(amount_atomic=amount_atomic, currency=USD)


def test_nul_field_names_the_first_string_holding_one():
    assert nul_field(wallet_pb2.TransferRequest(memo="fine")) == ""
    assert nul_field(wallet_pb2.SetPolicyRequest(policy=wallet_pb2.WalletPolicy(
        deny_counterparties=["ok", "a\x00"]))) == "policy.deny_counterparties"
    assert nul_field(settlement_pb2.DisputeRequest(evidence=[
        settlement_pb2.Evidence(kind="k"), settlement_pb2.Evidence(kind="\x00")])) \
        == "evidence.kind"


def test_a_nul_in_any_string_is_refused_and_changes_nothing(db_url: str):
    key = AgentKey.generate()
    with MarketplaceNode(db_url, sweep_interval_s=3600) as node, \
            signed_channel(node.address, key) as channel:
        wallets = wallet_pb2_grpc.WalletServiceStub(channel)
        account = wallets.OpenAccount(wallet_pb2.OpenAccountRequest(
            idempotency_key="o", owner=key.agent_id, currency=USD), timeout=5).account_id
        wallets.Deposit(wallet_pb2.DepositRequest(idempotency_key="d", account_id=account,
                                                  amount=_money(10**8)), timeout=5)
        before = (node.ledger.accounts(), len(node.ledger.postings()))
        for call in (
            lambda: wallets.Freeze(wallet_pb2.FreezeRequest(
                idempotency_key="f", account_id=account, reason="why\x00", actor="me")),
            lambda: wallets.GetBalance(wallet_pb2.GetBalanceRequest(account_id="a\x00")),
            lambda: wallets.Transfer(wallet_pb2.TransferRequest(
                idempotency_key="t\x00", debit_account_id=account, credit_account_id=account,
                amount=_money(1))),
            lambda: wallets.SetPolicy(wallet_pb2.SetPolicyRequest(
                idempotency_key="p", account_id=account, policy=wallet_pb2.WalletPolicy(
                    deny_counterparties=["x\x00"]))),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_reason(caught.value) == "MALFORMED_REQUEST"
            assert "NUL" in (caught.value.details() or "")
        assert (node.ledger.accounts(), len(node.ledger.postings())) == before
        assert not node.wallets.controls.policy(account).frozen
