"""Payment-versus-payment rules, with two in-process nodes: the provider locks its leg only
against a source leg that matches the terms and expires late enough, the seller claims only a
leg that pays the invoice, the amounts come from the provider's quote rounded in its favour,
and the ConditionalHoldService's access rules. (Kill -9 of either node: test_pvp_processes.)"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

import grpc
import pytest

from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.pvp import (
    LegRefused,
    PvpLeg,
    PvpParty,
    PvpPayment,
    source_amount,
    staggered_expiries,
)
from wallets.errors import InvalidArgument
from wallets.fx import FixedRateProvider
from wallets.v1 import conditional_pb2, conditional_pb2_grpc, wallet_pb2, wallet_pb2_grpc

MARGIN_MS = 10_000


def open_two_nodes(tmp_path):  # type: ignore[no-untyped-def]
    """The buyer's ledger (ECNY) and the seller's (USD), each a node of its own."""
    a = MarketplaceNode(f"sqlite:///{tmp_path / 'a.db'}").start()
    b = MarketplaceNode(f"sqlite:///{tmp_path / 'b.db'}").start()
    yield a, b
    a.stop(0)
    b.stop(0)


@pytest.fixture
def two_nodes(tmp_path):
    yield from open_two_nodes(tmp_path)


def _wallet(node: MarketplaceNode, owner: AgentKey, code: str, amount: int = 0) -> str:
    account = node.ledger.open_account(owner.agent_id, code).account_id
    if amount:
        node.wallets.deposit(os.urandom(8).hex(), account, amount, code)
    return account


def _setup(two_nodes):
    a, b = two_nodes
    buyer, seller, provider = (AgentKey.generate() for _ in range(3))
    preimage = os.urandom(32)
    destination, source = staggered_expiries(time.time_ns() // 1_000_000,
                                             destination_window_ms=20_000, margin_ms=MARGIN_MS)
    payment = PvpPayment(
        os.urandom(16).hex(), hashlib.sha256(preimage).hexdigest(),
        PvpLeg(a.address, _wallet(a, buyer, "ECNY", 300 * 10**9), _wallet(a, provider, "ECNY"),
               71 * 10**9, "ECNY", source),
        PvpLeg(b.address, _wallet(b, provider, "USD", 100 * 10**9), _wallet(b, seller, "USD"),
               10 * 10**9, "USD", destination))
    return payment, preimage, PvpParty(buyer), PvpParty(provider), PvpParty(seller)


def test_the_source_amount_is_the_quote_rounded_up():
    quote = FixedRateProvider({"USD": "1", "ECNY": "7.1"}).quote("USD", "ECNY", 0)
    assert source_amount(10 * 10**9, quote) == 71 * 10**9
    assert source_amount(1, quote) == 8  # 7.1 atomic: the provider is never short
    with pytest.raises(InvalidArgument):
        staggered_expiries(0, destination_window_ms=500, margin_ms=10_000)


def test_step_keys_are_stable_for_their_party_and_unguessable_by_others(two_nodes):
    payment, _preimage, buyer, provider, _seller = _setup(two_nodes)
    again = PvpParty(buyer.key)
    assert buyer.step_key(payment, "source-hold") == again.step_key(payment, "source-hold")
    assert buyer.step_key(payment, "source-hold") != provider.step_key(payment, "source-hold")
    assert payment.payment_id not in buyer.step_key(payment, "source-hold")


def test_the_provider_locks_only_against_a_matching_late_enough_source_leg(two_nodes):
    payment, preimage, buyer, provider, seller = _setup(two_nodes)
    cheap = dataclasses.replace(payment, payment_id="cheap", source=dataclasses.replace(
        payment.source, amount_atomic=payment.source.amount_atomic - 1))
    held = buyer.lock_source(cheap)
    with pytest.raises(LegRefused, match="not what the payment says"):
        provider.lock_destination(payment, held.hold_id, margin_ms=MARGIN_MS)
    early = dataclasses.replace(payment, source=dataclasses.replace(
        payment.source, expires_at_ms=payment.destination.expires_at_ms + MARGIN_MS - 1))
    with pytest.raises(InvalidArgument, match="at least"):
        provider.lock_destination(early, held.hold_id, margin_ms=MARGIN_MS)
    source = buyer.lock_source(payment)
    destination = provider.lock_destination(payment, source.hold_id, margin_ms=MARGIN_MS)
    assert provider.claim_source(payment, source.hold_id, destination.hold_id) is None
    with pytest.raises(InvalidArgument, match="does not fulfil"):
        seller.claim_destination(payment, destination.hold_id, os.urandom(32))
    richer = dataclasses.replace(payment, destination=dataclasses.replace(
        payment.destination, amount_atomic=payment.destination.amount_atomic + 1))
    with pytest.raises(LegRefused):
        seller.claim_destination(richer, destination.hold_id, preimage)
    assert seller.claim_destination(payment, destination.hold_id, preimage).status == "captured"
    claimed = provider.claim_source(payment, source.hold_id, destination.hold_id)
    assert claimed is not None and claimed.status == "captured"
    assert claimed.fulfilment == preimage


def test_the_conditional_hold_service_guards_each_method(two_nodes):
    payment, preimage, buyer, _provider, _seller = _setup(two_nodes)
    a = two_nodes[0]
    stranger = AgentKey.generate()
    with signed_channel(a.address, stranger) as channel:
        stub = conditional_pb2_grpc.ConditionalHoldServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:  # nobody holds another's money
            stub.Hold(conditional_pb2.ConditionalHoldRequest(
                idempotency_key="x", debit_account_id=payment.source.debit_account_id,
                credit_account_id=payment.source.credit_account_id,
                amount=wallet_pb2.Money(amount_atomic=1, currency="ECNY"),
                condition_sha256=payment.condition_sha256,
                expires_at_ms=payment.source.expires_at_ms), timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        held = buyer.lock_source(payment)
        with pytest.raises(grpc.RpcError) as unread:
            stub.Get(conditional_pb2.GetConditionalHoldRequest(hold_id=held.hold_id), timeout=5)
        assert unread.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as bad:  # anyone may fulfil, with the preimage only
            stub.Fulfil(conditional_pb2.FulfilRequest(
                idempotency_key="f", hold_id=held.hold_id, preimage=b"x" * 32), timeout=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        done = stub.Fulfil(conditional_pb2.FulfilRequest(
            idempotency_key="f", hold_id=held.hold_id, preimage=preimage), timeout=5)
        assert done.hold.status == "captured" and done.fulfilment == preimage
    with signed_channel(a.address, a.key) as channel:  # the marketplace cannot void it
        other = buyer.lock_source(dataclasses.replace(payment, payment_id="other"))
        with pytest.raises(grpc.RpcError) as locked:
            wallet_pb2_grpc.WalletServiceStub(channel).Void(wallet_pb2.VoidRequest(
                idempotency_key="v", hold_id=other.hold_id), timeout=5)
        assert locked.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "HOLD_LOCKED" in str(locked.value.trailing_metadata()) or \
            "locked" in locked.value.details()


def test_each_party_fetches_its_legs_receipt_over_grpc(two_nodes):
    from marketplace.receipt_verify import verify_receipt
    from marketplace.v1 import receipt_pb2, receipt_pb2_grpc

    payment, preimage, buyer, provider, seller = _setup(two_nodes)
    source = buyer.lock_source(payment)
    destination = provider.lock_destination(payment, source.hold_id, margin_ms=MARGIN_MS)
    seller.claim_destination(payment, destination.hold_id, preimage)
    provider.claim_source(payment, source.hold_id, destination.hold_id)
    for node, party, hold_id in ((two_nodes[0], buyer, source.hold_id),
                                 (two_nodes[1], seller, destination.hold_id)):
        request = receipt_pb2.GetReceiptRequest(
            subject=f"{payment.condition_sha256}:{hold_id}", kind="pvp_settled")
        with signed_channel(node.address, party.key) as channel:
            data = receipt_pb2_grpc.ReceiptServiceStub(channel).GetReceipt(request,
                                                                            timeout=5).file
        found = verify_receipt(data, node=node.agent_id)
        assert party.key.agent_id in found.parties.values()
        with signed_channel(node.address, AgentKey.generate()) as channel, \
                pytest.raises(grpc.RpcError) as refused:
            receipt_pb2_grpc.ReceiptServiceStub(channel).GetReceipt(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_one_source_leg_backs_one_destination_leg_however_its_node_is_spelled(two_nodes):
    """`localhost:P` and `127.0.0.1:P` are one node: a second payment naming the same source
    leg under another spelling of its node's address gets the first destination leg back
    (the provider's key is the hold's), never a second one the seller could claim too."""
    payment, _preimage, buyer, provider, _seller = _setup(two_nodes)
    source = buyer.lock_source(payment)
    first = provider.lock_destination(payment, source.hold_id, margin_ms=MARGIN_MS)
    port = payment.source.address.rsplit(":", 1)[1]
    respelled = dataclasses.replace(payment, payment_id="again", source=dataclasses.replace(
        payment.source, address=f"localhost:{port}"))
    again = provider.lock_destination(respelled, source.hold_id, margin_ms=MARGIN_MS)
    assert again.hold_id == first.hold_id


def test_a_leg_its_payee_declines_gets_its_receipt(two_nodes):
    """A payee gives up its claim on a hash-locked leg with the wallet service's Void: the
    payer still gets a signed receipt that the leg came back (the node's sweeper issues it)."""
    from marketplace.receipt_verify import verify_receipt

    payment, _preimage, buyer, provider, _seller = _setup(two_nodes)
    source = buyer.lock_source(payment)
    with signed_channel(two_nodes[0].address, provider.key) as channel:
        wallet_pb2_grpc.WalletServiceStub(channel).Void(wallet_pb2.VoidRequest(
            idempotency_key="decline", hold_id=source.hold_id), timeout=5)
    assert two_nodes[0].conditional.receipt_expired() == 1
    data = two_nodes[0].receipts.receipt_file(f"{payment.condition_sha256}:{source.hold_id}",
                                              kind="pvp_voided")
    found = verify_receipt(data, node=two_nodes[0].agent_id)
    assert buyer.key.agent_id in found.parties.values()
