"""A seller agent: serves priced skills over gRPC, negotiates, meters, gets paid.

    with SellerAgent("summarizer", skills=[summarize], marketplace="127.0.0.1:7000") as seller:
        ...               # serving: its gRPC server runs, the listing is advertised
    # stopped: the listing is withdrawn, the server drained, the journal closed

`serve()` first loads what the skills need (their validators, litellm and the model's tokenizer
for LLM skills, each skill's own `warm_up`), so the first paid call is as quick as the tenth;
then it starts the gRPC server, advertises, heartbeats and redeems when due. `stop()` withdraws
the listing; a seller still serving when the interpreter exits, or when the process gets
SIGTERM or Ctrl-C, is stopped then (`agents._lifecycle`), so its listing does not outlive it.
The same server speaks A2A v1.0 (lf.a2a.v1.A2AService, `agents._a2a_door`) to any A2A client:
free skills (`free()`) unpaid, priced ones paid through the same payment core as Invoke, and
the signed Agent Card (`agent_card()`; over HTTP at `card_url` with `card_port`). Its server
also answers gRPC health checking and server reflection (v1 and v1alpha), so buf
curl, grpcurl and Postman work against it.

Each paid call is metered (calls, litellm-reported tokens, units) and charged under the
agreement's tariff, never more than the call reserved from the buyer's prepayment; the charge is
in the signed receipt. The seller redeems its latest voucher and receipts when the buyer calls
Finish, and on its own before the agreement's completion deadline if the buyer never does.
Negotiation follows the seller's strategy, but it never signs below its reservation price
(`agents.negotiation.Limits`, checked outside the strategy).

Its calls to the marketplace are signed with its key; its own server verifies each caller's
signature (`require_auth`, on by default) and lets only the buyer of an agreement call, stream
or finish it (`agents._access`). `credentials` (`marketplace.auth.channel_credentials`) make the
marketplace connection TLS; `server_credentials` serve TLS or mutual TLS to buyers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from a2a.types import a2a_pb2
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from agents import _inputs, _lifecycle, _litellm_hooks
from agents._a2a_door import SERVICE as A2A_SERVICE
from agents._escrow_check import EscrowCheck
from agents._grpc_payment import PaidCallAdmitter
from agents._rpc import sdk_error, sdk_method
from agents._seller_options import checked_options
from agents._seller_redeems import SellerRedeems
from agents._seller_server import AGENT_SERVICE, attach, build_server, card_server, journal_url
from agents._serving import PaidCalls
from agents._strategy_host import SellerNegotiator
from agents.errors import (
    FailedPrecondition,
)
from agents.keystore import load_key
from agents.metering import Tariff
from agents.negotiation import Strategy
from agents.payments import PaymentGate
from agents.skills import Skill, warm_up
from agents.usage_journal import LOOP_GROUP_WAIT_S, JournalPacedExecutor, UsageJournal
from agents.v1 import agent_pb2
from marketplace.a2a_cards import CARD_PATH, listing_card
from marketplace.auth import signed_channel
from marketplace.errors import RegistryBusy
from marketplace.grpc_tracing import client_interceptors, untraced
from marketplace.identity import AgentKey
from marketplace.introspection import mark_serving
from marketplace.market_channel import market_options, node_retry
from marketplace.node import opening_database
from marketplace.stream_limits import streams_allowed
from marketplace.v1 import registry_pb2, registry_pb2_grpc, settlement_pb2, settlement_pb2_grpc
from wallets.grpc_errors import error_reason

RPC_TIMEOUT_S = 10.0
WITHDRAW_TIMEOUT_S = 3.0  # stopping waits at most this for the marketplace
log = logging.getLogger("agentmarket.seller")


class SellerAgent:
    def __init__(self, name: str, *, skills: list[Skill], marketplace: str | Sequence[str],
                 key: AgentKey | str | os.PathLike[str] | None = None, host: str = "127.0.0.1",
                 port: int = 0,
                 reservation_fraction: tuple[int, int] = (3, 4),
                 strategy: Strategy | Any = None, ttl_s: int = 60,
                 completion_window_s: int = 600, redeem_margin_s: int = 60,
                 dispute_window_s: int = 60,
                 settle_interval_s: float = 1.0, max_workers: int = 16,
                 tracer_provider: TracerProvider | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 server_credentials: grpc.ServerCredentials | None = None,
                 require_auth: bool = True, rate_limit_per_s: float = 500.0,
                 rate_limit_burst: int = 1000, journal: str | Path | None = None,
                 journal_retention_s: int = 86_400, card_port: int | None = None,
                 server: str | None = None) -> None:
        """`strategy`: a Strategy shared by all negotiations, or a factory
        `(skill, currency) -> Strategy` called per negotiation (LLM strategies keep state).
        `completion_window_s`: how long after the negotiation's deadline the buyer may call;
        the seller redeems on its own `redeem_margin_s` before that deadline.
        `dispute_window_s`: how long after delivery the buyer may dispute (0: settle at once).
        `key`: an AgentKey, a key file, or a name the keystore keeps the key under
        (`agents.keystore`); none: a new key for this run only.
        `journal`: where paid calls are recorded before they are answered (a database URL or
        a SQLite file; default `$AGENTMARKET_HOME/seller-<first 16 hex of the agent id>.db`,
        AGENTMARKET_HOME defaulting to ./.agentmarket). A seller started again with the same
        key and journal takes up its agreements where it stopped, and redeems them. A seller
        with a key made for this run keeps its journal in a temporary folder removed by
        `stop()`: no one could take it up again, and nothing piles up run after run.
        `journal_retention_s`: how long after its completion deadline a redeemed (or never
        paid) agreement is kept, in memory and in the journal, before it is dropped.
        `card_port`: serve the A2A Agent Card over HTTP on `host` at this port (0: a free
        one; `card_url` says where); None: no HTTP server (the card is still answered over
        gRPC by A2A's GetExtendedAgentCard).
        `server`: "threaded" (grpc.server, a thread per running call) or "aio" (grpc.aio on an
        event loop thread of its own: a paid call waits for its usage record without holding
        a thread; synchronous skills run in a pool of `max_workers`); default: the
        AGENTMARKET_SELLER_SERVER environment variable, else "threaded"."""
        server, reservation_fraction = checked_options(
            server=server, skills=skills, port=port, card_port=card_port,
            max_workers=max_workers, rate_limit_per_s=rate_limit_per_s,
            rate_limit_burst=rate_limit_burst, ttl_s=ttl_s,
            settle_interval_s=settle_interval_s, completion_window_s=completion_window_s,
            dispute_window_s=dispute_window_s, redeem_margin_s=redeem_margin_s,
            journal_retention_s=journal_retention_s,
            reservation_fraction=reservation_fraction, strategy=strategy)
        self.name = _inputs.name(name, "seller's name")
        self.marketplace = _inputs.market(marketplace)
        self.key = load_key(key)
        self.agent_id = self.key.agent_id
        self.skills = {s.name: s for s in skills}
        if any(s.priced_per_token for s in skills):  # meter the skills' own litellm calls
            _litellm_hooks.install()
        self.ttl_s = ttl_s
        self.redeem_margin_s = redeem_margin_s
        self.settle_interval_s = settle_interval_s
        self.journal_retention_s = journal_retention_s
        self.tracer_provider = tracer_provider
        self._tracer = trace.get_tracer("agentmarket.seller", tracer_provider=tracer_provider)
        self._scratch = tempfile.mkdtemp(prefix="agentmarket-seller-") \
            if key is None and journal is None else None
        url = journal_url(Path(self._scratch) / "journal.db" if self._scratch else journal,
                          self.agent_id)
        with opening_database(url):
            # on grpc.aio a paid call runs from admission to record in one step of the loop:
            # it cannot be announced ahead, so batches wait for as many records as the last
            self.journal = UsageJournal(url, group_wait_s=LOOP_GROUP_WAIT_S if server == "aio"
                                        else 0.0)
        self.gate = PaymentGate(self.key, self.journal,
                                calls_end_before_ms=redeem_margin_s * 1000)
        self.tariffs: dict[str, Tariff] = {}
        self._restore()
        self._stop = threading.Event()
        self.node_id = ""  # the node's key (its AdvertiseResponse): checks escrow proofs
        self._locks_guard = threading.Lock()
        channel = signed_channel(
            self.marketplace, self.key, credentials, options=market_options(self.marketplace),
            interceptors=[*node_retry(self.marketplace), *client_interceptors(tracer_provider)])
        self._channel = channel
        self.registry = registry_pb2_grpc.RegistryServiceStub(channel)
        self.settlement = settlement_pb2_grpc.SettlementServiceStub(channel)
        self.escrows = EscrowCheck(self.settlement, self.agent_id, lambda: self.node_id,
                                   self.gate.clock_ms, RPC_TIMEOUT_S)
        self._escrowed = self.escrows.active  # agreements whose escrow is known to be held
        self.redeems = SellerRedeems(self.key, self.gate, self.settlement, self._escrowed,
                                     self._forgotten)
        self.server, auth = build_server(
            self, JournalPacedExecutor(self.journal, max_workers),
            tracer_provider=tracer_provider, require_auth=require_auth,
            rate_limit_per_s=rate_limit_per_s, rate_limit_burst=rate_limit_burst, kind=server,
            workers=max_workers)
        self.negotiator = SellerNegotiator(self, reservation_fraction, strategy,
                                           completion_window_s, dispute_window_s)
        self.calls = PaidCalls(self, PaidCallAdmitter(
            self.gate, self._reserve_of, require_auth=require_auth, rate_limit=auth.allow),
            streams_allowed=streams_allowed(max_workers))
        self.health, self.port = attach(self, self.server, host, port, server_credentials)
        self.endpoint = f"{host}:{self.port}"
        self._card: a2a_pb2.AgentCard | None = None
        self._card_http = None if card_port is None else card_server(self, host, card_port)
        self._threads = [
            threading.Thread(target=self._heartbeat_loop, daemon=True, name=f"heartbeat-{name}"),
            threading.Thread(target=self._settle_loop, daemon=True, name=f"settle-{name}"),
        ]
        self._state = "new"  # new -> serving -> stopped
        self._state_lock = threading.Lock()

    # ---- lifecycle ------------------------------------------------------------------------

    def _restore(self) -> None:
        """Take up the agreements the journal kept (a restart): their calls, receipts, latest
        voucher and redeem state; calls continue under the skills still served."""
        for agreement_id in self.gate.restore(self.journal.load()):
            terms = self.gate.body(agreement_id).terms
            skill = self.skills.get(terms.skill)
            if skill is not None:
                self.tariffs[agreement_id] = skill.tariff(terms.unit_price_atomic,
                                                          terms.currency)

    def serve(self, *, warm: bool = True) -> SellerAgent:
        """Load what the skills need (`warm`), start the gRPC server, advertise the skills,
        keep the listing alive, redeem when due. Serving twice is serving once."""
        with self._state_lock:
            if self._state != "new":
                if self._state == "stopped":
                    raise FailedPrecondition(f"seller {self.name} was stopped; make a new one")
                return self
            self._state = "serving"
        try:
            if warm:
                warm_up(list(self.skills.values()))
            self.server.start()
            mark_serving(self.health, [AGENT_SERVICE, A2A_SERVICE])
            if self._card_http is not None:
                self._card_http.start()
            if self.listing().skills:  # free skills only: nothing to sell at the marketplace
                self._advertise()
        except BaseException:
            self.stop(0)
            raise
        for thread in self._threads:
            thread.start()
        _lifecycle.serving(self)
        return self

    def __enter__(self) -> SellerAgent:
        return self.serve()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def listing(self) -> registry_pb2.Listing:
        """The marketplace listing: the priced skills (free ones are on the card only)."""
        return registry_pb2.Listing(agent_id=self.agent_id, name=self.name,
                                    endpoint=self.endpoint,
                                    skills=[s.message() for s in self.skills.values()
                                            if not s.free])

    def agent_card(self) -> a2a_pb2.AgentCard:
        """The seller's A2A Agent Card, signed with its key (EdDSA JWS): every skill, free or
        priced, and the prices in the payment extension's params (`marketplace.a2a_cards`)."""
        if self._card is None:
            every = registry_pb2.Listing(agent_id=self.agent_id, name=self.name,
                                         endpoint=self.endpoint,
                                         skills=[s.message() for s in self.skills.values()])
            self._card = listing_card(
                every, marketplace=self.marketplace, key=self.key, card_url=self.card_url,
                free=frozenset(n for n, s in self.skills.items() if s.free),
                streaming=frozenset(n for n, s in self.skills.items() if s.streams))
        return self._card

    @property
    def card_url(self) -> str:
        """Where the Agent Card is served over HTTP ('' without `card_port`): any A2A client
        resolves the seller from it (`{url}` is `http://host:port/.well-known/agent-card.json`)."""
        if self._card_http is None:
            return ""
        return f"{self._card_http.url}{CARD_PATH}"

    @sdk_method
    def advertise(self) -> registry_pb2.Listing:
        """Advertise (or replace) the seller's listing at the marketplace."""
        return self._advertise()

    def _advertise(self) -> registry_pb2.Listing:
        try:
            return self._send_listing()
        except grpc.RpcError as error:
            raise sdk_error(error, f"the marketplace at {self.marketplace}") from None

    def _send_listing(self) -> registry_pb2.Listing:
        """Advertise; while the registry is busy with others' listings (REGISTRY_BUSY: it
        refuses rather than queue them), ask again after a growing pause, for up to
        RPC_TIMEOUT_S in all."""
        request = registry_pb2.AdvertiseRequest(idempotency_key=f"advertise:{uuid.uuid4().hex}",
                                                listing=self.listing(), ttl_s=self.ttl_s)
        give_up, pause = time.monotonic() + RPC_TIMEOUT_S, 0.02
        while True:
            try:
                response = self.registry.Advertise(request, timeout=RPC_TIMEOUT_S)
                break
            except grpc.RpcError as error:
                busy = error_reason(error) == RegistryBusy.reason
                if not busy or time.monotonic() + pause > give_up:
                    raise
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 1.0)
        if response.node_id:
            self.node_id = response.node_id
        return response.listing

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            if not self.listing().skills:
                continue  # free skills only: no listing to keep alive
            with untraced():
                try:
                    self.registry.Heartbeat(
                        registry_pb2.HeartbeatRequest(agent_id=self.agent_id),
                        timeout=RPC_TIMEOUT_S)
                except grpc.RpcError as error:
                    if error_reason(error) == RegistryBusy.reason:
                        continue  # alive and listed; the next beat keeps it
                    with contextlib.suppress(grpc.RpcError):  # marketplace away: retry next beat
                        self._send_listing()

    def _settle_loop(self) -> None:
        """Redeem agreements whose buyer never called Finish before their deadline passes."""
        while not self._stop.wait(self.settle_interval_s):
            self.redeems.settle_due(_now_ms(), self.redeem_margin_s * 1000,
                                    self.journal_retention_s * 1000)

    def _forgotten(self, agreement_ids: list[str]) -> None:
        """Drop the state kept here for agreements the journal no longer keeps."""
        with self._locks_guard:
            for agreement_id in agreement_ids:
                self.tariffs.pop(agreement_id, None)
                self._escrowed.discard(agreement_id)

    def stop(self, grace_s: float = 1.0) -> None:
        """Withdraw the listing, let running calls finish (up to `grace_s`), close the server
        and the journal. Idempotent; called at interpreter exit and on SIGTERM if need be."""
        with self._state_lock:
            if self._state == "stopped":
                return
            was_serving, self._state = self._state == "serving", "stopped"
        _lifecycle.stopped(self)
        self._stop.set()
        self.health.enter_graceful_shutdown()
        if was_serving:
            with untraced(), contextlib.suppress(grpc.RpcError):  # else the listing expires
                self.registry.WithdrawListing(registry_pb2.WithdrawListingRequest(
                    idempotency_key=f"withdraw:{uuid.uuid4().hex}", agent_id=self.agent_id),
                    timeout=WITHDRAW_TIMEOUT_S)
        self.server.stop(grace_s).wait()
        if self._card_http is not None:
            self._card_http.stop(min(grace_s, 1.0))
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=RPC_TIMEOUT_S)
        self._channel.close()
        self.journal.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    # ---- paid calls and settlement --------------------------------------------------------

    def _reserve_of(self, agreement_id: str) -> int:
        """What a call must have prepaid: the agreement's per-call maximum."""
        tariff = self.tariffs.get(agreement_id)
        if tariff is None:
            raise FailedPrecondition(f"skill {self.gate.body(agreement_id).terms.skill} is no "
                                     "longer served here; the agreement takes no calls")
        return tariff.call_max_atomic

    def negotiate(self, message: agent_pb2.NegotiationMessage) -> agent_pb2.NegotiationMessage:
        return self.negotiator.negotiate(message)

    def invoke(self, request: agent_pb2.InvokeRequest, context: grpc.ServicerContext
               ) -> agent_pb2.InvokeResponse:
        return self.calls.invoke(request, context)

    def check_escrow(self, agreement_id: str, proof: bytes = b"") -> None:
        """Work only for money that is held (`agents._escrow_check`)."""
        self.escrows.check(agreement_id, proof)

    def redeem(self, agreement_id: str) -> settlement_pb2.Escrow:
        """Present the latest voucher and all receipts to the marketplace (once: later calls
        return the first answer). With no paid call, a zero voucher releases the whole hold.
        Raises the SDK's errors (`agents.errors`): Unavailable when the marketplace did not
        answer (redeem again: the same request is sent), the marketplace's refusal otherwise."""
        try:
            return self.redeems.redeem(agreement_id)
        except grpc.RpcError as error:
            raise sdk_error(error) from None

    def finish(self, request: agent_pb2.FinishRequest) -> agent_pb2.FinishResponse:
        return self.redeems.finish(request)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

