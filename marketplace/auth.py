"""Request authentication: every call is signed by the caller's agent key; then authorised.

The client signs `method \\n sha256(request bytes) \\n timestamp_ms \\n nonce` with ed25519 and
sends the agent id, timestamp, nonce and signature as metadata (`SigningClientInterceptor`,
`signed_channel`). The server (`AuthServerInterceptor`) recomputes the digest from the exact
bytes it received, refuses stale timestamps (more than `skew_s` away) and nonces it has already
seen while their timestamp is fresh (UNAUTHENTICATED), applies a per-agent token bucket
(RESOURCE_EXHAUSTED), and makes the verified caller current (`wallets.caller.current_caller`).
`AccessInterceptor` then applies a rule table (`wallets.access`, `marketplace.access`) to the
caller and the request: PERMISSION_DENIED with the rule's name, before anything changes.

What the signature does not cover: other metadata (trace context, the payment voucher, which
proves itself), the server it was meant for (a request can be replayed to another node of the
same marketplace within the skew window unless the nodes share their nonces in Redis,
`marketplace.request_limits.RedisLimits`; idempotency keys make a replayed mutation return its
first result anyway), and streamed requests (refused).

TLS: `server_credentials` and `channel_credentials` build grpc credentials from PEM bytes;
with a client CA the server requires client certificates (mutual TLS).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import grpc
from opentelemetry import trace

from marketplace._call_details import with_metadata
from marketplace.identity import AgentKey, verify
from marketplace.intercepted import intercept
from marketplace.request_limits import (
    ADMITTED,
    NONCES_FULL,
    REPLAYED,
    LocalLimits,
    RequestLimits,
)
from wallets.access import Rule
from wallets.caller import calling_as, current_caller
from wallets.errors import (
    AgentmarketError,
    Forbidden,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
)
from wallets.grpc_errors import _rich_status, abort, abort_internal

__all__ = ["AGENT_KEY", "NONCE_KEY", "SIGNATURE_KEY", "TIMESTAMP_KEY", "AccessInterceptor",
           "AuthServerInterceptor", "SigningClientInterceptor", "channel_credentials",
           "current_caller", "first_values", "server_credentials", "signed_channel",
           "signed_message", "verified_signer"]

AGENT_KEY = "agentmarket-agent"
TIMESTAMP_KEY = "agentmarket-timestamp-ms"
NONCE_KEY = "agentmarket-nonce"
SIGNATURE_KEY = "agentmarket-signature-bin"
_AUTH_KEYS = (AGENT_KEY, TIMESTAMP_KEY, NONCE_KEY, SIGNATURE_KEY)
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
CALLER_ATTRIBUTE = "enduser.id"
_AGENT_ID = re.compile(r"^[0-9a-f]{64}\Z")
_TIMESTAMP = re.compile(r"^[0-9]{1,16}\Z")
_NONCE = re.compile(r"^[0-9A-Za-z_-]{16,64}\Z")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def signed_message(method: str, body: bytes, timestamp_ms: int, nonce: str) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method}\n{digest}\n{timestamp_ms}\n{nonce}".encode()


# ---- the client ---------------------------------------------------------------------------------


class SigningClientInterceptor(grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
                               grpc.UnaryStreamClientInterceptor):
    """Sign every outgoing unary-request call with the agent's key (a fresh nonce each time,
    so a retry is a new signature over the same request)."""

    def __init__(self, key: AgentKey, clock_ms: Callable[[], int] | None = None) -> None:
        self.key = key
        self.clock_ms = clock_ms or _now_ms

    def _sign(self, details: Any, request: Any) -> grpc.ClientCallDetails:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        body = request if isinstance(request, bytes) else request.SerializeToString()
        timestamp_ms = self.clock_ms()
        nonce = os.urandom(16).hex()
        signature = self.key.sign(signed_message(method, body, timestamp_ms, nonce))
        metadata = [(k, v) for k, v in (details.metadata or ()) if k not in _AUTH_KEYS]
        metadata += [(AGENT_KEY, self.key.agent_id), (TIMESTAMP_KEY, str(timestamp_ms)),
                     (NONCE_KEY, nonce), (SIGNATURE_KEY, signature)]
        return with_metadata(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._sign(details, request), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._sign(details, request), request)


def signed_channel(address: str, key: AgentKey,
                   credentials: grpc.ChannelCredentials | None = None, *,
                   options: Iterable[tuple[str, Any]] = (),
                   interceptors: Iterable[Any] = ()) -> grpc.Channel:
    """A channel whose every call is signed by `key`: TLS with `credentials`
    (`channel_credentials`), plaintext without. `interceptors` run before the signer."""
    return intercept(plain_channel(address, credentials, options=options),
                     *interceptors, SigningClientInterceptor(key))


def plain_channel(address: str, credentials: grpc.ChannelCredentials | None = None, *,
                  options: Iterable[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel with no interceptors: TLS with `credentials`, plaintext without. After an
    outage it tries to reconnect at least every MAX_RECONNECT_BACKOFF_MS (gRPC's default backoff
    grows to two minutes, long enough for a seller to miss its redeem deadline after a node
    restart), unless `options` say otherwise."""
    chosen = dict(options)
    chosen.setdefault("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)
    return (grpc.secure_channel(address, credentials, options=list(chosen.items()))
            if credentials is not None
            else grpc.insecure_channel(address, options=list(chosen.items())))


MAX_RECONNECT_BACKOFF_MS = 2000


# ---- TLS ----------------------------------------------------------------------------------------


def server_credentials(cert_chain_pem: bytes, private_key_pem: bytes,
                       client_ca_pem: bytes | None = None) -> grpc.ServerCredentials:
    """TLS for a server; with `client_ca_pem`, mutual TLS: clients must present a certificate
    that CA issued, or the handshake fails. Checked here (InvalidArgument): gRPC would say only
    that it failed to bind the address."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    for what, pem, load in (("certificate", cert_chain_pem, x509.load_pem_x509_certificate),
                            ("private key", private_key_pem,
                             lambda data: load_pem_private_key(data, None)),
                            ("client CA", client_ca_pem, x509.load_pem_x509_certificate)):
        if pem is None:
            continue
        try:
            load(pem)
        except (ValueError, TypeError) as error:
            raise InvalidArgument(f"the TLS {what} is not PEM ({str(error)[:80]})") from None
    return grpc.ssl_server_credentials(
        [(private_key_pem, cert_chain_pem)], root_certificates=client_ca_pem,
        require_client_auth=client_ca_pem is not None)


def channel_credentials(root_ca_pem: bytes | None = None, cert_chain_pem: bytes | None = None,
                        private_key_pem: bytes | None = None) -> grpc.ChannelCredentials:
    """TLS for a client: trust `root_ca_pem` (None: the system's roots); a client certificate
    and key for servers that require mutual TLS."""
    if (cert_chain_pem is None) != (private_key_pem is None):
        raise ValueError("a client certificate needs its private key, and the other way round")
    return grpc.ssl_channel_credentials(root_certificates=root_ca_pem,
                                        private_key=private_key_pem,
                                        certificate_chain=cert_chain_pem)


# ---- the server ---------------------------------------------------------------------------------


def _refuse(code: grpc.StatusCode, message: str, reason: str) -> Callable[..., Any]:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort_with_status(_rich_status(code, message, reason))

    return refuse


def _wrap(handler: Any, guard: Callable[[Callable[..., Any], bool], Callable[..., Any]],
          deserializer: Any) -> Any:
    """The handler with its behaviour wrapped by `guard` (unary-request kinds only)."""
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            guard(handler.unary_unary, False), request_deserializer=deserializer,
            response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            guard(handler.unary_stream, True), request_deserializer=deserializer,
            response_serializer=handler.response_serializer)
    return None


def _streaming_refused(handler: Any, message: str, reason: str) -> Any:
    """A client-streaming handler that refuses at once (its requests cannot be signed)."""
    refuse = _refuse(grpc.StatusCode.UNAUTHENTICATED, message, reason)
    make = (grpc.stream_unary_rpc_method_handler if handler.stream_unary is not None
            else grpc.stream_stream_rpc_method_handler)
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class AuthServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Verify the caller's signature, freshness and nonce; rate-limit per agent; make the
    caller current. Health checking and reflection stay open. `required=False` lets unsigned
    calls through with no caller (local development only: nothing is authorised then)."""

    def __init__(self, *, skew_s: int = 60, rate_per_s: float = 500.0, burst: int = 1000,
                 required: bool = True, clock_ms: Callable[[], int] | None = None,
                 max_nonces: int = 1_000_000, max_agents: int = 100_000,
                 optional_methods: Iterable[str] = (),
                 limits: RequestLimits | None = None) -> None:
        """`optional_methods`: full method paths whose calls may come unsigned (their caller
        is then ''), for methods that carry their own proof: a seller's paid Invoke, whose
        fresh PayWord word only the buyer can produce. `limits`: where nonces and rate buckets
        live (`marketplace.request_limits`; default: this process, with `rate_per_s`, `burst`,
        `max_nonces` and `max_agents`); `RedisLimits` shares them across nodes."""
        if not 1 <= skew_s <= 3600:
            raise ValueError("skew_s must be 1..3600")
        self.skew_ms = skew_s * 1000
        self.required = required
        self.optional_methods = frozenset(optional_methods)
        self.clock_ms = clock_ms or _now_ms
        self.limits = limits if limits is not None else LocalLimits(
            rate_per_s, burst, max_nonces=max_nonces, max_agents=max_agents)

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or details.method.startswith(PUBLIC_PREFIXES):
            return handler
        if details.method in self.optional_methods and not _signed(details):
            return handler  # unsigned, and allowed to be: no caller, nothing to wrap
        if handler.stream_unary is not None or handler.stream_stream is not None:
            return _streaming_refused(handler, "client-streaming calls cannot be signed",
                                      "UNAUTHENTICATED")
        metadata: Mapping[str, Any] = first_values(details.invocation_metadata)
        raw: dict[str, bytes] = {}
        parse = handler.request_deserializer

        def capture(data: bytes) -> Any:
            raw["body"] = data
            return parse(data) if parse else data

        def guard(behaviour: Callable[..., Any], streams: bool) -> Callable[..., Any]:
            def check(context: grpc.ServicerContext) -> str:
                try:
                    return self._check(details.method, metadata, raw.get("body", b""))
                except AgentmarketError as error:  # counted in the refusals metric
                    abort(context, error)
                    raise  # abort raised already

            def run(request: Any, context: grpc.ServicerContext) -> Any:
                with calling_as(check(context)):
                    return behaviour(request, context)

            def run_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                caller = check(context)
                with calling_as(caller):  # the caller stays current while the stream runs
                    yield from behaviour(request, context)

            return run_stream if streams else run

        return _wrap(handler, guard, capture)

    def allow(self, subject: str, cost: int = 1) -> bool:
        """Take one request (or `cost`) from `subject`'s bucket (unsigned paid calls are
        limited per agreement, since they carry no agent id)."""
        return self.limits.allow(subject, cost)

    def _check(self, method: str, metadata: Mapping[str, Any], body: bytes) -> str:
        """The verified caller ('' for an unsigned call when not required); raises
        Unauthenticated or ResourceExhausted."""
        agent = metadata.get(AGENT_KEY, "")
        if not agent:
            if self.required and method not in self.optional_methods:
                raise Unauthenticated("the call is not signed: send agentmarket-agent, "
                                      "-timestamp-ms, -nonce and -signature-bin metadata "
                                      "(marketplace.auth.signed_channel)")
            return ""
        now = self.clock_ms()
        agent, timestamp_ms, nonce = verified_signer(method, metadata, body, now, self.skew_ms)
        # kept a skew window longer than it is fresh here: another node of the market whose
        # clock runs up to that much behind still takes it as fresh
        verdict = self.limits.admit(agent, nonce, timestamp_ms + 2 * self.skew_ms, now)
        if verdict == REPLAYED:
            raise Unauthenticated("this nonce was already used (replayed request)",
                                  reason="REPLAYED_REQUEST")
        if verdict == NONCES_FULL:
            raise ResourceExhausted("the server remembers too many recent requests; retry "
                                    "shortly", reason="NONCE_CACHE_FULL")
        if verdict != ADMITTED:
            raise ResourceExhausted(f"agent {agent[:12]}… is over its rate limit; slow down",
                                    reason="RATE_LIMITED")
        return agent


def verified_signer(method: str, metadata: Mapping[str, Any], body: bytes, now_ms: int,
                    skew_ms: int) -> tuple[str, int, str]:
    """(agent id, timestamp, nonce) of a request whose signature verifies over `body`, the
    exact bytes received, and whose timestamp is within `skew_ms` of `now_ms`; raises
    Unauthenticated. Checks nothing kept (nonces, rate buckets): that is the server's."""
    agent = metadata.get(AGENT_KEY, "")
    if not isinstance(agent, str) or not _AGENT_ID.match(agent):
        raise Unauthenticated("agentmarket-agent must be a 64-hex-character ed25519 public "
                              "key (lower case)")
    timestamp = metadata.get(TIMESTAMP_KEY, "")
    if not isinstance(timestamp, str) or not _TIMESTAMP.match(timestamp):
        raise Unauthenticated("agentmarket-timestamp-ms must be milliseconds since the epoch")
    timestamp_ms = int(timestamp)
    nonce = metadata.get(NONCE_KEY, "")
    signature = metadata.get(SIGNATURE_KEY, b"")
    if abs(now_ms - timestamp_ms) > skew_ms:
        raise Unauthenticated(f"the request timestamp is more than {skew_ms // 1000} s "
                              "away from the server's clock", reason="STALE_REQUEST")
    if not isinstance(nonce, str) or not _NONCE.match(nonce):
        raise Unauthenticated("agentmarket-nonce must be 16..64 characters of "
                              "[0-9A-Za-z_-]")
    if not isinstance(signature, bytes) or not verify(
            agent, signed_message(method, body, timestamp_ms, nonce), signature):
        raise Unauthenticated("the request signature does not verify for agentmarket-agent",
                              reason="BAD_REQUEST_SIGNATURE")
    return agent, timestamp_ms, nonce


def _signed(details: grpc.HandlerCallDetails) -> bool:
    """Whether the call carries a signer (the caller id metadata)."""
    return any(key == AGENT_KEY for key, _ in details.invocation_metadata or ())


def first_values(metadata: Any) -> dict[str, Any]:
    """Metadata as a dict; a key sent twice keeps its first value (never a later one)."""
    found: dict[str, Any] = {}
    for key, value in metadata or ():
        found.setdefault(key, value)
    return found


class AccessInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Apply `rules` ('/package.Service/Method' -> rule(caller, request)) to every call of
    `services`; a method of those services without a rule is refused. Goes after
    `AuthServerInterceptor` (it reads the caller it set) and the malformed-request check."""

    def __init__(self, rules: Mapping[str, Rule], services: Iterable[str],
                 anonymous_methods: Iterable[str] = ()) -> None:
        """`anonymous_methods`: full method paths an unsigned call may reach without a rule,
        because the method itself checks the proof such a call carries (a paid Invoke's fresh
        PayWord word); their signed calls still meet their rule. Every other method needs an
        authenticated caller."""
        self.rules = dict(rules)
        self.services = tuple(f"/{s}/" for s in services)
        self.anonymous = frozenset(anonymous_methods)

    @classmethod
    def of(cls, tables: Mapping[str, Mapping[str, Rule]],
           anonymous_methods: Iterable[str] = ()) -> AccessInterceptor:
        """From service name -> method name -> rule."""
        return cls({f"/{service}/{method}": rule for service, methods in tables.items()
                    for method, rule in methods.items()}, tables, anonymous_methods)

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or not details.method.startswith(self.services):
            return handler
        if details.method in self.anonymous and not _signed(details):
            return handler
        rule = self.rules.get(details.method)
        if rule is None:
            rule = _no_rule(details.method)

        def guard(behaviour: Callable[..., Any], streams: bool) -> Callable[..., Any]:
            def check(request: Any, context: grpc.ServicerContext) -> None:
                caller = current_caller()
                trace.get_current_span().set_attribute(CALLER_ATTRIBUTE, caller)
                try:
                    if not caller and details.method not in self.anonymous:
                        raise Unauthenticated("this call needs an authenticated caller")
                    rule(caller, request)
                except AgentmarketError as error:
                    abort(context, error)
                except Exception:  # a rule's own failure: INTERNAL, never its text
                    abort_internal(context, f"access rule of {details.method}")

            def run(request: Any, context: grpc.ServicerContext) -> Any:
                check(request, context)
                return behaviour(request, context)

            def run_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                check(request, context)
                yield from behaviour(request, context)

            return run_stream if streams else run

        wrapped = _wrap(handler, guard, handler.request_deserializer)
        return wrapped if wrapped is not None else _streaming_refused(
            handler, "client-streaming calls are not authorised", "UNAUTHENTICATED")


def _no_rule(method: str) -> Rule:
    def refuse(caller: str, request: Any) -> None:
        raise Forbidden("deny-by-default", f"{method} has no access rule, so nobody may call it")

    return refuse
