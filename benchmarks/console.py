"""The operator console over 10,000 agreements: how long its pages take, in the deployed shape.

Builds a market of 10,000 agreements in one SQLite file through the settlement service (every
escrow a real hold on the ledger; a tenth redeemed and confirmed, so settled, and a few disputed),
then starts `agentmarket serve --console` on that file in its own process, logs in with the
printed one-time token and measures, after a warm-up:

    server     the console's own time per page (its Server-Timing `total`: reads + render)
    http       one GET over loopback HTTP from another process (httpx, keep-alive)
    load       a full page load in headless Chromium (navigation start to the load event,
               stylesheet and htmx included), when Debian's chromium is installed

for the agreements list (first page; a page 100 pages deep; one state), the overview and one
agreement's detail. The baseline, measured in the same run against the same server, is
`/healthz` (the smallest answer the ASGI app gives), so the ratio shows what a page costs beyond
the HTTP round trip. Run: `python -m benchmarks.console [agreements]` (or `make bench`).
No figure is asserted; the target is a page under 200 ms.
"""

from __future__ import annotations

import os
import re
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

from benchmarks._process import terminate

AGREEMENTS = 10_000
SETTLED_EVERY = 10
DISPUTED_EVERY = 50
REQUESTS = 100
PAGE_LOADS = 200  # a p99 of a few dozen loads would be their maximum
WARMUP = 10
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("AGENTMARKET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_market(db_path: Path, agreements: int, progress: Callable[[str], None]) -> list[str]:
    """`agreements` escrows through the settlement service, from 8 threads so the ledger's
    group commit batches them; returns their ids."""
    from marketplace.testing import Harness, make_skill
    from wallets.store import make_engine

    engine = make_engine(f"sqlite:///{db_path}")

    @event.listens_for(engine, "connect")
    def _seed_fast(dbapi_connection: Any, _record: Any) -> None:
        """The seed is not measured: skip the fsync per commit (the node that serves the
        file afterwards opens it with its own, durable settings)."""
        dbapi_connection.execute("PRAGMA synchronous=OFF")

    harness = Harness(engine, lambda: time.time_ns() // 1_000_000)
    harness.advertise(make_skill(price_atomic=1_000_000))
    harness.fund(harness.buyer, 10**15)
    ids: list[str] = [""] * agreements
    done = [0]

    def one(i: int) -> None:  # each deal made just before it opens: offers lapse in a minute
        deal = harness.deal(price_atomic=1_000_000, quantity=5, dispute_window_s=3600)
        ids[i] = deal.agreement_id
        harness.settlement.open_escrow(f"open-{i}", deal.signed)
        if i % SETTLED_EVERY == 0:
            harness.redeem(deal, [{"text": f"output {i}"}] * 3, key=f"redeem-{i}")
            if i % DISPUTED_EVERY == 0:
                harness.dispute(deal, "the outputs are wrong", key=f"dispute-{i}")
            else:
                harness.confirm(deal, key=f"confirm-{i}")
        done[0] += 1
        if done[0] % 500 == 0:
            progress(f"console: {done[0]:,} of {agreements:,} agreements")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(agreements)))
    harness.close()
    engine.dispose()
    return ids


class _Node:
    """`agentmarket serve --console` on the market's file, in its own process."""

    def __init__(self, workdir: Path, db_path: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTMARKET_TRACING": "off"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "marketplace.cli.main", "serve", "--db",
             f"sqlite:///{db_path}", "--port", "0", "--console", "--console-port", "0",
             "--spans", str(workdir / "spans.db")],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.login_url = self._wait_for(r"console login \(one-time\): (\S+)")

    def _wait_for(self, pattern: str, timeout_s: float = 60.0) -> str:
        assert self.process.stdout is not None
        end = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while time.monotonic() < end:
                if not selector.select(timeout=1.0):
                    continue
                line = self.process.stdout.readline()
                if not line:
                    break
                if found := re.search(pattern, line):
                    return found.group(1)
        self.stop()
        raise RuntimeError("the node with its console did not start")

    def stop(self) -> None:
        terminate(self.process)


def _log_in(login_url: str) -> tuple[httpx.Client, str]:
    base = login_url.split("/console/")[0]
    token = login_url.split("token=")[1]
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
    page = client.get("/console/login", params={"token": token})
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', page.text)
    assert nonce is not None
    answer = client.post("/console/login", data={"token": token, "operator": "benchmark",
                                                  "login_nonce": nonce.group(1)})
    assert answer.status_code == 303, answer.text[:300]
    return client, base


def _server_ms(response: httpx.Response) -> float:
    found = re.search(r"total;dur=([0-9.]+)", response.headers.get("server-timing", ""))
    return float(found.group(1)) if found else float("nan")


def _measure(client: httpx.Client, path: str, requests: int) -> tuple[list[float], list[float]]:
    """(http ms, server ms) per request, after a warm-up."""
    for _ in range(WARMUP):
        assert client.get(path).status_code == 200
    wall, server = [], []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        wall.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, path
        server.append(_server_ms(response))
    return wall, server


def _page_loads(base: str, session_cookie: str, path: str, loads: int) -> list[float] | None:
    """Navigation start to the load event in headless Chromium, ms; None without chromium."""
    if not CHROMIUM.exists():
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context()
        context.add_cookies([{"name": "agentmarket_console", "value": session_cookie,
                              "url": f"{base}/console/"}])
        page = context.new_page()
        times = []
        for i in range(WARMUP + loads):
            page.goto(base + path, wait_until="load")
            timing = page.evaluate("(() => { const n = performance.getEntriesByType("
                                   "'navigation')[0]; return n.loadEventEnd - n.startTime; })()")
            if i >= WARMUP:
                times.append(float(timing))
        browser.close()
    return times


def run(progress: Any = None, *, agreements: int = AGREEMENTS) -> dict[str, Any]:
    say = progress or (lambda _text: None)
    workdir = Path(tempfile.mkdtemp(prefix="agentmarket-console-bench-"))
    db_path = workdir / "market.db"
    started = time.perf_counter()
    ids = build_market(db_path, agreements, say)
    results: dict[str, Any] = {"console_agreements": agreements,
                               "console_seed_s": round(time.perf_counter() - started, 1)}
    say("console: starting the node")
    node = _Node(workdir, db_path)
    try:
        client, base = _log_in(node.login_url)
        first = client.get("/console/agreements").text
        cursor = ""
        for _ in range(100):  # follow "Older" 100 times: a deep page
            found = re.search(r'cursor=([0-9]+:[0-9a-f]{64})', first)
            if not found:
                break
            cursor = found.group(1)
            first = client.get(f"/console/agreements?cursor={cursor}").text
        pages = {"page": "/console/agreements",
                 "deep_page": f"/console/agreements?cursor={cursor}",
                 "state_page": "/console/agreements?state=settled",
                 "overview": "/console/",
                 "detail": f"/console/agreements/{ids[0]}"}
        say("console: measuring the baseline")
        healthz, _ = _measure(client, "/healthz", REQUESTS)
        results["console_healthz_http_p50_ms"] = round(statistics.median(healthz), 3)
        for name, path in pages.items():
            say(f"console: measuring {name}")
            wall, server = _measure(client, path, REQUESTS)
            results[f"console_{name}_server_p50_ms"] = round(statistics.median(server), 2)
            results[f"console_{name}_server_p99_ms"] = round(_percentile(server, 0.99), 2)
            results[f"console_{name}_http_p50_ms"] = round(statistics.median(wall), 2)
            results[f"console_{name}_http_p99_ms"] = round(_percentile(wall, 0.99), 2)
        results["console_page_vs_healthz_ratio"] = round(
            results["console_page_http_p50_ms"] / results["console_healthz_http_p50_ms"], 1)
        say("console: full page loads in Chromium")
        session = client.cookies.get("agentmarket_console", path="/console") or ""
        loads = _page_loads(base, session, "/console/agreements", PAGE_LOADS)
        if loads is None:
            results["console_page_load_p50_ms"] = results["console_page_load_p99_ms"] = None
            results["console_page_load_note"] = f"no Chromium at {CHROMIUM}"
        else:
            results["console_page_load_p50_ms"] = round(statistics.median(loads), 1)
            results["console_page_load_p99_ms"] = round(_percentile(loads, 0.99), 1)
            results["console_page_load_note"] = ""
        worst = max(results["console_page_server_p99_ms"], results["console_page_http_p99_ms"],
                    results.get("console_page_load_p99_ms") or 0)
        results["console_page_under_200ms"] = worst < 200
        client.close()
    finally:
        node.stop()
    return results


if __name__ == "__main__":
    import json

    count = int(sys.argv[1]) if len(sys.argv) > 1 else AGREEMENTS
    print(json.dumps(run(print, agreements=count), indent=2))
