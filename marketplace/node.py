"""A marketplace node: registry, settlement and wallets on one gRPC server over one database.

Nodes keep no state outside the database, so several can serve one PostgreSQL behind a load
balancer. Health checking and server reflection are on; a background sweeper expires holds and
agreements past their deadlines: on PostgreSQL only the node holding the market's sweep lease
(`marketplace.sweep_lease`) sweeps, and another takes over when that node stops or dies.

Security (SECURITY.md): every call must be signed by an agent key (`marketplace.auth`), unless
the node is built with `require_auth=False` (local development only: then nobody is
authenticated and nothing is authorised). Signed calls are rate-limited per agent and authorised
by the rule tables of `wallets.access` and `marketplace.access`: `operator_ids` are the keys
trusted with approvals, unfreezes and disputes; the node's own `key` (generated if not given)
and the operators act as the marketplace (capturing and voiding holds over the wallet API).
`server_credentials` (`marketplace.auth.server_credentials`) serves TLS or mutual TLS;
`verifier_credentials` (`channel_credentials`) make its calls to verifier agents TLS (they are
signed with the node's key either way).

HTTP: with `console` (`marketplace.console.ConsoleOptions`), or `cards=True` (the A2A card
catalogue, `marketplace.http.cards`: an Agent Card per listing and a search over them, under
/cards), the node also serves one ASGI app (`marketplace.http`) on its own port (`http_host`,
`http_port`; loopback and a free port by default), started and stopped with the gRPC server.
The console's operator key is trusted as an operator, and it reaches the gRPC server over a
private Unix socket, signed like any client.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.trace import TracerProvider
from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError

from marketplace import agreements as ag
from marketplace.access import MarketplaceAccess
from marketplace.auth import AccessInterceptor, AuthServerInterceptor
from marketplace.checkers import Checker, CheckerRegistry
from marketplace.discover_cache import TTL_MS as DISCOVER_CACHE_MS
from marketplace.discover_cache import DiscoverCache
from marketplace.discovery import FxConverter
from marketplace.errors import FailedPrecondition, InvalidArgument
from marketplace.grpc_listen import listen
from marketplace.grpc_tracing import server_interceptor
from marketplace.identity import AgentKey, check_agent_id
from marketplace.introspection import mark_serving, serve_introspection
from marketplace.judge import LlmJudge
from marketplace.listing_leases import LeaseFlusher
from marketplace.pvp_legs import ReceiptedHolds
from marketplace.receipt_servicer import SERVICE as RECEIPT_SERVICE
from marketplace.receipt_servicer import ReceiptServicer, receipt_rules
from marketplace.receipts import ReceiptBook
from marketplace.registry import Registry
from marketplace.registry_door import RegistryBusyDoor
from marketplace.reputation import fold_pending as fold_outcomes
from marketplace.request_fields import MARKET_FIELDS
from marketplace.request_limits import REDIS_TIMEOUT_S, open_limits
from marketplace.servicers import ArbitrationServicer, RegistryServicer, SettlementServicer
from marketplace.settlement import Settlement
from marketplace.stream_limits import StreamLimits
from marketplace.sweep_lease import SweepLease
from marketplace.v1 import (
    dispute_pb2,
    dispute_pb2_grpc,
    receipt_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from marketplace.verification import Verification
from marketplace.verifier_agent import GrpcVerifierClient
from wallets._credits import fold_pending as fold_credits
from wallets.access import SERVICE as WALLET_SERVICE
from wallets.access import Principals, WalletAccess
from wallets.conditional_servicer import SERVICE as CONDITIONAL_SERVICE
from wallets.conditional_servicer import ConditionalHoldServicer, conditional_rules
from wallets.currencies import CURRENCIES
from wallets.ecny import EcnyGuard, EcnyRules
from wallets.fx import FxProvider
from wallets.grpc_errors import MalformedRequestInterceptor
from wallets.grpc_fields import FieldCheckInterceptor
from wallets.guard import SpendGuard
from wallets.ledger import Ledger
from wallets.metrics import market_metrics
from wallets.rails import Rail, SandboxRail
from wallets.rails_ecny import EcnyRail
from wallets.service import WalletService
from wallets.servicer import WalletServicer
from wallets.store import make_engine, shown_url
from wallets.v1 import conditional_pb2_grpc, wallet_pb2, wallet_pb2_grpc

if TYPE_CHECKING:
    from marketplace.console import Console, ConsoleOptions
    from marketplace.http import HttpServer

log = logging.getLogger("agentmarket.sweeper")
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A redeem must always fit: the receipts a seller may charge for (MAX_REDEEM_RECEIPTS_BYTES)
# and room for the rest of the request.
MIN_MESSAGE_BYTES = ag.MAX_REDEEM_RECEIPTS_BYTES + 1024 * 1024
# A dispute's record holds the delivery (up to a redeem's receipts) and the buyer's evidence.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class MarketplaceNode:
    def __init__(self, db_url: str, *, host: str = "127.0.0.1", port: int = 0,
                 fee_bps: int = 250, tracer_provider: TracerProvider | None = None,
                 sweep_interval_s: float = 1.0, max_workers: int = 16,
                 arbiters: Iterable[str] = (), judge: LlmJudge | None = None,
                 fx: FxProvider | None = None, key: AgentKey | None = None,
                 operator_ids: Iterable[str] = (), require_auth: bool = True,
                 rate_limit_per_s: float = 500.0, rate_limit_burst: int = 1000,
                 auth_skew_s: int = 60, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 server_credentials: grpc.ServerCredentials | None = None,
                 verifier_credentials: grpc.ChannelCredentials | None = None,
                 console: ConsoleOptions | None = None, http_host: str = "127.0.0.1",
                 http_port: int = 0, http_tls: tuple[Path, Path] | None = None,
                 checkpoint_interval_s: float = 60.0, ecny: EcnyRules | None = None,
                 rails: Callable[[Ledger], Iterable[Rail]] | None = None,
                 cards: bool = False, redis_url: str | None = None,
                 redis_timeout_s: float = REDIS_TIMEOUT_S,
                 ecny_identity_providers: Iterable[str] = (),
                 discover_cache_ms: int = DISCOVER_CACHE_MS) -> None:
        """`arbiters`: agent ids whose signed decisions resolve disputes; `judge`: the LLM
        judge (models allowed, litellm options); `fx`: quotes that convert prices across
        currencies in discovery (`convert_currencies`). Security options: see the module
        docstring; `rate_limit_*`: each agent's token bucket; `auth_skew_s`: how far a signed
        request's timestamp may be from this node's clock; `max_message_bytes`: the largest
        request accepted (larger: RESOURCE_EXHAUSTED from gRPC), at least MIN_MESSAGE_BYTES so
        that every redeem a seller may send fits. HTTP options: see the module docstring;
        `http_tls`: (certificate chain, private key) PEM files to serve HTTPS.
        `checkpoint_interval_s`: how often the node signs its ledger's chain head when it has
        moved (`.checkpoints`); `ecny`: apply e-CNY's wallet rules to ECNY wallets
        (`wallets.ecny`) and carry ECNY through the e-CNY sandbox rail (`wallets.rails_ecny`);
        `ecny_identity_providers`: agent ids trusted, like operators, to set e-CNY wallet
        tiers once they have verified a holder's identity (`SetEcnyTier`);
        `rails`: more rails, made over this node's ledger (the USDC rail on an EVM:
        `wallets.evm.UsdcRailConfig.rails`); each replaces the sandbox rail of its currency
        (a chain's USDC is not to be paid out against play money), and the sweeper runs each
        one's `sweep()` if it has one.
        `discover_cache_ms`: how long a Discover answer may be reused
        (`marketplace.discover_cache`; 0: never, for runs that must replay exactly).
        `redis_url`: keep request nonces and rate buckets in that Redis, shared with every node
        of the market (a replay to another node is refused, a rate holds across nodes; Redis
        down: calls are refused UNAVAILABLE); without it, in this process;
        `redis_timeout_s`: how long a call waits for that Redis before it is refused."""
        if max_message_bytes < MIN_MESSAGE_BYTES:
            raise InvalidArgument(f"max_message_bytes must be at least {MIN_MESSAGE_BYTES}: "
                                  "smaller, a seller's redeem of calls it was paid for could "
                                  "be refused")
        self._console_key = (console.key or AgentKey.generate()) if console else None
        if self._console_key is not None:
            operator_ids = (*operator_ids, self._console_key.agent_id)
            if console and console.arbiter:
                arbiters = (*arbiters, self._console_key.agent_id)
        self.key = key or AgentKey.generate()
        self.agent_id = self.key.agent_id
        self.operator_ids = frozenset(check_agent_id(o, "operator") for o in operator_ids)
        self.identity_provider_ids = frozenset(check_agent_id(i, "identity provider")
                                               for i in ecny_identity_providers)
        if self.identity_provider_ids and ecny is None:
            raise InvalidArgument("identity providers set e-CNY tiers: they need the e-CNY "
                                  "rules (ecny=EcnyRules(), --ecny)")
        self.require_auth = require_auth
        self.engine, self.ledger, self.registry = _open_database(
            db_url, fx, EcnyGuard(ecny) if ecny else None)
        real: list[Rail] = [*([EcnyRail()] if ecny else []),
                            *(rails(self.ledger) if rails else [])]
        carried = {rail.currency.code for rail in real}
        self.wallets = WalletService(self.ledger, rails=[
            *(SandboxRail(c) for c in CURRENCIES.values() if c.code not in carried), *real])
        self.checkers = CheckerRegistry()
        self._verifier_client = GrpcVerifierClient(tracer_provider, key=self.key,
                                                   credentials=verifier_credentials)
        self.verification = Verification(
            checkers=self.checkers, judge=judge or LlmJudge(tracer_provider=tracer_provider),
            verifier_client=self._verifier_client, tracer_provider=tracer_provider)
        self.receipts = ReceiptBook(self.engine, self.key, self.ledger.clock_ms)
        self.settlement = Settlement(self.ledger, self.registry, fee_bps=fee_bps,
                                     tracer_provider=tracer_provider,
                                     verification=self.verification, arbiters=arbiters,
                                     receipts=self.receipts)
        self._checkpoint_interval_s = checkpoint_interval_s
        self.conditional = ReceiptedHolds(self.ledger, self.receipts)  # PvP legs
        self.limits = open_limits(redis_url, rate_limit_per_s, rate_limit_burst,
                                  redis_timeout_s=redis_timeout_s)
        self.auth = AuthServerInterceptor(required=require_auth, skew_s=auth_skew_s,
                                          rate_per_s=rate_limit_per_s, burst=rate_limit_burst,
                                          limits=self.limits)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=[RegistryBusyDoor(self.registry.asked_writes, self.auth.skew_ms,
                                           self.auth.clock_ms), StreamLimits(max_workers),
                          MalformedRequestInterceptor(),
                          server_interceptor(tracer_provider),
                          self.auth, FieldCheckInterceptor(MARKET_FIELDS), *self._access()],
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
                     ("grpc.so_reuseport", 0)],  # a port in use is an error, not shared
        )
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(self.registry, node_id=self.agent_id, discover_cache=DiscoverCache(
                self.registry, ttl_ms=discover_cache_ms)), self.server)
        settlement_pb2_grpc.add_SettlementServiceServicer_to_server(
            SettlementServicer(self.settlement, self.key), self.server)
        dispute_pb2_grpc.add_ArbitrationServiceServicer_to_server(
            ArbitrationServicer(self.settlement), self.server)
        wallet_pb2_grpc.add_WalletServiceServicer_to_server(
            WalletServicer(self.wallets), self.server)
        conditional_pb2_grpc.add_ConditionalHoldServiceServicer_to_server(
            ConditionalHoldServicer(self.conditional), self.server)
        receipt_pb2_grpc.add_ReceiptServiceServicer_to_server(
            ReceiptServicer(self.receipts, self.principals), self.server)
        services = [
            registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
            settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"].full_name,
            dispute_pb2.DESCRIPTOR.services_by_name["ArbitrationService"].full_name,
            wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name,
            CONDITIONAL_SERVICE,
            RECEIPT_SERVICE,
        ]
        self.health = serve_introspection(self.server, services)
        self._services = services
        self.port = listen(self.server, f"{host}:{port}", server_credentials)
        self.address = f"{host}:{self.port}"
        self._http_setup(console, tracer_provider, http_host, http_port, http_tls, cards)
        self._sweep_interval_s = sweep_interval_s
        self.sweep_lease = SweepLease(self.engine, f"agentmarket sweeper {self.address}")
        self._stopping = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        self._leases = LeaseFlusher(self.registry.leases, self.registry.flush_leases)

    def _access(self) -> list[AccessInterceptor]:
        """The authorisation rules (none without authentication: nobody to authorise)."""
        self.access: AccessInterceptor | None = None
        self.principals: Principals | None = None
        if not self.require_auth:
            return []
        principals = self.principals = Principals(operators=self.operator_ids,
                                                  marketplace=frozenset({self.agent_id}),
                                                  identity_providers=self.identity_provider_ids)
        tables = MarketplaceAccess(self.settlement, principals,
                                   self.settlement.disputes.arbiters).rules()
        wallet_access = WalletAccess(self.wallets, principals)
        tables[WALLET_SERVICE] = wallet_access.rules()
        tables[CONDITIONAL_SERVICE] = conditional_rules(wallet_access)
        tables[RECEIPT_SERVICE] = receipt_rules(self.receipts, principals)
        self.access = AccessInterceptor.of(tables)
        return [self.access]

    def _http_setup(self, console: ConsoleOptions | None, tracer_provider: Any,
                    host: str, port: int, tls: tuple[Path, Path] | None, cards: bool) -> None:
        """The HTTP parts this node serves (the console, the card catalogue), on one server
        of their own."""
        self.console: Console | None = None
        self.http: HttpServer | None = None
        self._private_dir: str | None = None
        if (console is None or self._console_key is None) and not cards:
            return
        from marketplace.http import HttpServer, build_app
        from marketplace.http.app import allowed_hosts
        from marketplace.http.cards import catalogue

        parts = []
        if console is not None and self._console_key is not None:
            from marketplace.console import Console

            self._private_dir = tempfile.mkdtemp(prefix="agentmarket-node-")  # mode 700
            socket_address = f"unix:{self._private_dir}/grpc.sock"
            self.server.add_insecure_port(socket_address)
            self.console = Console.for_node(self, console, socket_address, self._console_key,
                                            tracer_provider)
            parts.append(self.console.part())
        if cards:
            parts.append(catalogue(self))
        self.http = HttpServer(build_app(parts, hosts=allowed_hosts(host)),
                               host=host, port=port, tls_cert=tls[0] if tls else None,
                               tls_key=tls[1] if tls else None)
        self.http_address = f"{host}:{self.http.port}"

    def start(self) -> MarketplaceNode:
        self.server.start()
        if self.http is not None:
            self.http.start()
            if self.console is not None:
                self.console.bind(self.http.url)
        mark_serving(self.health, self._services)
        self._sweeper.start()
        self._leases.start()
        self._unobserve = market_metrics().observe_holds(self.ledger.open_hold_totals)
        return self

    def _sweep_loop(self) -> None:
        while not self._stopping.wait(self._sweep_interval_s):
            if not self.sweep_lease.held():  # another node of the market sweeps
                continue
            for name, step in self._sweep_steps():
                try:
                    step()
                except Exception:  # keep sweeping; the next round retries
                    log.exception("sweep step %s failed", name)

    def _sweep_steps(self) -> list[tuple[str, Callable[[], Any]]]:
        """One round of the sweeper, step by step: each fails alone (a chain's RPC down stops
        its rail's sweep, not settlement deadlines, withdrawals, receipts or checkpoints)."""
        rails = [(f"rail {name}", sweep) for name, rail in self.wallets.rails.items()
                 if callable(sweep := getattr(rail, "sweep", None))]  # chain watchers, resends
        return [
            ("expire holds", self.ledger.expire_holds),
            ("receipt voided legs", self.conditional.receipt_expired),
            *rails,
            ("settlement", self.settlement.sweep),
            # what a node that died left unfolded
            ("fold outcomes", lambda: fold_outcomes(self.settlement.engine)),
            ("fold credits", lambda: fold_credits(self.ledger.engine)),
            ("withdrawals", self.wallets.settle_due),
            ("registry", self.registry.purge_expired),
            ("receipts", self.receipts.complete),  # stored before their postings were sealed
            ("checkpoint",
             lambda: self.receipts.checkpoints.cut_if_due(self._checkpoint_interval_s)),
        ]

    def register_checker(self, name: str, checker: Checker) -> None:
        """Register a deterministic checker for CHECKER verification (marketplace.checkers)."""
        self.checkers.register(name, checker)

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop taking calls, let running ones finish, then close the database."""
        self.health.enter_graceful_shutdown()
        self._stopping.set()
        if self.http is not None:
            self.http.stop(grace_s)
        if getattr(self, "_unobserve", None) is not None:
            self._unobserve()
            self._unobserve = None
        self.server.stop(grace_s).wait()
        if self._sweeper.is_alive():
            self._sweeper.join(timeout=5)
        self._leases.stop()  # the beats answered before the server stopped are written
        self.sweep_lease.release()
        self._verifier_client.close()
        if self.console is not None:
            self.console.close()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
        self.ledger.close()
        self.engine.dispose()
        if callable(getattr(self.limits, "close", None)):
            self.limits.close()  # type: ignore[attr-defined]

    def __enter__(self) -> MarketplaceNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _open_database(db_url: str, fx: FxProvider | None, guard: SpendGuard | None
                   ) -> tuple[Engine, Ledger, Registry]:
    """The engine, ledger and registry over `db_url`, migrated."""
    with opening_database(db_url):
        engine = make_engine(db_url)
        ledger = Ledger(engine, guard=guard)
        return engine, ledger, Registry(engine, fx=FxConverter(fx, ledger.clock_ms)
                                        if fx is not None else None)


@contextmanager
def opening_database(db_url: str) -> Iterator[None]:
    """A URL that cannot be opened is the caller's error (InvalidArgument) or the database's
    state (FailedPrecondition), in one line the driver gave, not a SQLAlchemy exception."""
    try:
        yield
    except (ArgumentError, NoSuchModuleError) as error:
        raise InvalidArgument(f"{_shown(db_url)} is not a database URL we can open "
                              f"(sqlite:///FILE or postgresql://...): {error}") from None
    except (OperationalError, DatabaseError) as error:
        first = str(error.orig or error).strip().splitlines()[0]
        raise FailedPrecondition(f"cannot open the database {_shown(db_url)}: {first}") from None


def _shown(db_url: str) -> str:
    """The URL for a message, its password masked."""
    return repr(shown_url(db_url))
