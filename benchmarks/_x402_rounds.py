"""One round of the x402 benchmark (`benchmarks.x402_gateway`): its clients in a process of
their own, and what the round cost each party.

The clients (paid, unpaid or the floor's) make a warm-up call each (a paid one opens its
session), then the timed calls, then close their sessions; the door's and the server's process
are read for CPU between those steps, so the closes' share is reported apart from the calls'.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from typing import Any, NamedTuple

from benchmarks._process import cpu_s_so_far
from marketplace.heap import settle_heap
from marketplace.identity import AgentKey


def _clients(url: str, network: str, seeds: list[Any], calls: int, gateway: str,
             out: Any, go: Any, signature: str | None = None) -> None:
    """Child process: one concurrent client per seed, `calls` each; the first call of each is a
    warm-up (a paid one opens the session), after which it says "warm" on `out` and waits
    for `go`; reports the timed calls' wall and CPU time once all are answered, waits for
    `go` again, then closes every session at `gateway` and reports the closes' (none for a
    client that opened none). A seed None is an unpaid client, sending `signature` as its
    PAYMENT-SIGNATURE if given (the floor)."""
    import httpx

    from agents.x402 import close_sessions, http_client

    answered: list[int] = []  # clients whose timed calls are all answered

    async def one(seed: bytes | None, started: asyncio.Event, ready: list[int],
                  called: asyncio.Event, closing: asyncio.Event) -> None:
        if seed is None:
            client, schemes = httpx.AsyncClient(headers={"PAYMENT-SIGNATURE": signature}
                                                if signature else None), {}
        else:
            client, schemes = http_client(AgentKey.from_seed(seed), network,
                                          calls_per_session=calls + 1)
        async with client:
            first = await client.post(url, json={"text": "hello"})
            assert first.status_code == 200, first.text
            ready.append(1)
            await started.wait()
            for _ in range(calls - 1):
                response = await client.post(url, json={"text": "hello"})
                assert response.status_code == 200, response.text
            answered.append(1)
            if len(answered) == len(seeds):
                called.set()
            await closing.wait()
            await close_sessions(client, gateway, schemes)

    async def main() -> None:
        started, called, closing, ready = asyncio.Event(), asyncio.Event(), asyncio.Event(), []
        tasks = [asyncio.create_task(one(seed, started, ready, called, closing))
                 for seed in seeds]
        while len(ready) < len(seeds):
            await asyncio.sleep(0.01)
        settle_heap()  # the clients are made: a buyer's process settles its heap
        out.put("warm")  # the servers' CPU so far is the warm-up's (a paid one: the opening)
        go.get()
        begin, cpu = time.perf_counter(), time.process_time()
        started.set()
        await called.wait()
        out.put((time.perf_counter() - begin, time.process_time() - cpu))
        go.get()  # the servers' CPU so far is the calls'; what follows, the closes'
        begin, cpu = time.perf_counter(), time.process_time()
        closing.set()
        await asyncio.gather(*tasks)
        out.put((time.perf_counter() - begin, time.process_time() - cpu))

    asyncio.run(main())


class Round(NamedTuple):
    """One round's figures. The timed window holds the timed calls and then, for paid ones,
    the closing of each session (timed apart too); the warm-up, each client's first call,
    opens a paid client's session."""

    calls_per_s: float
    door_us: float  # CPU per timed call: the door's process, the server's, the clients'
    server_us: float
    clients_us: float
    door_open_ms: float  # CPU per client in the warm-up: the door's process, the server's
    server_open_ms: float
    door_close_us: float  # of door_us, server_us and clients_us: the closes' share
    server_close_us: float
    clients_close_us: float


def play_round(url: str, network: str, seeds: list[Any], calls: int, gateway: str,
               door_pid: int, server_pid: int, signature: str | None = None) -> Round:
    """One round of `seeds`' clients against `url`, `calls` each (the first a warm-up), in a
    process of their own (`_clients`), and what it cost the door's and the server's process
    (`door_pid`, `server_pid`)."""
    context = multiprocessing.get_context("spawn")
    out, go = context.Queue(), context.Queue()
    process = context.Process(target=_clients, args=(url, network, seeds, calls, gateway,
                                                     out, go, signature))
    door, server = cpu_s_so_far(door_pid), cpu_s_so_far(server_pid)
    process.start()
    if out.get(timeout=600) != "warm":
        raise RuntimeError("the clients did not finish their warm-up")
    warmed = cpu_s_so_far(door_pid), cpu_s_so_far(server_pid)
    warm = warmed[0] - door, warmed[1] - server
    go.put(True)
    calls_s, calls_clients = out.get(timeout=600)
    called = cpu_s_so_far(door_pid), cpu_s_so_far(server_pid)
    go.put(True)
    closes_s, closes_clients = out.get(timeout=600)
    closed = cpu_s_so_far(door_pid), cpu_s_so_far(server_pid)
    process.join(timeout=60)
    timed = len(seeds) * (calls - 1)

    def per_call(cpu_s: float) -> float:
        return cpu_s / timed * 1e6

    return Round(calls_per_s=timed / (calls_s + closes_s),
                 door_us=per_call(closed[0] - warmed[0]),
                 server_us=per_call(closed[1] - warmed[1]),
                 clients_us=per_call(calls_clients + closes_clients),
                 door_open_ms=warm[0] / len(seeds) * 1e3,
                 server_open_ms=warm[1] / len(seeds) * 1e3,
                 door_close_us=per_call(closed[0] - called[0]),
                 server_close_us=per_call(closed[1] - called[1]),
                 clients_close_us=per_call(closes_clients))
