"""A marketplace node (`agentmarket serve`) in its own process, for fault tests.

    with NodeProcess("sqlite:///market.db", workdir, operators=[op.agent_id]) as node:
        ... node.address ...
        node.kill()      # SIGKILL: no shutdown code runs
        node.start()     # the same port and database

`start` returns once the node printed that it listens (it does so after the gRPC server started
and health was set to SERVING), so no health polling with a channel's reconnect backoff.
`operators` are passed as `--operator`: only the marketplace (its node key, or an operator) may
capture or void a hold over the wallet API.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0  # a ceiling: three nodes migrating one database on a busy machine


# Ports for servers that restart on the same port: below Linux's ephemeral range (32768 up),
# which every bind to port 0 draws from, so that no other test's server, started while this
# one is down between a kill and its restart, can be given its port.
RESTART_PORTS = range(20_000, 32_768)


def free_port() -> int:
    """A free loopback port outside the ephemeral range (`RESTART_PORTS`)."""
    for _ in range(100):
        port = random.choice(RESTART_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken: another
            return port
    raise RuntimeError("no free port below the ephemeral range")


class NodeProcess:
    def __init__(self, db_url: str, workdir: Path, *, port: int = 0,
                 operators: tuple[str, ...] = (), extra_args: tuple[str, ...] = (),
                 module: str = "marketplace.cli.main",
                 first_env: dict[str, str] | None = None) -> None:
        """`module`: what runs `serve` (the fault suite's adds kill points); `first_env`:
        extra environment for the first start only (faults the restarted node is spared)."""
        self.module = module
        self.first_env = first_env or {}
        self.db_url = db_url
        self.operators = operators
        self.workdir = workdir
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.extra_args = extra_args
        self.process: subprocess.Popen[str] | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> str:
        """Start the node (the same port and database every time); wait until it serves."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTMARKET_TRACING": "off",
               **(self.first_env if self.starts == 0 else {})}
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        log = (self.workdir / f"node-{self.starts}.log").open("w")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, "serve", "--db", self.db_url,
                 "--port", str(self.port), "--spans", str(self.workdir / "spans.db"),
                 *(arg for o in self.operators for arg in ("--operator", o)), *self.extra_args],
                cwd=self.workdir, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        finally:
            log.close()
        self.starts += 1
        self._wait_listening()
        return self.address

    def _wait_listening(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        end = time.monotonic() + START_TIMEOUT_S
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while time.monotonic() < end:
                if not selector.select(timeout=max(0.0, end - time.monotonic())):
                    continue
                line = self.process.stdout.readline()
                if "listening" in line:
                    return
                if not line:  # it exited
                    break
        self.kill()
        tail = (self.workdir / f"node-{self.starts - 1}.log").read_text()[-2000:]
        raise RuntimeError(f"the marketplace node did not start:\n{tail}")

    def kill(self) -> None:
        """SIGKILL: the process dies wherever it is, mid-transaction or mid-commit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.kills += 1
        self._reap()

    def stop(self) -> None:
        """SIGTERM: a clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reap()

    def _reap(self) -> None:
        if self.process is not None:
            self.process.wait(timeout=20)
            if self.process.stdout is not None:
                self.process.stdout.close()

    def __enter__(self) -> NodeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

