"""Binding a gRPC server's port, with a refusal a person can act on.

gRPC says only "Failed to bind to address ...; set GRPC_VERBOSITY=debug" when a port is taken
(servers here set `grpc.so_reuseport` to 0, so a second process on the same port is refused,
not given half the traffic) or the host is not one of this machine's addresses, and its
C-core logs a line of its own on stderr first. A fixed port is therefore tried with a plain
socket before gRPC binds it: a taken one is refused here, with one line.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from wallets.errors import FailedPrecondition


class PortUnavailable(FailedPrecondition):
    """The address cannot be listened on: its port is taken, or its host is not ours."""

    reason = "PORT_UNAVAILABLE"


REFUSAL = ("cannot listen on {address}: another process listens on that port, or the host "
            "is not an address of this machine (choose another port, or 0 for a free one)")


def listen(server: Any, address: str, credentials: Any = None) -> int:
    """Bind `address` (host:port; port 0 picks a free one); returns the port bound."""
    if not _could_bind(address):
        raise PortUnavailable(REFUSAL.format(address=address))
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError:
        bound = 0
    if not bound:
        raise PortUnavailable(REFUSAL.format(address=address))
    return int(bound)


def _could_bind(address: str) -> bool:
    """Whether a plain socket binds `address` (one of its host's addresses at least); True
    for what this does not read (port 0, a unix socket): gRPC then decides alone."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0 or not host or host.startswith("unix"):
        return True
    try:
        found = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return False
    for family, kind, protocol, _name, where in found:
        with contextlib.suppress(OSError), socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            probe.bind(where)
            return True
    return False
