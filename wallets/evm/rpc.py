"""The in-process chain over Ethereum JSON-RPC on a loopback port, as a node serves a real one.

Clients that only speak to a chain by URL (x402's facilitator signer, wallets, explorers) reach
`sandbox_chain()` through it unchanged: each request is answered by the chain's own web3
provider, one at a time (eth-tester is not thread-safe).

    with ChainRpcServer(chain) as rpc:
        Web3(Web3.HTTPProvider(rpc.url)).eth.block_number
        with rpc.holding() as chain:  # the chain in process meanwhile: one user at a time
            chain.mine(3)
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from wallets.evm.chain import SandboxChain

MAX_REQUEST_BYTES = 1024 * 1024
CALLS_WITHOUT_SENDER = ("eth_call", "eth_estimateGas")


class ChainRpcServer:
    def __init__(self, chain: SandboxChain, host: str = "127.0.0.1", port: int = 0) -> None:
        self.chain = chain
        self._lock = threading.Lock()
        # the provider's own formatting (what web3 in process sees: camelCase names)
        self._request = chain.w3.provider.request_func(chain.w3, chain.w3.middleware_onion)
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="chain-rpc",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @contextlib.contextmanager
    def holding(self) -> Iterator[SandboxChain]:
        """The chain for use in this process (mint, mine, snapshots) while the server answers
        others: one user at a time, as eth-tester needs."""
        with self._lock:
            yield self.chain

    def start(self) -> ChainRpcServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ChainRpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def answer(self, request: Any) -> Any:
        """One JSON-RPC request (or a batch) answered by the chain's provider."""
        if isinstance(request, list):
            return [self.answer(item) for item in request]
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return {"jsonrpc": "2.0", "id": None,
                    "error": {"code": -32600, "message": "invalid request"}}
        method, params = request["method"], list(request.get("params") or [])
        if method in CALLS_WITHOUT_SENDER and params and isinstance(params[0], dict):
            # eth-tester insists on a sender that can afford the gas: the chain's first account,
            # as web3 does in process
            params[0] = {"from": self.chain.issuer, **params[0]}
        with self._lock:
            try:
                reply = self._request(method, params)
            except Exception as error:  # the chain refused it: a JSON-RPC error, not a crash
                reply = {"error": _error(error)}
        answer = {"jsonrpc": "2.0", "id": request.get("id")}
        if "error" in reply:
            answer["error"] = reply["error"] if isinstance(reply["error"], dict) else {
                "code": -32000, "message": str(reply["error"])}
        else:
            answer["result"] = _rpc_encoded(reply.get("result"))
        return answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_REQUEST_BYTES:
                    self.send_error(413, "request too large")
                    return
                try:
                    request = json.loads(self.rfile.read(length))
                except ValueError:
                    body = {"jsonrpc": "2.0", "id": None,
                            "error": {"code": -32700, "message": "parse error"}}
                else:
                    body = server.answer(request)
                data = json.dumps(body).encode()  # results are RPC-encoded already
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                return None

        return Handler


def _error(error: Exception) -> dict[str, Any]:
    """A node's answer to a reverted call: code 3 with the revert reason as `Error(string)`
    data, which clients decode into the reason (a revert with no reason has no data)."""
    message = str(error)
    prefix = "execution reverted: "
    if not message.startswith(prefix) or message == prefix + "b''":
        return {"code": -32000, "message": message}
    from eth_abi import encode

    reason = message.removeprefix(prefix)
    data = "0x08c379a0" + encode(["string"], [reason]).hex()
    return {"code": 3, "message": message, "data": data}


def _rpc_encoded(value: Any) -> Any:
    """JSON-RPC's encoding: quantities as hex strings, byte strings as 0x-hex."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if hasattr(value, "items"):
        return {key: _rpc_encoded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rpc_encoded(item) for item in value]
    return value
