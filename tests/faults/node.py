"""The marketplace node process of the fault suite: `agentmarket serve`, with kill points
around its durable writes (`tests.faults.faulty`): before_commit (a money mutation about to run
its transaction: a hold, a redeem, a capture, a sweep) and after_commit (committed, the answer
not yet sent).

    python -m tests.faults.node serve --db ... (the `agentmarket serve` options)
"""

from __future__ import annotations

import sys
from typing import Any

from marketplace.cli.main import main as agentmarket
from tests.faults.faulty import install_clock, reach
from wallets.ledger import Ledger


def _kill_points() -> None:
    mutate = Ledger.mutate

    def wrapped(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        reach("before_commit")
        result = mutate(self, *args, **kwargs)
        reach("after_commit")
        return result

    Ledger.mutate = wrapped  # type: ignore[method-assign]


if __name__ == "__main__":
    install_clock()
    _kill_points()
    sys.argv = ["agentmarket", *sys.argv[1:]]
    agentmarket()
