"""The interpreter's recursion limit, kept where a thread's C stack still holds it.

py_ecc (under eth_account, which the USDC rail signs with) raises it to 100,000 when first
imported, and py-evm (the sandbox chain's) to 12,288. Past what the C stack holds, JSON nested
thousands deep from a stranger crashes the process (a segfault in the C decoder) instead of
raising the RecursionError that every parser here turns into a clear refusal. The modules
that import those libraries put the limit back (`restore`).
"""

from __future__ import annotations

import sys

# The process's own, read before any of those imports, and never past 10,000 (deep JSON still
# raises RecursionError there, in the main thread and in a worker's)
LIMIT = min(sys.getrecursionlimit(), 10_000)


def restore() -> None:
    """Put back the limit a library raised past the process's own."""
    if sys.getrecursionlimit() > LIMIT:
        sys.setrecursionlimit(LIMIT)


__all__ = ["LIMIT", "restore"]
