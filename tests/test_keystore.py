"""Identities that last: a named agent keeps its key across runs in the keystore under
AGENTMARKET_HOME, a key file loads as documented, and nothing new piles up run after run.

Issue 15 finding 8: every run added `.agentmarket/seller-<key>.db` (a new key each time), and
how to load a saved key was not shown.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents import BuyerAgent, InvalidArgument, SellerAgent, per_call, skill
from agents.keystore import key_path, load_key, named_key, names
from marketplace.cli.main import app
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = '''
import sys
from pydantic import BaseModel
from agents import BuyerAgent, SellerAgent, per_call, skill
from marketplace import MarketplaceNode

class Echo(BaseModel):
    text: str

@skill(price=per_call("0.001", "USD"))
def echo(text: str) -> Echo:
    """Echo."""
    return Echo(text=text)

key = sys.argv[1] or None
with MarketplaceNode("sqlite:///market.db") as node, \\
        SellerAgent("echoer", skills=[echo], marketplace=node.address, key=key) as seller, \\
        BuyerAgent("me", marketplace=node.address) as buyer:
    buyer.fund("1.00", "USD")
    deal = buyer.negotiate(buyer.discover("echo", currency="USD"), "echo", quantity=2,
                           budget="0.01", currency="USD")
    buyer.hire(deal)
    buyer.call(deal, {"text": "hi"})
    buyer.finish(deal)
    print(seller.agent_id)
'''


def _run(tmp_path: Path, key: str) -> str:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k != "AGENTMARKET_HOME"}
    env.update(PYTHONPATH=str(ROOT), AGENTMARKET_TRACING="off")
    done = subprocess.run([sys.executable, str(script), key], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_named_seller_keeps_its_key_and_its_journal_across_runs(tmp_path: Path):
    first = _run(tmp_path, "echoer")
    files = _files(tmp_path)
    assert ".agentmarket/keys/echoer.key" in files
    assert f".agentmarket/seller-{first[:16]}.db" in files
    mode = stat.S_IMODE((tmp_path / ".agentmarket/keys/echoer.key").stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert _run(tmp_path, "echoer") == first  # the same identity: reputation, listing, journal
    assert _files(tmp_path) == files, "a second run left new files"


@pytest.mark.slow
def test_a_seller_with_a_key_for_this_run_only_leaves_nothing_behind(tmp_path: Path):
    first = _run(tmp_path, "")
    assert _run(tmp_path, "") != first
    assert _files(tmp_path) == {"market.db", "program.py"}


def test_named_keys_and_key_files_load_as_documented(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AGENTMARKET_HOME", str(tmp_path / "home"))
    made = named_key("alice")
    assert named_key("alice").agent_id == made.agent_id
    assert key_path("alice") == tmp_path / "home" / "keys" / "alice.key"
    assert names() == ["alice"]
    assert load_key("alice").agent_id == made.agent_id
    # `agentmarket keys new FILE` writes a key file and prints its id; it loads by path
    printed = CliRunner().invoke(app, ["keys", "new", str(tmp_path / "bob.key")])
    assert printed.exit_code == 0, printed.output
    bob = printed.output.strip()
    assert load_key(tmp_path / "bob.key").agent_id == bob
    assert load_key(str(tmp_path / "bob.key")).agent_id == bob
    assert AgentKey.load(tmp_path / "bob.key").agent_id == bob
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node:
        assert BuyerAgent("bob", marketplace=node.address,
                          key=tmp_path / "bob.key").agent_id == bob
        assert BuyerAgent("alice", marketplace=node.address, key="alice").agent_id == \
            made.agent_id
    fresh = load_key(None)
    assert fresh.agent_id not in (made.agent_id, bob)


def test_keys_list_and_wallet_show_by_key_name(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch):
    """A newcomer finds its agents' ids (`keys list`) and their wallets by name."""
    monkeypatch.setenv("AGENTMARKET_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    empty = runner.invoke(app, ["keys", "list"])
    assert empty.exit_code == 0 and "no named keys" in empty.output
    db = f"sqlite:///{tmp_path / 'm.db'}"
    with MarketplaceNode(db, sweep_interval_s=3600) as node, \
            BuyerAgent("alice", marketplace=node.address, key="alice") as alice:
        alice.fund("2.50", "USD")
    listed = runner.invoke(app, ["keys", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == [{"name": "alice", "agent_id": alice.agent_id}]
    assert alice.agent_id in runner.invoke(app, ["keys", "list"]).output
    shown = runner.invoke(app, ["wallet", "show", "alice", "--db", db, "--json"])
    assert shown.exit_code == 0, shown.output
    wallet = json.loads(shown.output)
    assert wallet["owner"] == alice.agent_id
    assert [a["available_atomic"] for a in wallet["accounts"]] == [2_500_000_000]


@pytest.mark.parametrize("bad", ["", "../escape", "with space", "a/b/", ".hidden", 7])
def test_bad_key_names_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   bad: object):
    monkeypatch.setenv("AGENTMARKET_HOME", str(tmp_path))
    with pytest.raises(InvalidArgument):
        load_key(bad)  # type: ignore[arg-type]
    assert not (tmp_path / "keys").exists() or not any((tmp_path / "keys").iterdir())


def test_an_ephemeral_sellers_journal_goes_with_it(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AGENTMARKET_HOME", str(tmp_path / "home"))

    @skill(price=per_call("0.001", "USD"))
    def echo(text: str) -> dict[str, str]:
        """Echo."""
        return {"text": text}

    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node:
        seller = SellerAgent("e", skills=[echo], marketplace=node.address).serve()
        scratch = Path(seller._scratch or "")
        assert scratch.is_dir()
        seller.stop()
        assert not scratch.exists()
        named = SellerAgent("n", skills=[echo], marketplace=node.address, key="n").serve()
        named.stop()
    assert sorted(_files(tmp_path / "home")) == ["keys/n.key", f"seller-{named.agent_id[:16]}.db"]
