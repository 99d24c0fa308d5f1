"""Programmable wallets, domain level, on SQLite and PostgreSQL: policies (caps, lists), the
approval threshold, velocity freezes and mandates.

Every refusal is checked for its error, reason and a message with the numbers, and for changing
nothing: every account's balances and the posting count are the same before and after.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import FakeClock
from wallets import audit
from wallets.errors import (
    AgentmarketError,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalRequired,
    FailedPrecondition,
    IdempotencyConflict,
    InvalidArgument,
    InvalidSignature,
    MandateDenied,
    NotFound,
    PolicyDenied,
    WalletFrozen,
)
from wallets.guard import SpendContext
from wallets.ledger import Ledger
from wallets.mandates import MandateTerms, sign_mandate, sign_revocation
from wallets.models import Hold, Transfer
from wallets.policies import Policy
from wallets.service import WalletService
from wallets.store import make_engine

X = 10_000_000  # one cent in USD atomic units
DAY_MS = 86_400_000


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


def hex_key(private: Ed25519PrivateKey) -> str:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


@dataclass
class World:
    wallets: WalletService
    clock: FakeClock
    owner_key: Ed25519PrivateKey
    alice: str  # funded with 100 USD; owned by owner_key
    bob: str
    carol: str

    @property
    def ledger(self) -> Ledger:
        return self.wallets.ledger

    def owner_of(self, account_id: str) -> str:
        return self.ledger.balance(account_id).owner

    def pay(self, amount: int, to: str | None = None, *, k: str | None = None,
            spend: SpendContext | None = None) -> Any:
        return self.ledger.transfer(k or key(), self.alice, to or self.bob, amount, spend=spend)

    def policy(self, **rules: Any) -> None:
        self.wallets.controls.set_policy(key(), self.alice, Policy(**rules))


@pytest.fixture
def world(wallets: WalletService, clock: FakeClock) -> World:
    owner_key = Ed25519PrivateKey.generate()
    ledger = wallets.ledger
    alice = ledger.open_account(hex_key(owner_key), "USD").account_id
    bob = ledger.open_account("bob", "USD").account_id
    carol = ledger.open_account("carol", "USD").account_id
    wallets.deposit(key(), alice, 10_000 * X, "USD")
    return World(wallets, clock, owner_key, alice, bob, carol)


def books(ledger: Ledger) -> tuple[dict[str, tuple[int, ...]], int]:
    balances = {b.account_id: (b.posted_credits_atomic, b.posted_debits_atomic,
                               b.pending_debits_atomic, b.pending_credits_atomic)
                for b in ledger.accounts()}
    return balances, len(ledger.postings())


def refused(world: World, call: Callable[[], Any], error: type[AgentmarketError],
            reason: str, *words: str) -> AgentmarketError:
    """`call` raises `error` with `reason`, its message holds `words`, and nothing changed."""
    before = books(world.ledger)
    with pytest.raises(error) as caught:
        call()
    assert caught.value.reason == reason, caught.value.message
    for word in words:
        assert word in caught.value.message, (word, caught.value.message)
    assert books(world.ledger) == before
    return caught.value


def assert_sound(ledger: Ledger) -> None:
    assert audit.check_balances(ledger).ok and audit.verify_chain(ledger).ok


# ---- caps and lists ------------------------------------------------------------------------


def test_a_wallet_without_a_policy_spends_freely(world: World):
    world.pay(100 * X)
    assert world.ledger.balance(world.bob).available_atomic == 100 * X
    state = world.wallets.controls.policy(world.alice)
    assert state.policy == Policy() and not state.frozen


def test_per_call_cap(world: World):
    world.policy(per_call_cap_atomic=5 * X)
    world.pay(5 * X)
    refused(world, lambda: world.pay(5 * X + 1), PolicyDenied, "POLICY_DENIED",
            "per_call_cap_atomic", str(5 * X), str(5 * X + 1))


def test_daily_cap_counts_the_utc_day_of_the_ledger_clock(world: World):
    world.policy(daily_cap_atomic=10 * X)
    world.pay(6 * X)
    world.pay(4 * X)
    refused(world, lambda: world.pay(1), PolicyDenied, "POLICY_DENIED", "daily_cap_atomic",
            f"{10 * X} already spent on 2023-11-14", f"would make {10 * X + 1}")
    world.clock.advance(DAY_MS / 1000)  # the next UTC day starts afresh
    world.pay(10 * X)
    refused(world, lambda: world.pay(1), PolicyDenied, "POLICY_DENIED", "2023-11-15")


def test_counterparty_daily_cap_is_per_counterparty(world: World):
    world.policy(counterparty_daily_cap_atomic=3 * X)
    world.pay(3 * X, world.bob)
    world.pay(3 * X, world.carol)
    refused(world, lambda: world.pay(1, world.bob), PolicyDenied, "POLICY_DENIED",
            "counterparty_daily_cap_atomic", f"{3 * X} already paid to bob")


def test_deny_list_wins_and_allow_list_admits_only_what_it_names(world: World):
    world.policy(allow_counterparties=("bob", "carol"), deny_counterparties=("carol",))
    world.pay(X, world.bob)
    refused(world, lambda: world.pay(X, world.carol), PolicyDenied, "POLICY_DENIED",
            "denies paying carol")
    dave = world.ledger.open_account("dave", "USD").account_id
    refused(world, lambda: world.pay(X, dave), PolicyDenied, "POLICY_DENIED",
            "allows paying only bob, carol", "dave is not on the list")


def test_skill_lists_judge_spends_that_name_a_skill(world: World):
    world.policy(allow_skills=("shout", "whisper"), deny_skills=("whisper",))

    def hold(skill: str) -> Hold:
        return world.ledger.hold(key(), world.alice, world.bob, X, timeout_s=60,
                                 spend=SpendContext(skill=skill))

    hold("shout")
    refused(world, lambda: hold("whisper"), PolicyDenied, "POLICY_DENIED", "denies buying "
            "skill 'whisper'")
    refused(world, lambda: hold("sing"), PolicyDenied, "POLICY_DENIED",
            "allows buying only skills shout, whisper")
    world.pay(X)  # a plain transfer names no skill


def test_a_hold_counts_when_placed_and_its_capture_is_not_checked_again(world: World):
    world.policy(daily_cap_atomic=10 * X, per_call_cap_atomic=8 * X)
    hold = world.ledger.hold(key(), world.alice, world.bob, 8 * X, timeout_s=60)
    refused(world, lambda: world.pay(3 * X), PolicyDenied, "POLICY_DENIED", "daily_cap_atomic")
    world.ledger.capture(key(), hold.hold_id, 8 * X)  # authorised when held
    assert world.ledger.balance(world.bob).available_atomic == 8 * X


def test_paying_ones_own_wallet_is_not_restricted_by_counterparty_lists(world: World):
    own = world.ledger.open_account(world.owner_of(world.alice), "USDC").account_id
    world.policy(allow_counterparties=("bob",), daily_cap_atomic=10 * X)
    quote = world.wallets.fx.get_quote(key(), "USD", "USDC")
    world.wallets.fx.convert(key(), quote.quote_id, world.alice, own, 4 * X)
    refused(world, lambda: world.wallets.fx.convert(key(), quote.quote_id, world.alice, own,
                                                    7 * X),
            PolicyDenied, "POLICY_DENIED", "daily_cap_atomic")  # but caps still count it


@pytest.mark.parametrize(("rules", "words"), [
    ({"per_call_cap_atomic": -1}, "per_call_cap_atomic"),
    ({"daily_cap_atomic": 2**63}, "daily_cap_atomic"),
    ({"approval_ttl_s": 10}, "approval_ttl_s"),
    ({"velocity_factor_pct": 50}, "velocity_factor_pct"),
    ({"velocity_window_s": 600, "velocity_baseline_s": 600}, "velocity_baseline_s"),
    ({"allow_counterparties": ("",)}, "allow_counterparties"),
    ({"deny_skills": tuple(f"s{i}" for i in range(101))}, "deny_skills"),
    ({"deny_skills": "shout"}, "deny_skills"),
    ({"daily_cap_atomic": 1.5}, "daily_cap_atomic"),
])
def test_a_malformed_policy_is_invalid_argument(rules: dict[str, Any], words: str):
    with pytest.raises(InvalidArgument) as caught:
        Policy(**rules)
    assert words in caught.value.message


def test_set_policy_is_idempotent_and_refuses_bad_targets(world: World):
    k = key()
    first = world.wallets.controls.set_policy(k, world.alice, Policy(daily_cap_atomic=X))
    assert world.wallets.controls.set_policy(k, world.alice, Policy(daily_cap_atomic=X)) == first
    with pytest.raises(IdempotencyConflict):
        world.wallets.controls.set_policy(k, world.alice, Policy(daily_cap_atomic=2 * X))
    with pytest.raises(NotFound):
        world.wallets.controls.set_policy(key(), "nope", Policy())
    rail = world.ledger.find_account("rail:sandbox-usd", "USD", "rail")
    assert rail is not None
    with pytest.raises(InvalidArgument, match="only wallets have policies"):
        world.wallets.controls.set_policy(key(), rail.account_id, Policy())
    with pytest.raises(InvalidArgument, match="idempotency_key"):
        world.wallets.controls.set_policy("", world.alice, Policy())
    assert world.wallets.controls.policy(world.alice).policy == Policy(daily_cap_atomic=X)


@pytest.mark.slow
@pytest.mark.parametrize("writers", ["group-commit", "two-nodes"])
def test_50_concurrent_spends_never_pass_the_daily_cap(world: World, db_url: str, writers: str):
    """Ten fit under the cap; fifty race for them; exactly ten win, on both backends: through
    one ledger's group commit, and through two ledgers on their own engines (two nodes over one
    database, each spend its own transaction)."""
    world.policy(daily_cap_atomic=10 * X, counterparty_daily_cap_atomic=10 * X)
    ledgers = [world.ledger]
    if writers == "two-nodes":
        ledgers = [Ledger(make_engine(db_url), clock_ms=world.clock, group_commit=False)
                   for _ in range(2)]
    start = threading.Barrier(50)

    def spend(i: int) -> Any:
        start.wait()
        try:
            return ledgers[i % len(ledgers)].transfer(f"race-{i}", world.alice, world.bob, X)
        except AgentmarketError as error:
            return error

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            outcomes = list(pool.map(spend, range(50)))
    finally:
        for node in ledgers if writers == "two-nodes" else []:
            node.engine.dispose()
    assert Counter(type(o).__name__ for o in outcomes) == {"Posting": 10, "PolicyDenied": 40}
    assert world.ledger.balance(world.bob).available_atomic == 10 * X
    assert_sound(world.ledger)


def test_controls_set_by_another_node_bind_the_next_spend(world: World, db_url: str):
    """Another node (its own engine, as another process) sets a policy and then a freeze on a
    wallet this ledger has been paying from without controls: the very next spend here obeys
    each, and a refusal here leaves its refused effect out of the books."""
    other = WalletService(Ledger(make_engine(db_url), clock_ms=world.clock, group_commit=False))
    try:
        for _ in range(3):
            world.pay(X)
        other.controls.set_policy(key(), world.alice, Policy(per_call_cap_atomic=2 * X))
        refused(world, lambda: world.pay(3 * X), PolicyDenied, "POLICY_DENIED",
                "per_call_cap_atomic")
        world.pay(2 * X)
        other.controls.freeze(key(), world.alice, reason="stolen key", actor="ops")
        refused(world, lambda: world.pay(X), WalletFrozen, "WALLET_FROZEN", "stolen key")
    finally:
        other.ledger.close()
        other.ledger.engine.dispose()
    assert world.ledger.balance(world.bob).available_atomic == 5 * X
    assert_sound(world.ledger)


# ---- approvals -----------------------------------------------------------------------------


def test_a_spend_above_the_threshold_waits_then_goes_through_exactly_once(world: World):
    world.policy(approval_threshold_atomic=50 * X)
    world.pay(50 * X)  # at the threshold: no approval needed
    k = key()
    error = refused(world, lambda: world.pay(60 * X, k=k), ApprovalRequired,
                    "APPROVAL_REQUIRED", "above its approval threshold", "retry the same request",
                    "a spend of 0.60 USD (600000000 atomic)", "threshold of 0.50 USD",
                    " UTC; once")  # amounts and the time as people read them
    pending = world.wallets.controls.approvals(world.alice, status="pending")
    assert [a.approval_id for a in pending] == [error.approval_id]
    assert (pending[0].amount_atomic, pending[0].counterparty, pending[0].spend_key,
            pending[0].operation) == (60 * X, "bob", k, "transfer")
    again = refused(world, lambda: world.pay(60 * X, k=k), ApprovalRequired,
                    "APPROVAL_REQUIRED", "still pending")
    assert again.approval_id == error.approval_id  # one approval per spend, however retried

    approved = world.wallets.controls.approve(key(), error.approval_id, decided_by="ops",
                                              note="known vendor")
    assert (approved.status, approved.decided_by) == ("approved", "ops")
    posting = world.pay(60 * X, k=k)
    assert world.pay(60 * X, k=k) == posting  # the replay, not a second payment
    assert world.ledger.balance(world.bob).available_atomic == 110 * X
    assert world.wallets.controls.approvals(world.alice)[0].status == "used"
    refused(world, lambda: world.pay(60 * X), ApprovalRequired, "APPROVAL_REQUIRED")  # new key


def test_one_caller_keeps_a_bounded_number_of_approvals_waiting_on_a_wallet(world: World):
    """A delegate spending from the owner's wallet could ask for approvals without end and
    bury the owner's own in the approvers' queue; past 32 waiting it is refused (not for good:
    the same request goes on once some are decided), and the owner still asks for its own."""
    from wallets.approvals import MAX_PENDING_PER_SPENDER
    from wallets.caller import calling_as
    from wallets.errors import TooManyApprovals

    world.policy(approval_threshold_atomic=X)
    delegate = "d" * 64
    with calling_as(delegate):
        waiting = [refused(world, lambda: world.pay(2 * X), ApprovalRequired,
                           "APPROVAL_REQUIRED") for _ in range(MAX_PENDING_PER_SPENDER)]
        k = key()
        refused(world, lambda: world.pay(2 * X, k=k), TooManyApprovals, "TOO_MANY_APPROVALS",
                "32 spends of this caller already wait for approval")
        world.wallets.controls.deny(key(), waiting[0].approval_id, decided_by="owner")
        refused(world, lambda: world.pay(2 * X, k=k), ApprovalRequired, "APPROVAL_REQUIRED")
    with calling_as(world.owner_of(world.alice)):
        refused(world, lambda: world.pay(2 * X), ApprovalRequired, "APPROVAL_REQUIRED")
    assert len(world.wallets.controls.approvals(world.alice, status="pending")) == \
        MAX_PENDING_PER_SPENDER + 1


def test_a_denied_approval_refuses_the_retry_for_good(world: World):
    world.policy(approval_threshold_atomic=X)
    k = key()
    error = refused(world, lambda: world.pay(2 * X, k=k), ApprovalRequired, "APPROVAL_REQUIRED")
    world.wallets.controls.deny(key(), error.approval_id, decided_by="owner", note="not mine")
    refused(world, lambda: world.pay(2 * X, k=k), ApprovalDenied, "APPROVAL_DENIED",
            "denied by owner: not mine")
    refused(world, lambda: world.pay(2 * X, k=k), ApprovalDenied, "APPROVAL_DENIED")
    with pytest.raises(FailedPrecondition, match="already denied"):
        world.wallets.controls.approve(key(), error.approval_id, decided_by="ops")


def test_an_expired_approval_refuses_the_retry(world: World):
    world.policy(approval_threshold_atomic=X, approval_ttl_s=600)
    k, late = key(), key()
    first = refused(world, lambda: world.pay(2 * X, k=k), ApprovalRequired,
                    "APPROVAL_REQUIRED")
    second = refused(world, lambda: world.pay(3 * X, k=late), ApprovalRequired,
                     "APPROVAL_REQUIRED")
    world.wallets.controls.approve(key(), first.approval_id, decided_by="ops")
    world.clock.advance(601)
    assert {a.status for a in world.wallets.controls.approvals(world.alice)} == {"expired"}
    refused(world, lambda: world.pay(2 * X, k=k), ApprovalExpired, "APPROVAL_EXPIRED",
            first.approval_id)
    with pytest.raises(ApprovalExpired):
        world.wallets.controls.approve(key(), second.approval_id, decided_by="ops")


def test_a_different_spend_under_a_waiting_key_is_a_conflict(world: World):
    world.policy(approval_threshold_atomic=X)
    k = key()
    error = refused(world, lambda: world.pay(2 * X, k=k), ApprovalRequired, "APPROVAL_REQUIRED")
    world.wallets.controls.approve(key(), error.approval_id, decided_by="ops")
    refused(world, lambda: world.pay(3 * X, k=k), IdempotencyConflict, "IDEMPOTENCY_KEY_REUSED",
            error.approval_id)
    refused(world, lambda: world.pay(2 * X, world.carol, k=k), IdempotencyConflict,
            "IDEMPOTENCY_KEY_REUSED")


def test_deciding_bad_approvals(world: World):
    controls = world.wallets.controls
    with pytest.raises(NotFound):
        controls.approve(key(), "f" * 32, decided_by="ops")
    with pytest.raises(InvalidArgument, match="decided_by"):
        controls.approve(key(), "f" * 32, decided_by="")
    with pytest.raises(InvalidArgument, match="status"):
        controls.approvals(status="maybe")
    with pytest.raises(InvalidArgument, match="limit"):
        controls.approvals(limit=0)


def test_an_escrow_hold_inside_another_transaction_goes_through_policy_and_approval(
        world: World):
    """What `Settlement.open_escrow` does: hold_in inside its own `mutate`, naming the seller
    and the skill. The approval it asks for persists although the escrow rolled back."""
    world.policy(approval_threshold_atomic=5 * X, deny_skills=("forbidden",))
    seller = world.owner_of(world.bob)

    def open_escrow(k: str, amount: int, skill: str) -> Hold:
        return world.ledger.mutate(
            k, "open_escrow", {"amount": amount, "skill": skill},
            lambda conn: world.ledger.hold_in(conn, k, world.alice, world.bob, amount,
                                              timeout_s=60,
                                              spend=SpendContext(seller, skill)),
            Hold.to_json, Hold.from_json)

    refused(world, lambda: open_escrow(key(), X, "forbidden"), PolicyDenied, "POLICY_DENIED")
    k = key()
    error = refused(world, lambda: open_escrow(k, 6 * X, "shout"), ApprovalRequired,
                    "APPROVAL_REQUIRED")
    (pending,) = world.wallets.controls.approvals(status="pending")
    assert (pending.approval_id, pending.skill, pending.operation, pending.counterparty) == \
        (error.approval_id, "shout", "hold", seller)
    world.wallets.controls.approve(key(), error.approval_id, decided_by="ops")
    assert open_escrow(k, 6 * X, "shout").amount_atomic == 6 * X


# ---- velocity ------------------------------------------------------------------------------


VELOCITY = {"velocity_factor_pct": 500, "velocity_window_s": 60, "velocity_baseline_s": 3600,
            "velocity_min_atomic": 20 * X}


def test_a_burst_far_above_the_baseline_freezes_the_wallet_and_alerts(world: World):
    world.policy(**VELOCITY)
    held = world.ledger.hold(key(), world.alice, world.carol, X, timeout_s=7200)
    for _ in range(5):  # a baseline: 10 cents every ten minutes
        world.pay(10 * X)
        world.clock.advance(600)
    world.clock.advance(120)
    world.pay(15 * X)  # the window: 15 cents, under the floor
    k = key()
    refused(world, lambda: world.pay(6 * X, k=k), WalletFrozen, "WALLET_FROZEN",
            f"spent {21 * X} atomic USD in the last 60 s", "500% of its trailing baseline",
            "frozen")
    (alert,) = world.wallets.controls.alerts(world.alice)
    assert (alert.kind, alert.window_spent_atomic, alert.threshold_atomic, alert.actor) == \
        ("velocity", 21 * X, 20 * X, "velocity-rule")
    state = world.wallets.controls.policy(world.alice)
    assert state.frozen and alert.alert_id in state.frozen_reason
    refused(world, lambda: world.pay(1), WalletFrozen, "WALLET_FROZEN", "velocity rule")
    refused(world, lambda: world.ledger.hold(key(), world.alice, world.bob, 1, timeout_s=9),
            WalletFrozen, "WALLET_FROZEN")
    refused(world, lambda: world.wallets.withdraw(key(), world.alice, X, "USD"),
            WalletFrozen, "WALLET_FROZEN")
    world.wallets.deposit(key(), world.alice, X, "USD")  # credits still arrive
    world.ledger.capture(key(), held.hold_id, X)  # holds placed before still settle

    world.clock.advance(1)
    world.wallets.controls.unfreeze(key(), world.alice, reason="checked: a real sale",
                                    actor="ops")
    assert world.pay(6 * X, k=k).kind == "transfer"  # the refused spend, retried, now passes
    assert [a.kind for a in world.wallets.controls.alerts(world.alice)] == \
        ["unfreeze", "velocity"]
    assert_sound(world.ledger)


def test_the_baseline_raises_the_bar_and_the_floor_protects_a_new_wallet(world: World):
    rule = {**VELOCITY, "velocity_baseline_s": 600}
    world.policy(**rule)
    for _ in range(10):  # a busy baseline: 18 cents a minute for ten minutes
        world.pay(18 * X)
        world.clock.advance(60)
    world.pay(80 * X)  # 80 cents in a minute: under 5 x 18 cents
    assert not world.wallets.controls.policy(world.alice).frozen
    fresh = world.ledger.open_account("fresh", "USD").account_id
    world.wallets.deposit(key(), fresh, 100 * X, "USD")
    world.wallets.controls.set_policy(key(), fresh, Policy(**rule))
    world.ledger.transfer(key(), fresh, world.bob, 20 * X)  # baseline 0, but at the floor
    assert not world.wallets.controls.policy(fresh).frozen
    with pytest.raises(WalletFrozen):  # what the busy wallet may, the new one may not
        world.ledger.transfer(key(), fresh, world.bob, 60 * X)
    assert world.wallets.controls.policy(fresh).frozen


def test_an_approved_spend_counts_but_does_not_trip_velocity(world: World):
    world.policy(**VELOCITY, approval_threshold_atomic=50 * X)
    k = key()
    error = refused(world, lambda: world.pay(80 * X, k=k), ApprovalRequired,
                    "APPROVAL_REQUIRED")
    world.wallets.controls.approve(key(), error.approval_id, decided_by="ops")
    world.pay(80 * X, k=k)  # far above the floor on a zero baseline, but a person said yes
    refused(world, lambda: world.pay(X), WalletFrozen, "WALLET_FROZEN", f"spent {81 * X}")


def test_manual_freeze_and_unfreeze(world: World):
    controls = world.wallets.controls
    frozen = controls.freeze(key(), world.alice, reason="lost laptop", actor="owner")
    assert (frozen.frozen, frozen.frozen_reason, frozen.frozen_by) == \
        (True, "lost laptop", "owner")
    assert controls.freeze(key(), world.alice, reason="again", actor="ops").frozen_reason == \
        "lost laptop"
    refused(world, lambda: world.pay(X), WalletFrozen, "WALLET_FROZEN", "lost laptop")
    controls.unfreeze(key(), world.alice, reason="found it", actor="ops")
    world.pay(X)
    with pytest.raises(FailedPrecondition) as caught:
        controls.unfreeze(key(), world.alice, reason="twice", actor="ops")
    assert caught.value.reason == "NOT_FROZEN"
    with pytest.raises(InvalidArgument, match="reason"):
        controls.freeze(key(), world.alice, reason="", actor="ops")
    with pytest.raises(InvalidArgument, match="actor"):
        controls.freeze(key(), world.alice, reason="x", actor="")
    assert sorted(a.kind for a in controls.alerts(world.alice)) == ["freeze", "unfreeze"]
    with pytest.raises(InvalidArgument, match="limit"):
        controls.alerts(limit=5000)


# ---- mandates ------------------------------------------------------------------------------


@pytest.fixture
def agent() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def terms_for(world: World, agent: Ed25519PrivateKey, **changes: Any) -> MandateTerms:
    terms = MandateTerms(account_id=world.alice, agent_key=hex_key(agent), currency="USD",
                         total_limit_atomic=10 * X, per_call_limit_atomic=4 * X,
                         expires_at_ms=world.clock.now_ms + 3600_000, counterparties=("bob",),
                         nonce="n1")
    return replace(terms, **changes)


def test_a_mandate_bounds_its_agent_and_revocation_takes_effect_at_once(
        world: World, agent: Ed25519PrivateKey):
    data, signature = sign_mandate(world.owner_key, terms_for(world, agent))
    mandate = world.wallets.controls.grant_mandate(key(), data, signature)
    assert (mandate.status, mandate.spent_atomic, mandate.owner) == \
        ("active", 0, world.owner_of(world.alice))
    under = SpendContext(mandate_id=mandate.mandate_id, spender_id=hex_key(agent))
    world.pay(4 * X, spend=under)
    refused(world, lambda: world.pay(4 * X + 1, spend=under), MandateDenied, "MANDATE_DENIED",
            f"at most {4 * X}", "per request")
    refused(world, lambda: world.pay(X, world.carol, spend=under), MandateDenied,
            "MANDATE_DENIED", "allows paying only bob; not carol")
    other = SpendContext(mandate_id=mandate.mandate_id, spender_id="e" * 64)
    refused(world, lambda: world.pay(X, spend=other), MandateDenied, "MANDATE_DENIED",
            "delegates to agent")
    world.ledger.hold(key(), world.alice, world.bob, 4 * X, timeout_s=60, spend=under)
    refused(world, lambda: world.pay(3 * X, spend=under), MandateDenied, "MANDATE_DENIED",
            f"{8 * X} already spent", f"would make {11 * X}")
    assert world.wallets.controls.mandate(mandate.mandate_id).spent_atomic == 8 * X

    revoked = world.wallets.controls.revoke_mandate(
        key(), mandate.mandate_id, sign_revocation(world.owner_key, mandate.mandate_id))
    assert revoked.status == "revoked"
    refused(world, lambda: world.pay(X, spend=under), MandateDenied, "MANDATE_REVOKED")
    again = world.wallets.controls.grant_mandate(key(), data, signature)  # a replayed grant
    assert again.status == "revoked"


def test_a_mandate_expires_and_the_wallet_policy_applies_too(world: World,
                                                           agent: Ed25519PrivateKey):
    world.policy(per_call_cap_atomic=2 * X)
    data, signature = sign_mandate(world.owner_key, terms_for(world, agent))
    mandate = world.wallets.controls.grant_mandate(key(), data, signature)
    under = SpendContext(mandate_id=mandate.mandate_id, spender_id=hex_key(agent))
    refused(world, lambda: world.pay(3 * X, spend=under), PolicyDenied, "POLICY_DENIED")
    world.clock.advance(3601)
    refused(world, lambda: world.pay(X, spend=under), MandateDenied, "MANDATE_EXPIRED")
    assert world.wallets.controls.mandate(mandate.mandate_id).status == "expired"


def test_bad_grants_and_revocations_are_refused_and_store_nothing(world: World,
                                                                 agent: Ed25519PrivateKey):
    controls = world.wallets.controls
    good = terms_for(world, agent)
    data, signature = sign_mandate(world.owner_key, good)
    _, forged = sign_mandate(Ed25519PrivateKey.generate(), good)
    with pytest.raises(InvalidSignature, match="not the wallet owner's"):
        controls.grant_mandate(key(), data, forged)
    for change, words in [({"total_limit_atomic": 0}, "total_limit_atomic"),
                          ({"per_call_limit_atomic": 11 * X}, "per_call_limit_atomic"),
                          ({"expires_at_ms": world.clock.now_ms}, "expires_at_ms"),
                          ({"agent_key": "agent"}, "agent_key"),
                          ({"currency": "ECNY"}, "holds USD"),
                          ({"nonce": "n" * 65}, "nonce")]:
        bad, bad_signature = sign_mandate(world.owner_key, replace(good, **change))
        with pytest.raises(InvalidArgument, match=words):
            controls.grant_mandate(key(), bad, bad_signature)
    with pytest.raises(InvalidArgument, match="MandateTerms"):
        controls.grant_mandate(key(), b"\xff\xff", signature)
    bob_terms, bob_signature = sign_mandate(world.owner_key, replace(good, account_id=world.bob))
    with pytest.raises(FailedPrecondition) as caught:
        controls.grant_mandate(key(), bob_terms, bob_signature)
    assert caught.value.reason == "OWNER_CANNOT_SIGN"  # "bob" is not a key
    with pytest.raises(InvalidArgument, match=r"terms\.account_id"):  # not an account id
        controls.grant_mandate(key(), *sign_mandate(world.owner_key,
                                                    replace(good, account_id="nope")))
    with pytest.raises(NotFound):
        controls.grant_mandate(key(), *sign_mandate(world.owner_key,
                                                    replace(good, account_id="f" * 32)))
    mandate = controls.grant_mandate(key(), data, signature)
    with pytest.raises(InvalidSignature):
        controls.revoke_mandate(key(), mandate.mandate_id, b"\x00" * 64)
    with pytest.raises(NotFound):
        controls.revoke_mandate(key(), "a" * 64, b"")
    assert controls.mandate(mandate.mandate_id).status == "active"


def test_bad_spend_contexts(world: World):
    with pytest.raises(InvalidArgument, match="go together"):
        SpendContext(mandate_id="a" * 64)
    with pytest.raises(InvalidArgument, match="64 hex"):
        SpendContext(mandate_id="xyz", spender_id="a")
    with pytest.raises(InvalidArgument, match="skill"):
        SpendContext(skill="s" * 200)
    unknown = SpendContext(mandate_id="a" * 64, spender_id="b" * 64)
    refused(world, lambda: world.pay(X, spend=unknown), NotFound, "NOT_FOUND", "a" * 64)


def test_linked_postings_count_every_wallet_debit(world: World):
    world.policy(per_call_cap_atomic=5 * X)
    refused(world, lambda: world.ledger.post_linked(key(), [
        Transfer(world.alice, world.bob, 3 * X), Transfer(world.alice, world.carol, 3 * X)]),
        PolicyDenied, "POLICY_DENIED", f"this spend is {6 * X}")


def test_the_guard_names_the_controlled_wallets_a_bulk_path_must_not_skip(world: World):
    guard = world.ledger.spend_guard
    with world.ledger.engine.connect() as conn:
        assert guard.controlled(conn, [world.alice, world.bob]) == set()
    world.wallets.controls.freeze(key(), world.bob, reason="audit", actor="ops")
    world.policy(daily_cap_atomic=X)
    with world.ledger.engine.connect() as conn:
        assert guard.controlled(conn, [world.alice, world.bob, world.carol]) == \
            {world.alice, world.bob}
