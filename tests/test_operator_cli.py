"""Operator commands on a known database: postings with their trace ids, wallets, agreements,
approvals, disputes and keys; `--json` for scripts; one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from marketplace.cli.demo import DemoResult, run_demo
from marketplace.cli.main import app
from marketplace.identity import AgentKey

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    return run_demo(tmp_path_factory.mktemp("operator"), Console(record=True, width=200),
                    calls=2)


def _run(*args: str) -> str:
    result = runner.invoke(app, list(args), terminal_width=250)
    assert result.exit_code == 0, result.output
    return result.output


def _db(demo: DemoResult) -> str:
    return f"sqlite:///{demo.db_path}"


def test_postings_show_the_trace_that_caused_them(demo: DemoResult):
    rows = json.loads(_run("ledger", "--db", _db(demo), "--json", "--limit", "100"))
    assert rows and all(r["trace_id"] for r in rows)
    assert any(r["trace_id"] == demo.trace_id for r in rows)
    assert [r["sequence"] for r in rows] == sorted((r["sequence"] for r in rows), reverse=True)
    captures = json.loads(_run("ledger", "--db", _db(demo), "--json", "--kind", "capture"))
    assert captures and {r["kind"] for r in captures} == {"capture"}
    same_trace = json.loads(_run("ledger", "--db", _db(demo), "--json", "--trace",
                                 demo.trace_id))
    assert len(same_trace) == len([r for r in rows if r["trace_id"] == demo.trace_id])
    assert demo.trace_id in _run("ledger", "--db", _db(demo), "--since", "1h")


def test_trace_list_filters(demo: DemoResult):
    spans = str(demo.span_store)
    listed = json.loads(_run("trace", "list", "--spans", spans, "--agent", "buyer",
                             "--since", "1h", "--status", "ok", "--json"))
    assert demo.trace_id in [t["trace_id"] for t in listed]
    assert json.loads(_run("trace", "list", "--spans", spans, "--status", "error",
                           "--json")) == []


def test_wallet_show_and_agreements(demo: DemoResult):
    buyer = next(owner for owner, name in demo.names.items() if name == "buyer")
    shown = json.loads(_run("wallet", "show", buyer[:10], "--db", _db(demo), "--json"))
    assert shown["owner"] == buyer
    account = shown["accounts"][0]
    assert account["posted_atomic"] == demo.after[account["account_id"]].posted_atomic
    assert shown["open_holds"] == []
    assert [c["frozen"] for c in shown["controls"]] == [False]
    assert "policy: none" in _run("wallet", "show", buyer, "--db", _db(demo))
    agreements = json.loads(_run("agreements", "--db", _db(demo), "--json"))
    assert len(agreements) == 1 and agreements[0]["state"] == "settled"
    assert agreements[0]["agreement_id"][:16] in _run("agreements", "--db", _db(demo))
    assert json.loads(_run("disputes", "list", "--db", _db(demo), "--json")) == []
    assert json.loads(_run("approvals", "list", "--db", _db(demo), "--json")) == []


def test_keys_new_writes_a_private_seed(tmp_path: Path):
    out = tmp_path / "operator.key"
    agent_id = _run("keys", "new", str(out)).strip()
    assert AgentKey.from_seed(bytes.fromhex(out.read_text().strip())).agent_id == agent_id
    assert out.stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["keys", "new", str(out)])
    assert again.exit_code == 1 and "refusing to overwrite" in again.output


@pytest.mark.parametrize("args", [
    ["ledger", "--db", "sqlite:////nonexistent/x.db"],
    ["agreements", "--db", "sqlite:////nonexistent/x.db"],
    ["wallet", "show", "nobody", "--db", "DEMO"],
    ["approvals", "approve", "x", "--key-file", "/nonexistent/key"],
])
def test_user_errors_print_one_line(demo: DemoResult, args: list[str]):
    args = [_db(demo) if a == "DEMO" else a for a in args]
    result = runner.invoke(app, args, terminal_width=250)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output


@pytest.mark.parametrize("args", [["agreements", "--json"], ["ledger", "--json"],
                                  ["approvals", "list", "--json"], ["disputes", "list",
                                                                    "--json"]])
def test_commands_read_the_node_in_agentmarket_home(demo: DemoResult, tmp_path: Path,
                                                    args: list[str]):
    """Without --db, every operator command reads the database `agentmarket serve` keeps in
    $AGENTMARKET_HOME, wherever it is run from."""
    env = {**os.environ, "AGENTMARKET_HOME": str(demo.db_path.parent)}
    done = subprocess.run([sys.executable, "-m", "marketplace.cli.main", *args], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    with_db = _run(*args, "--db", _db(demo))
    assert json.loads(done.stdout) == json.loads(with_db)
