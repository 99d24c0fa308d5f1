"""Ledger processes for the sealing test: a writer posting transfers, and a sealer.

    python -m tests.processes.ledger_writer write DB NAME OWN PAYEE CONTESTED COUNT GROUP
    python -m tests.processes.ledger_writer seal DB NAME BATCH

A writer posts COUNT transfers of 1 atomic from OWN to PAYEE, and every third one also tries 1
atomic from the CONTESTED wallet (which other writers spend too), printing one JSON line per
acknowledged posting ({"key", "sequence"}) and per refused one ({"key", "refused"}); GROUP=1
uses group commit. A sealer runs `wallets.sealer.Sealer` with batches of BATCH until killed,
its database sessions named NAME (so a test finds them in pg_stat_activity).
"""

from __future__ import annotations

import json
import sys
import time

from wallets.errors import InsufficientFunds
from wallets.ledger import Ledger
from wallets.sealer import Sealer
from wallets.store import make_engine


def _named(url: str, name: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def write(url: str, name: str, own: str, payee: str, contested: str, count: int,
          group: bool) -> None:
    ledger = Ledger(make_engine(url), group_commit=group, sealer=False)
    for n in range(count):
        attempts = [(f"{name}-{n}", own)]
        if n % 3 == 0:
            attempts.append((f"{name}-contested-{n}", contested))
        for key, debit in attempts:
            try:
                posting = ledger.transfer(key, debit, payee, 1)
                print(json.dumps({"key": key, "sequence": posting.sequence}), flush=True)
            except InsufficientFunds:
                print(json.dumps({"key": key, "refused": True}), flush=True)
    ledger.close()


def seal(url: str, name: str, batch: int) -> None:
    Sealer(make_engine(_named(url, name)), f"{name} lease", interval_s=0.005,
           batch=batch).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    command, url, name, *rest = sys.argv[1:]
    if command == "write":
        own, payee, contested, count, group = rest
        write(url, name, own, payee, contested, int(count), group == "1")
    else:
        seal(url, name, int(rest[0]))
