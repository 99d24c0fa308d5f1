"""The node's HTTP side: one ASGI app on its own loopback port, next to the gRPC server.

`build_app` assembles the parts a node serves (the operator console today; the Agent Card
catalogue, the HTTP/x402 gateway and facilitator are meant to mount beside it), and
`HttpServer` runs that app with uvicorn on a thread of the node's process, started and
stopped with the node.
"""

from marketplace.http.app import HttpPart, build_app
from marketplace.http.server import HttpServer

__all__ = ["HttpPart", "HttpServer", "build_app"]
