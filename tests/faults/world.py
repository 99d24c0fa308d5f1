"""One fault run: a node, sellers and buyers as real processes, links through proxies, and a
seeded schedule of faults; then the invariants (`tests.faults.invariants`).

Everything random comes from `random.Random(seed)`: the parties' keys, the kinds of buyer, the
kill points, the clock offsets and the schedule (what, when, for how long). Processes and the
network add their own timing, so a seed replays the same faults at the same moments, not the
same interleaving to the microsecond; a failing seed is run again to reproduce.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from marketplace.identity import AgentKey
from tests.faults.faulty import refusing_log
from tests.faults.invariants import FINAL, BuyerRun, check
from tests.faults.proxy import Proxy
from tests.processes import node as node_process
from tests.processes.node import NodeProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
# Sellers' completion window and redeem margin: a long run on a busy machine (niced, its
# processes slowed many times over) wants them longer, or a starved seller misses its deadline.
# A node killed mid-run can take over 10 s to start again while the suite runs in parallel: a
# window shorter than that lets agreements expire before their seller can redeem.
WINDOW_S = int(os.environ.get("FAULTS_WINDOW_S", "20"))
MARGIN_S = WINDOW_S // 2
SELLER_KILLS = ("before_open", "after_open", "before_record", "after_record", "before_redeem",
                "after_redeem")
READY_TIMEOUT_S = 180.0
BUYERS_TIMEOUT_S = 900.0
FINAL_TIMEOUT_S = 300.0
node_process.START_TIMEOUT_S = READY_TIMEOUT_S  # a node starting on a busy machine


@dataclass
class Proc:
    """A party's process: started again with the same arguments, its faults cleared."""

    name: str
    argv: list[str]
    env: dict[str, str]
    workdir: Path
    process: subprocess.Popen[str] | None = None
    starts: int = 0
    killed: bool = False  # a SIGKILL (ours or its own kill point) ended one of its runs

    def start(self, ready: str | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTMARKET_TRACING": "off",
               **(self.env if self.starts == 0 else {})}
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        with (self.workdir / f"{self.name}-{self.starts}.log").open("w") as log:
            self.process = subprocess.Popen([sys.executable, *self.argv], cwd=self.workdir,
                                            env=env, stdout=subprocess.PIPE, stderr=log,
                                            text=True)
        self.starts += 1
        if ready is not None:
            self.wait_ready(ready)

    def wait_ready(self, ready: str) -> None:
        """Until the process prints `ready` (or dies first: a kill point; started later)."""
        assert self.process is not None and self.process.stdout is not None
        end = time.monotonic() + READY_TIMEOUT_S
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while time.monotonic() < end:
                if selector.select(timeout=0.2):
                    line = self.process.stdout.readline()
                    if ready in line:
                        return
                    if not line:
                        return  # it died before it was ready (a kill point): restarted later
        raise RuntimeError(f"{self.name} did not start: see {self.workdir}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def reap(self) -> int | None:
        """The exit status if it ended (noting a SIGKILL), else None."""
        if self.process is None or self.process.poll() is None:
            return None
        code = self.process.returncode
        if code == -signal.SIGKILL:
            self.killed = True
        return code

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.killed = True

    def stop(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Seller:
    proc: Proc
    key: AgentKey
    journal: Path
    proxy: Proxy
    unwritable: bool = False

    def journal_unwritable(self, on: bool) -> None:
        """The journal refuses the seller's call records (a full disk, as the seller sees it):
        its calls table is gone, and its call log's appends fail (`seller.py` looks for the
        marker file `refusing_log`)."""
        if on == self.unwritable or not self.journal.exists():
            return
        names = ("agentmarket_seller_calls", "calls_away")
        old, new = names if on else names[::-1]
        with sqlite3.connect(self.journal, timeout=10) as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (old,)).fetchone():
                conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
        marker = refusing_log(self.journal)
        if on:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)
        self.unwritable = on


@dataclass
class Event:
    at_s: float
    what: str
    action: Callable[[], None]


@dataclass
class World:
    seed: int
    workdir: Path
    say: Callable[[str], None] = print
    rng: random.Random = field(init=False)
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db_url = f"sqlite:///{self.workdir / 'market.db'}"

    def _key(self) -> AgentKey:
        return AgentKey.from_seed(self.rng.randbytes(32))

    def _skew(self, limit_s: float) -> dict[str, str]:
        if self.rng.random() < 0.5:
            return {}
        return {"FAULT_CLOCK_S": f"{self.rng.uniform(-limit_s, limit_s):.3f}",
                "FAULT_JUMP": f"{self.rng.uniform(0.5, 4):.2f}:"
                              f"{self.rng.uniform(-limit_s, limit_s):.3f}"}

    def _kill_point(self, points: tuple[str, ...], chance: float, most: int) -> dict[str, str]:
        if self.rng.random() >= chance:
            return {}
        return {"FAULT_KILL": f"{self.rng.choice(points)}:{self.rng.randint(1, most)}"}

    # ---- setting up ---------------------------------------------------------------------------

    def build(self, sellers: int, buyers: int) -> None:
        node_env = self._kill_point(("before_commit", "after_commit"), 0.4, 12)
        self.node = NodeProcess(self.db_url, self.workdir / "node", module="tests.faults.node",
                                first_env=node_env)
        self.say(f"  node {node_env or ''}")
        self.node.start()
        self.node_proxy = Proxy(self.node.port, "node")
        self.sellers = []
        for n in range(sellers):
            key, port = self._key(), free_port()
            key.save(self.workdir / f"seller-{n}.key")
            proxy = Proxy(port, f"seller-{n}")
            journal = self.workdir / f"seller-{n}.db"
            env = {**self._kill_point(SELLER_KILLS, 0.7, 4), **self._skew(0.5)}
            if self.rng.random() < 0.5:  # some call records fail as on a full disk
                env["FAULT_DISK_FULL"] = f"{self.rng.randint(1, 4)}:{self.rng.randint(1, 3)}"
            proc = Proc(f"seller-{n}", ["-m", "tests.faults.seller", self.node_proxy.address,
                                        str(self.workdir / f"seller-{n}.key"), str(journal),
                                        str(port), proxy.address, str(WINDOW_S), str(MARGIN_S)],
                        env, self.workdir)
            self.sellers.append(Seller(proc, key, journal, proxy))
            self.say(f"  seller-{n} {key.agent_id[:12]} {env or ''}")
        for seller in self.sellers:  # all at once, then wait for each
            seller.proc.start()
        for seller in self.sellers:
            seller.proc.wait_ready("ready")
        self.buyers: list[tuple[Proc, BuyerRun]] = []
        for n in range(buyers):
            kind = self.rng.choice(("plain", "checkpointed"))
            key = self._key()
            key.save(self.workdir / f"buyer-{n}.key")
            calls = self.rng.randint(3, 6)
            seller = self.sellers[n % len(self.sellers)]
            env = {**self._kill_point(("after_answer",), 0.5, calls), **self._skew(2.0)}
            if kind == "plain" and self.rng.random() < 0.5:
                env["FAULT_IMPATIENT"] = "1"
            record = self.workdir / f"buyer-{n}.jsonl"
            proc = Proc(f"buyer-{n}", ["-m", "tests.faults.buyer", kind,
                                       self.node_proxy.address,
                                       str(self.workdir / f"buyer-{n}.key"), str(record),
                                       seller.key.agent_id, str(calls),
                                       str(self.workdir / f"buyer-{n}.ckpt")], env,
                        self.workdir)
            self.buyers.append((proc, BuyerRun(f"buyer-{n}", kind, key.agent_id, record)))
            self.say(f"  buyer-{n} {kind} {calls} calls to seller-{n % len(self.sellers)} "
                     f"{env or ''}")

    def schedule(self, faults: int, span_s: float) -> None:
        """`faults` faults at random moments of the first `span_s` seconds."""
        for _ in range(faults):
            at = self.rng.uniform(0.0, span_s)
            kind = self.rng.choice(("kill_seller", "kill_node", "journal", "journal_crash",
                                    "drop", "slow", "kill_buyer"))
            lasts = self.rng.uniform(0.2, 1.5)
            if kind == "kill_seller":
                seller = self.rng.choice(self.sellers)
                self._at(at, f"kill -9 {seller.proc.name}", seller.proc.kill)
            elif kind == "kill_node":
                self._at(at, "kill -9 node", self.node.kill)
                self._at(at + lasts, "node back", self._node_up)
            elif kind == "journal_crash":  # a full disk, then the seller dies
                seller = self.rng.choice(self.sellers)
                self._at(at, f"{seller.proc.name}'s journal unwritable",
                         lambda s=seller: s.journal_unwritable(True))  # type: ignore[misc]
                self._at(at + lasts, f"{seller.proc.name}'s journal back",
                         lambda s=seller: s.journal_unwritable(False))  # type: ignore[misc]
                self._at(at + lasts + self.rng.uniform(0.2, 1.5), f"kill -9 {seller.proc.name}",
                         seller.proc.kill)
            elif kind == "journal":
                seller = self.rng.choice(self.sellers)
                self._at(at, f"{seller.proc.name}'s journal unwritable",
                         lambda s=seller: s.journal_unwritable(True))  # type: ignore[misc]
                self._at(at + lasts, f"{seller.proc.name}'s journal back",
                         lambda s=seller: s.journal_unwritable(False))  # type: ignore[misc]
            elif kind in ("drop", "slow"):
                proxy = self.rng.choice([self.node_proxy, *(s.proxy for s in self.sellers)])
                delay = self.rng.uniform(0.02, 0.3)
                self._at(at, f"link to {proxy.name} {kind}",
                         proxy.drop if kind == "drop" else lambda p=proxy, d=delay: p.delay(d))  # type: ignore[misc]
                self._at(at + lasts, f"link to {proxy.name} healed", proxy.heal)
            else:
                proc, _run = self.rng.choice(self.buyers)
                self._at(at, f"kill -9 {proc.name}", proc.kill)

    def _at(self, at_s: float, what: str, action: Callable[[], None]) -> None:
        self.events.append(Event(at_s, what, action))

    def _revive_node(self, restarts: dict[str, float], now: float) -> None:
        """The node died at a kill point: start it again after a short, seeded pause."""
        starting = getattr(self, "_node_starting", None)
        if (starting is not None and starting.is_alive()) or self.node.process is None \
                or self.node.process.poll() is None:
            return
        due = restarts.setdefault("node", now + self.rng.uniform(0.2, 1.2))
        if now >= due:
            del restarts["node"]
            self.say(f"  {now:6.2f}s node started again")
            self._node_up()

    def _start_node(self) -> None:
        try:
            self.node.start()
        except RuntimeError:  # killed again while starting (the schedule's doing): next time
            self.say("  (the node was killed while it started)")

    def _node_up(self, wait: bool = False) -> None:
        """Start the node again, on a thread (it takes seconds: the schedule goes on)."""
        starting = getattr(self, "_node_starting", None)
        down = self.node.process is None or self.node.process.poll() is not None
        if (starting is None or not starting.is_alive()) and down:
            starting = self._node_starting = threading.Thread(target=self._start_node,
                                                              daemon=True)
            starting.start()
        if wait and starting is not None:
            starting.join()

    # ---- running ------------------------------------------------------------------------------

    def run(self) -> None:
        for proc, _run in self.buyers:
            proc.start()
        start = time.monotonic()
        self._last_tick = 0.0
        pending = sorted(self.events, key=lambda e: e.at_s)
        restarts: dict[str, float] = {}
        hired: float | None = None
        while time.monotonic() - start < BUYERS_TIMEOUT_S:
            now = time.monotonic() - start
            if now - self._last_tick > 2.0:
                self.say(f"  {now:6.2f}s (the driver was busy {now - self._last_tick:.1f} s)")
            self._last_tick = now
            if hired is None and self._hired():
                hired = now  # the schedule's clock starts with the first agreement
                self.say(f"  {now:6.2f}s first agreement: the faults' clock starts")
            while hired is not None and pending and pending[0].at_s <= now - hired:
                event = pending.pop(0)
                self.say(f"  {now:6.2f}s {event.what}")
                event.action()
            self._revive_node(restarts, now)
            for seller in self.sellers:
                self._revive(seller.proc, restarts, now,
                             before=lambda s=seller: s.journal_unwritable(False))  # type: ignore[misc]
            busy = False
            for proc, buyer in self.buyers:
                code = proc.reap()
                if code is None:
                    busy = busy or proc.process is not None
                elif code == -signal.SIGKILL and buyer.kind == "checkpointed":
                    busy = True
                    self._revive(proc, restarts, now)
            if not busy and (not pending or hired is None):
                return
            time.sleep(0.05)
        raise RuntimeError(f"seed {self.seed}: the buyers did not finish in "
                           f"{BUYERS_TIMEOUT_S:.0f} s; see {self.workdir}")

    def _revive(self, proc: Proc, restarts: dict[str, float], now: float,
                before: Callable[[], None] | None = None) -> None:
        """Start a killed process again after a short, seeded pause."""
        if proc.running or proc.process is None:
            return
        proc.reap()
        due = restarts.setdefault(proc.name, now + self.rng.uniform(0.2, 1.2))
        if now < due:
            return
        del restarts[proc.name]
        if before is not None:
            before()
        self.say(f"  {now:6.2f}s {proc.name} started again")
        proc.start()

    def settle(self) -> list[str]:
        """Heal everything, let the agreements end, stop the parties; the invariants' verdict."""
        for proxy in [self.node_proxy, *(s.proxy for s in self.sellers)]:
            proxy.heal()
        self._node_up(wait=True)
        for seller in self.sellers:
            seller.journal_unwritable(False)
            if not seller.proc.running:
                seller.proc.start()
        end = time.monotonic() + FINAL_TIMEOUT_S
        while time.monotonic() < end and not self._all_final():
            time.sleep(0.2)  # a party may still die at a kill point (a sweep's commit): revive
            self._node_up()
            for seller in self.sellers:
                if not seller.proc.running:
                    seller.proc.start()
        for seller in self.sellers:
            seller.proc.stop()
        self.node.stop()
        for proxy in [self.node_proxy, *(s.proxy for s in self.sellers)]:
            proxy.close()
        buyers = [run for proc, run in self.buyers]
        for proc, run in self.buyers:
            run.killed = proc.killed
        return check(self.db_url, buyers)

    def _hired(self) -> bool:
        """Whether any agreement is open at the node (buyers start slowly: the faults are
        meant for the paid path, not for the processes' imports)."""
        return bool(self._escrow_states())

    def _escrow_states(self) -> list[str]:
        path = self.workdir / "market.db"
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
                return [row[0] for row in conn.execute("SELECT state FROM escrows")]
        except sqlite3.Error:
            return []

    def _all_final(self) -> bool:
        path = self.workdir / "market.db"
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
                states = [row[0] for row in conn.execute("SELECT state FROM escrows")]
        except sqlite3.Error:
            return False
        return all(state in FINAL for state in states)

    def close(self) -> None:
        for proc in [*(s.proc for s in self.sellers), *(p for p, _ in self.buyers)]:
            proc.kill()
        self.node.kill()


def run_seed(seed: int, workdir: Path, *, say: Callable[[str], None] = print) -> list[str]:
    """One run with this seed; the violations found (empty: every invariant held)."""
    world = World(seed, workdir, say)
    rng = world.rng
    say(f"seed {seed}")
    try:
        started = time.monotonic()
        world.build(sellers=rng.randint(1, 2), buyers=rng.randint(2, 3))
        world.schedule(faults=rng.randint(2, 5), span_s=4.0)
        built = time.monotonic()
        world.run()
        ran = time.monotonic()
        problems = world.settle()
        say(f"  (set up {built - started:.1f} s, buyers {ran - built:.1f} s, settling "
            f"{time.monotonic() - ran:.1f} s)")
        return problems
    finally:
        world.close()
