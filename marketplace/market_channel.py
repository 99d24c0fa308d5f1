"""Client channels to a market served by several nodes: round robin over them, and a call a
node did not answer tried again on another.

`market_target` turns the addresses a client was given into one gRPC target: a list of IP
`host:port`s becomes `ipv4:a,b,...` (or `ipv6:`); a DNS name (`dns:///market.example:7000`)
resolves to every node it names. For such targets `market_options` picks gRPC's `round_robin`
policy, so calls spread over the nodes and a dead node's subchannel is skipped once gRPC sees it
fail; `NodeRetry` / `AioNodeRetry` (outside the signer, so each attempt is signed afresh with a
new nonce) retry a call that failed UNAVAILABLE without a reason from our servers, which means
no node answered it: the connection was refused or broke. Every mutation carries an idempotency
key, so a retry of a call a dying node had already carried out returns its first result.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Sequence
from typing import Any

import grpc

from marketplace._call_details import with_timeout
from wallets.errors import InvalidArgument
from wallets.grpc_errors import error_info

__all__ = ["AioNodeRetry", "NodeRetry", "aio_node_retry", "market_options", "market_target",
           "node_retry", "spread"]

MAX_NODES = 64
ATTEMPTS = 5
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0


def market_target(addresses: str | Sequence[str]) -> str:
    """One gRPC target for a node address or a list of them (IP literals; for names, one DNS
    name `dns:///NAME:PORT` resolving to every node)."""
    if isinstance(addresses, str):
        return addresses.strip()
    nodes = [str(a).strip() for a in addresses]
    if not 1 <= len(nodes) <= MAX_NODES:
        raise InvalidArgument(f"give 1..{MAX_NODES} node addresses, got {len(nodes)}")
    if len(nodes) == 1:
        return nodes[0]
    families = {_family(node) for node in nodes}
    if len(families) != 1:
        raise InvalidArgument("node addresses in a list must all be IPv4 or all IPv6 host:port")
    return f"{families.pop()}:{','.join(nodes)}"


def _family(node: str) -> str:
    host, sep, port = node.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(port)
    except ValueError:
        raise InvalidArgument(
            f"{node!r}: a list of node addresses takes IP host:port entries; for host names "
            "give one DNS name that resolves to every node (dns:///NAME:PORT)") from None
    return f"ipv{ip.version}"


def spread(target: str) -> bool:
    """Whether `target` may name several nodes (a list, or a name resolved by DNS)."""
    return target.startswith(("ipv4:", "ipv6:", "dns:"))


def market_options(target: str) -> list[tuple[str, Any]]:
    """Channel options for `target`: round robin when it may name several nodes."""
    return [("grpc.lb_policy_name", "round_robin")] if spread(target) else []


def node_retry(target: str) -> list[NodeRetry]:
    """The retry interceptor for `target` when it may name several nodes, else none."""
    return [NodeRetry()] if spread(target) else []


def aio_node_retry(target: str) -> list[AioNodeRetry]:
    """`node_retry` for grpc.aio channels."""
    return [AioNodeRetry()] if spread(target) else []


def _unanswered(error: Any) -> bool:
    """UNAVAILABLE with no reason of ours: no node took the call (refused, reset, gone)."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    return code == grpc.StatusCode.UNAVAILABLE and not error_info(error).reason


def _backoff(attempt: int) -> float:
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** attempt)


class NodeRetry(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Try a unary call again (on whichever node round robin picks) while no node answered it,
    within the call's own deadline."""

    def __init__(self, attempts: int = ATTEMPTS) -> None:
        self.attempts = attempts

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        end = time.monotonic() + details.timeout if details.timeout else None
        for attempt in range(self.attempts):
            if attempt and end is not None:
                details = with_timeout(details, end - time.monotonic())
            outcome = continuation(details, request)
            error = outcome.exception()
            pause = _backoff(attempt)
            if error is None or not _unanswered(error) or attempt == self.attempts - 1 or (
                    end is not None and time.monotonic() + pause >= end):
                return outcome
            time.sleep(pause)
        return outcome


class AioNodeRetry(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """`NodeRetry` for grpc.aio channels."""

    def __init__(self, attempts: int = ATTEMPTS) -> None:
        self.attempts = attempts

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        end = time.monotonic() + details.timeout if details.timeout else None
        for attempt in range(self.attempts):
            if attempt and end is not None:
                details = grpc.aio.ClientCallDetails(
                    details.method, end - time.monotonic(), details.metadata,
                    details.credentials, details.wait_for_ready)
            call = await continuation(details, request)
            try:
                await call
                return call
            except grpc.RpcError as error:
                pause = _backoff(attempt)
                if not _unanswered(error) or attempt == self.attempts - 1 or (
                        end is not None and time.monotonic() + pause >= end):
                    raise
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")
