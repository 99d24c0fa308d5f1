"""The ledger against a reference model: hypothesis drives random sequences of operations.

A `RuleBasedStateMachine` deposits, transfers (single and linked), converts currencies through
FX, holds, captures (partly, with fee splits, final), voids, moves a fake clock so holds expire,
restarts the ledger, retries requests with the same key and reuses keys for different
requests. The model is a few dicts; after every step the
ledger must agree with it, every currency must sum to zero, the audit must pass and no hold may
resolve more than it held.

Sizes: SQLite runs 60 examples of up to 30 steps each; PostgreSQL runs 15 of up to 20 (the
same machine, fewer examples to keep the suite fast).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from wallets import audit
from wallets.currencies import currency
from wallets.errors import (
    AgentmarketError,
    HoldClosed,
    HoldExceeded,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
)
from wallets.fx import convert_amount
from wallets.ledger import HOLDS, Ledger
from wallets.models import Transfer
from wallets.service import WalletService
from wallets.store import make_engine

SETTINGS = {
    # SQLite: 60 examples x up to 30 steps.
    "sqlite": settings(max_examples=60, stateful_step_count=30, deadline=None,
                       suppress_health_check=[HealthCheck.too_slow]),
    # PostgreSQL: 15 examples x up to 20 steps.
    "postgres": settings(max_examples=15, stateful_step_count=20, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow]),
}

USD_WALLETS = ("alice", "bob", "carol")
USD_ACCOUNTS = (*USD_WALLETS, "market")  # market: the fee account (kind "fees")
RAIL_LIMIT_ATOMIC = 2**62
CENT = currency("USD").rail_step_atomic

deposits = st.integers(1, 2_000).map(lambda cents: cents * CENT)  # up to 20 USD
# dave holds ECNY, so any mix with him is refused: he is drawn 1 time in 8.
accounts = st.sampled_from((*USD_ACCOUNTS, *USD_WALLETS, "dave"))
usd_accounts = st.sampled_from(USD_ACCOUNTS)
pairs = st.tuples(accounts, accounts).filter(lambda pair: pair[0] != pair[1])
bad_amounts = st.sampled_from([0, -1, -CENT, 2**62 + 1, 2**63])


def amounts(available: int) -> st.SearchStrategy[int]:
    """Up to a quarter more than is available, or right at the edge: all of it, or 1 more."""
    edge = max(available, 1)
    return st.one_of(st.integers(1, edge * 5 // 4), st.sampled_from([edge, edge + 1]))


@dataclass
class ModelHold:
    debit: str
    credit: str
    amount: int
    expires_at_ms: int
    captured: int = 0
    voided: int = 0
    status: str = "open"

    @property
    def open_amount(self) -> int:
        return self.amount - self.captured - self.voided


@dataclass
class Recorded:
    """A request whose outcome the ledger recorded, so retrying it must give that outcome."""

    key: str
    call: Callable[[], Any]
    outcome: Any  # the result, or the error raised
    rule: str = ""  # the rule that made the call


TRANSFER_RULES = ("transfer", "linked")  # their requests are the ledger's "transfer" operation


class LedgerMachine(RuleBasedStateMachine):
    new_database: Callable[[], AbstractContextManager[str]]  # set per backend
    new_clock: Callable[[], Any]  # conftest's FakeClock: .now_ms, .advance(seconds)
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.resources = ExitStack()
        self.engine = make_engine(self.resources.enter_context(self.new_database()))
        self.resources.callback(self.engine.dispose)
        self.clock = self.new_clock()
        self.ledger = Ledger(self.engine, clock_ms=self.clock)
        self.wallets = WalletService(self.ledger)
        self.ids = {name: self.ledger.open_account(name, "USD").account_id
                    for name in USD_WALLETS}
        self.ids["market"] = self.ledger.open_account("market", "USD", "fees").account_id
        self.ids["dave"] = self.ledger.open_account("dave", "ECNY").account_id
        for code in ("USD", "ECNY"):
            rail = self.wallets.rail_account(self.wallets.rail("", code))
            self.ids[f"rail-{code}"] = rail.account_id
            self.ids[f"fx-{code}"] = self.wallets.fx.liquidity_account(code).account_id
        self.currency = {name: "ECNY" if name in ("dave", "rail-ECNY", "fx-ECNY") else "USD"
                         for name in self.ids}
        self.limit = {name: RAIL_LIMIT_ATOMIC if name.startswith(("rail", "fx")) else 0
                      for name in self.ids}
        # The model: posted balance, pending debits, pending credits per account; the holds.
        self.posted = dict.fromkeys(self.ids, 0)
        self.pending_debits = dict.fromkeys(self.ids, 0)
        self.pending_credits = dict.fromkeys(self.ids, 0)
        self.model_holds: dict[str, ModelHold] = {}
        self.recorded: list[Recorded] = []
        self.keys = (f"key-{n}" for n in itertools.count())

    def teardown(self) -> None:
        self.ledger.close()
        self.resources.close()

    # ---- helpers ----------------------------------------------------------------------------

    def available(self, name: str) -> int:
        return self.posted[name] - self.pending_debits[name] + self.limit[name]

    def attempt(self, key: str, call: Callable[[], Any], expected: type[Exception] | None) -> Any:
        """Call the ledger, check the outcome is `expected` (None: success), record it."""
        operation = call.__qualname__.split(".")[1]  # the rule that made the call
        event(f"{operation}: {expected.__name__ if expected else 'success'}")
        try:
            outcome = call()
        except AgentmarketError as error:
            assert expected is not None and isinstance(error, expected), (error, expected)
            if not isinstance(error, InvalidArgument):
                self.recorded.append(Recorded(key, call, error, operation))
            return None
        assert expected is None, f"expected {expected.__name__}, got {outcome}"
        self.recorded.append(Recorded(key, call, outcome, operation))
        return outcome

    def expected_for_transfers(self, transfers: list[tuple[str, str, int]]) -> type | None:
        for debit, credit, amount in transfers:
            if amount <= 0:
                return InvalidAmount
            if debit == credit:
                return InvalidArgument
        names = {n for debit, credit, _ in transfers for n in (debit, credit)}
        if len({self.currency[n] for n in names}) > 1:
            return InvalidArgument
        for name, delta in self.net(transfers).items():
            if delta < 0 and self.available(name) + delta < 0:
                return InsufficientFunds
        return None

    @staticmethod
    def net(transfers: list[tuple[str, str, int]]) -> dict[str, int]:
        deltas: dict[str, int] = {}
        for debit, credit, amount in transfers:
            deltas[debit] = deltas.get(debit, 0) - amount
            deltas[credit] = deltas.get(credit, 0) + amount
        return deltas

    def expire_due(self) -> list[ModelHold]:
        """Model of expiry: every open hold past its deadline gives its money back."""
        due = [h for h in self.model_holds.values()
               if h.status == "open" and h.expires_at_ms <= self.clock.now_ms]
        for hold in due:
            self.release(hold)
            hold.status = "expired"
        return due

    def release(self, hold: ModelHold) -> None:
        left = hold.open_amount
        self.pending_debits[hold.debit] -= left
        self.pending_credits[hold.credit] -= left
        hold.voided += left

    # ---- rules ------------------------------------------------------------------------------

    @initialize(amounts=st.lists(deposits, min_size=4, max_size=4))
    def fund(self, amounts: list[int]) -> None:
        for who, amount in zip((*USD_WALLETS, "dave"), amounts, strict=True):
            self.deposit(who, amount)

    @rule(who=st.sampled_from((*USD_WALLETS, "dave")), amount=deposits)
    def deposit(self, who: str, amount: int) -> None:
        code = self.currency[who]
        key = next(self.keys)
        posting = self.attempt(key, lambda: self.wallets.deposit(key, self.ids[who], amount, code),
                               None)
        assert posting.kind == "deposit"
        self.posted[who] += amount
        self.posted[f"rail-{code}"] -= amount

    @rule(pair=pairs, data=st.data())
    def transfer(self, pair: tuple[str, str], data: st.DataObject) -> None:
        debit, credit = pair
        amount = data.draw(amounts(self.available(debit)), label="amount")
        transfers = [(debit, credit, amount)]
        expected = self.expected_for_transfers(transfers)
        key = next(self.keys)
        posting = self.attempt(key, lambda: self.ledger.transfer(
            key, self.ids[debit], self.ids[credit], amount), expected)
        if posting is not None:
            self.apply_posted(transfers)

    @rule(legs=st.lists(pairs, min_size=1, max_size=3), data=st.data())
    def linked(self, legs: list[tuple[str, str]], data: st.DataObject) -> None:
        transfers = [(d, c, data.draw(amounts(self.available(d) // len(legs)), label="amount"))
                     for d, c in legs]
        expected = self.expected_for_transfers(transfers)
        key = next(self.keys)
        request = [Transfer(self.ids[d], self.ids[c], a) for d, c, a in transfers]
        posting = self.attempt(key, lambda: self.ledger.post_linked(key, request), expected)
        if posting is not None:
            assert sum(leg.posted_atomic for leg in posting.legs) == 0
            self.apply_posted(transfers)

    def apply_posted(self, transfers: list[tuple[str, str, int]]) -> None:
        for name, delta in self.net(transfers).items():
            self.posted[name] += delta

    @rule(direction=st.sampled_from([("alice", "dave"), ("dave", "bob")]), data=st.data())
    def convert(self, direction: tuple[str, str], data: st.DataObject) -> None:
        """FX through the liquidity accounts: both currencies still sum to zero."""
        source, target = direction
        amount = data.draw(amounts(self.available(source)), label="amount")
        quote = self.wallets.fx.get_quote(next(self.keys), self.currency[source],
                                          self.currency[target])
        bought = convert_amount(amount, quote)
        expected = (InvalidAmount if bought == 0 else
                    InsufficientFunds if amount > self.available(source) else None)
        key = next(self.keys)
        done = self.attempt(key, lambda: self.wallets.fx.convert(
            key, quote.quote_id, self.ids[source], self.ids[target], amount), expected)
        if done is not None:
            self.posted[source] -= amount
            self.posted[f"fx-{self.currency[source]}"] += amount
            self.posted[f"fx-{self.currency[target]}"] -= bought
            self.posted[target] += bought

    @rule(target=holds, pair=pairs, timeout_s=st.integers(1, 600), data=st.data())
    def hold(self, pair: tuple[str, str], timeout_s: int, data: st.DataObject) -> Any:
        return self.place_hold(*pair, timeout_s, data)

    @rule(target=holds, pair=pairs, timeout_s=st.integers(1, 30), data=st.data())
    def hold_briefly(self, pair: tuple[str, str], timeout_s: int, data: st.DataObject) -> Any:
        return self.place_hold(*pair, timeout_s, data)

    def place_hold(self, debit: str, credit: str, timeout_s: int, data: st.DataObject) -> Any:
        amount = data.draw(amounts(self.available(debit)), label="amount")
        if self.currency[debit] != self.currency[credit]:
            expected: type | None = InvalidArgument
        elif self.available(debit) < amount:
            expected = InsufficientFunds
        else:
            expected = None
        key = next(self.keys)
        held = self.attempt(key, lambda: self.ledger.hold(
            key, self.ids[debit], self.ids[credit], amount, timeout_s=timeout_s), expected)
        if held is None:
            return multiple()
        assert (held.status, held.open_atomic) == ("open", amount)
        self.pending_debits[debit] += amount
        self.pending_credits[credit] += amount
        self.model_holds[held.hold_id] = ModelHold(
            debit, credit, amount, self.clock.now_ms + timeout_s * 1000)
        return held.hold_id

    @rule(pair=st.tuples(accounts, accounts), amount=bad_amounts, data=st.data())
    def refused_request(self, pair: tuple[str, str], amount: int, data: st.DataObject) -> None:
        """Malformed requests (bad amounts, one account on both sides) change nothing and
        record nothing."""
        debit, credit = self.ids[pair[0]], self.ids[pair[1]]
        if pair[0] == pair[1]:
            amount = data.draw(amounts(self.available(pair[0])), label="amount")
        expected = InvalidArgument if pair[0] == pair[1] else InvalidAmount
        key = next(self.keys)
        calls = [
            lambda: self.ledger.transfer(key, debit, credit, amount),
            lambda: self.ledger.post_linked(key, [Transfer(debit, credit, amount)]),
            lambda: self.ledger.hold(key, debit, credit, amount, timeout_s=60),
        ]
        for call in calls:
            self.attempt(key, call, expected)

    @rule(hold_id=holds, data=st.data())
    def capture(self, hold_id: str, data: st.DataObject) -> None:
        self.capture_hold(hold_id, data, final=False)

    @rule(hold_id=holds, data=st.data())
    def settle(self, hold_id: str, data: st.DataObject) -> None:
        """The final capture: pays what is due and releases the rest in one posting."""
        self.capture_hold(hold_id, data, final=True)

    def capture_hold(self, hold_id: str, data: st.DataObject, *, final: bool) -> None:
        hold = self.model_holds[hold_id]
        open_amount = hold.open_amount
        amount = data.draw(st.integers(0, open_amount * 5 // 4 + 1), label="amount")
        fee = data.draw(st.integers(0, max(amount, 0)), label="fee")
        payee = data.draw(usd_accounts, label="payee")
        splits = [(self.ids[payee], amount - fee), (self.ids["market"], fee)]
        if amount == 0 and not final:
            expected: type | None = InvalidAmount  # refused before the hold is looked at
        elif hold.status != "open":
            expected = HoldClosed
        elif amount > open_amount:
            expected = HoldExceeded
        else:
            expected = None
        key = next(self.keys)
        posting = self.attempt(key, lambda: self.ledger.capture(
            key, hold_id, amount, splits, final=final), expected)
        if posting is None:
            return
        release = open_amount - amount if final else 0
        self.posted[hold.debit] -= amount
        self.posted[payee] += amount - fee
        self.posted["market"] += fee
        self.pending_debits[hold.debit] -= amount + release
        self.pending_credits[hold.credit] -= amount + release
        hold.captured += amount
        hold.voided += release
        if hold.open_amount == 0:
            hold.status = "captured" if hold.captured else "voided"

    @rule(hold_id=holds)
    def void(self, hold_id: str) -> None:
        hold = self.model_holds[hold_id]
        expected = HoldClosed if hold.status != "open" else None
        key = next(self.keys)
        posting = self.attempt(key, lambda: self.ledger.void(key, hold_id), expected)
        if posting is not None:
            self.release(hold)
            hold.status = "captured" if hold.captured else "voided"

    @rule(seconds=st.integers(0, 600), how=st.sampled_from(["sweep", "balance", "get_hold"]))
    def advance_clock(self, seconds: int, how: str) -> None:
        """Time passes; holds past their deadline expire, by the sweeper or on access."""
        self.clock.advance(seconds)
        due = self.expire_due()
        event(f"holds expired by one clock move: {min(len(due), 3)}{'+' * (len(due) >= 3)}")
        if how == "sweep":
            assert self.ledger.expire_holds() == len(due)
        elif how == "balance":  # reading either side's balance expires the hold first
            for name in sorted({n for h in due for n in (h.debit, h.credit)}):
                b = self.ledger.balance(self.ids[name])
                assert (b.posted_atomic, b.pending_debits_atomic, b.pending_credits_atomic) == (
                    self.posted[name], self.pending_debits[name], self.pending_credits[name])
        else:
            for hold_id, hold in self.model_holds.items():
                if hold in due:
                    assert self.ledger.get_hold(hold_id).status == "expired"

    @precondition(lambda self: self.recorded)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """The same key and request again: the first outcome, and no second effect."""
        first = data.draw(st.sampled_from(self.recorded), label="retried")
        try:
            again = first.call()
        except AgentmarketError as error:
            assert isinstance(first.outcome, AgentmarketError), (error, first.outcome)
            assert (type(error), error.message) == (type(first.outcome), first.outcome.message)
            return
        assert again == first.outcome

    @precondition(lambda self: any(r.rule in TRANSFER_RULES for r in self.recorded))
    @rule(data=st.data())
    def conflicting_retry(self, data: st.DataObject) -> None:
        """The same key for a different transfer is refused and changes nothing (a key names a
        request within its operation: under another one it is another request)."""
        first = data.draw(st.sampled_from([r for r in self.recorded
                                           if r.rule in TRANSFER_RULES]), label="reused")
        try:
            self.ledger.transfer(first.key, self.ids["alice"], self.ids["bob"], 1,
                                 memo="a different request")
        except IdempotencyConflict:
            return
        raise AssertionError(f"key {first.key} was reused without a conflict")

    # ---- invariants -------------------------------------------------------------------------

    @rule(group_commit=st.booleans())
    def restart(self, group_commit: bool) -> None:
        """A process restart: a new Ledger (and engine) over the same database, same clock."""
        self.ledger.close()
        self.engine.dispose()
        self.ledger = Ledger(self.engine, clock_ms=self.clock, group_commit=group_commit)
        self.wallets = WalletService(self.ledger)

    @invariant()
    def agrees_with_the_model(self) -> None:
        balances = {b.account_id: b for b in self.ledger.accounts()}
        totals: dict[str, int] = {}
        for name, account_id in self.ids.items():
            b = balances[account_id]
            assert (b.posted_atomic, b.pending_debits_atomic, b.pending_credits_atomic) == (
                self.posted[name], self.pending_debits[name], self.pending_credits[name]), name
            assert b.available_atomic + b.credit_limit_atomic == self.available(name) >= 0
            totals[b.currency] = totals.get(b.currency, 0) + b.posted_atomic
        assert totals == {"USD": 0, "ECNY": 0}, totals

    @invariant()
    def holds_resolve_at_most_once(self) -> None:
        with self.engine.connect() as conn:
            rows = {row.id: row for row in conn.execute(select(HOLDS))}
        assert rows.keys() == self.model_holds.keys()
        for hold_id, model in self.model_holds.items():
            hold = rows[hold_id]
            assert hold.captured_atomic + hold.voided_atomic <= hold.amount_atomic
            assert (hold.status, hold.captured_atomic, hold.voided_atomic) == (
                model.status, model.captured, model.voided), hold_id

    @invariant()
    def books_are_sound(self) -> None:
        balances = audit.check_balances(self.ledger)
        assert balances.ok, balances.problems
        chain = audit.verify_chain(self.ledger)
        assert chain.ok, chain.problems


@pytest.mark.slow
def test_ledger_matches_the_reference_model(backend: str, new_database: Any,
                                           clock: Any) -> None:
    machine = type(f"LedgerMachine_{backend}", (LedgerMachine,), {
        "new_database": staticmethod(new_database),
        "new_clock": staticmethod(type(clock)),  # a fresh clock per example
    })
    run_state_machine_as_test(machine, settings=SETTINGS[backend])
