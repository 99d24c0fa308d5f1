"""The run: rounds on a simulated clock; each round plans its tasks, runs them through the
market concurrently, then moves prices, FX rates and reputations for the next.

Determinism: everything a task's outcome depends on is fixed before the round runs (the plan,
from a generator seeded by the seed and the round; sellers' asking levels; FX rates; the
reputations buyers see, read once at the round's start), each buyer runs at most one task a
round, and a seller's faults are hashes of the seed and the job. The round's tasks then run in
parallel threads, in any order, and their events are sorted by simulated time and task.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from agents.sandbox.events import Event
from agents.sandbox.market import Market, Seller
from agents.sandbox.scenario import Scenario
from agents.sandbox.trade import Task, run_task
from marketplace.reputation import reputation
from marketplace.v1 import registry_pb2
from wallets.audit import check_balances, verify_chain

DEFAULT_WORKERS = 16
CHOICES = 3  # a buyer compares this many sellers it may use and takes the cheapest ask


@dataclass
class RunResult:
    events: list[Event]
    problems: list[str]
    sums: dict[str, int]  # currency -> sum over all accounts (zero: double entry)
    postings: int
    tasks: int
    wall_s: float
    setup_s: float
    agents: int
    sellers: dict[str, bool] = field(default_factory=dict)  # seller name -> cheats


Progress = Callable[[str, int, int], None]  # (what, done, total)


def simulate(scenario: Scenario, seed: int, workdir: Path, *, db_url: str | None = None,
             workers: int = DEFAULT_WORKERS, node_process: bool = False,
             progress: Progress | None = None) -> RunResult:
    """Run the scenario in `workdir` (its database goes there unless `db_url` names one);
    `node_process`: the node in a process of its own."""
    report = progress or (lambda what, done, total: None)
    started = time.perf_counter()
    market = Market(scenario, seed, workdir, db_url, node_process=node_process)
    agents, count = scenario.agents, [0]

    def on_agent() -> None:
        count[0] += 1
        report("starting agents", count[0], agents)

    try:
        market.open(on_agent)
        setup_s = time.perf_counter() - started
        events, tasks = _rounds(market, scenario, seed, workers, report)
        events += _balances(market, scenario.rounds * scenario.round_s * 1000)
        ledger = market.ledger
        sums: dict[str, int] = {}
        for balance in ledger.accounts():
            sums[balance.currency] = sums.get(balance.currency, 0) + balance.posted_atomic
        chain, balances = verify_chain(ledger), check_balances(ledger)
        problems = [*chain.problems, *balances.problems]
        problems += [f"{code} sums to {total}, not 0" for code, total in sums.items() if total]
        cheats = {s.name: s.cheats for s in market.sellers}
    finally:
        market.close()
    wall_s = time.perf_counter() - started
    return RunResult(events, problems, sums, chain.postings, tasks, wall_s - setup_s, setup_s,
                     agents, cheats)


def _rounds(market: Market, scenario: Scenario, seed: int, workers: int,
            report: Progress) -> tuple[list[Event], int]:
    events: list[Event] = []
    done = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="sandbox-task") as pool:
        for index in range(scenario.rounds):
            start_ms = index * scenario.round_s * 1000
            if index:
                market.move_fx(index)
            events += _rates(market, index, start_ms)
            tasks = _plan(market, scenario, seed, index, done, _listings(market))
            round_events: list[tuple[int, int, int, Event]] = []
            for order, found in enumerate(pool.map(lambda t: run_task(market, t), tasks)):
                round_events += [(e.t_ms, order, step, e) for step, e in enumerate(found)]
                done += 1
                report(f"round {index + 1}/{scenario.rounds}", index, scenario.rounds)
            events += [e for *_, e in sorted(round_events, key=lambda r: r[:3])]
            for seller in market.sellers:
                seller.pricing.after_round(seller.orders, seller.group.capacity)
                seller.orders = 0
            events += _reputations(market, index, start_ms + scenario.round_s * 1000)
            report(f"round {index + 1}/{scenario.rounds}: {done} tasks", index + 1,
                   scenario.rounds)
    return events, done


def _rates(market: Market, index: int, t_ms: int) -> list[Event]:
    fx = market.fx
    return [Event(t_ms, index, "fx_rate", currency="USD", to_currency=code,
                  detail=f"{float(rate):.4f}", unit_price_atomic=int(rate * 10**9))
            for code, rate in sorted(fx.units_per_usd.items()) if code != "USD"]


def _listings(market: Market) -> dict[str, registry_pb2.Listing]:
    """What buyers see this round: each skill's live listings, with earned reputation (at most
    the registry's 100 per skill, cheapest first: more sellers of one skill than that, and the
    dearest go unseen)."""
    seen: dict[str, registry_pb2.Listing] = {}
    observer = market.buyers[0].agent
    for skill, group in sorted(market.scenario.skills.items()):
        for listing in observer.discover(skill, currency=group.currency, limit=100):
            seen[listing.agent_id] = listing
    return seen


def _plan(market: Market, scenario: Scenario, seed: int, index: int, first: int,
          listings: dict[str, registry_pb2.Listing]) -> list[Task]:
    """Which buyers want work this round, from whom: the cheapest ask among a few sellers of
    the skill that have capacity left and a reputation the buyer accepts."""
    rng = random.Random(f"{seed}:plan:{index}")
    by_skill: dict[str, list[Seller]] = {}
    for seller in market.sellers:
        by_skill.setdefault(seller.group.skill, []).append(seller)
    tasks = []
    for buyer in market.buyers:
        group = buyer.group
        if rng.random() >= group.demand:
            continue
        calls, size = rng.randint(*group.calls), rng.randint(1, 100)
        verify, offset = rng.random() < group.verify_rate, rng.randrange(scenario.round_s * 500)

        open_sellers = [s for s in by_skill[group.skill]
                        if _acceptable(s, listings, group.min_reputation_permille)]
        if not open_sellers:
            continue
        picks = rng.sample(open_sellers, min(CHOICES, len(open_sellers)))
        ties = {s.name: rng.random() for s in picks}
        seller = min(picks, key=lambda s: (s.pricing.ask_atomic(), ties[s.name]))
        seller.orders += 1
        tasks.append(Task(f"t{first + len(tasks) + 1:06d}", index,
                          index * scenario.round_s * 1000 + offset, buyer, seller,
                          listings[seller.agent.agent_id], calls, size, verify))
    return tasks


def _acceptable(seller: Seller, listings: dict[str, registry_pb2.Listing],
                min_reputation_permille: int) -> bool:
    """Listed, with capacity left, and new or of a reputation the buyer accepts."""
    listing = listings.get(seller.agent.agent_id)
    return listing is not None and seller.orders < seller.group.capacity and (
        not listing.rated_agreements or listing.reputation_permille >= min_reputation_permille)


def _reputations(market: Market, index: int, t_ms: int) -> list[Event]:
    with market.engine.connect() as conn:
        found = [(s, *reputation(conn, s.agent.agent_id)) for s in market.sellers]
    return [Event(t_ms, index, "reputation", seller=s.name, skill=s.group.skill,
                  amount_atomic=permille, quantity=rated,
                  detail="cheats" if s.cheats else "honest") for s, permille, rated in found]


def _balances(market: Market, t_ms: int) -> list[Event]:
    """Every agent's wallet balances at the end (for the balance distribution)."""
    buyers = {b.agent.agent_id: b.name for b in market.buyers}
    sellers = {s.agent.agent_id: s.name for s in market.sellers}
    rows = [Event(t_ms, market.scenario.rounds, "balance", buyer=buyers.get(b.owner, ""),
                  seller=sellers.get(b.owner, ""), currency=b.currency,
                  amount_atomic=b.posted_atomic)
            for b in market.ledger.accounts()
            if b.kind == "wallet" and (b.owner in buyers or b.owner in sellers)]
    return sorted(rows, key=lambda e: (e.currency, e.buyer, e.seller))
