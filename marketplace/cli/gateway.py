"""`agentmarket gateway`: a node with its HTTP/x402 gateway and facilitator.

The top floor: it composes the node (marketplace) with the gateway (agents.x402), the one
place where both meet.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from marketplace.cli import keys as cli_keys
from marketplace.cli.output import console, error_line, fail
from marketplace.cli.tuning import GC_DEFAULTS, NORMAL_SCHEDULING, tune_started
from marketplace.home import default_database_url, default_span_store
from marketplace.stop_signals import StopSignals

DEFAULT_DB = default_database_url()
DEFAULT_SPANS = default_span_store()


def gateway(db: str = typer.Option(DEFAULT_DB, help="Database URL (sqlite:///file or "
                                                    "postgresql://...)."),
            host: str = typer.Option("127.0.0.1", help="Address the gRPC node listens on."),
            port: int = typer.Option(7000, min=0, max=65535, help="gRPC port (0: any free)."),
            http_host: str = typer.Option("127.0.0.1", help="Address the gateway listens on."),
            http_port: int = typer.Option(7402, min=0, max=65535,
                                          help="Gateway HTTP port (0: any free)."),
            fee_bps: int = typer.Option(250, min=0, max=10_000, help="Marketplace fee."),
            key_file: Path = typer.Option(
                None, help="The node's key (`keys new`): it signs receipts and x402 payment "
                           "responses, and names the x402 network, so it is kept across "
                           "restarts (default: the home's keys/node.key, made on first start, "
                           "as `serve` keeps it)."),
            max_body_bytes: int = typer.Option(64 * 1024, min=1024, max=4 * 1024 * 1024,
                                               help="Largest request body the gateway takes."),
            spans: Path = typer.Option(DEFAULT_SPANS, help="Embedded span store file."),
            evm_rpc: str = typer.Option(
                None, help="An EVM chain's JSON-RPC URL: the facilitator also settles x402 "
                           "`exact` payments (EIP-3009) on it (needs the evm extra)."),
            evm_key_file: Path = typer.Option(
                None, help="The hex private key of the account that submits EVM settlements "
                           "and pays their gas (with --evm-rpc)."),
            gc_defaults: bool = GC_DEFAULTS,
            normal_scheduling: bool = NORMAL_SCHEDULING
            ) -> None:
    """Run a node with the HTTP/x402 gateway (POST /v1/skills/{listing}/{skill}) and the x402
    facilitator (/facilitator/verify, /settle, /supported) until SIGTERM or SIGINT."""
    from agents.x402 import Gateway
    from marketplace.http import HttpServer
    from marketplace.http.app import allowed_hosts
    from marketplace.node import MarketplaceNode
    from marketplace.tracing import setup_tracing

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its steps are not the user's news
    if db.startswith("sqlite:///"):
        Path(db.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    spans.parent.mkdir(parents=True, exist_ok=True)
    provider = setup_tracing("gateway", span_store_path=spans)
    node_key = cli_keys.node_key(key_file)
    stop = StopSignals()  # from here on, SIGTERM or Ctrl-C stops the servers in order
    try:
        node = MarketplaceNode(db, host=host, port=port, fee_bps=fee_bps, key=node_key,
                               tracer_provider=provider).start()
    except Exception as error:  # a bad URL or a taken port: one line, not a traceback
        fail(f"cannot start the node: {error}")
    evm = None
    if evm_rpc is not None:
        from agents.x402.evm import EvmSettlement

        if evm_key_file is None or not evm_key_file.is_file():
            node.stop()
            error_line("--evm-rpc needs --evm-key-file: the account that submits settlements")
            raise typer.Exit(2)
        evm = EvmSettlement(evm_rpc, evm_key_file.read_text().strip())
    try:
        door = Gateway(node, tracer_provider=provider, max_body_bytes=max_body_bytes, evm=evm)
    except Exception as error:  # the chain did not answer, or the key is not one
        node.stop()
        fail(f"cannot settle on {evm_rpc}: {error}")
    try:
        http = HttpServer(door.app(allowed_hosts(http_host)), host=http_host,
                          port=http_port).start()
    except Exception as error:
        node.stop()
        fail(f"cannot start the gateway: {error}")
    tune_started(gc_defaults=gc_defaults, normal_scheduling=normal_scheduling)
    console.print(f"marketplace on {node.address}; x402 gateway on {http.url} (network "
                  f"{door.network}; OpenAPI at {http.url}/openapi.json)", highlight=False,
                  soft_wrap=True)
    stop.wait()
    console.print("shutting down")
    http.stop()
    node.stop()
    provider.shutdown()
