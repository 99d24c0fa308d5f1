"""Where a node remembers recent nonces and counts each agent's calls: in its own process, or in
Redis so that every node of a market shares them.

`AuthServerInterceptor` asks a `RequestLimits` two things: is this (agent, nonce) new while its
timestamp is fresh (`first_use`), and may this subject make one more call now (`allow`).
`LocalLimits` answers from memory: right for one node (the embedded default), but a request
replayed to another node, or calls spread over several, escape it. `RedisLimits` answers from
one Redis, atomically (SET NX PX for nonces, a token bucket in a Lua script for rates, on
Redis's own clock), so a replay to any node is refused and a rate holds across nodes. When Redis
does not answer it raises `Unavailable` (LIMITS_UNAVAILABLE): fail closed, never unchecked.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from wallets.errors import InvalidArgument, Unavailable

__all__ = ["LocalLimits", "RedisLimits", "RequestLimits", "open_limits"]

REDIS_TIMEOUT_S = 2.0


class RequestLimits(Protocol):
    """Replay and rate checks for signed requests (see the module docstring)."""

    def first_use(self, key: str, fresh_until_ms: int, now_ms: int) -> bool | None:
        """True the first time `key` is seen, False for a replay, None when the store is full."""
        ...

    def allow(self, subject: str) -> bool:
        """Take one call from `subject`'s token bucket; False when it is empty."""
        ...


class _NonceCache:
    """(agent, nonce) pairs, each kept until its timestamp is no longer fresh. Bounded: when
    full of fresh entries it refuses new ones (fail closed) instead of forgetting any."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._expiry: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._max = max_entries
        self._lock = threading.Lock()

    def first_use(self, key: str, fresh_until_ms: int, now_ms: int) -> bool | None:
        """True the first time, False for a replay, None when the cache is full."""
        with self._lock:
            while self._heap and self._heap[0][0] < now_ms:
                _, old = heapq.heappop(self._heap)
                self._expiry.pop(old, None)
            if key in self._expiry:
                return False
            if len(self._expiry) >= self._max:
                return None
            self._expiry[key] = fresh_until_ms
            heapq.heappush(self._heap, (fresh_until_ms, key))
            return True

    def __len__(self) -> int:
        return len(self._expiry)


class _RateLimiter:
    """A token bucket per agent: `rate_per_s` sustained, `burst` at once. Bounded: buckets idle
    long enough to be full again are dropped (the same as absent); if every bucket is busy,
    new agents are refused until some calm down."""

    def __init__(self, rate_per_s: float, burst: int, max_agents: int = 100_000,
                 clock_s: Callable[[], float] = time.monotonic) -> None:
        _check_rate(rate_per_s, burst)
        self.rate, self.burst, self.max_agents = rate_per_s, burst, max_agents
        self.clock_s = clock_s
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, agent_id: str) -> bool:
        now = self.clock_s()
        with self._lock:
            if agent_id not in self._buckets and len(self._buckets) >= self.max_agents:
                refill_s = self.burst / self.rate
                self._buckets = {k: v for k, v in self._buckets.items()
                                 if now - v[1] < refill_s}
                if len(self._buckets) >= self.max_agents:
                    return False
            tokens, at = self._buckets.get(agent_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1:
                self._buckets[agent_id] = (tokens, now)
                return False
            self._buckets[agent_id] = (tokens - 1, now)
            return True


def _check_rate(rate_per_s: float, burst: int) -> None:
    if rate_per_s <= 0 or burst < 1:
        raise ValueError("the rate limit needs rate_per_s > 0 and burst >= 1")


class LocalLimits:
    """Nonces and token buckets in this process (one node's own; bounded, fail closed)."""

    def __init__(self, rate_per_s: float, burst: int, *, max_nonces: int = 1_000_000,
                 max_agents: int = 100_000) -> None:
        self.nonces = _NonceCache(max_nonces)
        self.limiter = _RateLimiter(rate_per_s, burst, max_agents)

    def first_use(self, key: str, fresh_until_ms: int, now_ms: int) -> bool | None:
        return self.nonces.first_use(key, fresh_until_ms, now_ms)

    def allow(self, subject: str) -> bool:
        return self.limiter.allow(subject)


# A token bucket in one step: refill by the time since the last call (Redis's clock, the same
# for every node), take a token if there is one, and expire the key once it would be full.
_BUCKET = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return allowed
"""


class RedisLimits:
    """Nonces and token buckets in Redis, shared by every node that names the same Redis and
    `prefix`. Each check is one atomic command; a Redis that does not answer within
    `timeout_s` (or refuses: out of memory) raises Unavailable, so the call is refused."""

    def __init__(self, url: str, rate_per_s: float, burst: int, *, prefix: str = "agentmarket",
                 timeout_s: float = REDIS_TIMEOUT_S) -> None:
        import redis

        _check_rate(rate_per_s, burst)
        self.rate, self.burst, self.prefix = rate_per_s, burst, prefix
        try:
            self.client: Any = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        except ValueError as error:
            raise InvalidArgument(f"{url!r} is not a Redis URL (redis://HOST:PORT/DB): "
                                  f"{error}") from None
        self._bucket = self.client.register_script(_BUCKET)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    def first_use(self, key: str, fresh_until_ms: int, now_ms: int) -> bool | None:
        keep_ms = max(1, fresh_until_ms - now_ms)
        try:
            return bool(self.client.set(f"{self.prefix}:nonce:{key}", b"1", nx=True,
                                        px=keep_ms))
        except self._errors as error:
            raise _unavailable("replay check", error) from None

    def allow(self, subject: str) -> bool:
        try:
            return bool(self._bucket(keys=[f"{self.prefix}:rate:{subject}"],
                                     args=[repr(float(self.rate)), str(self.burst)]))
        except self._errors as error:
            raise _unavailable("rate limit", error) from None

    def close(self) -> None:
        self.client.close()


def _unavailable(what: str, error: BaseException) -> Unavailable:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return Unavailable(f"the shared {what} store (Redis) did not answer, so the request was "
                       f"refused rather than let through unchecked; retry shortly ({first})",
                       reason="LIMITS_UNAVAILABLE")


def open_limits(redis_url: str | None, rate_per_s: float, burst: int) -> RequestLimits:
    """Redis-backed limits for `redis_url`, else this process's own."""
    if redis_url:
        return RedisLimits(redis_url, rate_per_s, burst)
    return LocalLimits(rate_per_s, burst)
