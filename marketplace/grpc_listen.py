"""Binding a gRPC server's port, with a refusal a person can act on.

gRPC says only "Failed to bind to address ...; set GRPC_VERBOSITY=debug" when a port is taken
(servers here set `grpc.so_reuseport` to 0, so a second process on the same port is refused,
not given half the traffic) or the host is not one of this machine's addresses.
"""

from __future__ import annotations

from typing import Any

from wallets.errors import FailedPrecondition


class PortUnavailable(FailedPrecondition):
    """The address cannot be listened on: its port is taken, or its host is not ours."""

    reason = "PORT_UNAVAILABLE"


def listen(server: Any, address: str, credentials: Any = None) -> int:
    """Bind `address` (host:port; port 0 picks a free one); returns the port bound."""
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError:
        bound = 0
    if not bound:
        raise PortUnavailable(f"cannot listen on {address}: another process listens on that "
                              "port, or the host is not an address of this machine (choose "
                              "another port, or 0 for a free one)")
    return int(bound)
