"""`agentmarket serve`: a marketplace node, its options checked before anything starts.

A flag that cannot work (a TLS key without its certificate, a console beyond loopback without
TLS, a USDC rail without its token) prints one line and exits 1, before the node is created.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from marketplace.cli import keys as cli_keys
from marketplace.cli.output import bad_value, console, fail
from marketplace.cli.tuning import GC_DEFAULTS, NORMAL_SCHEDULING, tune_started
from marketplace.home import default_database_url, default_span_store
from marketplace.request_limits import REDIS_TIMEOUT_S
from marketplace.stop_signals import StopSignals
from wallets.errors import AgentmarketError
from wallets.store import shown_url

DEFAULT_DB = default_database_url()
DEFAULT_SPANS = default_span_store()


def serve(db: str = typer.Option(DEFAULT_DB, help="Database URL (sqlite:///file or "
                                                  "postgresql://...)."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on."),
          port: int = typer.Option(7000, min=0, max=65535, help="gRPC port (0: any free)."),
          fee_bps: int = typer.Option(250, min=0, max=10_000, help="Marketplace fee."),
          spans: Path = typer.Option(DEFAULT_SPANS, help="Embedded span store file."),
          operator: list[str] = typer.Option(
              [], "--operator", help="An operator's agent id (64 hex), trusted with approvals, "
                                     "unfreezes and disputes; repeat for several."),
          tls_cert: Path = typer.Option(None, help="PEM certificate chain: serve TLS."),
          tls_key: Path = typer.Option(None, help="PEM private key of --tls-cert."),
          tls_client_ca: Path = typer.Option(
              None, help="PEM CA bundle: require client certificates it issued (mutual TLS)."),
          rate_limit: float = typer.Option(500.0, min=0.001,
                                           help="Each agent's sustained calls per second."),
          burst: int = typer.Option(1000, min=1, help="Each agent's burst of calls."),
          no_auth: bool = typer.Option(
              False, "--no-auth", help="UNSAFE, local development only: accept unsigned calls "
                                       "and authorise nothing (anyone may move anyone's money)."),
          arbiter: list[str] = typer.Option(
              [], "--arbiter", help="An arbiter's agent id (64 hex) whose signed decisions "
                                    "resolve disputes; repeat for several."),
          fx_rate: list[str] = typer.Option(
              [], "--fx-rate", help="CODE=UNITS_PER_USD (exact, e.g. ECNY=7.1): convert prices "
                                    "across currencies in discovery; repeat per currency."),
          fx_sandbox: bool = typer.Option(
              False, "--fx-sandbox", help="Convert with the sandbox's fixed rates "
                                          "(USD, USDC, ECNY)."),
          judge_model: list[str] = typer.Option(
              [], "--judge-model", help="A model the LLM judge may run (through litellm; "
                                        "default: any); repeat for several."),
          console_on: bool = typer.Option(
              False, "--console", help="Serve the operator console (a web UI) too; prints a "
                                       "one-time login URL."),
          console_host: str = typer.Option("127.0.0.1", help="Address the console listens on "
                                                             "(beyond loopback: HTTPS only)."),
          console_port: int = typer.Option(7080, min=0, max=65535,
                                           help="Console port (0: any free)."),
          console_key_file: Path = typer.Option(
              None, help="The operator key the console signs actions with (default: a fresh "
                         "one, trusted as an operator while the node runs)."),
          console_arbiter: bool = typer.Option(
              False, "--console-arbiter", help="The console's key also resolves disputes."),
          key_file: Path = typer.Option(
              None, help="The node's key (`keys new`): it signs receipts and checkpoints "
                         "and names the x402 network, so it is kept across restarts "
                         "(default: the home's keys/node.key, made on the first start)."),
          checkpoint_interval: float = typer.Option(
              60.0, min=0.1, help="Seconds between signed checkpoints of the ledger."),
          ecny: bool = typer.Option(
              False, "--ecny", help="An e-CNY node: ECNY wallets follow e-CNY's wallet tiers, "
                                    "caps and controllable anonymity (wallets.ecny)."),
          cards: bool = typer.Option(
              False, "--cards", help="Serve the A2A card catalogue (an Agent Card per listing, "
                                     "and /cards/search) on the console's HTTP port."),
          redis: str = typer.Option(
              None, "--redis", help="Redis URL (redis://HOST:PORT/DB) holding request nonces "
                                    "and rate limits shared by every node of the market; "
                                    "Redis down: calls are refused."),
          redis_timeout: float = typer.Option(
              REDIS_TIMEOUT_S, "--redis-timeout", min=0.01, max=60.0,
              help="Seconds a call waits for --redis before it is refused UNAVAILABLE."),
          ecny_identity_provider: list[str] = typer.Option(
              [], "--ecny-identity-provider",
              help="An identity provider's agent id (64 hex), trusted like an operator to set "
                   "e-CNY wallet tiers after verifying identity (with --ecny); repeat for "
                   "several."),
          usdc_rpc: str = typer.Option(
              None, "--usdc-rpc", help="JSON-RPC URL of an EVM chain: carry USDC on it "
                                       "(deposits from registered addresses, payouts to "
                                       "addresses; needs the evm extra)."),
          usdc_token: str = typer.Option(
              None, "--usdc-token", help="The USDC token contract's address on --usdc-rpc."),
          usdc_hot_key_file: Path = typer.Option(
              None, "--usdc-hot-key-file",
              help="File holding the rail's hot wallet private key (hex): its address takes "
                   "deposits, it signs payouts and pays their gas."),
          usdc_confirmations: int = typer.Option(
              3, "--usdc-confirmations", min=1, max=1000,
              help="Blocks a USDC deposit waits for (itself included) before it is credited.")
          ,
          gc_defaults: bool = GC_DEFAULTS,
          normal_scheduling: bool = NORMAL_SCHEDULING
          ) -> None:
    """Run a marketplace node until SIGTERM or SIGINT."""
    from marketplace.auth import server_credentials
    from marketplace.identity import check_agent_id
    from marketplace.judge import LlmJudge
    from marketplace.node import MarketplaceNode
    from marketplace.tracing import setup_metrics, setup_tracing
    from wallets.ecny import EcnyRules
    from wallets.fx import SANDBOX_UNITS_PER_USD, FixedRateProvider

    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        fail("--tls-client-ca needs --tls-cert and --tls-key")
    try:
        credentials = server_credentials(
            tls_cert.read_bytes(), tls_key.read_bytes(),
            tls_client_ca.read_bytes() if tls_client_ca else None) if tls_cert and tls_key \
            else None
    except OSError as error:
        fail(f"cannot read a TLS file: {error}")
    rates = dict(SANDBOX_UNITS_PER_USD) if fx_sandbox else {}
    try:
        arbiters = [check_agent_id(agent_id, "arbiter") for agent_id in arbiter]
        rates |= _fx_rates(fx_rate)
        fx = FixedRateProvider(rates) if rates else None
    except AgentmarketError as error:
        fail(str(error))
    console_options = _console_options(console_on, console_host, console_key_file,
                                       console_arbiter, tls_cert, spans)
    if ecny_identity_provider and not ecny:
        fail("--ecny-identity-provider needs --ecny: identity providers set e-CNY tiers")
    usdc = _usdc_rail(usdc_rpc, usdc_token, usdc_hot_key_file, usdc_confirmations)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its steps are not the user's news
    if db.startswith("sqlite:///"):
        Path(db.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    spans.parent.mkdir(parents=True, exist_ok=True)
    provider = setup_tracing("marketplace", span_store_path=spans)
    setup_metrics("marketplace")  # exported over OTLP when OTEL_EXPORTER_OTLP_* is set
    node_key = cli_keys.node_key(key_file)
    stop = StopSignals()  # from here on, SIGTERM or Ctrl-C stops the servers in order
    try:
        node = MarketplaceNode(db, host=host, port=port, fee_bps=fee_bps, key=node_key,
                               checkpoint_interval_s=checkpoint_interval,
                               ecny=EcnyRules() if ecny else None, redis_url=redis,
                               redis_timeout_s=redis_timeout,
                               tracer_provider=provider, operator_ids=operator,
                               require_auth=not no_auth, rate_limit_per_s=rate_limit,
                               rate_limit_burst=burst, server_credentials=credentials,
                               arbiters=arbiters, fx=fx,
                               judge=LlmJudge(allowed_models=judge_model or None,
                                              tracer_provider=provider),
                               console=console_options, http_host=console_host,
                               http_port=console_port,
                               http_tls=(tls_cert, tls_key) if tls_cert and tls_key else None,
                               cards=cards, rails=usdc.rails if usdc else None,
                               ecny_identity_providers=ecny_identity_provider).start()
    except Exception as error:  # a bad URL or a taken port: one line, not a traceback
        fail(f"cannot start the node: {error}")
    tune_started(gc_defaults=gc_defaults, normal_scheduling=normal_scheduling)
    down = node.limits.unreachable() if redis else ""
    if down:
        console.print(f"WARNING: the Redis of --redis does not answer ({down}): every "
                      "signed call is refused UNAVAILABLE until it does", style="red",
                      highlight=False, soft_wrap=True)
    if no_auth:
        console.print("WARNING: --no-auth: calls are not authenticated and nothing is "
                      "authorised; never expose this node beyond your own machine",
                      style="red", highlight=False)
    security = ("mutual TLS" if tls_client_ca else "TLS" if tls_cert else "plaintext") + \
        (", no authentication" if no_auth else ", signed calls")
    fx_note = f"fx {', '.join(sorted(rates))}" if rates else "no fx"
    judge_note = f"judge models {', '.join(judge_model)}" if judge_model else "any judge model"
    console.print(f"marketplace listening on {node.address} (db {shown_url(db)}; {security}; "
                  f"node key {node.agent_id}; {len(node.operator_ids)} operator(s), "
                  f"{len(arbiters)} arbiter(s); {fx_note}; {judge_note})", highlight=False,
                  soft_wrap=True)
    if node.console is not None and node.http is not None:
        console.print(f"console on {node.http.url}/console/ (signing as operator "
                      f"{node.console.actions.key.agent_id})", highlight=False, soft_wrap=True)
    if usdc is not None:
        rail: Any = node.wallets.rails[usdc.name]
        console.print(f"USDC rail {rail.name} on chain {rail.chain_id}: deposits to "
                      f"{rail.address}, credited after {rail.confirmations} confirmation(s)",
                      highlight=False, soft_wrap=True)
    if cards and node.http is not None:
        console.print(f"Agent Cards on {node.http.url}/cards/search", highlight=False)
    stop.wait()
    console.print("shutting down")
    node.stop()
    provider.shutdown()


def _console_options(on: bool, host: str, key_file: Path | None, arbiter: bool,
                     tls_cert: Path | None, spans: Path):  # type: ignore[no-untyped-def]
    """The console's options from `serve`'s, or None without --console."""
    if not on:
        if key_file is not None or arbiter:
            fail("--console-key-file and --console-arbiter need --console")
        return None
    from marketplace.console import ConsoleOptions
    from marketplace.http.app import LOOPBACK_HOSTS

    if host not in LOOPBACK_HOSTS and tls_cert is None:
        fail(f"--console-host {host} is beyond loopback: give --tls-cert and --tls-key, or "
             "the login token and session cookies would cross the network in clear")

    def announce(url: str) -> None:
        console.print(f"console login (one-time): {url}", highlight=False, soft_wrap=True)

    return ConsoleOptions(key=cli_keys.load_key(key_file) if key_file else None, arbiter=arbiter,
                          span_store=spans, announce=announce)


def _usdc_rail(rpc: str | None, token: str | None, key_file: Path | None,
               confirmations: int):  # type: ignore[no-untyped-def]
    """The USDC rail's configuration from `serve`'s flags, or None without --usdc-rpc."""
    if rpc is None:
        if token is not None or key_file is not None:
            fail("--usdc-token and --usdc-hot-key-file need --usdc-rpc")
        return None
    if token is None or key_file is None:
        fail("--usdc-rpc needs --usdc-token (the token's address) and --usdc-hot-key-file "
             "(the rail's key)")
    try:
        from wallets.evm.config import UsdcRailConfig, load_hot_key
    except ImportError as error:
        fail(f"--usdc-rpc needs the evm extra (pip install agentmarket[evm]): {error}")
    if not key_file.is_file():
        fail(f"--usdc-hot-key-file {key_file} is not a file")
    try:
        config = UsdcRailConfig(rpc, token, load_hot_key(key_file), confirmations)
        config.check()  # before anything is created: a wrong URL or token is one line
    except AgentmarketError as error:
        fail(error.message)
    return config


def _fx_rates(options: list[str]) -> dict[str, str]:
    """`CODE=UNITS_PER_USD` options as a rate table (validated by FixedRateProvider)."""
    rates = {}
    for option in options:
        code, sep, rate = option.partition("=")
        if not sep or not code.strip() or not rate.strip():
            bad_value(f"--fx-rate takes CODE=UNITS_PER_USD (e.g. ECNY=7.1), got {option!r}")
        rates[code.strip().upper()] = rate.strip()
    return rates
