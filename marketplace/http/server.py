"""Run the node's ASGI app with uvicorn on a thread of the node's process.

The socket is bound in `__init__` (port 0 picks a free one, as the gRPC server does), so the
address is known before `start`. uvicorn gets its own event loop on its own thread; it installs
no signal handlers there, so the node's owner (the `serve` command) keeps SIGTERM and SIGINT.
`stop` lets requests in flight finish for `grace_s`, then closes the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from marketplace.grpc_listen import REFUSAL, PortUnavailable
from marketplace.http.read_deadline import ReadDeadlineH11

START_TIMEOUT_S = 10.0
log = logging.getLogger("agentmarket.http")


class HttpServer:
    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0,
                 tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
        """`tls_cert`/`tls_key`: PEM files; given, the server speaks HTTPS only."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: a response written in two parts (head, body) is
        # not held back ~40 ms by Nagle's algorithm waiting for a delayed ACK
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._socket.bind((host, port))
        except OSError:  # taken, or not an address of this machine: one line that says which
            self._socket.close()
            raise PortUnavailable(REFUSAL.format(address=f"{host}:{port}")) from None
        self._socket.listen(128)
        self._socket.setblocking(False)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        self.tls = tls_cert is not None
        config = uvicorn.Config(
            app, http=ReadDeadlineH11, lifespan="off", log_level="warning", access_log=False,
            server_header=False,
            date_header=True, timeout_graceful_shutdown=2,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            ssl_version=ssl.PROTOCOL_TLS_SERVER)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="http-server", daemon=True)
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        """The base URL (`http://127.0.0.1:8123`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._socket]))
        except BaseException as error:  # reported by start(), logged otherwise
            self._failure = error
            log.exception("the HTTP server stopped")

    def start(self) -> HttpServer:
        """Serve; returns once uvicorn accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if self._failure is not None or not self._thread.is_alive():
                raise RuntimeError(f"the HTTP server did not start: {self._failure}")
            if time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start in time")
            time.sleep(0.005)
        return self

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop accepting, give requests in flight `grace_s`, close the socket."""
        self._server.config.timeout_graceful_shutdown = max(0, round(grace_s))
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=grace_s + 5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._socket.close()
