"""Adversaries at the rails: colluding PvP parties, strangers who learn a PvP condition, a
hash-locked hold to its own account, a receipt file nested to exhaust the verifier, and a chain
whose RPC is down while the node sweeps. Each case states what the money or the answer must be."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from marketplace.auth import signed_channel
from marketplace.cli.main import app
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.pvp import LegRefused
from marketplace.pvp_legs import leg_subject
from marketplace.receipt_verify import ReceiptInvalid, verify_receipt
from marketplace.v1 import receipt_pb2, receipt_pb2_grpc
from tests.test_conditional_holds import _state, funded_pair
from tests.test_pvp import MARGIN_MS, _setup, _wallet, open_two_nodes
from wallets.conditional import condition_of
from wallets.currencies import CURRENCIES
from wallets.errors import InvalidArgument
from wallets.ledger import Ledger
from wallets.models import Leg
from wallets.rails import SandboxRail
from wallets.service import WalletService
from wallets.v1 import conditional_pb2, conditional_pb2_grpc, wallet_pb2, wallet_pb2_grpc

USD, ECNY = 10**9, 10**9  # one unit of each, atomic


@pytest.fixture
def two_nodes(tmp_path):
    yield from open_two_nodes(tmp_path)


def _posted(node: MarketplaceNode, account: str) -> int:
    return node.ledger.balance(account).posted_atomic


# ---- PvP: one source leg, one destination leg ----------------------------------------------


def test_one_source_hold_under_two_payment_ids_backs_one_destination_leg(two_nodes):
    a, b = two_nodes
    payment, preimage, buyer, provider, seller = _setup(two_nodes)
    again = dataclasses.replace(payment, payment_id="payment-2")  # same terms, same source hold
    source = buyer.lock_source(payment)
    first = provider.lock_destination(payment, source.hold_id, margin_ms=MARGIN_MS)
    second = provider.lock_destination(again, source.hold_id, margin_ms=MARGIN_MS)
    assert second.hold_id == first.hold_id  # the first leg, not a second one
    assert b.ledger.balance(payment.destination.debit_account_id).pending_debits_atomic == \
        10 * USD
    assert seller.claim_destination(payment, first.hold_id, preimage).status == "captured"
    assert seller.claim_destination(again, second.hold_id, preimage).status == "captured"
    provider.claim_source(payment, source.hold_id, first.hold_id)
    provider.claim_source(again, source.hold_id, second.hold_id)
    assert _posted(b, payment.destination.debit_account_id) == 90 * USD  # paid 10 USD once
    assert _posted(b, payment.destination.credit_account_id) == 10 * USD
    assert _posted(a, payment.source.credit_account_id) == 71 * ECNY
    assert _posted(a, payment.source.debit_account_id) == 229 * ECNY


def test_a_second_destination_leg_on_other_terms_over_one_source_hold_is_refused(two_nodes):
    _a, b = two_nodes
    payment, _preimage, buyer, provider, _seller = _setup(two_nodes)
    richer = dataclasses.replace(payment, payment_id="payment-2", destination=dataclasses.replace(
        payment.destination, amount_atomic=20 * USD))
    source = buyer.lock_source(payment)
    provider.lock_destination(payment, source.hold_id, margin_ms=MARGIN_MS)
    with pytest.raises(LegRefused, match="ALREADY_EXISTS"):
        provider.lock_destination(richer, source.hold_id, margin_ms=MARGIN_MS)
    provider_usd = b.ledger.balance(payment.destination.debit_account_id)
    assert provider_usd.pending_debits_atomic == 10 * USD  # only the first leg is held
    assert [h.amount_atomic for h in b.ledger.holds(
        account_id=payment.destination.debit_account_id)] == [10 * USD]


def test_the_provider_claims_a_source_leg_someone_else_fulfilled_first(two_nodes):
    a, _b = two_nodes
    payment, preimage, buyer, provider, seller = _setup(two_nodes)
    source = buyer.lock_source(payment)
    destination = provider.lock_destination(payment, source.hold_id, margin_ms=MARGIN_MS)
    seller._fulfil(payment.source, source.hold_id, preimage, "seller-takes-the-source-first")
    seller.claim_destination(payment, destination.hold_id, preimage)
    claimed = provider.claim_source(payment, source.hold_id, destination.hold_id)
    assert claimed is not None and claimed.status == "captured"
    assert claimed.fulfilment == preimage
    assert _posted(a, payment.source.credit_account_id) == 71 * ECNY  # once, not twice
    settled = [r for r in a.receipts.receipts(leg_subject(payment.condition_sha256,
                                                          source.hold_id))]
    assert [r["body"]["kind"] for r in settled] == ["pvp_settled"]  # no second receipt


# ---- PvP receipts: a leg's subject is its own ----------------------------------------------


def _get_receipt(node: MarketplaceNode, key: AgentKey, subject: str, kind: str = "") -> bytes:
    with signed_channel(node.address, key) as channel:
        return receipt_pb2_grpc.ReceiptServiceStub(channel).GetReceipt(
            receipt_pb2.GetReceiptRequest(subject=subject, kind=kind), timeout=5).file


def _paid_to_the_seller(two_nodes):  # type: ignore[no-untyped-def]
    """A PvP payment whose destination leg the seller has claimed: (payment, the provider's
    and the seller's parties, the destination leg)."""
    payment, preimage, buyer, provider, seller = _setup(two_nodes)
    source = buyer.lock_source(payment)
    destination = provider.lock_destination(payment, source.hold_id, margin_ms=MARGIN_MS)
    seller.claim_destination(payment, destination.hold_id, preimage)
    return payment, provider, seller, destination


def test_a_stranger_who_knows_the_condition_cannot_take_over_a_legs_receipts(two_nodes):
    _a, b = two_nodes
    payment, provider, seller, destination = _paid_to_the_seller(two_nodes)
    attacker = AgentKey.generate()  # locks a hold of its own to the payment's condition,
    paying = _wallet(b, attacker, "USD", USD)  # payable to the seller, and lets it expire
    with signed_channel(b.address, attacker) as channel:
        planted = conditional_pb2_grpc.ConditionalHoldServiceStub(channel).Hold(
            conditional_pb2.ConditionalHoldRequest(
                idempotency_key="plant", debit_account_id=paying,
                credit_account_id=payment.destination.credit_account_id,
                amount=wallet_pb2.Money(amount_atomic=1, currency="USD"),
                condition_sha256=payment.condition_sha256,
                expires_at_ms=time.time_ns() // 1_000_000 + 1200), timeout=5).hold
    time.sleep(1.5)
    b.ledger.expire_holds()
    b.conditional.receipt_expired()
    leg = leg_subject(payment.condition_sha256, destination.hold_id)
    found = verify_receipt(_get_receipt(b, seller.key, leg), node=b.agent_id)
    assert (found.subject, found.subject_kind, found.kind) == (leg, "pvp", "pvp_settled")
    assert found.parties == {"payer": provider.key.agent_id, "payee": seller.key.agent_id}
    assert found.amounts == {"amount": 10 * USD}
    plant = verify_receipt(_get_receipt(b, seller.key, leg_subject(
        payment.condition_sha256, planted.hold_id)), node=b.agent_id)
    assert (plant.kind, plant.amounts) == ("pvp_voided", {"amount": 1})  # a subject of its own
    with pytest.raises(grpc.RpcError) as refused:
        _get_receipt(b, attacker, leg, "pvp_settled")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as bare:  # the condition alone names no leg
        _get_receipt(b, seller.key, payment.condition_sha256)
    assert bare.value.code() == grpc.StatusCode.NOT_FOUND


def test_get_receipt_gives_a_party_only_a_receipt_that_names_it(two_nodes):
    _a, b = two_nodes
    payment, _provider, seller, destination = _paid_to_the_seller(two_nodes)
    leg = leg_subject(payment.condition_sha256, destination.hold_id)
    stranger = AgentKey.generate()
    later = b.wallets.deposit("later", _wallet(b, stranger, "USD"), USD, "USD").sequence
    with b.engine.begin() as conn:  # a newer receipt under the subject naming someone else
        b.receipts.issue_in(conn, subject=leg, subject_kind="pvp", kind="pvp_voided",
                            currency="USD", parties={"payer": stranger.agent_id,
                                                     "payee": stranger.agent_id},
                            amounts={"amount": 1}, sequences=[later], receipt_id="other")
    mine = verify_receipt(_get_receipt(b, seller.key, leg), node=b.agent_id)
    assert (mine.kind, mine.amounts) == ("pvp_settled", {"amount": 10 * USD})
    theirs = verify_receipt(_get_receipt(b, stranger, leg), node=b.agent_id)
    assert (theirs.kind, theirs.amounts) == ("pvp_voided", {"amount": 1})
    with pytest.raises(grpc.RpcError) as none:
        _get_receipt(b, stranger, leg, "pvp_settled")
    assert none.value.code() == grpc.StatusCode.NOT_FOUND
    everything = verify_receipt(_get_receipt(b, b.key, leg), node=b.agent_id)
    assert everything.kind == "pvp_voided"  # the marketplace reads every receipt


# ---- hash-locked holds ----------------------------------------------------------------------


@pytest.fixture
def funded(ledger: Ledger, wallets: WalletService):
    return funded_pair(ledger, wallets)


def test_a_hash_locked_hold_to_its_own_account_is_refused(funded, ledger: Ledger, clock):
    holds, payer, _payee = funded
    before = _state(ledger)
    with pytest.raises(InvalidArgument, match="must differ") as refused:
        holds.hold("self", payer, payer, 400, condition_sha256=condition_of(os.urandom(32)),
                   expires_at_ms=clock() + 30_000)
    assert refused.value.status == "INVALID_ARGUMENT"
    assert _state(ledger) == before  # nothing held
    assert ledger.holds(account_id=payer) == []


def test_a_hash_locked_hold_to_its_own_account_is_refused_over_grpc(tmp_path):
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'n.db'}").start()
    try:
        me = AgentKey.generate()
        account = _wallet(node, me, "USD", 5 * USD)
        with signed_channel(node.address, me) as channel, \
                pytest.raises(grpc.RpcError) as refused:
            conditional_pb2_grpc.ConditionalHoldServiceStub(channel).Hold(
                conditional_pb2.ConditionalHoldRequest(
                    idempotency_key="self", debit_account_id=account,
                    credit_account_id=account,
                    amount=wallet_pb2.Money(amount_atomic=USD, currency="USD"),
                    condition_sha256=condition_of(os.urandom(32)),
                    expires_at_ms=time.time_ns() // 1_000_000 + 60_000), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        balance = node.ledger.balance(account)
        assert (balance.posted_atomic, balance.available_atomic,
                balance.pending_debits_atomic) == (5 * USD, 5 * USD, 0)
    finally:
        node.stop(0)


def test_holds_and_transfers_that_no_rail_could_honour_are_refused_over_grpc(tmp_path):
    """A hash-locked hold of nothing, or naming no payee, is INVALID_ARGUMENT; money sent to a
    rail account by Transfer or a hold (which the rail would never pay out, leaving the account
    no longer mirroring what the rail holds) is PERMISSION_DENIED. Nothing moves."""
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'n.db'}", sweep_interval_s=3600).start()
    try:
        me = AgentKey.generate()
        account = _wallet(node, me, "USD", 5 * USD)
        payee = node.ledger.open_account(AgentKey.generate().agent_id, "USD").account_id
        rail = node.wallets.rail_account(node.wallets.rail("", "USD")).account_id
        before = _state(node.ledger)
        expires = time.time_ns() // 1_000_000 + 60_000

        def hold(to: str, amount: int) -> conditional_pb2.ConditionalHoldRequest:
            return conditional_pb2.ConditionalHoldRequest(
                idempotency_key=os.urandom(8).hex(), debit_account_id=account,
                credit_account_id=to, amount=wallet_pb2.Money(amount_atomic=amount,
                                                              currency="USD"),
                condition_sha256=condition_of(os.urandom(32)), expires_at_ms=expires)

        with signed_channel(node.address, me) as channel:
            holds = conditional_pb2_grpc.ConditionalHoldServiceStub(channel)
            transfer = wallet_pb2_grpc.WalletServiceStub(channel).Transfer
            for call, code in (
                    (lambda: holds.Hold(hold(payee, 0), timeout=5), "INVALID_ARGUMENT"),
                    (lambda: holds.Hold(hold("", USD), timeout=5), "INVALID_ARGUMENT"),
                    (lambda: holds.Hold(hold(rail, USD), timeout=5), "PERMISSION_DENIED"),
                    (lambda: transfer(wallet_pb2.TransferRequest(
                        idempotency_key="to-rail", debit_account_id=account,
                        credit_account_id=rail, amount=wallet_pb2.Money(
                            amount_atomic=USD, currency="USD")), timeout=5),
                     "PERMISSION_DENIED")):
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code().name == code, refused.value.details()
        assert _state(node.ledger) == before
    finally:
        node.stop(0)


def test_an_unbalanced_posting_raises_even_with_asserts_off(ledger: Ledger, funded):
    _holds, payer, _payee = funded
    before = _state(ledger)
    with pytest.raises(RuntimeError, match="unbalanced posting"), ledger.engine.begin() as conn:
        ledger._post(conn, "unbalanced", "transfer", [Leg(payer, "USD", posted_atomic=5)])
    assert _state(ledger) == before


def test_fulfilling_a_captured_hold_again_with_its_preimage_answers_captured(
        funded, ledger: Ledger, clock):
    holds, payer, payee = funded
    preimage = os.urandom(32)
    hold_id = holds.hold("h1", payer, payee, 400, condition_sha256=condition_of(preimage),
                         expires_at_ms=clock() + 30_000).hold.hold_id
    done, posting = holds.fulfil("f1", hold_id, preimage)
    before = _state(ledger)
    again, same = holds.fulfil("f2", hold_id, preimage)  # another key: the payee's own claim
    assert again.hold.status == "captured" and again.fulfilment == preimage.hex()
    # the same posting (its chain hash may have been sealed in between, on PostgreSQL)
    assert dataclasses.replace(same, hash="") == dataclasses.replace(posting, hash="")
    assert _state(ledger) == before  # nothing moved twice
    assert ledger.balance(payee).posted_atomic == 400
    with pytest.raises(InvalidArgument, match="does not hash"):
        holds.fulfil("f3", hold_id, os.urandom(32))
    assert done.hold.status == "captured"


# ---- the receipt verifier -------------------------------------------------------------------


def test_a_deeply_nested_receipt_file_is_invalid_not_a_crash(tmp_path: Path):
    deep = b"[" * 100_000 + b"]" * 100_000 + b"\n"
    with pytest.raises(ReceiptInvalid, match="nested too deeply"):
        verify_receipt(deep)
    nested = b'{"checkpoint":' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    with pytest.raises(ReceiptInvalid, match="nested too deeply"):
        verify_receipt(nested)
    file = tmp_path / "deep.json"
    file.write_bytes(deep)
    result = CliRunner().invoke(app, ["receipt", "verify", str(file)])
    assert result.exit_code == 1 and "nested too deeply" in result.output
    assert len(result.output.strip().splitlines()) == 1


# ---- the sweeper -----------------------------------------------------------------------------


@dataclasses.dataclass
class DownChain(SandboxRail):
    """A chain rail whose RPC does not answer: every sweep fails."""

    sweeps: int = 0

    def sweep(self) -> None:
        self.sweeps += 1
        raise ConnectionError("the chain's RPC does not answer")


def test_a_failing_rail_sweep_does_not_stop_the_rest_of_the_round(tmp_path):
    rail = DownChain(CURRENCIES["USD"])
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'n.db'}", rails=lambda ledger: [rail],
                           sweep_interval_s=0.05, checkpoint_interval_s=0.2).start()
    try:
        account = _wallet(node, AgentKey.generate(), "USD", USD)
        posted = node.ledger.postings(account_id=account)[-1].sequence
        deadline = time.monotonic() + 10
        while (node.receipts.checkpoints.latest() is None
               or node.receipts.checkpoints.latest().sequence < posted):
            assert time.monotonic() < deadline, "no checkpoint while the chain is down"
            time.sleep(0.05)
        assert rail.sweeps >= 1  # its sweep ran, failed, and the round went on
    finally:
        node.stop(0)
