"""Idempotency keys are per (caller, operation), as Stripe scopes keys to an account.

On SQLite and PostgreSQL, through both ledger write paths (group commit, one transaction per
mutation) and the bulk path: two callers never share a key; the node's own keys are out of any
caller's reach; every guarantee holds within a scope (a retry returns the first result, the same
key with another request is refused, concurrent duplicates have one effect); a refusal a retry
can cure is never the key's outcome; approvals, payout and deposit references follow the scope.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine

from marketplace.identity import AgentKey
from tests.conftest import FakeClock
from wallets import audit
from wallets._bulk import TransferRequest
from wallets.caller import ANONYMOUS_SCOPE, NODE_SCOPE, calling_as
from wallets.errors import (
    AgentmarketError,
    ApprovalRequired,
    FailedPrecondition,
    IdempotencyConflict,
    InsufficientFunds,
)
from wallets.guard import SpendContext
from wallets.ledger import Ledger
from wallets.mandates import MandateTerms, sign_mandate
from wallets.models import Transfer
from wallets.policies import Policy
from wallets.rails import payout_reference
from wallets.service import WalletService

ALICE, BOB, MALLORY = (AgentKey.generate() for _ in range(3))
X = 10_000_000  # one cent


@pytest.fixture
def service(engine: Engine, clock: FakeClock) -> Any:
    ledger = Ledger(engine, clock_ms=clock)
    yield WalletService(ledger)
    ledger.close()


@pytest.fixture(params=[True, False], ids=["group-commit", "alone"])
def both_paths(request: pytest.FixtureRequest, engine: Engine, clock: FakeClock) -> Any:
    """The service over each write path: shared transactions, and one per mutation."""
    ledger = Ledger(engine, clock_ms=clock, group_commit=request.param)
    yield WalletService(ledger)
    ledger.close()


def wallet(service: WalletService, owner: AgentKey, cents: int = 0) -> str:
    account = service.ledger.open_account(owner.agent_id, "USD").account_id
    if cents:
        with calling_as(owner.agent_id):
            service.deposit(f"fund-{account}", account, cents * X, "USD")
    return account


def assert_sound(ledger: Ledger) -> None:
    assert sum(b.posted_atomic for b in ledger.accounts()) == 0
    assert audit.check_balances(ledger).ok and audit.verify_chain(ledger).ok


def test_two_callers_never_share_a_key(both_paths: WalletService):
    service = both_paths
    ledger = service.ledger
    alice, bob, mallory = (wallet(service, k, 10) for k in (ALICE, BOB, MALLORY))
    with calling_as(MALLORY.agent_id):  # the attacker uses the victim's key first
        squatted = ledger.transfer("pay-bob", mallory, bob, 1)
    with calling_as(ALICE.agent_id):
        paid = ledger.transfer("pay-bob", alice, bob, 5 * X)
        assert ledger.transfer("pay-bob", alice, bob, 5 * X) == paid  # her retry: her result
        with pytest.raises(IdempotencyConflict):  # her other request under her key
            ledger.transfer("pay-bob", alice, bob, 6 * X)
    assert paid.sequence != squatted.sequence
    assert ledger.balance(alice).posted_atomic == 5 * X
    assert ledger.balance(bob).posted_atomic == 15 * X + 1
    assert_sound(ledger)


def test_no_caller_reaches_the_nodes_own_keys(service: WalletService):
    ledger = service.ledger
    alice, bob = wallet(service, ALICE, 10), wallet(service, BOB)
    with calling_as(MALLORY.agent_id), pytest.raises(AgentmarketError):
        ledger.transfer("auto-release:x", alice, bob, 1000 * X)  # recorded in her scope only
    found = ledger.mutate("auto-release:x", "transfer", {"node": 1},
                          lambda conn: "ran", str, str, scope=NODE_SCOPE)
    assert found == "ran"
    with pytest.raises(ValueError):  # nobody writes legacy rows, or names a scope too long
        ledger.mutate("k", "transfer", {}, lambda conn: "", str, str, scope="legacy")


def test_the_nodes_failures_are_not_recorded_so_its_sweep_tries_again(service: WalletService):
    attempts: list[int] = []

    def apply(conn: Any) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise InsufficientFunds("the buyer's wallet cannot pay yet")
        return "paid"

    with pytest.raises(InsufficientFunds):
        service.ledger.mutate("auto-release:a", "sweep", {}, apply, str, str, scope=NODE_SCOPE)
    assert service.ledger.mutate("auto-release:a", "sweep", {}, apply, str, str,
                                 scope=NODE_SCOPE) == "paid"
    # a caller's state refusal is its key's outcome: replayed, not run again
    with calling_as(ALICE.agent_id):
        with pytest.raises(InsufficientFunds):
            service.ledger.mutate("k", "sweep", {}, apply_fails, str, str)
        with pytest.raises(InsufficientFunds):
            service.ledger.mutate("k", "sweep", {}, lambda conn: "ran", str, str)


def apply_fails(conn: Any) -> str:
    raise InsufficientFunds("short")


def test_concurrent_duplicates_have_one_effect_in_each_scope(both_paths: WalletService):
    service = both_paths
    ledger = service.ledger
    alice, bob, mallory = (wallet(service, k, 10) for k in (ALICE, BOB, MALLORY))

    def attempt(who: AgentKey, debit: str) -> Any:
        with calling_as(who.agent_id):
            try:
                return ledger.transfer("same-key", debit, bob, X)
            except AgentmarketError as error:
                return error

    calls = [(ALICE, alice), (MALLORY, mallory)] * 16
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda a: attempt(*a), calls))
    by_caller: dict[str, set[int]] = {}
    for (who, _), outcome in zip(calls, outcomes, strict=True):
        assert not isinstance(outcome, AgentmarketError), outcome
        by_caller.setdefault(who.agent_id, set()).add(outcome.sequence)
    assert [len(s) for s in by_caller.values()] == [1, 1]  # one effect per caller
    assert ledger.balance(bob).posted_atomic == 12 * X  # its 10 cents and one from each
    assert_sound(ledger)


def test_the_bulk_path_keeps_each_callers_keys_apart(service: WalletService):
    ledger = service.ledger
    alice, bob, mallory = (wallet(service, k, 10) for k in (ALICE, BOB, MALLORY))
    with calling_as(MALLORY.agent_id):
        ledger.transfer_many([TransferRequest(f"b-{i}", Transfer(mallory, bob, 1))
                              for i in range(3)])
    with calling_as(ALICE.agent_id):
        first = ledger.transfer_many([TransferRequest(f"b-{i}", Transfer(alice, bob, X))
                                      for i in range(3)])
        again = ledger.transfer_many([TransferRequest(f"b-{i}", Transfer(alice, bob, X))
                                      for i in range(3)])
        other = ledger.transfer_many([TransferRequest("b-0", Transfer(alice, bob, 2 * X))])
    assert first == again and all(not isinstance(p, AgentmarketError) for p in first)
    assert isinstance(other[0], IdempotencyConflict)
    assert ledger.balance(alice).posted_atomic == 7 * X
    assert_sound(ledger)


def test_a_refused_variant_never_poisons_the_approved_spend(both_paths: WalletService):
    """The owner's spend under K waits for approval and is approved; a retry of K with another
    amount is refused (same key, other request), and the approved spend under K still goes
    through, once."""
    service = both_paths
    ledger, controls = service.ledger, service.controls
    alice, bob = wallet(service, ALICE, 10), wallet(service, BOB)
    with calling_as(ALICE.agent_id):
        controls.set_policy("policy", alice, Policy(approval_threshold_atomic=X))
        with pytest.raises(ApprovalRequired) as waiting:
            ledger.transfer("K", alice, bob, 3 * X)
        with pytest.raises(IdempotencyConflict):  # a variant while it waits
            ledger.transfer("K", alice, bob, 4 * X)
    controls.approve("approve", waiting.value.approval_id, decided_by="ops")
    with calling_as(ALICE.agent_id):
        with pytest.raises(IdempotencyConflict):  # a variant once approved
            ledger.transfer("K", alice, bob, 4 * X)
        paid = ledger.transfer("K", alice, bob, 3 * X)
        assert ledger.transfer("K", alice, bob, 3 * X) == paid
    assert ledger.balance(bob).posted_atomic == 3 * X
    assert_sound(ledger)


def test_an_approval_belongs_to_its_spenders_key(service: WalletService, clock: FakeClock):
    """A delegate spending under the owner's key asks for an approval of its own: it can never
    use, or use up, the owner's."""
    ledger, controls = service.ledger, service.controls
    alice, bob = wallet(service, ALICE, 10), wallet(service, BOB)
    delegate = AgentKey.generate()
    terms = MandateTerms(account_id=alice, agent_key=delegate.agent_id, currency="USD",
                         total_limit_atomic=10 * X, expires_at_ms=clock() + 3_600_000)
    data, signature = sign_mandate(ALICE, terms)  # type: ignore[arg-type]
    with calling_as(ALICE.agent_id):
        mandate = controls.grant_mandate("grant", data, signature)
        controls.set_policy("policy", alice, Policy(approval_threshold_atomic=X))
        with pytest.raises(ApprovalRequired) as owners:
            ledger.transfer("K", alice, bob, 3 * X)
    controls.approve("approve", owners.value.approval_id, decided_by="ops")
    spend = SpendContext(mandate_id=mandate.mandate_id, spender_id=delegate.agent_id)
    with calling_as(delegate.agent_id), pytest.raises(ApprovalRequired) as delegates:
        ledger.transfer("K", alice, bob, 3 * X, spend=spend)
    assert delegates.value.approval_id != owners.value.approval_id
    with calling_as(ALICE.agent_id):
        ledger.transfer("K", alice, bob, 3 * X)  # the owner's approval is still hers
    scopes = {a.approval_id: a.spend_scope for a in controls.approvals(alice)}
    assert scopes == {owners.value.approval_id: ALICE.agent_id,
                      delegates.value.approval_id: delegate.agent_id}
    assert ledger.balance(bob).posted_atomic == 3 * X


def test_one_key_two_withdrawals_two_payouts(service: WalletService):
    """Two agents withdrawing under the same key are two payouts: the rail is told a
    reference per (caller, key), so neither payout swallows the other."""
    alice, mallory = wallet(service, ALICE, 10), wallet(service, MALLORY, 10)
    with calling_as(MALLORY.agent_id):
        service.withdraw("w", mallory, X, "USD")
    with calling_as(ALICE.agent_id):
        service.withdraw("w", alice, 2 * X, "USD")
        service.withdraw("w", alice, 2 * X, "USD")  # a retry: the same payout
    payouts = service.rails["sandbox-usd"].payouts  # type: ignore[attr-defined]
    assert payouts == {payout_reference(MALLORY.agent_id, "w"): X,
                       payout_reference(ALICE.agent_id, "w"): 2 * X}
    assert_sound(service.ledger)


def test_a_deposit_reference_credits_a_wallet_once_whoever_asks(service: WalletService):
    """Keys are per caller, but the money an external reference names exists once: a wallet
    that two callers may fund (a system account: the node and every operator act for it) is
    credited once per reference. Another wallet's use of the reference is its rail's to judge
    (the sandbox confirms anything), so it neither blocks nor is blocked."""
    ledger = service.ledger
    fees = ledger.open_account("marketplace", "USD", "fees").account_id
    with calling_as(ALICE.agent_id):
        first = service.deposit("bank-ref-1", fees, X, "USD")
        assert service.deposit("bank-ref-1", fees, X, "USD") == first
    with calling_as(BOB.agent_id), pytest.raises(FailedPrecondition) as taken:
        service.deposit("bank-ref-1", fees, X, "USD")
    assert taken.value.reason == "DEPOSIT_REFERENCE_USED"
    mallory = wallet(service, MALLORY)
    with calling_as(MALLORY.agent_id):
        service.deposit("bank-ref-1", mallory, X, "USD")
    assert ledger.balance(fees).posted_atomic == X == ledger.balance(mallory).posted_atomic
    assert_sound(ledger)


def test_calls_with_no_caller_share_the_anonymous_scope(service: WalletService):
    alice, bob = wallet(service, ALICE, 10), wallet(service, BOB)
    first = service.ledger.transfer("anon", alice, bob, X)
    with calling_as(""):
        assert service.ledger.transfer("anon", alice, bob, X) == first
    kinds = Counter(p.idempotency_key for p in service.ledger.postings())
    assert kinds["anon"] == 1 and ANONYMOUS_SCOPE == "anonymous"
