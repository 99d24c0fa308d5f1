"""A buyer's money against a flood of listings from free keys, on a SQLite node.

The node is `agentmarket serve` (SQLite) with one seller process. A buyer in this process runs
`ROUNDS` agreements one after another (negotiate, hire, one paid call, finish) and times hire
(OpenEscrow: a hold posted) and finish (the redeem: capture, release, receipt): first with the
market quiet, the same run's baseline, then while `FLOOD_THREADS` threads in 2 other processes
each advertise, again and again, a listing of 6,000 search rows under a fresh key (what a
stranger can do for free). Meanwhile an honest listing advertised before the flood beats
every `BEAT_EVERY_S` (as a seller with a 1.5 s TTL would), and a seller with standing (it
sold once in the quiet phase, `marketplace.standing`) advertises its listing again every
`RELIST_EVERY_S`, once each, as a seller changing its prices would. Keys: p50/p90/max of both
steps in each phase, the ratio of the flooded p50 to the quiet one, how many listings per
second the node took and refused, the honest listing's beats and the seller with standing's
Advertises: how many were refused, their p50/max.
SECURITY.md ("Rate limits are per key, and keys are free") says what bounds the flood.

    python -m benchmarks.registry_flood                 # as `make bench` runs it
    python -m benchmarks.registry_flood flood ADDRESS THREADS SECONDS   # one flood process
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from agents import BuyerAgent, SellerAgent, per_call, skill
from benchmarks.deployed import ROOT, Party, _address
from benchmarks.tasks import Reply
from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from marketplace.testing import make_listing, make_skill
from marketplace.v1 import registry_pb2, registry_pb2_grpc

ROUNDS = 40
FLOOD_THREADS = 16  # in 2 processes
FLOOD_PROCESSES = 2
SETTLE_S = 3.0  # for the flood to reach its pace before the flooded phase
BEAT_EVERY_S = 0.5
RELIST_EVERY_S = 1.0


@skill(price=per_call("0.0001", "USD"))
def relisted(text: str) -> Reply:
    """Echo a text with its length (the seller with standing's skill)."""
    return Reply(text=text, length=len(text))


def big_listing(key: AgentKey) -> registry_pb2.Listing:
    """50 skills priced in 2 currencies, 15 description words and 8 tags each: about 6,000
    search rows, inside the registry's limits (a large honest listing)."""
    skills = []
    for i in range(50):
        skill = make_skill(f"s{i}", description=" ".join(f"w{j}" for j in range(15)))
        del skill.tags[:]
        skill.tags.extend(f"t{j}" for j in range(8))
        del skill.prices[:]
        for code in ("USD", "USDC"):
            skill.prices.add().CopyFrom(make_skill(currency=code).prices[0])
        skills.append(skill)
    return make_listing(key, *skills)


def flood(address: str, threads: int, seconds: float) -> None:
    """Advertise big listings under fresh keys from `threads` threads; print the counts and
    the seconds they took."""
    counts = {"taken": 0, "refused": 0}
    began = time.monotonic()
    end = began + seconds

    def advertise() -> None:
        while time.monotonic() < end:
            key = AgentKey.generate()
            with signed_channel(address, key) as channel:
                try:
                    registry_pb2_grpc.RegistryServiceStub(channel).Advertise(
                        registry_pb2.AdvertiseRequest(idempotency_key=f"flood:{uuid.uuid4()}",
                                                      listing=big_listing(key)), timeout=30)
                    counts["taken"] += 1
                except Exception:  # REGISTRY_BUSY, the point of the exercise: count, go on
                    counts["refused"] += 1

    def report(*_args: Any) -> None:
        print(f"flooded {counts['taken']} {counts['refused']} {time.monotonic() - began}",
              flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, report)  # stopped by the benchmark: say how it went
    workers = [threading.Thread(target=advertise, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    report()


def _rounds(buyer: BuyerAgent, listing: Any) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"hire": [], "finish": []}
    for i in range(ROUNDS):
        deal = buyer.negotiate(listing, "echo", quantity=1, budget="0.01", currency="USD")
        begun = time.perf_counter()
        buyer.hire(deal)
        times["hire"].append((time.perf_counter() - begun) * 1000)
        buyer.call(deal, {"text": f"call {i}"})
        begun = time.perf_counter()
        buyer.finish(deal)
        times["finish"].append((time.perf_counter() - begun) * 1000)
    return times


class _Repeated(threading.Thread):
    """An honest seller's request, sent every `every_s` through the flood (once each, no
    retry) until stopped: each answer's time, and how many were refused, as figures named
    `registry_flood_{many}`, `..._{many}_refused`, `..._{one}_p50_ms` and `..._{one}_max_ms`."""

    def __init__(self, address: str, key: AgentKey, every_s: float, one: str, many: str
                 ) -> None:
        super().__init__(daemon=True)
        self.key, self.every_s, self.one, self.many = key, every_s, one, many
        self.channel = signed_channel(address, key)
        self.stub = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.ms: list[float] = []
        self.refused = 0
        self.stopping = threading.Event()

    def send(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self.stopping.wait(self.every_s):
            begun = time.perf_counter()
            try:
                self.send()
                self.ms.append((time.perf_counter() - begun) * 1000)
            except grpc.RpcError:
                self.refused += 1

    def figures(self) -> dict[str, Any]:
        self.stopping.set()
        self.join()
        self.channel.close()
        ranked = sorted(self.ms) or [0.0]
        return {f"registry_flood_{self.many}": len(self.ms) + self.refused,
                f"registry_flood_{self.many}_refused": self.refused,
                f"registry_flood_{self.one}_p50_ms": round(statistics.median(ranked), 2),
                f"registry_flood_{self.one}_max_ms": round(ranked[-1], 2)}


class _Beats(_Repeated):
    """An honest seller's listing, advertised now, beating every `BEAT_EVERY_S`."""

    def __init__(self, address: str) -> None:
        super().__init__(address, AgentKey.generate(), BEAT_EVERY_S, "heartbeat", "heartbeats")
        self.stub.Advertise(registry_pb2.AdvertiseRequest(
            idempotency_key=f"advertise:{uuid.uuid4()}", ttl_s=60,
            listing=make_listing(self.key, make_skill("honest"))), timeout=30)

    def send(self) -> None:
        self.stub.Heartbeat(registry_pb2.HeartbeatRequest(agent_id=self.key.agent_id),
                            timeout=30)


class _Relists(_Repeated):
    """A seller with standing advertising its listing again every `RELIST_EVERY_S`."""

    def __init__(self, address: str, seller: SellerAgent) -> None:
        super().__init__(address, seller.key, RELIST_EVERY_S, "standing_relist",
                         "standing_relists")
        self.seller = seller

    def send(self) -> None:
        self.stub.Advertise(registry_pb2.AdvertiseRequest(
            idempotency_key=f"relist:{uuid.uuid4()}", listing=self.seller.listing(),
            ttl_s=self.seller.ttl_s), timeout=30)


def _sold_once(buyer: BuyerAgent, seller: SellerAgent) -> None:
    """One agreement settled with `seller` (its dispute window 0): it has standing after."""
    listing = next(found for found in buyer.discover("relisted", currency="USD")
                   if found.agent_id == seller.agent_id)
    deal = buyer.negotiate(listing, "relisted", quantity=1, budget="0.01", currency="USD")
    buyer.hire(deal)
    buyer.call(deal, {"text": "once"})
    buyer.finish(deal)
    give_up = time.monotonic() + 30
    while not any(found.agent_id == seller.agent_id and found.rated_agreements
                  for found in buyer.discover("relisted", currency="USD")):
        if time.monotonic() > give_up:
            raise RuntimeError("the seller's sale was not rated within 30 s")
        time.sleep(0.1)


def _figures(times: dict[str, list[float]], phase: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for step, values in times.items():
        ranked = sorted(values)
        out[f"registry_flood_{step}_{phase}p50_ms"] = round(statistics.median(ranked), 2)
        out[f"registry_flood_{step}_{phase}p90_ms"] = round(ranked[int(len(ranked) * 0.9)], 2)
        out[f"registry_flood_{step}_{phase}max_ms"] = round(ranked[-1], 2)
    return out


def run(progress: Any = None) -> dict[str, Any]:
    say = progress or (lambda _text: None)
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="agentmarket-flood-") as tmp:
        work = Path(tmp)
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "AGENTMARKET_TRACING": "off",
               "AGENTMARKET_HOME": str(work / "home")}
        parties = [Party([python, "-m", "marketplace.cli.main", "serve", "--db",
                          f"sqlite:///{work / 'market.db'}", "--port", "0", "--spans",
                          str(work / "spans.db")], work / "node.log", env)]
        try:
            address = _address(parties[0].wait_for("listening", timeout_s=180))
            parties.append(Party([python, "-m", "benchmarks._deployed_parties", "seller",
                                  address, "seller-0"], work / "seller.log", env))
            parties[1].wait_for("ready")
            with BuyerAgent("flood-buyer", marketplace=address) as buyer, \
                    SellerAgent("standing-seller", skills=[relisted], marketplace=address,
                                dispute_window_s=0) as seller:
                buyer.fund("10.00", "USD")
                listing = buyer.discover("echo", currency="USD")[0]
                say(f"registry flood: {ROUNDS} agreements, quiet")
                quiet = _rounds(buyer, listing)
                _sold_once(buyer, seller)
                say(f"registry flood: {ROUNDS} agreements, {FLOOD_THREADS} threads advertising")
                flooders = [Party([python, "-m", "benchmarks.registry_flood", "flood", address,
                                   str(FLOOD_THREADS // FLOOD_PROCESSES), "3600"],
                                  work / f"flood-{n}.log", env) for n in range(FLOOD_PROCESSES)]
                parties += flooders
                beats, relists = _Beats(address), _Relists(address, seller)
                time.sleep(SETTLE_S)
                beats.start()
                relists.start()
                begun = time.monotonic()
                flooded = _rounds(buyer, listing)
                flooded_s = time.monotonic() - begun
                beaten = {**beats.figures(), **relists.figures()}
                taken, refused = _stopped(flooders)
        finally:
            for party in reversed(parties):
                party.stop()
    results: dict[str, Any] = {"registry_flood_threads": FLOOD_THREADS,
                               **_figures(quiet, "quiet_"), **_figures(flooded, "")}
    for step in ("hire", "finish"):
        results[f"registry_flood_{step}_p50_vs_quiet_ratio"] = round(
            results[f"registry_flood_{step}_p50_ms"]
            / results[f"registry_flood_{step}_quiet_p50_ms"], 1)
    results["registry_flood_window_s"] = round(flooded_s, 1)
    results["registry_flood_listings_taken_per_s"] = round(taken, 1)
    results["registry_flood_listings_refused_per_s"] = round(refused, 1)
    return {**results, **beaten}


def _stopped(flooders: list[Party]) -> tuple[float, float]:
    """Stop the flood processes; the listings per second the node took and refused, each
    process's counts over its own flooding time."""
    taken = refused = 0.0
    for party in flooders:
        party.process.terminate()
        out, _ = party.process.communicate(timeout=30)
        counts = [line.split() for line in out.splitlines() if line.startswith("flooded ")]
        if counts:
            seconds = float(counts[-1][3])
            taken += int(counts[-1][1]) / seconds
            refused += int(counts[-1][2]) / seconds
    return taken, refused


if __name__ == "__main__":
    if sys.argv[1:2] == ["flood"]:
        flood(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        from rich.console import Console

        Console().print(run(print))
