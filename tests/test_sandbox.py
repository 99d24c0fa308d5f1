"""The market sandbox (`agentmarket simulate`): each example scenario, shrunk to a few agents
and rounds, runs through a real node, agents and ledger; afterwards every currency sums to zero
and `ledger verify` is clean; every plot and the report are written; the same seed gives the
same events file byte for byte; a bad scenario file gives one line naming the field."""

from __future__ import annotations

import dataclasses
import io
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from agents.sandbox import events as event_file
from agents.sandbox.plots import PLOTS, gini
from agents.sandbox.scenario import Scenario, ScenarioError, load, parse
from marketplace.cli.main import app
from marketplace.cli.simulate import EVENTS, REPORT, run

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "examples" / "scenarios").glob("*.toml"))


def tiny(scenario: Scenario) -> Scenario:
    """The scenario with at most two sellers and three buyers per group, over two rounds; a
    group of cheaters keeps at least one."""
    return dataclasses.replace(
        scenario, rounds=2,
        sellers=tuple(dataclasses.replace(g, count=min(g.count, 2)) for g in scenario.sellers),
        buyers=tuple(dataclasses.replace(g, count=min(g.count, 3), demand=1.0)
                     for g in scenario.buyers))


def _run(scenario: Scenario, seed: int, out: Path, db_url: str | None = None):  # type: ignore[no-untyped-def]
    return run(scenario, seed, out, Console(file=io.StringIO(), width=120), db_url=db_url,
               workers=4)


def test_three_example_scenarios():
    assert {p.stem for p in SCENARIOS} == {"cross_border_llm", "gpu_market", "cheaters"}


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_each_scenario_balances_verifies_and_is_drawn(path: Path, tmp_path: Path):
    scenario = tiny(load(path))
    result = _run(scenario, 11, tmp_path)
    assert result.problems == []
    assert result.sums and all(total == 0 for total in result.sums.values())
    kinds = {e.kind for e in result.events}
    assert {"agreement", "call", "reputation", "balance"} <= kinds
    assert kinds & {"settle", "resolve"}
    if any(g.currency != scenario.skills[g.skill].currency for g in scenario.buyers):
        assert "fx" in kinds  # buyers paid across currencies
    if any(g.cheat_fraction for g in scenario.sellers):
        assert any(e.kind == "reputation" and e.detail == "cheats" for e in result.events)
    for name in (*PLOTS, EVENTS, REPORT):
        assert (tmp_path / name).stat().st_size > 0, name
    page = (tmp_path / REPORT).read_text()
    assert page.count("data:image/png;base64,") == len(PLOTS)
    verified = CliRunner().invoke(app, ["ledger", "verify", "--db",
                                        f"sqlite:///{tmp_path / 'market.db'}"])
    assert verified.exit_code == 0 and "ok" in verified.output


def test_the_same_seed_gives_the_same_events_file(tmp_path: Path):
    scenario = tiny(load(ROOT / "examples" / "scenarios" / "cheaters.toml"))
    scenario = dataclasses.replace(scenario, sellers=tuple(  # failures and refusals too
        dataclasses.replace(g, failure_rate=0.3) for g in scenario.sellers))
    first = _run(scenario, 5, tmp_path / "a")
    second = _run(scenario, 5, tmp_path / "b")
    assert (tmp_path / "a" / EVENTS).read_bytes() == (tmp_path / "b" / EVENTS).read_bytes()
    assert event_file.read(tmp_path / "a" / EVENTS) == first.events == second.events
    assert any(e.kind == "call_failed" for e in first.events)
    other = _run(dataclasses.replace(scenario, rounds=1), 6, tmp_path / "c")
    assert other.events != first.events[:len(other.events)]


@pytest.mark.postgres
def test_a_scenario_on_postgresql(postgres_url: str, tmp_path: Path):
    from tests.conftest import postgres_schema

    with postgres_schema(postgres_url) as url:
        scenario = dataclasses.replace(tiny(load(ROOT / "examples" / "scenarios" /
                                                 "gpu_market.toml")), rounds=1)
        result = _run(scenario, 3, tmp_path, db_url=url)
    assert result.problems == [] and all(total == 0 for total in result.sums.values())
    assert any(e.kind == "settle" for e in result.events)


GOOD = (ROOT / "examples" / "scenarios" / "gpu_market.toml").read_text()


@pytest.mark.parametrize(("change", "field"), [
    (lambda t: t.replace('strategy = "fixed"', 'strategy = "greedy"'), "sellers[0].strategy"),
    (lambda t: t.replace('list_price = "0.0008"', "list_price = 0.0008"),
     "sellers[0].list_price"),
    (lambda t: t.replace("rounds = 12\n", ""), "rounds"),
    (lambda t: t.replace('deposit = "500.00"', 'deposit = "500.00"\nbudgett = "1"'),
     "buyers[0].budgett"),
    (lambda t: t.replace('currency = "USDC"', 'currency = "EUR"'), "buyers[1].currency"),
    (lambda t: t.replace("demand = 0.7", "demand = 1.5"), "buyers[0].demand"),
    (lambda t: t.replace('cost = "0.0005"', 'cost = "0.002"'), "sellers[1].cost"),
    (lambda t: t.replace('skill = "train"\ncurrency = "USDC"', 'skill = "paint"\n'
                         'currency = "USDC"'), "buyers[1].skill"),
    (lambda t: t + "\n[[sellers]\n", "not valid TOML"),
    (lambda t: t.replace('deposit = "500.00"', 'deposit = "500.00"\necny_category = 2'),
     "buyers[0].ecny_category"),
], ids=["choice", "float-money", "missing", "unknown", "currency", "probability",
        "cost-above-list", "unsold-skill", "toml", "tier-without-ecny"])
def test_a_bad_scenario_is_one_line_naming_the_field(tmp_path: Path, change, field: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.toml"
    path.write_text(change(GOOD))
    with pytest.raises(ScenarioError, match=field.replace("[", r"\[").replace("]", r"\]")):
        load(path)
    result = CliRunner().invoke(app, ["simulate", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing ran


def test_a_missing_scenario_file_is_one_line(tmp_path: Path):
    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "none.toml")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "cannot read" in result.output


def test_parse_keeps_money_exact():
    scenario = parse({"name": "x", "rounds": 1, "fx": {"units_per_usd": {"ECNY": "7.1"}},
                      "sellers": [{"group": "s", "count": 1, "skill": "a", "kind": "call",
                                   "currency": "ECNY", "list_price": "0.000000001",
                                   "cost": "0.000000001", "strategy": "fixed",
                                   "capacity": 1}],
                      "buyers": [{"group": "b", "count": 1, "skill": "a", "currency": "USD",
                                  "deposit": "1", "task_budget": "0.1",
                                  "reservation_price": "0.01", "demand": 0.5}]})
    assert scenario.sellers[0].list_price_atomic == 1
    assert scenario.buyers[0].deposit_atomic == 10**9


def test_gini():
    assert gini([5, 5, 5, 5]) == 0
    assert gini([0, 0, 0, 12]) == pytest.approx(0.75)
    assert gini([]) == 0


TINY = '''
name = "tiny"
rounds = 1
ecny = true
usdc_chain = true
[fx]
units_per_usd = { ECNY = "7.1", USDC = "1" }
[[sellers]]
group = "gpu"
count = 2
skill = "train"
kind = "gpu"
currency = "ECNY"
list_price = "0.005"
cost = "0.003"
strategy = "demand"
capacity = 2
[[buyers]]
group = "lab"
count = 3
skill = "train"
currency = "USD"
deposit = "50.00"
task_budget = "20.00"
reservation_price = "0.0008"
demand = 1.0
calls = [1, 2]
[[buyers]]
group = "chain"
count = 2
skill = "train"
currency = "USDC"
deposit = "40.00"
task_budget = "20.00"
reservation_price = "0.0008"
demand = 1.0
[[buyers]]
group = "app"
count = 1
skill = "train"
currency = "ECNY"
deposit = "15000.00"
task_budget = "140.00"
reservation_price = "0.006"
demand = 1.0
ecny_category = 2
'''


def test_the_command_runs_a_scenario_with_the_node_in_its_own_process(tmp_path: Path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["simulate", str(path), "--seed", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output and "PROBLEMS" not in result.output
    rows = event_file.read(out / EVENTS)
    assert {"fx", "agreement", "call", "settle"} <= {e.kind for e in rows}
    assert (out / REPORT).stat().st_size > 0
    from marketplace.cli.operator import open_ledger

    ledger = open_ledger(f"sqlite:///{out / 'market.db'}")
    try:  # the USDC buyers were funded from the chain, the e-CNY app past the anonymous cap
        deposits = ledger.postings(kind="deposit", limit=100)
        from_chain = [p for p in deposits if p.memo.startswith("USDC deposit via usdc-evm")]
        assert len(from_chain) == 2 and all(" tx 0x" in p.memo for p in from_chain)
        assert not [p for p in deposits if p.memo == "deposit via sandbox-usdc"]
        assert any(p.memo == "deposit via sandbox-ecny" and max(
            leg.posted_atomic for leg in p.legs) == 15_000 * 10**9 for p in deposits)
    finally:
        ledger.close()


def test_ctrl_c_stops_a_run_with_one_line(tmp_path: Path):
    """Ctrl-C reaches the whole process group: the node's process leaves the stopping to the
    run (no traceback of its own, and the agents' last redeems still find it), and the run
    ends with one line and status 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = Path(sys.executable).parent / "agentmarket"
    out = tmp_path / "out"
    process = subprocess.Popen(
        [str(script), "simulate", str(ROOT / "examples" / "scenarios" / "cheaters.toml"),
         "--seed", "3", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "market.db").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # under way: the node's process serves, agents trade
    os.killpg(process.pid, signal.SIGINT)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 130, output
    assert "Traceback" not in output and "redeeming" not in output, output
    assert output.rstrip().splitlines()[-1] == "error: interrupted", output


def test_a_ctrl_c_landing_in_a_weakref_callback_prints_no_traceback(monkeypatch):
    """The interrupt may land in code Python cannot raise it from (a weakref callback the
    garbage collector runs, as SQLAlchemy's are): it is not printed as "Exception ignored"
    with a traceback, and the run's next step raises it."""
    import signal
    import weakref

    from marketplace.cli.simulate import _ctrl_c

    class Collected:
        pass

    printed: list = []  # what would be printed as "Exception ignored in ...", with its traceback
    monkeypatch.setattr(sys, "unraisablehook", printed.append)
    with _ctrl_c() as ctrl_c:
        collected = Collected()
        watch = weakref.ref(collected, lambda _ref: signal.raise_signal(signal.SIGINT))
        del collected  # the callback runs now, and the interrupt lands in it
        assert watch() is None
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
    assert printed == []
    assert sys.unraisablehook == printed.append  # the run's hook only while it runs


def test_a_ctrl_c_a_library_caught_still_stops_the_run_at_its_next_step():
    """A KeyboardInterrupt raised where a library catches it (a blocking gRPC call in the
    main thread) is remembered: the run's next progress step raises it again. The run's
    handler is in place only while it runs."""
    import contextlib
    import signal

    from marketplace.cli.simulate import _ctrl_c

    before = signal.getsignal(signal.SIGINT)
    with _ctrl_c() as ctrl_c:
        assert signal.getsignal(signal.SIGINT) == ctrl_c.handle
        ctrl_c.check()  # not pressed: nothing
        with contextlib.suppress(KeyboardInterrupt):  # what such a library does
            signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
    assert signal.getsignal(signal.SIGINT) == before
