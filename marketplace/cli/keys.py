"""The keys the commands load: an agent's from a file, and the node's (its file, else the
home's, kept across restarts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_key(path: Path) -> Any:
    """An agent key from a file holding its 32-byte seed in hex (`agentmarket keys new`)."""
    from marketplace.cli.output import fail
    from marketplace.errors import InvalidArgument
    from marketplace.identity import AgentKey

    try:
        return AgentKey.load(path)
    except InvalidArgument as error:
        fail(error.message)


def node_key(key_file: Path | None) -> Any:
    """`key_file`'s key, else the home's `keys/node.key` (made on the first start): it signs
    receipts and checkpoints and names the x402 network, so it outlives a restart."""
    if key_file is not None:
        return load_key(key_file)
    from marketplace.cli.output import fail
    from marketplace.home import keys_folder
    from marketplace.identity import AgentKey
    from wallets.errors import AgentmarketError

    try:
        return AgentKey.kept(keys_folder() / "node.key")
    except (AgentmarketError, OSError) as error:
        fail(f"cannot read the node's key: {getattr(error, 'message', error)}")
