"""The sandbox's market: a real node, real sellers and buyers on loopback gRPC, an arbiter.

Buyers are funded through their currency's rail: USDC buyers, when the scenario puts USDC on a
chain (`usdc_chain`), by token transfers from addresses they registered (`agents.sandbox.chain`);
ECNY buyers on an e-CNY node through the e-CNY rail, in the wallet tier the sandbox's identity
provider verified for their group (`ecny_category`). All sellers and buyers of a run share this
one process: each seller is a full `SellerAgent`
(its own gRPC server, usage journal and key), each buyer a `BuyerAgent` with its own key and
wallets; they talk to each other and to the node over loopback gRPC exactly as separate
processes would. Names are the scenario's (`llm-cn-003`), so events never show random ids.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from agents.buyer import BuyerAgent
from agents.sandbox.chain import SandboxUsdc
from agents.sandbox.node_process import NodeProcess
from agents.sandbox.pricing import MovingRates, Pricing
from agents.sandbox.scenario import BuyerGroup, Scenario, SellerGroup
from agents.sandbox.skills import FAULT_LOGGER, Behaviour, QuietFaults, make_skill
from agents.seller import SellerAgent
from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.v1 import dispute_pb2_grpc
from wallets.ecny import EcnyRules
from wallets.ledger import Ledger
from wallets.store import make_engine
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

RPC_TIMEOUT_S = 10.0
START_WORKERS = 8
AGENT_RATE_PER_S = 100_000.0  # the sandbox's agents are trusted to pace themselves


@dataclass
class Seller:
    name: str
    group: SellerGroup
    pricing: Pricing
    cheats: bool
    agent: SellerAgent
    orders: int = 0  # taken this round


@dataclass
class Buyer:
    name: str
    group: BuyerGroup
    agent: BuyerAgent
    accounts: dict[str, str] = field(default_factory=dict)  # currency -> wallet account id


class Market:
    """Start with `open()`, stop with `close()` (or use it as a context manager)."""

    def __init__(self, scenario: Scenario, seed: int, workdir: Path,
                 db_url: str | None = None, *, node_process: bool = False) -> None:
        """`node_process`: run the node in a process of its own (a second core)."""
        self.scenario, self.seed = scenario, seed
        self.db_url = db_url or f"sqlite:///{Path(workdir) / 'market.db'}"
        self.fx = MovingRates(scenario.units_per_usd, scenario.fx_step_bps, seed)
        self.arbiter_key = AgentKey.generate()
        self.identity_key = AgentKey.generate()  # verifies e-CNY buyers' identities
        self.node: MarketplaceNode | None = None
        self.node_process: NodeProcess | None = None
        self.usdc = SandboxUsdc() if scenario.usdc_chain else None
        self.node_options = dict(
            fee_bps=scenario.fee_bps, ecny=scenario.ecny, arbiters=[self.arbiter_key.agent_id],
            rate_limit_per_s=AGENT_RATE_PER_S, rate_limit_burst=1_000_000, max_workers=32,
            discover_cache_ms=0,  # a kept answer depends on the clock: a seed must replay
            ecny_identity_providers=[self.identity_key.agent_id] if scenario.ecny else [],
            usdc=self.usdc.config if self.usdc else None)
        if node_process:
            self.node_process = NodeProcess(self.db_url, dict(self.node_options),
                                            scenario.units_per_usd, scenario.fx_step_bps, seed)
        self.sellers: list[Seller] = []
        self.buyers: list[Buyer] = []
        self.names: dict[str, str] = {}  # agent id -> name
        self._quiet = QuietFaults()

    def open(self, on_agent: Callable[[], None] | None = None) -> Market:
        """Start the node, then every seller and buyer (`on_agent` after each)."""
        logging.getLogger(FAULT_LOGGER).addFilter(self._quiet)
        if self.node_process is not None:
            self.address = self.node_process.start()
            self.engine = make_engine(self.db_url)
            self.ledger = Ledger(self.engine, group_commit=False)
        else:
            options = dict(self.node_options)
            ecny = EcnyRules() if options.pop("ecny") else None
            usdc = options.pop("usdc")
            self.node = MarketplaceNode(self.db_url, fx=self.fx, ecny=ecny,
                                        rails=usdc.rails if usdc else None,  # type: ignore[attr-defined]
                                        **options).start()  # type: ignore[arg-type]
            self.address, self.engine, self.ledger = \
                self.node.address, self.node.engine, self.node.ledger
        self.arbiter_channel = signed_channel(self.address, self.arbiter_key)
        self.identity_channel = signed_channel(self.address, self.identity_key)
        self.identity = wallet_pb2_grpc.WalletServiceStub(self.identity_channel)
        self.arbitration = dispute_pb2_grpc.ArbitrationServiceStub(self.arbiter_channel)
        plans = [(g, i) for g in self.scenario.sellers for i in range(g.count)]
        # made one by one (each journal's schema migration is not thread-safe), served in
        # parallel
        self.sellers = [self._seller(*plan) for plan in plans]
        with ThreadPoolExecutor(START_WORKERS) as pool:
            list(pool.map(lambda s: self._serve(s, on_agent), self.sellers))
            buyers = [(g, i) for g in self.scenario.buyers for i in range(g.count)]
            self.buyers = list(pool.map(lambda p: self._buyer(*p, on_agent), buyers))
        if self.usdc is not None:  # the buyers' transfers confirmed and credited
            self.usdc.settle(lambda account: self.ledger.balance(account).posted_atomic)
        self.names = {s.agent.agent_id: s.name for s in self.sellers} | \
            {b.agent.agent_id: b.name for b in self.buyers}
        return self

    def _cheaters(self, group: SellerGroup) -> set[int]:
        count = round(group.count * group.cheat_fraction)
        if group.cheat_fraction and not count:
            count = 1  # a fraction of a cheater is still one
        rng = random.Random(f"{self.seed}:cheaters:{group.group}")
        return set(rng.sample(range(group.count), count))

    def _seller(self, group: SellerGroup, index: int) -> Seller:
        name = f"{group.group}-{index:03d}"
        cheats = index in self._cheaters(group)
        pricing = Pricing(group.strategy, group.list_price_atomic, group.cost_atomic)
        behaviour = Behaviour(self.seed, name, group.failure_rate,
                              group.forgery_rate if cheats else 0.0)
        agent = SellerAgent(name, skills=[make_skill(group, behaviour)],
                            marketplace=self.address, strategy=pricing.strategy,
                            reservation_fraction=pricing.reservation_fraction,
                            max_workers=4, rate_limit_per_s=AGENT_RATE_PER_S,
                            rate_limit_burst=1_000_000)
        return Seller(name, group, pricing, cheats, agent)

    @staticmethod
    def _serve(seller: Seller, on_agent: Callable[[], None] | None) -> None:
        seller.agent.serve()
        if on_agent is not None:
            on_agent()

    def _buyer(self, group: BuyerGroup, index: int, on_agent: Callable[[], None] | None
               ) -> Buyer:
        name = f"{group.group}-{index:03d}"
        buyer = Buyer(name, group, BuyerAgent(name, marketplace=self.address))
        account = self.account(buyer, group.currency)
        if group.ecny_category:  # its identity verified: a tier above the anonymous one
            self.identity.SetEcnyTier(wallet_pb2.SetEcnyTierRequest(
                idempotency_key=f"sandbox-kyc:{name}", account_id=account,
                category=group.ecny_category, identity_ref=f"sandbox-kyc:{name}"),
                timeout=RPC_TIMEOUT_S)
        if group.currency == "USDC" and self.usdc is not None:
            self.usdc.fund(buyer.agent.wallets, account, group.deposit_atomic)
        else:  # the currency's rail (ECNY on an e-CNY node: the e-CNY rail, in fen)
            buyer.agent.wallets.Deposit(wallet_pb2.DepositRequest(
                idempotency_key=f"sandbox-fund:{name}", account_id=account,
                amount=wallet_pb2.Money(amount_atomic=group.deposit_atomic,
                                        currency=group.currency)), timeout=RPC_TIMEOUT_S)
        if group.per_call_cap_atomic:
            buyer.agent.wallets.SetPolicy(wallet_pb2.SetPolicyRequest(
                idempotency_key=f"sandbox-policy:{name}", account_id=account,
                policy=wallet_pb2.WalletPolicy(per_call_cap_atomic=group.per_call_cap_atomic)),
                timeout=RPC_TIMEOUT_S)
        if on_agent is not None:
            on_agent()
        return buyer

    def move_fx(self, round_index: int) -> None:
        """The FX rates of a round, here and at the node."""
        self.fx.move(round_index)
        if self.node_process is not None:
            self.node_process.move(round_index)

    def account(self, buyer: Buyer, code: str) -> str:
        """The buyer's wallet in `code`, opened on first use."""
        if code not in buyer.accounts:
            buyer.accounts[code] = buyer.agent.wallet(code).account_id
        return buyer.accounts[code]

    def close(self) -> None:
        with ThreadPoolExecutor(START_WORKERS) as pool:
            list(pool.map(lambda s: s.agent.stop(0.2), self.sellers))
        for buyer in self.buyers:
            buyer.agent.close()
        if hasattr(self, "arbiter_channel"):
            self.arbiter_channel.close()
            self.identity_channel.close()
        if self.node is not None:
            self.node.stop()
        if self.node_process is not None:
            self.node_process.stop()
        if self.usdc is not None:
            self.usdc.close()
        logging.getLogger(FAULT_LOGGER).removeFilter(self._quiet)

    def __enter__(self) -> Market:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
