"""The `agentmarket` command: run a node, run the demo, read traces and the ledger.

Errors a user can cause (a wrong path, an unknown trace id) print one line and exit 1.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.table import Column, Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from marketplace.cli.output import bad_value, console, error_line, fail
from marketplace.home import default_database_url, default_span_store
from wallets.errors import AgentmarketError

app = typer.Typer(help="agentmarket: agents trade work over gRPC and pay each other per call.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
trace_app = typer.Typer(help="Read stored traces.", no_args_is_help=True)
ledger_app = typer.Typer(help="List postings (with filters), or verify the ledger.")
wallet_app = typer.Typer(help="Inspect wallets.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")
app.add_typer(ledger_app, name="ledger")
app.add_typer(wallet_app, name="wallet")


def _operator_commands() -> None:
    from marketplace.cli import operator

    app.add_typer(operator.agreements_app, name="agreements")
    app.add_typer(operator.approvals_app, name="approvals")
    app.add_typer(operator.disputes_app, name="disputes")
    app.add_typer(operator.keys_app, name="keys")
    from marketplace.cli.receipts import receipt_app

    app.add_typer(receipt_app, name="receipt")
    from marketplace.cli.gateway import gateway
    from marketplace.cli.serve import serve

    app.command()(serve)
    app.command()(gateway)


_operator_commands()
DEFAULT_SPANS = default_span_store()
DEFAULT_DB = default_database_url()


@app.command()
def demo(workdir: Path = typer.Option(None, help="Directory for the database and spans "
                                                 "(default: a temporary one, removed afterwards)."),
         calls: int = typer.Option(5, min=1, max=50, help="Paid calls the buyer makes.")) -> None:
    """Run one paid task end to end and show the money and the trace."""
    import tempfile

    from marketplace.cli.demo import print_report, run_demo

    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_demo(workdir, console, calls=calls)
        print_report(result, console)
    else:  # a folder of its own, removed afterwards: nothing is left behind
        with tempfile.TemporaryDirectory(prefix="agentmarket-demo-") as scratch:
            result = run_demo(Path(scratch), console, calls=calls)
            print_report(result, console, kept=False)
    if result.problems:
        raise typer.Exit(1)


@app.command()
def simulate(scenario: Path = typer.Argument(help="A scenario file (TOML), e.g. "
                                                  "examples/scenarios/gpu_market.toml."),
             seed: int = typer.Option(1, min=0, help="Seed: the same scenario and seed give "
                                                     "the same events file."),
             out: Path = typer.Option(Path("sandbox-out"), help="Directory for the events "
                                                                "file, plots and report."),
             db: str = typer.Option(None, help="Database URL (default: a SQLite file in "
                                               "--out; postgresql://... for PostgreSQL)."),
             workers: int = typer.Option(16, min=1, max=256,
                                         help="Tasks of a round run at once."),
             node_process: bool = typer.Option(
                 True, "--node-process/--one-process",
                 help="Run the node in a process of its own, the agents in this one (two "
                      "cores), or everything in one process.")) -> None:
    """Simulate a token economy through a real node, agents and ledger; plot and report it."""
    from agents.sandbox.scenario import load
    from marketplace.cli.simulate import run

    try:
        loaded = load(scenario)
    except AgentmarketError as error:
        fail(error.message)
    if db and db.startswith("sqlite:///"):
        Path(db.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif (out / "market.db").exists() and not db:
        (out / "market.db").unlink()  # a fresh market each run: the events start from zero
    result = run(loaded, seed, out, console, db_url=db, workers=workers,
                 node_process=node_process)
    if result.problems:
        raise typer.Exit(1)


def _store(spans: Path):  # type: ignore[no-untyped-def]
    from marketplace.spanstore import SpanStore

    if not spans.exists():
        fail(f"no span store at {spans}")
    return SpanStore(spans)


def _show(trace_id: str, spans: Path, as_json: bool) -> None:
    from marketplace.trace_tree import render_trace, trace_to_json

    with _store(spans) as store:
        found = store.spans(trace_id)
    if not found:
        fail(f"no trace {trace_id} in {spans}")
    if as_json:
        print(json.dumps(trace_to_json(found), indent=2))
    else:
        console.print(render_trace(found))


@trace_app.command("show")
def trace_show(trace_id: str,
               spans: Path = typer.Option(DEFAULT_SPANS, help="Span store file."),
               as_json: bool = typer.Option(False, "--json", help="JSON for scripts.")) -> None:
    """Print one trace as a tree."""
    _show(trace_id, spans, as_json)


@trace_app.command("last")
def trace_last(spans: Path = typer.Option(DEFAULT_SPANS, help="Span store file."),
               as_json: bool = typer.Option(False, "--json", help="JSON for scripts.")) -> None:
    """Print the most recent trace as a tree."""
    with _store(spans) as store:
        trace_id = store.last_trace_id()
    if trace_id is None:
        fail(f"no traces in {spans}")
    _show(trace_id, spans, as_json)


@trace_app.command("list")
def trace_list(spans: Path = typer.Option(DEFAULT_SPANS, help="Span store file."),
               limit: int = typer.Option(20, min=1, max=1000),
               service: str = typer.Option(None, "--agent", "--service",
                                           help="Only traces touching this agent or service."),
               agreement: str = typer.Option(None, help="Only traces of this agreement id."),
               since: str = typer.Option(None, help="Only traces started in the last 15m, "
                                                    "2h, 3d ..."),
               status: str = typer.Option(None, help="ok or error"),
               as_json: bool = typer.Option(False, "--json", help="JSON for scripts.")) -> None:
    """List recent traces, newest first."""
    from marketplace.cli.operator import _since_ms

    if status not in (None, "ok", "error"):
        bad_value(f"--status is ok or error, not {status!r}")
    since_ms = _since_ms(since)  # a mistake in an option before any file is read
    with _store(spans) as store:
        rows = store.traces(limit=limit, service=service, agreement_id=agreement,
                            since_ms=since_ms)
    if status is not None:
        rows = [t for t in rows if t.error == (status == "error")]
    if as_json:
        print(json.dumps([{"trace_id": t.trace_id, "root": t.root_name,
                           "spans": t.span_count, "duration_ms": t.duration_ms,
                           "services": list(t.services), "error": t.error} for t in rows],
                         indent=2))
        return
    # ids are what the user copies into `trace show`: never cut or wrap them, even when narrow
    table = Table(Column("trace id", no_wrap=True, min_width=32), "root", "spans", "duration",
                  "services", "status")
    for t in rows:
        table.add_row(t.trace_id, t.root_name, str(t.span_count), f"{t.duration_ms:.1f} ms",
                      ", ".join(t.services), Text("error", "red") if t.error else "ok")
    console.print(table)


@ledger_app.callback(invoke_without_command=True)
def ledger_postings(ctx: typer.Context,
                    db: str = typer.Option(DEFAULT_DB, help="Database URL."),
                    account: str = typer.Option(None, help="Only postings touching this account."),
                    trace: str = typer.Option(None, "--trace", help="Only this trace id."),
                    kind: str = typer.Option(None, help="deposit, transfer, hold, capture ..."),
                    since: str = typer.Option(None, help="Only the last 15m, 2h, 3d ..."),
                    limit: int = typer.Option(50, min=1, max=10_000),
                    as_json: bool = typer.Option(False, "--json", help="JSON for scripts.")
                    ) -> None:
    """Postings, newest first; each shows the trace id that caused it."""
    if ctx.invoked_subcommand is not None:
        return
    from marketplace.cli.operator import _since_ms, open_ledger, posting_kinds, print_postings

    since_ms = _since_ms(since)  # a mistake in an option before the database is opened
    ledger = open_ledger(db)
    postings = ledger.postings(account_id=account, trace_id=trace and trace.lower(), kind=kind,
                               since_ms=since_ms, limit=limit, newest_first=True)
    if kind is not None and not postings and kind not in (kinds := posting_kinds(ledger)):
        fail(f"no posting of kind {kind[:40]!r} in this ledger (it holds "
             f"{', '.join(kinds) or 'none yet'})")
    print_postings(postings, as_json)


@wallet_app.command("show")
def wallet_show(agent: str = typer.Argument(help="Owner id (agent public key), a prefix of it, "
                                                 "or a key name from `keys list`."),
                db: str = typer.Option(DEFAULT_DB, help="Database URL."),
                as_json: bool = typer.Option(False, "--json", help="JSON for scripts.")) -> None:
    """Balances and open holds of one owner's wallets."""
    from marketplace.cli.operator import open_ledger, resolve_owner, show_wallet

    ledger = open_ledger(db)
    show_wallet(ledger, resolve_owner(ledger, agent), as_json)


@ledger_app.command("verify")
def ledger_verify(db: str = typer.Option(DEFAULT_DB, help="Database URL.")) -> None:
    """Check the hash chain and that every balance equals the sum of its entries."""
    from marketplace.cli.operator import open_ledger
    from wallets.audit import check_balances, verify_chain

    ledger = open_ledger(db)
    chain, balances = verify_chain(ledger), check_balances(ledger)
    for problem in chain.problems + balances.problems:
        console.print(problem, style="red")
    waiting = f" (+{chain.unsealed} committed, not sealed yet)" if chain.unsealed else ""
    console.print(Text.assemble(f"{chain.postings} postings sealed{waiting}, "
                                f"{balances.accounts} accounts: ",
                                ("ok", "green") if chain.ok and balances.ok else ("NOT OK", "red")))
    if not (chain.ok and balances.ok):
        raise typer.Exit(1)


INTERRUPTED = 130  # the status typer gives a command that Ctrl-C stopped (128 + SIGINT)


def main() -> None:
    """The command line: a mistake that escapes a command (a refusal, a path, a database)
    still ends as one red line and exit status 1, never a traceback."""
    try:
        status = app(standalone_mode=False, prog_name="agentmarket")  # errors come here, not
        # as a boxed usage screen; the hint names the command people type, however run
    except typer.TyperException as error:  # a misspelt command or option, a value of the
        # wrong type (typer's usage errors), a file option that cannot be opened
        context, message = getattr(error, "ctx", None), error.format_message()
        if message:  # none after the help a bare group prints (no_args_is_help)
            hint = f" (see {context.command_path} --help)" if context is not None else ""
            error_line(f"{message}{hint}")
        sys.exit(error.exit_code)
    except typer.Abort:
        _stop("aborted")
    except AgentmarketError as error:
        _stop(error.message)
    except OSError as error:  # a path the user gave: missing, a directory, not allowed
        where = f": {error.filename}" if error.filename else ""
        _stop(f"{error.strerror or error}{where}")
    except (sqlite3.DatabaseError, SQLAlchemyError) as error:
        cause = getattr(error, "orig", None) or error
        _stop(f"the database refused: {str(cause).splitlines()[0][:200]}")
    if status == INTERRUPTED:  # typer's answer to Ctrl-C: the command stopped what it ran
        error_line("interrupted")
    if isinstance(status, int) and status:  # typer.Exit(n): `fail` printed its line already
        sys.exit(status)


def _stop(message: str) -> NoReturn:
    """`fail` outside the app: no typer to turn its Exit into a status (a traceback would)."""
    error_line(message)
    sys.exit(1)


if __name__ == "__main__":
    main()
