"""The USDC rail on a real EVM in process (web3.py over eth-tester/py-evm, the Vyper token):
deposits credited after N confirmations and never from a reorganised block, payouts with their
transaction hash on the posting, each once; every balance checked against the chain's own.
EIP-3009 authorizations verified and settled as a facilitator would. Ledgers on SQLite and
PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest

if os.environ.get("CI") != "true":  # under CI the evm extra must be there (the dev extra has it)
    pytest.importorskip("web3", reason="the evm extra (web3, eth-tester, py-evm) is missing")

from eth_account import Account
from eth_account.messages import encode_defunct

from wallets.audit import check_balances, verify_chain
from wallets.controls import WalletControls
from wallets.errors import (
    AgentmarketError,
    FailedPrecondition,
    InvalidAmount,
    InvalidArgument,
    PermissionDenied,
)
from wallets.evm import (
    AuthorizationRefused,
    TransferAuthorization,
    UsdcRail,
    sandbox_chain,
    settle_authorization,
    verify_authorization,
)
from wallets.evm.chain import ARTIFACT
from wallets.evm.rail import ATOMIC_PER_UNIT
from wallets.ledger import Ledger
from wallets.policies import Policy
from wallets.service import WalletService

CONFIRMATIONS = 3


@pytest.fixture
def chain():
    return sandbox_chain()


@pytest.fixture
def rail(ledger: Ledger, chain):
    hot = Account.create()
    chain.fund_gas(hot.address)
    return UsdcRail(ledger, chain.token, hot.key, confirmations=CONFIRMATIONS)


def _holder(chain, units: int = 0):
    holder = Account.create()
    chain.fund_gas(holder.address)
    if units:
        chain.mint(holder.address, units)
    return holder


def _register(rail: UsdcRail, ledger: Ledger, holder, owner: str = "alice") -> str:
    account = ledger.open_account(owner, "USDC").account_id
    message = rail.registration_message(holder.address, account)
    signature = Account.sign_message(encode_defunct(text=message), holder.key).signature
    rail.register_address(f"register-{holder.address}", account, holder.address,
                          bytes(signature))
    return account


def _send(chain, holder, to: str, units: int) -> str:
    tx = chain.token.functions.transfer(to, units).build_transaction({
        "from": holder.address, "nonce": chain.w3.eth.get_transaction_count(holder.address),
        "gas": 100_000, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9,
        "chainId": chain.w3.eth.chain_id})
    signed = holder.sign_transaction(tx)
    chain.w3.eth.send_raw_transaction(signed.raw_transaction)
    return signed.raw_transaction


def _chain_units(chain, address: str) -> int:
    return chain.token.functions.balanceOf(address).call()


def _matches_chain(ledger: Ledger, rail: UsdcRail, chain) -> None:
    """The rail account mirrors the tokens the rail holds on chain, exactly."""
    rail_posted = ledger.balance(rail.rail_account).posted_atomic
    assert -rail_posted == _chain_units(chain, rail.address) * ATOMIC_PER_UNIT
    assert check_balances(ledger).ok and verify_chain(ledger).ok


def test_the_artifact_is_the_compiled_source():
    pytest.importorskip("vyper", reason="vyper (the dev extra) recompiles the token")
    from wallets.evm.compile import compile_token, render

    assert render(compile_token()) == ARTIFACT.read_text(), \
        "token.json is stale: run python -m wallets.evm.compile"
    artifact = json.loads(ARTIFACT.read_text())
    assert {f["name"] for f in artifact["abi"] if f["type"] == "function"} >= {
        "transfer", "transferFrom", "approve", "transferWithAuthorization",
        "authorizationState", "decimals", "DOMAIN_SEPARATOR"}


def test_a_deposit_is_credited_once_after_n_confirmations(ledger: Ledger, rail, chain):
    assert chain.token.functions.decimals().call() == 6
    alice = _holder(chain, 50_000_000)
    account = _register(rail, ledger, alice)
    _send(chain, alice, rail.address, 12_345_678)
    first = rail.scan()
    assert (first.seen, first.credited) == (1, 0)  # 1 confirmation of 3
    chain.mine(CONFIRMATIONS - 2)
    assert rail.scan().credited == 0  # 2 of 3
    chain.mine(1)
    assert rail.scan().credited == 1
    assert rail.scan().credited == 0 and rail.scan().seen == 0  # rescans change nothing
    assert ledger.balance(account).posted_atomic == 12_345_678 * ATOMIC_PER_UNIT
    [deposit] = ledger.postings(account_id=account, kind="deposit")
    assert "from " + alice.address.lower() in deposit.memo
    _matches_chain(ledger, rail, chain)


def test_a_chain_that_does_not_answer_once_loses_no_deposit(ledger: Ledger, rail, chain,
                                                            monkeypatch):
    """A failed read of a block (a connection reset, a replica behind) is not a reorganised
    block: the deposit stays seen and is credited once confirmed. A transfer of 0 posts
    nothing."""
    import requests

    alice = _holder(chain, 50_000_000)
    account = _register(rail, ledger, alice)
    _send(chain, alice, rail.address, 500)
    _send(chain, alice, rail.address, 0)
    chain.mine(CONFIRMATIONS)
    real, failures = rail.w3.eth.get_block, [1]

    def flaky(number: int, *args, **kwargs):  # type: ignore[no-untyped-def]
        if failures:
            failures.pop()
            raise requests.ConnectionError("the node is restarting")
        return real(number, *args, **kwargs)

    monkeypatch.setattr(rail.w3.eth, "get_block", flaky)
    hiccup = rail.scan()
    assert (hiccup.seen, hiccup.orphaned, hiccup.credited) == (1, 0, 0)
    assert rail.scan().credited == 1
    assert ledger.balance(account).posted_atomic == 500 * ATOMIC_PER_UNIT
    assert len(ledger.postings(account_id=account, kind="deposit")) == 1
    _matches_chain(ledger, rail, chain)


def test_deposits_from_unregistered_or_unproven_addresses_are_not_credited(ledger: Ledger,
                                                                           rail, chain):
    stranger, alice = _holder(chain, 1_000_000), _holder(chain)
    account = ledger.open_account("alice", "USDC").account_id
    message = rail.registration_message(alice.address, account)
    forged = Account.sign_message(encode_defunct(text=message), stranger.key).signature
    with pytest.raises(PermissionDenied):
        rail.register_address("r1", account, alice.address, bytes(forged))
    _send(chain, stranger, rail.address, 1_000_000)
    chain.mine(CONFIRMATIONS)
    result = rail.scan()
    assert (result.credited, result.unclaimed) == (0, 1)
    assert ledger.balance(account).posted_atomic == 0
    assert [d["status"] for d in rail.deposits()] == ["unclaimed"]
    _register(rail, ledger, alice, owner="alice")
    bob = ledger.open_account("bob", "USDC").account_id
    message = rail.registration_message(alice.address, bob)
    taken = Account.sign_message(encode_defunct(text=message), alice.key).signature
    with pytest.raises(FailedPrecondition, match="another wallet"):
        rail.register_address("r2", bob, alice.address, bytes(taken))


def test_a_deposit_in_a_reorganised_block_is_never_credited(ledger: Ledger, rail, chain):
    alice = _holder(chain, 5_000_000)
    account = _register(rail, ledger, alice)
    snapshot = chain.tester.take_snapshot()
    raw = _send(chain, alice, rail.address, 2_000_000)
    assert rail.scan().seen == 1
    chain.tester.revert_to_snapshot(snapshot)  # the block with the deposit is replaced
    chain.mine(CONFIRMATIONS + 1)
    result = rail.scan()
    assert (result.orphaned, result.credited) == (1, 0)
    assert ledger.balance(account).posted_atomic == 0
    _matches_chain(ledger, rail, chain)
    chain.w3.eth.send_raw_transaction(raw)  # the same transfer lands in another block
    rail.scan()
    chain.mine(CONFIRMATIONS)
    assert rail.scan().credited == 1
    assert ledger.balance(account).posted_atomic == 2_000_000 * ATOMIC_PER_UNIT
    assert [d["status"] for d in rail.deposits()] == ["credited"]
    _matches_chain(ledger, rail, chain)


def test_a_withdrawal_pays_once_with_its_hash_on_the_posting(ledger: Ledger, rail, chain):
    alice = _holder(chain, 30_000_000)
    account = _register(rail, ledger, alice)
    _send(chain, alice, rail.address, 30_000_000)
    chain.mine(CONFIRMATIONS)
    rail.scan()
    bob = Account.create().address
    requested = 7_000_000 * ATOMIC_PER_UNIT + 999  # finer than the token carries
    posting = rail.withdraw("w1", account, requested, bob)
    [row] = rail.withdrawals()
    assert row["tx_hash"] in posting.memo and bob in posting.memo
    assert _chain_units(chain, bob) == 7_000_000
    receipt = chain.w3.eth.get_transaction_receipt(row["tx_hash"])
    assert receipt.status == 1
    # 7 USDC left: the 999 atomic finer than a token unit were never taken from the wallet
    assert ledger.balance(account).posted_atomic == 23_000_000 * ATOMIC_PER_UNIT
    assert rail.withdraw("w1", account, requested, bob) == posting  # a retry: nothing more
    assert _chain_units(chain, bob) == 7_000_000 and len(rail.withdrawals()) == 1
    chain.mine(CONFIRMATIONS)
    assert rail.resend_pending() == 1
    _matches_chain(ledger, rail, chain)
    with pytest.raises(InvalidAmount):
        rail.withdraw("w2", account, ATOMIC_PER_UNIT - 1, bob)
    with pytest.raises(InvalidArgument, match="destination"):  # a chain rail needs one
        WalletService(ledger, rails=[rail]).withdraw("w3", account, ATOMIC_PER_UNIT, "USDC",
                                                     rail.name)


def test_an_approved_withdrawal_pays_the_address_approved_and_no_other(ledger: Ledger, rail,
                                                                        chain):
    """The wallet's controls judge a withdrawal by its destination address: an approval is
    for that address, so the same request retried to another one is refused, not paid."""
    alice = _holder(chain, 500)
    account = _register(rail, ledger, alice)
    _send(chain, alice, rail.address, 500)
    chain.mine(CONFIRMATIONS)
    rail.scan()
    controls = WalletControls(ledger)
    controls.set_policy("policy", account, Policy(approval_threshold_atomic=100 * ATOMIC_PER_UNIT))
    approved, other = Account.create().address, Account.create().address
    with pytest.raises(AgentmarketError) as asked:
        rail.withdraw("w1", account, 300 * ATOMIC_PER_UNIT, approved)
    assert asked.value.reason == "APPROVAL_REQUIRED"
    [pending] = controls.approvals(account_id=account)
    assert pending.counterparty == f"evm:{approved.lower()}"  # what the approver sees
    controls.approve("ok", pending.approval_id, decided_by="operator")
    with pytest.raises(AgentmarketError):
        rail.withdraw("w1", account, 300 * ATOMIC_PER_UNIT, other)
    assert _chain_units(chain, other) == 0
    rail.withdraw("w1", account, 300 * ATOMIC_PER_UNIT, approved)
    assert _chain_units(chain, approved) == 300


def test_a_payout_lost_before_broadcast_or_to_a_reorg_is_sent_again_once(ledger: Ledger,
                                                                          rail, chain):
    alice = _holder(chain, 10_000_000)
    account = _register(rail, ledger, alice)
    _send(chain, alice, rail.address, 10_000_000)
    chain.mine(CONFIRMATIONS)
    rail.scan()
    bob = Account.create().address
    snapshot = chain.tester.take_snapshot()
    rail.withdraw("w1", account, 4_000_000 * ATOMIC_PER_UNIT, bob)
    assert _chain_units(chain, bob) == 4_000_000
    chain.tester.revert_to_snapshot(snapshot)  # the payout's block is reorganised away
    assert _chain_units(chain, bob) == 0
    rail.resend_pending()  # the same signed transaction again
    assert _chain_units(chain, bob) == 4_000_000
    rail.resend_pending()
    chain.mine(CONFIRMATIONS)
    rail.resend_pending()
    assert _chain_units(chain, bob) == 4_000_000
    assert [w["status"] for w in rail.withdrawals()] == ["confirmed"]
    _matches_chain(ledger, rail, chain)


# ---- EIP-3009: what the x402 facilitator will verify and settle -------------------------------


def _authorization(chain, payer, to: str, units: int, **kwargs) -> TransferAuthorization:
    return TransferAuthorization.sign(payer.key, chain.token, to, units,
                                      nonce=kwargs.pop("nonce", os.urandom(32)), name=chain.name,
                                      version=chain.version, **kwargs)


def test_an_authorization_is_verified_and_settled_once(chain):
    payer, relayer, merchant = _holder(chain, 5_000_000), _holder(chain), Account.create()
    auth = _authorization(chain, payer, merchant.address, 1_500_000)
    again = TransferAuthorization.from_x402(json.loads(json.dumps(auth.to_x402())))
    assert again == auth
    assert verify_authorization(chain.token, again, name=chain.name,
                                version=chain.version) == payer.address
    tx_hash = settle_authorization(chain.token, again, relayer.key, name=chain.name,
                                   version=chain.version)
    assert chain.w3.eth.get_transaction_receipt(tx_hash).status == 1
    assert _chain_units(chain, merchant.address) == 1_500_000
    assert _chain_units(chain, payer.address) == 3_500_000
    with pytest.raises(AuthorizationRefused) as used:
        settle_authorization(chain.token, auth, relayer.key, name=chain.name,
                             version=chain.version)
    assert used.value.reason == "AUTHORIZATION_USED"
    assert _chain_units(chain, merchant.address) == 1_500_000


@pytest.mark.parametrize("case, reason", [
    ("forged", "AUTHORIZATION_SIGNATURE"), ("expired", "AUTHORIZATION_EXPIRED"),
    ("not yet", "AUTHORIZATION_NOT_YET_VALID"), ("too much", "AUTHORIZATION_INSUFFICIENT_BALANCE"),
])
def test_authorizations_the_token_would_refuse_are_refused_first(chain, case, reason):
    payer, relayer, merchant = _holder(chain, 1_000_000), _holder(chain), Account.create()
    now = int(chain.w3.eth.get_block("latest").timestamp)
    kwargs = {"expired": {"valid_before_s": now - 1},
              "not yet": {"valid_after_s": now + 3600}}.get(case, {})
    units = 2_000_000 if case == "too much" else 100
    auth = _authorization(chain, Account.create() if case == "forged" else payer,
                          merchant.address, units, **kwargs)
    if case == "forged":  # signed by someone else, claiming to be the payer
        auth = dataclasses.replace(auth, from_address=payer.address)
    with pytest.raises(AuthorizationRefused) as refused:
        settle_authorization(chain.token, auth, relayer.key, name=chain.name,
                             version=chain.version)
    assert refused.value.reason == reason
    assert _chain_units(chain, merchant.address) == 0


def test_a_node_runs_the_rail_in_its_sweeper(tmp_path, chain):
    from marketplace.node import MarketplaceNode

    hot = Account.create()
    chain.fund_gas(hot.address)
    made: list[UsdcRail] = []

    def rails(ledger: Ledger) -> list[UsdcRail]:
        made.append(UsdcRail(ledger, chain.token, hot.key, confirmations=CONFIRMATIONS))
        return made

    node = MarketplaceNode(f"sqlite:///{tmp_path / 'node.db'}", rails=rails,
                           sweep_interval_s=0.05)
    try:
        rail = made[0]
        assert node.wallets.rail(rail.name, "USDC") is rail
        alice = _holder(chain, 3_000_000)
        account = _register(rail, node.ledger, alice)
        _send(chain, alice, rail.address, 3_000_000)
        chain.mine(CONFIRMATIONS)  # the chain is left alone from here: the sweeper reads it
        node.start()
        for _ in range(200):  # the sweeper credits it within a few rounds
            if node.ledger.balance(account).posted_atomic:
                break
            time.sleep(0.05)
        assert node.ledger.balance(account).posted_atomic == 3_000_000 * ATOMIC_PER_UNIT
    finally:
        node.stop(0)
