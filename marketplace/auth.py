"""Request authentication: every call is signed by the caller's agent key.

The client signs `method \\n sha256(request bytes) \\n timestamp_ms \\n nonce` with ed25519 and
sends the agent id, timestamp, nonce and signature as metadata. The server recomputes the digest
from the exact bytes it received, refuses stale timestamps (more than `skew_s` away) and nonces it
has already seen within that window (UNAUTHENTICATED), applies a per-agent rate limit
(RESOURCE_EXHAUSTED), and makes the verified caller available to servicers (`current_caller`).

Authorisation (who may do what) is decided by the domain services from the caller's id.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc

from marketplace.identity import AgentKey, verify
from wallets.grpc_errors import _rich_status

AGENT_KEY = "agentmarket-agent"
TIMESTAMP_KEY = "agentmarket-timestamp-ms"
NONCE_KEY = "agentmarket-nonce"
SIGNATURE_KEY = "agentmarket-signature-bin"
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

_caller: contextvars.ContextVar[str] = contextvars.ContextVar("agentmarket_caller", default="")


def current_caller() -> str:
    """The verified agent id of the request being served ('' when unauthenticated)."""
    return _caller.get()


def signed_message(method: str, body: bytes, timestamp_ms: int, nonce: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method}\n{digest}\n{timestamp_ms}\n{nonce}".encode()


class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, details: Any, metadata: list[tuple[str, Any]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class SigningClientInterceptor(grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
                               grpc.UnaryStreamClientInterceptor):
    """Sign every outgoing call with the agent's key."""

    def __init__(self, key: AgentKey, clock_ms: Callable[[], int] | None = None) -> None:
        self.key = key
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)

    def _sign(self, details: Any, request: Any) -> _CallDetails:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        timestamp_ms = self.clock_ms()
        nonce = os.urandom(16).hex()
        signature = self.key.sign(signed_message(method, request.SerializeToString(),
                                                 timestamp_ms, nonce))
        metadata = [(k, v) for k, v in (details.metadata or ())
                    if k not in (AGENT_KEY, TIMESTAMP_KEY, NONCE_KEY, SIGNATURE_KEY)]
        metadata += [(AGENT_KEY, self.key.agent_id), (TIMESTAMP_KEY, str(timestamp_ms)),
                     (NONCE_KEY, nonce), (SIGNATURE_KEY, signature)]
        return _CallDetails(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._sign(details, request), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._sign(details, request), request)


class _NonceCache:
    """Nonces seen within the skew window; bounded, oldest evicted first."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def first_use(self, nonce: str, now_ms: int, window_ms: int) -> bool:
        with self._lock:
            while self._seen:
                oldest, at = next(iter(self._seen.items()))
                if at >= now_ms - window_ms and len(self._seen) < self._max:
                    break
                self._seen.pop(oldest)
            if nonce in self._seen:
                return False
            self._seen[nonce] = now_ms
            return True


class _RateLimiter:
    """A token bucket per agent: `rate_per_s` sustained, `burst` at once."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate, self.burst = rate_per_s, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, agent_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(agent_id, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1:
                self._buckets[agent_id] = (tokens, now)
                return False
            self._buckets[agent_id] = (tokens - 1, now)
            return True


class AuthServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Verify the caller's signature, freshness and nonce; rate-limit per agent."""

    def __init__(self, *, skew_s: int = 60, rate_per_s: float = 500.0, burst: int = 1000,
                 required: bool = True, clock_ms: Callable[[], int] | None = None) -> None:
        self.skew_ms = skew_s * 1000
        self.required = required
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._nonces = _NonceCache()
        self._limiter = _RateLimiter(rate_per_s, burst)

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or details.method.startswith(PUBLIC_PREFIXES):
            return handler
        metadata = dict(details.invocation_metadata or ())
        raw: dict[str, bytes] = {}
        parse = handler.request_deserializer

        def capture(data: bytes) -> Any:
            raw["body"] = data
            return parse(data) if parse else data

        def guard(behaviour):  # type: ignore[no-untyped-def]
            def run(request, context):  # type: ignore[no-untyped-def]
                caller, problem, code = self._check(details.method, metadata,
                                                    raw.get("body", b""))
                if problem:
                    context.abort_with_status(_rich_status(code, problem, "UNAUTHENTICATED"
                                              if code == grpc.StatusCode.UNAUTHENTICATED
                                              else "RATE_LIMITED"))
                token = _caller.set(caller)
                try:
                    return behaviour(request, context)
                finally:
                    _caller.reset(token)
            return run

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                guard(handler.unary_unary), request_deserializer=capture,
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                guard(handler.unary_stream), request_deserializer=capture,
                response_serializer=handler.response_serializer)
        return handler

    def _check(self, method: str, metadata: dict[str, Any], body: bytes
               ) -> tuple[str, str, grpc.StatusCode]:
        unauthenticated = grpc.StatusCode.UNAUTHENTICATED
        agent = metadata.get(AGENT_KEY, "")
        if not agent:
            if self.required:
                return "", "the call is not signed: send agentmarket-agent, -timestamp-ms, " \
                           "-nonce and -signature-bin metadata", unauthenticated
            return "", "", grpc.StatusCode.OK
        try:
            timestamp_ms = int(metadata.get(TIMESTAMP_KEY, ""))
        except ValueError:
            return "", "agentmarket-timestamp-ms must be milliseconds since the epoch", \
                unauthenticated
        nonce = str(metadata.get(NONCE_KEY, ""))
        signature = metadata.get(SIGNATURE_KEY, b"")
        now = self.clock_ms()
        if abs(now - timestamp_ms) > self.skew_ms:
            return "", f"the request timestamp is more than {self.skew_ms // 1000} s away " \
                       "from the server's clock", unauthenticated
        if not 16 <= len(nonce) <= 64:
            return "", "agentmarket-nonce must be 16..64 characters", unauthenticated
        if not isinstance(signature, bytes) or not verify(
                agent, signed_message(method, body, timestamp_ms, nonce), signature):
            return "", "the request signature does not verify for agentmarket-agent", \
                unauthenticated
        if not self._nonces.first_use(f"{agent}:{nonce}", now, self.skew_ms):
            return "", "this nonce was already used (replayed request)", unauthenticated
        if not self._limiter.allow(agent):
            return "", f"agent {agent[:12]}… is over its rate limit; slow down", \
                grpc.StatusCode.RESOURCE_EXHAUSTED
        return agent, "", grpc.StatusCode.OK
