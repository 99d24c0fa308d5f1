"""Where a node remembers recent nonces and counts each agent's calls: in its own process, or in
Redis so that every node of a market shares them.

`AuthServerInterceptor` asks a `RequestLimits` two things at once (`admit`): is this (agent,
nonce) new while its timestamp is fresh, and may the agent make one more call now; and, for
unsigned paid calls, only the second (`allow`, per agreement).
`LocalLimits` answers from memory: right for one node (the embedded default), but a request
replayed to another node, or calls spread over several, escape it. `RedisLimits` answers from
one Redis, atomically and in one round trip (a Lua script: a replayed nonce is refused, then
a token from a bucket on Redis's own clock, then the nonce kept (never one of a refused call,
so a flood beyond an agent's rate stores nothing); both keys carry the agent as a hash tag, so
the script is Redis Cluster safe), so a replay to any node is refused and a rate holds across
nodes. When Redis does not answer it raises `Unavailable` (LIMITS_UNAVAILABLE): fail closed,
never unchecked.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from wallets.errors import InvalidArgument, Unavailable

__all__ = ["ADMITTED", "LIMITED", "NONCES_FULL", "REPLAYED", "LocalLimits", "RedisLimits",
           "RequestLimits", "open_limits"]

REDIS_TIMEOUT_S = 2.0
ADMITTED, REPLAYED, NONCES_FULL, LIMITED = "admitted", "replayed", "nonces_full", "limited"


class RequestLimits(Protocol):
    """Replay and rate checks for signed requests (see the module docstring)."""

    def admit(self, agent: str, nonce: str, fresh_until_ms: int, now_ms: int) -> str:
        """ADMITTED; REPLAYED (the nonce was seen: no token taken); NONCES_FULL (nothing
        recorded); LIMITED (the bucket was empty: nothing recorded, so an agent's nonces kept
        are bounded by its rate)."""
        ...

    def allow(self, subject: str, cost: int = 1) -> bool:
        """Take `cost` tokens (one call, or a dearer check counted in calls) from
        `subject`'s bucket, at most its burst; False, and none taken, when it holds fewer."""
        ...


class _NonceCache:
    """(agent, nonce) pairs, each kept until its timestamp is no longer fresh. Bounded: when
    full of fresh entries it refuses new ones (fail closed) instead of forgetting any."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._expiry: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._max = max_entries
        self._lock = threading.Lock()

    def seen(self, key: str) -> bool:
        """Whether `key` is kept (a replay), recording nothing."""
        with self._lock:
            return key in self._expiry

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


class RateLimiter:
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

    def allow(self, agent_id: str, cost: int = 1) -> bool:
        cost = _tokens(cost, self.burst)
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
            if tokens < cost:
                self._buckets[agent_id] = (tokens, now)
                return False
            self._buckets[agent_id] = (tokens - cost, now)
            return True


def _tokens(cost: int, burst: int) -> int:
    """What a request of `cost` takes: at least one token, at most a full bucket (so a dear
    request still passes once the bucket is full)."""
    return max(1, min(cost, burst))


def _check_rate(rate_per_s: float, burst: int) -> None:
    if rate_per_s <= 0 or burst < 1:
        raise ValueError("the rate limit needs rate_per_s > 0 and burst >= 1")


class LocalLimits:
    """Nonces and token buckets in this process (one node's own; bounded, fail closed)."""

    def __init__(self, rate_per_s: float, burst: int, *, max_nonces: int = 1_000_000,
                 max_agents: int = 100_000) -> None:
        self.nonces = _NonceCache(max_nonces)
        self.limiter = RateLimiter(rate_per_s, burst, max_agents)

    def admit(self, agent: str, nonce: str, fresh_until_ms: int, now_ms: int) -> str:
        key = f"{agent}:{nonce}"
        if self.nonces.seen(key):
            return REPLAYED
        if not self.limiter.allow(agent):
            return LIMITED
        first = self.nonces.first_use(key, fresh_until_ms, now_ms)
        if first is None:
            return NONCES_FULL
        return ADMITTED if first else REPLAYED

    def allow(self, subject: str, cost: int = 1) -> bool:
        return self.limiter.allow(subject, cost)


# A token bucket in one step: refill by the time since the last call (Redis's clock, the same
# for every node), take a token if there is one, and expire the key once it would be full.
_TAKE = """
local function take(key, rate, burst, cost)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', key, 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil or at == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local allowed = 0
if tokens >= cost then tokens = tokens - cost; allowed = 1 end
redis.call('HSET', key, 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
return allowed
end
"""
# allow: KEYS = bucket; ARGV = rate, burst, cost. 1 allowed, 0 not.
_BUCKET = _TAKE + "return take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))"
# admit: KEYS = nonce, bucket; ARGV = rate, burst, keep_ms. 1 admitted, 0 replayed, 2 limited
# (its nonce not kept: what one agent makes Redis keep is bounded by its rate).
_ADMIT = _TAKE + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if take(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), 1) == 0 then return 2 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
return 1
"""


class RedisLimits:
    """Nonces and token buckets in Redis, shared by every node that names the same Redis and
    `prefix`. Each check is one atomic command; a Redis that does not answer within
    `timeout_s` (or refuses: out of memory) raises Unavailable, so the call is refused."""

    def __init__(self, url: str, rate_per_s: float, burst: int, *, prefix: str = "agentmarket",
                 timeout_s: float = REDIS_TIMEOUT_S) -> None:
        import redis

        _check_rate(rate_per_s, burst)
        if not 0 < timeout_s <= 60:
            raise InvalidArgument("the Redis timeout must be above 0 and at most 60 s")
        self.rate, self.burst, self.prefix = rate_per_s, burst, prefix
        try:
            self.client: Any = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        except ValueError as error:
            raise InvalidArgument(f"{url!r} is not a Redis URL (redis://HOST:PORT/DB): "
                                  f"{error}") from None
        self._bucket = self.client.register_script(_BUCKET)
        self._admit = self.client.register_script(_ADMIT)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    def admit(self, agent: str, nonce: str, fresh_until_ms: int, now_ms: int) -> str:
        keep_ms = max(1, fresh_until_ms - now_ms)
        try:
            verdict = int(self._admit(
                keys=[f"{self.prefix}:{{{agent}}}:nonce:{nonce}", self._bucket_key(agent)],
                args=[repr(float(self.rate)), str(self.burst), str(keep_ms)]))
        except self._errors as error:
            raise _unavailable("replay and rate-limit", error) from None
        return {1: ADMITTED, 0: REPLAYED}.get(verdict, LIMITED)

    def allow(self, subject: str, cost: int = 1) -> bool:
        try:
            return bool(self._bucket(keys=[self._bucket_key(subject)],
                                     args=[repr(float(self.rate)), str(self.burst),
                                           str(_tokens(cost, self.burst))]))
        except self._errors as error:
            raise _unavailable("rate-limit", error) from None

    def _bucket_key(self, subject: str) -> str:
        return f"{self.prefix}:{{{subject}}}:rate"

    def unreachable(self) -> str:
        """Why Redis does not answer now ('' when it does): said at start, as every call
        would be refused until it answers."""
        try:
            self.client.ping()
        except self._errors as error:
            return _first_line(error)
        return ""

    def close(self) -> None:
        self.client.close()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _unavailable(what: str, error: BaseException) -> Unavailable:
    return Unavailable(f"the shared {what} store (Redis) did not answer, so the request was "
                       f"refused rather than let through unchecked; retry shortly "
                       f"({_first_line(error)})",
                       reason="LIMITS_UNAVAILABLE")


def open_limits(redis_url: str | None, rate_per_s: float, burst: int, *,
                redis_timeout_s: float = REDIS_TIMEOUT_S) -> RequestLimits:
    """Redis-backed limits for `redis_url` (each check waiting at most `redis_timeout_s`),
    else this process's own."""
    if redis_url:
        return RedisLimits(redis_url, rate_per_s, burst, timeout_s=redis_timeout_s)
    return LocalLimits(rate_per_s, burst)
