"""Agents that come and go: the README program twice in one folder, listings withdrawn when a
seller's process ends however it ends, and buyers that fail over past a dead seller, whose
listing the registry stops ranking only once it checked for itself.

Issue 15 finding 1: the README's program failed when run again within a minute (the first
run's seller was never stopped, its listing outlived it and ranked first; the second run died
at negotiate with grpc's UNAVAILABLE).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, SellerUnavailable, per_call, skill
from marketplace.node import MarketplaceNode
from marketplace.v1 import registry_pb2, registry_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_TIMEOUT_S = 180


def readme_program() -> str:
    """The first Python block after 'Your first paid agent', as a user would copy it."""
    text = README.read_text()
    section = text[text.index("## Your first paid agent"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def run_python(code_file: Path, cwd: Path, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    environment.pop("AGENTMARKET_HOME", None)  # the documented default: ./.agentmarket
    return subprocess.run([sys.executable, str(code_file)], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_the_readme_program_runs_twice_in_one_folder(tmp_path: Path):
    program = tmp_path / "first.py"
    program.write_text(readme_program())
    first = run_python(program, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.startswith("1.00 USD\n"), first.stdout
    assert "{'text': 'HELLO'}" in first.stdout and "settled: seller paid" in first.stdout
    after_first = files_under(tmp_path)
    second = run_python(program, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "settled: seller paid" in second.stdout
    assert files_under(tmp_path) == after_first, "a second run left new files behind"
    # finding 6: the spans landed where `agentmarket trace last` looks by default
    traced = subprocess.run([sys.executable, "-m", "marketplace.cli.main", "trace", "last"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in {**os.environ, "PYTHONPATH": str(ROOT)}
                                 .items() if k != "AGENTMARKET_HOME"})
    assert traced.returncode == 0, traced.stdout + traced.stderr
    assert "Finish" in traced.stdout and "escrow.capture" in traced.stdout


ORIGINAL_PROGRAM = '''
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_call, skill
from marketplace import MarketplaceNode


class Shout(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def shout(text: str) -> Shout:
    """Upper-case a text."""
    return Shout(text=text.upper())


with MarketplaceNode("sqlite:///market.db") as node:
    seller = SellerAgent("shouter", skills=[shout], marketplace=node.address).serve()

    buyer = BuyerAgent("me", marketplace=node.address)
    buyer.fund("1.00", "USD")
    listing = buyer.discover("shout", currency="USD")[0]
    deal = buyer.negotiate(listing, "shout", quantity=5, budget="0.01", currency="USD")
    buyer.hire(deal)
    print(buyer.call(deal, {"text": "hello"}))
    print(buyer.finish(deal))
'''


def test_the_old_readme_program_never_stopping_its_seller_also_runs_twice(tmp_path: Path):
    """The program as the issue ran it: the seller is never stopped and the node goes first,
    so the listing cannot be withdrawn at exit; the second run fails over past it."""
    program = tmp_path / "old.py"
    program.write_text(ORIGINAL_PROGRAM)
    for run in (1, 2):
        done = run_python(program, tmp_path)
        assert done.returncode == 0, f"run {run}: {done.stderr[-3000:]}"
        assert "{'text': 'HELLO'}" in done.stdout


# ---- a seller's process ends: its listing goes with it ---------------------------------------

SELLER_PROGRAM = textwrap.dedent('''
    import signal, sys, time
    # Ctrl-C raises KeyboardInterrupt, as in a terminal, even when the test runner was started
    # in the background and its children inherited SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from pydantic import BaseModel
    from agents import SellerAgent, per_call, skill

    class Echo(BaseModel):
        text: str

    @skill(price=per_call("0.001", "USD"))
    def echo(text: str) -> Echo:
        """Echo."""
        return Echo(text=text)

    seller = SellerAgent("lonely", skills=[echo], marketplace=sys.argv[1], ttl_s=3600).serve()
    print(seller.endpoint, flush=True)
    if sys.argv[2] == "wait":
        while True:
            time.sleep(0.1)
''')


class Echo(BaseModel):
    text: str


def echo_skill(price: str):  # type: ignore[no-untyped-def]
    @skill(price=per_call(price, "USD"), name="echo")
    def echo(text: str) -> Echo:
        """Echo."""
        return Echo(text=text)

    return echo


@pytest.fixture
def node(tmp_path: Path) -> Iterator[MarketplaceNode]:
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as started:
        yield started


def _seller_process(node: MarketplaceNode, tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "seller.py"
    script.write_text(SELLER_PROGRAM)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTMARKET_TRACING": "off"}
    process = subprocess.Popen([sys.executable, str(script), node.address, mode], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None
    endpoint = process.stdout.readline().strip()
    assert endpoint, process.stderr.read() if process.stderr else "no endpoint"
    return process


@pytest.mark.parametrize("ending", ["exit", "sigterm", "sigint"])
def test_a_sellers_listing_is_withdrawn_however_its_process_ends(node: MarketplaceNode,
                                                                   tmp_path: Path, ending: str):
    process = _seller_process(node, tmp_path, "exit" if ending == "exit" else "wait")
    if ending != "exit":
        assert [listing.name for listing in node.registry.discover("echo")] == ["lonely"]
        process.send_signal(signal.SIGTERM if ending == "sigterm" else signal.SIGINT)
    process.wait(timeout=60)
    if ending == "sigterm":
        assert process.returncode == 128 + signal.SIGTERM
    assert node.registry.discover("echo") == [], \
        "the listing outlived its seller (its TTL is an hour)"


# ---- a seller killed outright: buyers fail over, the registry checks ----------------------------


def test_a_killed_seller_is_skipped_reported_and_checked_before_it_stops_ranking(
        node: MarketplaceNode, tmp_path: Path):
    dead = _seller_process(node, tmp_path, "wait")  # cheapest: it ranks first
    with SellerAgent("dear", skills=[echo_skill("0.002")], marketplace=node.address) as alive, \
            BuyerAgent("buyer", marketplace=node.address) as buyer:
        buyer.fund("1.00", "USD")
        listings = buyer.discover("echo", currency="USD")
        assert [listing.name for listing in listings] == ["lonely", "dear"]
        registry = registry_pb2_grpc.RegistryServiceStub(buyer._channel)
        # one buyer's word is not enough: a live seller reported stays listed
        report = registry.ReportUnreachable(registry_pb2.ReportUnreachableRequest(
            agent_id=alive.agent_id, endpoint=alive.endpoint), timeout=10)
        assert not report.withdrawn
        dead.kill()
        dead.wait(timeout=30)
        deal = buyer.negotiate(listings[0], "echo", quantity=2, budget="0.01",
                               currency="USD")  # the dead one, as the user picked it
        assert deal.body.seller_id == alive.agent_id
        assert [listing.name for listing in buyer.discover("echo", currency="USD")] == ["dear"]
        buyer.hire(deal)
        assert buyer.call(deal, {"text": "hi"}) == {"text": "hi"}
        buyer.finish(deal)


def test_when_no_seller_answers_the_error_names_each_one_tried(node: MarketplaceNode,
                                                                tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _seller_process(node, tmp_path / "a", "wait")
    second = _seller_process(node, tmp_path / "b", "wait")
    with BuyerAgent("buyer", marketplace=node.address) as buyer:
        listings = buyer.discover("echo", currency="USD")
        assert len(listings) == 2
        for process in (first, second):
            process.kill()
            process.wait(timeout=30)
        started = time.monotonic()
        with pytest.raises(SellerUnavailable) as caught:
            buyer.negotiate(listings, "echo", quantity=1, budget="0.01", currency="USD")
        assert time.monotonic() - started < 60
    error = caught.value
    assert error.status == "UNAVAILABLE" and error.reason == "SELLER_UNAVAILABLE"
    assert all(listing.endpoint in error.message for listing in listings), error.message
    assert not isinstance(error, grpc.RpcError)
    assert node.registry.discover("echo") == []  # both checked, neither ranked any more


def test_agents_are_context_managers_and_stop_is_idempotent(node: MarketplaceNode):
    with SellerAgent("ctx", skills=[echo_skill("0.001")], marketplace=node.address) as seller:
        assert [listing.name for listing in node.registry.discover("echo")] == ["ctx"]
        assert seller.serve() is seller  # serving twice is serving once
    assert node.registry.discover("echo") == []
    seller.stop()  # again: nothing happens
