"""The payee of a hash-locked hold may decline it: a stranger's unsolicited hold, which counts
against an e-CNY wallet's balance cap until it expires (up to 30 days), would otherwise keep the
wallet from receiving anything. Only the payee may, and it gives up only its own claim: the
payer and the marketplace still cannot void the hold early, nor can a third party."""

from __future__ import annotations

import hashlib
import os

import grpc
import pytest

from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from wallets.ecny import CNY_ATOMIC, EcnyRules
from wallets.v1 import conditional_pb2, conditional_pb2_grpc, wallet_pb2, wallet_pb2_grpc


@pytest.fixture
def node(tmp_path):
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'n.db'}", ecny=EcnyRules(),
                           sweep_interval_s=3600).start()
    yield node
    node.stop(0)


def _void(node: MarketplaceNode, who: AgentKey, hold_id: str) -> grpc.StatusCode:
    with signed_channel(node.address, who) as channel:
        try:
            wallet_pb2_grpc.WalletServiceStub(channel).Void(wallet_pb2.VoidRequest(
                idempotency_key=os.urandom(8).hex(), hold_id=hold_id), timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_a_stranger_s_hold_that_fills_a_wallet_s_cap_is_declined_by_its_payee(node):
    stranger, victim, payer, third = (AgentKey.generate() for _ in range(4))
    ledger = node.ledger

    def wallet(key: AgentKey) -> str:
        return ledger.open_account(key.agent_id, "ECNY").account_id

    attacker_wallet, victim_wallet, payer_wallet = wallet(stranger), wallet(victim), wallet(payer)
    node.wallets.ecny_wallets().register("kyc", attacker_wallet, 1, identity_ref="kyc-123")
    node.wallets.deposit("top-up-1", attacker_wallet, 20_000 * CNY_ATOMIC, "ECNY")
    node.wallets.deposit("top-up-2", payer_wallet, 100 * CNY_ATOMIC, "ECNY")
    with signed_channel(node.address, stranger) as channel:
        hold = conditional_pb2_grpc.ConditionalHoldServiceStub(channel).Hold(
            conditional_pb2.ConditionalHoldRequest(
                idempotency_key="unsolicited", debit_account_id=attacker_wallet,
                credit_account_id=victim_wallet,
                amount=wallet_pb2.Money(amount_atomic=10_000 * CNY_ATOMIC, currency="ECNY"),
                condition_sha256=hashlib.sha256(os.urandom(32)).hexdigest(),
                expires_at_ms=ledger.clock_ms() + 29 * 24 * 3600 * 1000), timeout=10).hold

    def pay_victim() -> grpc.StatusCode:
        with signed_channel(node.address, payer) as channel:
            try:
                wallet_pb2_grpc.WalletServiceStub(channel).Transfer(wallet_pb2.TransferRequest(
                    idempotency_key=os.urandom(8).hex(), debit_account_id=payer_wallet,
                    credit_account_id=victim_wallet, amount=wallet_pb2.Money(
                        amount_atomic=CNY_ATOMIC, currency="ECNY")), timeout=10)
            except grpc.RpcError as error:
                return error.code()
        return grpc.StatusCode.OK

    assert pay_victim() == grpc.StatusCode.FAILED_PRECONDITION  # the cap is full
    for who in (stranger, third):  # the payer and strangers still cannot void it early
        assert _void(node, who, hold.hold_id) != grpc.StatusCode.OK
    assert ledger.get_hold(hold.hold_id).status == "open"
    assert _void(node, victim, hold.hold_id) == grpc.StatusCode.OK
    assert ledger.get_hold(hold.hold_id).status == "voided"
    assert ledger.balance(attacker_wallet).available_atomic == 20_000 * CNY_ATOMIC  # back
    assert pay_victim() == grpc.StatusCode.OK
    assert ledger.balance(victim_wallet).posted_atomic == CNY_ATOMIC


def test_a_plain_hold_made_out_to_another_s_ecny_wallet_is_refused(node):
    """A plain hold only the marketplace may void would sit on the payee's balance cap for up
    to 30 days with no way to decline it: under e-CNY rules one made out to another's wallet
    must be hash-locked."""
    stranger, victim = AgentKey.generate(), AgentKey.generate()
    ledger = node.ledger
    attacker_wallet = ledger.open_account(stranger.agent_id, "ECNY").account_id
    victim_wallet = ledger.open_account(victim.agent_id, "ECNY").account_id
    node.wallets.deposit("top-up-plain", attacker_wallet, 100 * CNY_ATOMIC, "ECNY")
    before = ledger.balance(victim_wallet)
    with signed_channel(node.address, stranger) as channel, \
            pytest.raises(grpc.RpcError) as refused:
        wallet_pb2_grpc.WalletServiceStub(channel).Hold(wallet_pb2.HoldRequest(
            idempotency_key="unsolicited-plain", debit_account_id=attacker_wallet,
            credit_account_id=victim_wallet, timeout_s=30 * 24 * 3600,
            amount=wallet_pb2.Money(amount_atomic=50 * CNY_ATOMIC, currency="ECNY")),
            timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "hash-locked" in refused.value.details()
    assert ledger.balance(victim_wallet) == before
    assert ledger.balance(attacker_wallet).available_atomic == 100 * CNY_ATOMIC
