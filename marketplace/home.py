"""Where agentmarket keeps its files: $AGENTMARKET_HOME, by default .agentmarket here.

`agentmarket serve` keeps its database (`marketplace.db`) and span store (`spans.db`) there,
`agentmarket trace` and the operator commands read them from there, sellers keep their usage
journals there and the keystore (`agents.keystore`) its keys. Set AGENTMARKET_HOME to keep them
elsewhere (one folder per project, or one per user: ~/.agentmarket).
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "AGENTMARKET_HOME"
DEFAULT_HOME = ".agentmarket"


def home() -> Path:
    """$AGENTMARKET_HOME, or .agentmarket in the current directory."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME)


def keys_folder() -> Path:
    """Where this home keeps its named keys (the node's own, `keys/node.key`, among them)."""
    return home() / "keys"


def default_span_store() -> Path:
    """The span store `agentmarket trace` reads by default: pass it to `setup_tracing` so a
    program's traces are found there."""
    return home() / "spans.db"


def default_database_url() -> str:
    return f"sqlite:///{home() / 'marketplace.db'}"
