"""Where agents keep their keys across runs: one key file per name under AGENTMARKET_HOME.

    SellerAgent("shouter", skills=[shout], marketplace=..., key="shouter")   # by name
    BuyerAgent("me", marketplace=..., key=Path("me.key"))                     # a key file
    BuyerAgent("me", marketplace=..., key=AgentKey.load("me.key"))            # the same

An agent's id is its public key: with the same key, a seller keeps its reputation, its usage
journal (`$AGENTMARKET_HOME/seller-<id>.db`, taken up again on restart) and its listing (an
advertisement replaces the one before); a buyer keeps its wallet. The home is
`$AGENTMARKET_HOME`, by default `.agentmarket` in the current directory (the same folder
`agentmarket serve` keeps its database and spans in); keys are `keys/<name>.key`, each the
key's 32-byte seed in hex, readable by its owner only: the format `agentmarket keys new FILE`
writes and `AgentKey.load(FILE)` reads. Guard these files as you would a password: whoever
holds one spends from that agent's wallet.

An agent given no key gets a new one for this run only; it keeps nothing on disk (a seller's
journal then lives in a temporary folder, removed when it stops).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from agents.errors import InvalidArgument
from marketplace.home import DEFAULT_HOME, HOME_ENV, home, keys_folder
from marketplace.identity import AgentKey

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def key_path(name: str) -> Path:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(f"a key's name is 1..64 letters, digits, '.', '_' or '-', "
                              f"got {name!r}"[:200])
    return keys_folder() / f"{name}.key"


def named_key(name: str) -> AgentKey:
    """The key kept under `name`, made and saved (mode 600) the first time it is asked for."""
    return AgentKey.kept(key_path(name))


def names() -> list[str]:
    """The names of the keys kept in this home."""
    folder = keys_folder()
    return sorted(p.stem for p in folder.glob("*.key")) if folder.is_dir() else []


def load_key(key: AgentKey | str | os.PathLike[str] | None) -> AgentKey:
    """An agent's key from what its constructor was given: an AgentKey as is; a path
    (a `Path`, or text with a '/' or ending in '.key') read as a key file; other text a name
    in the keystore; None a new key for this run."""
    if key is None:
        return AgentKey.generate()
    if isinstance(key, AgentKey):
        return key
    if isinstance(key, os.PathLike):
        return AgentKey.load(key)
    if isinstance(key, str):
        if "/" in key or os.sep in key or key.endswith(".key"):
            return AgentKey.load(key)
        return named_key(key)
    raise InvalidArgument(f"key is an AgentKey, a key file path or a keystore name, not "
                          f"{type(key).__name__}")


__all__ = ["DEFAULT_HOME", "HOME_ENV", "home", "key_path", "load_key", "named_key", "names"]
