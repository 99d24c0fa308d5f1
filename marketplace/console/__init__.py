"""The operator console: a server-rendered web UI on the node for the people who run a market
(overview, approvals, wallets, agreements and disputes, the ledger, traces, the audit trail).

Served by the node's HTTP server (`marketplace.http`) when the node is given `ConsoleOptions`
(`agentmarket serve --console`). Nothing opens without a one-time login token; every action is
a gRPC request signed with the console's operator key and recorded in the audit trail.
"""

from marketplace.console.app import Console, ConsoleOptions

__all__ = ["Console", "ConsoleOptions"]
