"""`agentmarket receipt verify FILE` and `receipt get SUBJECT`: settlement receipts offline."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from marketplace.home import default_database_url

receipt_app = typer.Typer(help="Signed settlement receipts: fetch one, or verify one offline.",
                          no_args_is_help=True)
console = Console(markup=False)
DEFAULT_DB = default_database_url()


@receipt_app.command("verify")
def receipt_verify(file: Path = typer.Argument(help="A receipt file (`receipt get`)."),
                   node: str = typer.Option(None, help="The node key (64 hex) the receipt "
                                                       "must be signed by."),
                   as_json: bool = typer.Option(False, "--json", help="JSON for scripts.")
                   ) -> None:
    """Check a receipt's signatures, postings and inclusion in a signed checkpoint, offline."""
    from marketplace.cli.output import fail
    from marketplace.receipt_verify import ReceiptInvalid, verify_receipt

    try:
        data = file.read_bytes()
    except OSError as error:
        fail(f"cannot read {file}: {error.strerror or error}")
    try:
        found = verify_receipt(data, node=node)
    except ReceiptInvalid as error:
        fail(error.message)
    if as_json:
        print(json.dumps({"valid": True, **{k: getattr(found, k) for k in found.__slots__}},
                         indent=2))
        return
    amounts = ", ".join(f"{k} {v}" for k, v in sorted(found.amounts.items()))
    console.print(f"valid: {found.kind} receipt of {found.subject_kind} {found.subject}, "
                  f"{found.currency} ({amounts}); postings {found.first_sequence}.."
                  f"{found.last_sequence} in the checkpoint at {found.checkpoint_sequence}; "
                  f"signed by node {found.node}", highlight=False, soft_wrap=True)


RECEIPT_KINDS = ("capture", "refund", "expiry", "dispute_freeze", "dispute_resolution",
                 "pvp_settled", "pvp_voided")


@receipt_app.command("get")
def receipt_get(subject: str = typer.Argument(help="The agreement id, or a PvP leg's "
                                                   "condition:hold_id."),
                kind: str = typer.Option("", help=f"{', '.join(RECEIPT_KINDS)} (default: "
                                                  "the latest)."),
                db: str = typer.Option(DEFAULT_DB, help="The node's database URL."),
                out: Path = typer.Option(None, help="Write the file here (default: stdout).")
                ) -> None:
    """Write a receipt with its inclusion proof (needs a checkpoint the node has signed)."""
    from marketplace.cli.operator import open_ledger
    from marketplace.cli.output import fail
    from marketplace.receipts import ReceiptBook
    from wallets.errors import AgentmarketError

    if kind and kind not in RECEIPT_KINDS:
        from marketplace.cli.output import bad_value

        bad_value(f"--kind is one of {', '.join(RECEIPT_KINDS)}, not {kind!r}")
    ledger = open_ledger(db)
    try:
        data = ReceiptBook(ledger.engine, None, ledger.clock_ms).receipt_file(subject, kind)
    except AgentmarketError as error:
        fail(error.message)
    if out is None:
        typer.echo(data.decode(), nl=False)
    else:
        out.write_bytes(data)
        console.print(f"wrote {out}", highlight=False)
