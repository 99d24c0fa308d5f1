"""The sandbox's node in a process of its own: the node's work (registry, settlement, ledger)
and the agents' (negotiation, signatures, skills) then run on two cores instead of sharing one
interpreter lock. The run reads the database itself for reputations and the audit."""

from __future__ import annotations

import multiprocessing
import signal
from fractions import Fraction
from typing import Any

START_TIMEOUT_S = 120.0


def _serve(db_url: str, options: dict[str, Any], rates: dict[str, Fraction], step_bps: int,
           seed: int, round_source: Any, ready: Any, stop: Any) -> None:
    from agents.sandbox.pricing import MovingRates
    from marketplace.node import MarketplaceNode
    from wallets.ecny import EcnyRules

    # Ctrl-C reaches the whole process group: the run stops its agents first, then this node
    # (`NodeProcess.stop`), so that the agents' last redeems still find it
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    fx = MovingRates(rates, step_bps, seed, round_source=round_source)
    ecny = EcnyRules() if options.pop("ecny") else None
    usdc = options.pop("usdc")  # a UsdcRailConfig: the chain is the parent's, reached by URL
    try:
        node = MarketplaceNode(db_url, fx=fx, ecny=ecny, rails=usdc.rails if usdc else None,
                               **options).start()
    except Exception as error:  # the parent shows why
        ready.put(("error", f"{type(error).__name__}: {error}"))
        return
    ready.put(("ok", node.address))
    stop.wait()
    node.stop()


class NodeProcess:
    """`start()` returns the node's address; `move(round)` turns its FX rates; `stop()`."""

    def __init__(self, db_url: str, options: dict[str, Any], rates: dict[str, Fraction],
                 step_bps: int, seed: int) -> None:
        context = multiprocessing.get_context("spawn")  # no fork under gRPC's threads
        self.round = context.Value("i", 0)
        self._ready, self._stop = context.Queue(), context.Event()
        self.process = context.Process(
            target=_serve, name="sandbox-node", daemon=True,
            args=(db_url, options, rates, step_bps, seed, self.round, self._ready, self._stop))

    def start(self) -> str:
        self.process.start()
        status, value = self._ready.get(timeout=START_TIMEOUT_S)
        if status != "ok":
            self.process.join()
            from agents.errors import FailedPrecondition

            raise FailedPrecondition(f"the sandbox's node did not start: {value}")
        return str(value)

    def move(self, round_index: int) -> None:
        self.round.value = round_index

    def stop(self) -> None:
        if self.process.pid is None:  # never started
            return
        self._stop.set()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
