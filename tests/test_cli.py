"""The `agentmarket` command: `serve` and `gateway` as real processes, and the demo's money and
trace.

`serve` runs as a subprocess until SIGTERM or SIGINT, answering health checks and server
reflection meanwhile; `gateway` serves its OpenAPI and refuses an unknown listing over HTTP.
The demo runs once per module; its trace and ledger are then read back through `trace` and
`ledger` (typer's CliRunner), and its books are checked as a test of their own.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rich.console import Console
from typer.testing import CliRunner

from marketplace.cli.demo import DemoResult, run_demo
from marketplace.cli.main import app
from marketplace.identity import AgentKey
from marketplace.spanstore import SpanStore
from tests.processes.node import free_port as _free_port  # a port bind(0) never hands out
from wallets.currencies import currency, split

CALLS = 3
FEE_BPS = 250
START_TIMEOUT_S = 15
STOP_TIMEOUT_S = 30  # detects a hang: on a loaded machine a clean stop can take seconds
AGENTMARKET_SERVICES = {"wallets.v1.WalletService", "marketplace.v1.RegistryService",
                        "marketplace.v1.SettlementService"}


@contextlib.contextmanager
def _reaped(process: subprocess.Popen) -> Iterator[None]:  # type: ignore[type-arg]
    """A process the block leaves running (a failed assertion) is killed."""
    try:
        yield
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _stopped(process: subprocess.Popen, logs: Path) -> int:  # type: ignore[type-arg]
    """The exit code once the process stopped; a process that hangs fails with its log."""
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit {STOP_TIMEOUT_S} s after SIGTERM:\n{logs.read_text()[-3000:]}")


# ---- serve: a real process -------------------------------------------------------------------



def _agentmarket() -> list[str]:
    script = Path(sys.executable).parent / "agentmarket"
    return [str(script)] if script.exists() else [sys.executable, "-m", "marketplace.cli.main"]


def _wait_until_serving(process: subprocess.Popen[bytes], channel: grpc.Channel,
                        logs: Path) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"serve exited early:\n{logs.read_text()}"
        try:
            answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError:
            time.sleep(0.1)
            continue
        if answer.status == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.1)
    pytest.fail(f"serve did not become SERVING within {START_TIMEOUT_S} s:\n{logs.read_text()}")


def _thread_policies(process: subprocess.Popen[bytes], logs: Path, started: str) -> set[int]:
    """The scheduling policies of the process's threads once `started` is in its log (it
    takes its policy after starting, before saying so)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while started not in " ".join(logs.read_text().split()):
        assert process.poll() is None and time.monotonic() < deadline, logs.read_text()
        time.sleep(0.05)
    policies = set()
    for tid in os.listdir(f"/proc/{process.pid}/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            policies.add(os.sched_getscheduler(int(tid)))
    return policies


def _listed_services(channel: grpc.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = stub.ServerReflectionInfo(iter([request]), timeout=5)
    return {s.name for r in responses for s in r.list_services_response.service}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_answers_health_and_reflection_then_stops_cleanly_on_signal(
        signum: signal.Signals, tmp_path: Path):
    port = _free_port()
    logs = tmp_path / "serve.log"
    argv = [*_agentmarket(), "serve", "--db", f"sqlite:///{tmp_path / 'm.db'}",
            "--port", str(port), "--spans", str(tmp_path / "spans.db"), "--arbiter", "ab" * 32,
            "--fx-sandbox", "--fx-rate", "ecny=7.2", "--judge-model", "gpt-4o-mini"]
    with logs.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _wait_until_serving(process, channel, logs)
            assert _listed_services(channel) >= AGENTMARKET_SERVICES | {
                "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
        if hasattr(os, "SCHED_BATCH"):  # a serving node's threads keep their core (Linux)
            assert _thread_policies(process, logs, "listening on") == {os.SCHED_BATCH}
        process.send_signal(signum)
        assert _stopped(process, logs) == 0, logs.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = logs.read_text()
    assert f"listening on 127.0.0.1:{port}" in output
    assert "1 arbiter(s); fx ECNY, USD, USDC; judge models gpt-4o-mini" in " ".join(
        output.split())
    assert "shutting down" in output
    assert "Traceback" not in output
    assert (tmp_path / "m.db").exists() and (tmp_path / "spans.db").exists()


def _served(tmp_path: Path, *options: str) -> str:
    """What `agentmarket serve OPTIONS` printed from start to a clean SIGTERM stop."""
    port = _free_port()
    logs = tmp_path / "serve.log"
    with logs.open("wb") as log:
        process = subprocess.Popen(
            [*_agentmarket(), "serve", "--port", str(port), *options], stdout=log,
            stderr=subprocess.STDOUT, cwd=tmp_path,
            env={**os.environ, "AGENTMARKET_HOME": str(tmp_path / "home")})
    with _reaped(process):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _wait_until_serving(process, channel, logs)
        process.send_signal(signal.SIGTERM)
        assert _stopped(process, logs) == 0, logs.read_text()
    return " ".join(logs.read_text().split())


def test_serve_keeps_its_node_key_in_its_home_across_restarts(tmp_path: Path):
    """Receipts, checkpoints and the x402 network name the node's key: with no --key-file a
    restart keeps it (the home's keys/node.key), as it keeps the database."""
    keys = [_served(tmp_path).split("node key ")[1][:64] for _start in range(2)]
    assert keys[0] == keys[1] == AgentKey.load(tmp_path / "home" / "keys" / "node.key").agent_id


def test_serve_says_at_start_that_its_redis_does_not_answer(tmp_path: Path):
    """Every signed call would be refused UNAVAILABLE: said once at start, not found out
    call by call; the URL (which may hold a password) is not printed."""
    printed = _served(tmp_path, "--redis", f"redis://:secret@127.0.0.1:{_free_port()}/0")
    assert "WARNING: the Redis of --redis does not answer" in printed
    assert "secret" not in printed and "Traceback" not in printed


@pytest.mark.parametrize("gc_flag", [[], ["--gc-defaults", "--normal-scheduling"]],
                         ids=["settled", "defaults"])
def test_gateway_serves_http_and_stops_cleanly_on_sigterm(gc_flag: list[str], tmp_path: Path):
    import httpx

    port, http_port = _free_port(), _free_port()
    logs = tmp_path / "gateway.log"
    argv = [*_agentmarket(), "gateway", "--db", f"sqlite:///{tmp_path / 'm.db'}",
            "--port", str(port), "--http-port", str(http_port),
            "--spans", str(tmp_path / "spans.db"), *gc_flag]
    with logs.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    with _reaped(process):
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"gateway exited early:\n{logs.read_text()}"
            try:
                spec = httpx.get(f"{base}/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, logs.read_text()
                time.sleep(0.1)
        assert spec.status_code == 200 and "/v1/skills/{listing}/{skill}" in spec.json()["paths"]
        unknown = httpx.post(f"{base}/v1/skills/{'ab' * 32}/echo", json={}, timeout=5)
        assert unknown.status_code == 404, unknown.text  # no such listing: nothing to pay for
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _wait_until_serving(process, channel, logs)
        if hasattr(os, "SCHED_BATCH"):
            policies = _thread_policies(process, logs, "x402 gateway on")
            assert policies == ({os.SCHED_OTHER} if gc_flag else {os.SCHED_BATCH})
        process.send_signal(signal.SIGTERM)
        assert _stopped(process, logs) == 0, logs.read_text()
    output = " ".join(logs.read_text().split())
    assert f"x402 gateway on {base}" in output and "shutting down" in output
    assert "Traceback" not in output


def test_the_gateway_keeps_its_node_key_and_so_its_network_across_restarts(tmp_path: Path):
    """The x402 network is named by the node's key: a restarted gateway with no --key-file
    keeps the home's keys/node.key, as `serve` does, so its buyers' network still holds."""
    networks = []
    for _start in range(2):
        port, http_port = _free_port(), _free_port()
        logs = tmp_path / "gateway.log"
        with logs.open("wb") as log:
            process = subprocess.Popen(
                [*_agentmarket(), "gateway", "--db", f"sqlite:///{tmp_path / 'm.db'}",
                 "--port", str(port), "--http-port", str(http_port),
                 "--spans", str(tmp_path / "spans.db")], stdout=log, stderr=subprocess.STDOUT,
                cwd=tmp_path, env={**os.environ, "AGENTMARKET_HOME": str(tmp_path / "home")})
        with _reaped(process):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                _wait_until_serving(process, channel, logs)
            deadline = time.monotonic() + START_TIMEOUT_S
            while "x402 gateway on" not in logs.read_text():
                assert time.monotonic() < deadline, logs.read_text()
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            assert _stopped(process, logs) == 0, logs.read_text()
        networks.append(" ".join(logs.read_text().split()).split("(network ")[1].split(";")[0])
    kept = AgentKey.load(tmp_path / "home" / "keys" / "node.key").agent_id
    assert networks[0] == networks[1] and kept[:12] in networks[0]


# ---- the demo, once per module ---------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    console = Console(record=True, width=200)
    return run_demo(tmp_path_factory.mktemp("demo"), console, calls=CALLS)


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def _ok(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_trace_show_prints_the_task_tree_with_money(runner: CliRunner, demo: DemoResult):
    output = _ok(runner, "trace", "show", demo.trace_id, "--spans", str(demo.span_store))
    for name in ("task", "escrow.hold", "escrow.capture", "paid_call"):
        assert name in output
    assert "USD" in output
    assert "[marketplace]" in output and "[buyer]" in output
    assert "skill.summarize" in output and "tokens" not in output  # priced per call: no LLM


def test_trace_show_accepts_an_upper_case_trace_id(runner: CliRunner, demo: DemoResult):
    output = _ok(runner, "trace", "show", demo.trace_id.upper(), "--spans",
                 str(demo.span_store))
    assert "escrow.capture" in output


def test_trace_last_prints_the_demo_trace_as_a_tree(runner: CliRunner, demo: DemoResult):
    """The most recent root span's trace (after the task: a seller withdrawing its listing)."""
    with SpanStore(demo.span_store) as store:
        last = store.spans(store.last_trace_id() or "")
    root = next(s for s in last if s.parent_span_id is None)
    output = _ok(runner, "trace", "last", "--spans", str(demo.span_store))
    assert output.lstrip().startswith(root.name)
    assert f"[{root.service_name}]" in output and "└──" in output


def test_trace_show_json_is_the_tree_as_data(runner: CliRunner, demo: DemoResult):
    result = runner.invoke(app, ["trace", "show", demo.trace_id, "--spans",
                                 str(demo.span_store), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["trace_id"] == demo.trace_id
    assert [root["name"] for root in data["roots"]] == ["task"]

    def names(node: dict) -> list[str]:
        return [node["name"], *(n for child in node["children"] for n in names(child))]

    assert {"escrow.hold", "escrow.capture", "paid_call"} <= set(names(data["roots"][0]))
    assert data["span_count"] == len(names(data["roots"][0]))


def test_trace_list_lists_the_demo_trace(runner: CliRunner, demo: DemoResult):
    output = _ok(runner, "trace", "list", "--spans", str(demo.span_store))
    assert demo.trace_id in output
    assert "task" in output
    only_buyer = _ok(runner, "trace", "list", "--spans", str(demo.span_store),
                     "--service", "buyer")
    assert demo.trace_id in only_buyer
    nobody = _ok(runner, "trace", "list", "--spans", str(demo.span_store),
                 "--service", "nobody")
    assert demo.trace_id not in nobody


def test_ledger_verify_says_the_demo_books_are_ok(runner: CliRunner, demo: DemoResult):
    output = _ok(runner, "ledger", "verify", "--db", f"sqlite:///{demo.db_path}")
    assert "ok" in output and "NOT OK" not in output
    assert "postings" in output


@pytest.mark.parametrize("case", ["unknown-trace", "missing-spans", "missing-spans-last",
                                  "missing-spans-list", "missing-db"])
def test_user_errors_print_one_line_and_exit_1(case: str, runner: CliRunner, demo: DemoResult,
                                               tmp_path: Path):
    spans, nowhere = str(demo.span_store), tmp_path / "nowhere"
    args, says = {
        "unknown-trace": (["trace", "show", "0" * 32, "--spans", spans], "no trace"),
        "missing-spans": (["trace", "show", demo.trace_id, "--spans", str(nowhere / "s.db")],
                          "no span store"),
        "missing-spans-last": (["trace", "last", "--spans", str(nowhere / "s.db")],
                               "no span store"),
        "missing-spans-list": (["trace", "list", "--spans", str(nowhere / "s.db")],
                               "no span store"),
        "missing-db": (["ledger", "verify", "--db", f"sqlite:///{nowhere / 'm.db'}"],
                       "no database"),
    }[case]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:") and says in lines[0]
    assert not nowhere.exists()  # reading commands create nothing


# ---- the demo's task: the money and the trace ------------------------------------------------


def test_demo_task_pays_the_seller_price_times_calls_minus_the_fee(demo: DemoResult):
    assert demo.problems == []
    assert all(b.posted_atomic == 0 for b in demo.before.values())  # before the deposit
    per_currency: dict[str, int] = {}
    for b in demo.after.values():
        per_currency[b.currency] = per_currency.get(b.currency, 0) + b.posted_atomic
    assert per_currency and set(per_currency.values()) == {0}

    unit_price = demo.state["unit_price_atomic"]
    total = unit_price * CALLS
    seller_part, fee = split(total, FEE_BPS)
    assert fee == total * FEE_BPS // 10_000 and seller_part == total - fee

    def change(account_id: str) -> int:
        before = demo.before.get(account_id)
        return demo.after[account_id].posted_atomic - (before.posted_atomic if before else 0)

    wallets = {demo.names.get(b.owner, b.owner): b for b in demo.after.values()
               if b.kind == "wallet"}
    seller = demo.names[demo.state["seller_id"]]
    assert seller in ("seller-a", "seller-b")
    other = "seller-b" if seller == "seller-a" else "seller-a"
    assert change(wallets[seller].account_id) == seller_part
    assert other not in wallets or change(wallets[other].account_id) == 0
    assert change(wallets["buyer"].account_id) == currency("USD").atomic("1.00") - total
    fees = [b for b in demo.after.values() if b.kind == "fees"]
    assert [(b.currency, change(b.account_id)) for b in fees] == [("USD", fee)]
    assert demo.state["captured_atomic"] == total
    assert len(demo.state["outputs"]) == CALLS
    assert all(b.pending_debits_atomic == b.pending_credits_atomic == 0
               for b in demo.after.values())


def test_demo_task_is_one_trace_across_marketplace_buyer_and_seller(demo: DemoResult):
    with SpanStore(demo.span_store) as store:
        spans = store.spans(demo.trace_id)
    roots = [s for s in spans if s.parent_span_id is None]
    assert [(r.name, r.service_name) for r in roots] == [("task", "buyer")]
    ids = {s.span_id for s in spans}
    assert all(s.parent_span_id in ids for s in spans if s is not roots[0])
    services = {s.service_name for s in spans}
    assert {"marketplace", "buyer"} <= services
    assert len(services & {"seller-a", "seller-b"}) == 1
    assert demo.names[demo.state["seller_id"]] in services
    assert sum(s.name == "paid_call" for s in spans) == CALLS


def test_demo_cli_command_runs_and_reports(runner: CliRunner, tmp_path: Path):
    """`agentmarket demo` itself (the slowest test here: a second demo run, one call)."""
    output = _ok(runner, "demo", "--workdir", str(tmp_path / "d"), "--calls", "1")
    assert "books balanced, hash chain intact" in output
    assert (tmp_path / "d" / "marketplace.db").exists()



@pytest.mark.parametrize("option, says", [
    (["--arbiter", "not-an-id"], "arbiter must be a 64-hex-character"),
    (["--fx-rate", "ECNY=seven"], "not a number"),
    (["--fx-rate", "ECNY=0"], "must be positive"),
    (["--fx-rate", "XXQ=1"], "XXQ"),
    (["--db", "mysql://root:secret@db/x"], "mysql:// is not a database URL agentmarket runs on"),
], ids=["arbiter", "fx-number", "fx-positive", "fx-currency", "db-kind"])
def test_serve_refuses_bad_options_in_one_line(runner: CliRunner, tmp_path: Path,
                                               option: list[str], says: str):
    result = runner.invoke(app, ["serve", "--db", f"sqlite:///{tmp_path / 'm.db'}", "--port",
                                 "0", "--spans", str(tmp_path / "s.db"), *option])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], lines
    assert "secret" not in result.output  # a URL's password is never printed
    assert not (tmp_path / "m.db").exists()  # refused before anything was created


@pytest.mark.parametrize(("command", "option"), [
    ("serve", "--port"), ("gateway", "--port"), ("serve", "--console-port"),
    ("gateway", "--http-port")])
def test_a_taken_port_is_one_line_on_stderr(command: str, option: str, tmp_path: Path):
    """Refused before gRPC binds it, so its C-core logs nothing of its own; an HTTP port
    (the console's, the gateway's) is named as plainly."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = [option, str(port)] + (["--port", "0"] if option != "--port" else [])
        console = ["--console"] if option == "--console-port" else []
        ended = subprocess.run(
            [*_agentmarket(), command, "--db", f"sqlite:///{tmp_path / 'm.db'}", *ports,
             *console, "--spans", str(tmp_path / "s.db")], capture_output=True, text=True,
            timeout=START_TIMEOUT_S, cwd=tmp_path)
    printed = (ended.stdout + ended.stderr).strip().splitlines()
    assert ended.returncode == 1, printed
    assert len(printed) == 1 and "another process listens on that port" in printed[0], printed
    assert f"127.0.0.1:{port}" in printed[0]


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          *args: str) -> tuple[int, str]:
    """`agentmarket ARGS` as the console script runs it: (exit status, what it printed)."""
    from marketplace.cli.main import main

    monkeypatch.setattr("sys.argv", ["agentmarket", *args])
    gc.collect()  # what earlier tests left unclosed warns as it is collected: not in here
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        main()
    out = capsys.readouterr()
    return int(ended.value.code or 0), out.out + out.err


@pytest.mark.parametrize(("args", "said"), [
    (("ledger", "--db", "garbage"), "'garbage' is not a database URL agentmarket runs on"),
    (("ledger", "verify", "--db", "postgresql://u@127.0.0.1:1/x"), "cannot open the database"),
    (("keys", "new", "/proc/no/such.key"), "No such file or directory"),
    (("disputes", "resolve", "abc", "--to", "split", "--seller-amount", "1e3",
      "--key-file", "missing.key"), "error:"),
    # brackets in what the user typed are text, not styles the printer would eat or choke on
    (("simulate", "[/x].toml"), "[/x].toml"),
    (("simulate", "[red]x.toml"), "[red]x.toml"),
    (("wallet", "show", "[/x]", "--db", "sqlite:///nothing-here.db"), "error:"),
])
def test_a_users_mistake_is_one_line_and_status_1(monkeypatch, capsys, tmp_path: Path,
                                                 args: tuple[str, ...], said: str):
    monkeypatch.chdir(tmp_path)
    status, printed = _main(monkeypatch, capsys, *args)
    assert status == 1 and said in printed
    assert "Traceback" not in printed and len(printed.strip().splitlines()) == 1, printed


@pytest.mark.parametrize(("args", "said"), [
    (("bogus",), "No such command 'bogus'. (see agentmarket --help)"),
    (("serve", "--port", "abc"), "Invalid value for '--port'"),
    (("serve", "--nope"), "No such option: --nope"),
    (("ledger", "--kind"), "requires an argument"),
    (("agreements", "--state", "bogus"),
     "no state 'bogus': one of active, delivered, verified, settled, refunded, disputed, "
     "resolved, expired (see agentmarket agreements --help)"),
    (("serve", "--fx-rate", "ECNY"), "--fx-rate takes CODE=UNITS_PER_USD (e.g. ECNY=7.1), "
                                     "got 'ECNY' (see agentmarket serve --help)"),
    (("ledger", "--since", "yesterday"),
     "--since takes a number and a unit"),
    (("disputes", "resolve", "ab" * 32, "--to", "nobody", "--key-file", "/nonexistent"),
     "--to must be seller, buyer or split, not 'nobody'"),
    (("trace", "list", "--status", "bad"), "--status is ok or error"),
    (("disputes", "resolve", "ab" * 32, "--to", "split", "--key-file", "/nonexistent"),
     "--to split needs --seller-amount"),
    (("receipt", "get", "ab" * 32, "--kind", "resolve"),
     "--kind is one of capture, refund, expiry, dispute_freeze, dispute_resolution"),
])
def test_a_usage_mistake_is_one_line_and_status_2(monkeypatch, capsys, tmp_path: Path,
                                                  args: tuple[str, ...], said: str):
    """A misspelt command or option, or a value of the wrong type: one line naming it (no
    boxed usage screen), the status of a usage error."""
    monkeypatch.chdir(tmp_path)
    status, printed = _main(monkeypatch, capsys, *args)
    assert status == 2 and said in printed and printed.startswith("error:"), printed
    assert len(printed.strip().splitlines()) == 1, printed


def test_a_read_command_never_writes_a_schema_into_a_file_it_was_wrongly_given(
        monkeypatch, capsys, tmp_path: Path):
    wrong = tmp_path / "spans.db"
    sqlite3.connect(wrong).execute("CREATE TABLE spans (id TEXT)").connection.commit()
    status, printed = _main(monkeypatch, capsys, "ledger", "--db", f"sqlite:///{wrong}")
    assert status == 1 and "holds no agentmarket ledger" in printed
    with contextlib.closing(sqlite3.connect(wrong)) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not made WAL
    assert tables == {"spans"} and not (tmp_path / "spans.db-wal").exists()


def test_a_read_command_checks_the_file_the_engine_would_open(monkeypatch, capsys,
                                                              tmp_path: Path):
    """The URL's %-escapes are decoded as the engine decodes them: a file named with a
    literal %20 is not the database `sqlite:///x%20y.db` names, and none is created."""
    (tmp_path / "x%20y.db").write_bytes(b"")
    status, printed = _main(monkeypatch, capsys, "ledger", "--db",
                            f"sqlite:///{tmp_path}/x%20y.db")
    assert status == 1 and "no database at" in printed
    assert not (tmp_path / "x y.db").exists()


def test_ledger_kind_names_only_kinds_the_ledger_holds(runner: CliRunner, demo: DemoResult):
    output = _ok(runner, "ledger", "--db", f"sqlite:///{demo.db_path}", "--kind", "capture")
    assert "capture" in output
    refused = runner.invoke(app, ["ledger", "--db", f"sqlite:///{demo.db_path}",
                                  "--kind", "captures"])
    assert refused.exit_code == 1
    assert "no posting of kind 'captures'" in refused.output and "capture" in refused.output


@pytest.mark.parametrize("calls", [1, 25, 40, 50])
def test_the_demo_budget_covers_every_call_it_allows_at_the_cheaper_list_price(calls: int):
    """`demo --calls N` (1..50) hires N calls of the cheaper seller: the budget the buyer
    negotiates with covers them at its list price (a fixed 0.05 USD did not past 28)."""
    from decimal import Decimal

    from marketplace.cli.demo import demo_budget

    assert Decimal(demo_budget(calls)) >= Decimal("0.002") * calls
