"""A seller process of the fault suite (per-call skill, persistent key and journal).

    python -m tests.faults.seller MARKETPLACE KEY_FILE JOURNAL PORT ADVERTISED WINDOW_S MARGIN_S

Serves on PORT, advertises ADVERTISED (the proxy in front of it), prints "ready", and serves
until SIGTERM. Kill points (`tests.faults.faulty`): before_open/after_open (the agreement's
open, queued to share its first call's commit), before_record (a call's usage record, before
it is queued), after_record (durable, before the answer leaves), before_redeem/after_redeem
(the Redeem RPC). FAULT_DISK_FULL: the journal fails some call records as on a full disk
(`_disk_full`).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import agents._call_log as call_log
from agents import SellerAgent, _serving, per_call, skill
from agents.errors import AgentmarketError
from agents.usage_journal import UsageJournal
from tests.faults.faulty import install_clock, reach, refusing_log


class Upper(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def upper(text: str) -> Upper:
    """Upper-case a text."""
    return Upper(text=text.upper())


def _wrap(owner: Any, name: str, before: str, after: str) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        reach(before)
        result = original(*args, **kwargs)
        reach(after)
        return result

    setattr(owner, name, wrapped)


def _journal_kill_points() -> None:
    _wrap(UsageJournal, "queue_open", "before_open", "after_open")
    record = UsageJournal.record_call

    def record_call(self: UsageJournal, *args: Any) -> Any:
        reach("before_record")
        return record(self, *args)

    UsageJournal.record_call = record_call  # type: ignore[method-assign]
    durable = _serving._durable

    def durable_then(admission: Any) -> None:
        durable(admission)
        if admission.durable is not None:
            reach("after_record")

    _serving._durable = durable_then


def _disk_full() -> None:
    """FAULT_DISK_FULL=<n>:<k>: the journal's writes of call records n to n+k-1 (counted as
    the writer meets them) fail as on a full disk, wherever they fall in its batches."""
    wanted = os.environ.get("FAULT_DISK_FULL", "")
    if not wanted:
        return
    first, count = (int(part) for part in wanted.split(":"))
    seen = [0]

    def failing(write: Any) -> Any:
        def wrapped(self: UsageJournal, batch_or_rows: Any, *args: Any, **kwargs: Any) -> Any:
            rows = getattr(batch_or_rows, "rows", batch_or_rows)
            calls = sum(1 for kind, _row in rows if kind == 0)  # usage_journal._CALL
            before, seen[0] = seen[0], seen[0] + calls
            if calls and before + 1 < first + count and before + calls >= first:
                raise sqlite3.OperationalError("database or disk is full")
            return write(self, batch_or_rows, *args, **kwargs)
        return wrapped

    UsageJournal._write_plain = failing(UsageJournal._write_plain)  # type: ignore[method-assign]
    UsageJournal._apply = failing(UsageJournal._apply)  # type: ignore[method-assign]


def _refusing_log(journal: str) -> None:
    """While the world's marker file exists (`Seller.journal_unwritable`), the call log's
    appends fail as on a full disk."""
    marker, durable = refusing_log(Path(journal)), call_log._make_durable

    def make_durable(fd: int) -> None:
        if marker.exists():
            raise OSError(28, "No space left on device")
        durable(fd)

    call_log._make_durable = make_durable


def _seller(marketplace: str, key: str, journal: str, port: str, advertised: str,
            window: str, margin: str) -> SellerAgent:
    seller = SellerAgent("upper", skills=[upper], marketplace=marketplace, key=key,
                         journal=journal, port=int(port), completion_window_s=int(window),
                         redeem_margin_s=int(margin), dispute_window_s=0,
                         settle_interval_s=0.2, ttl_s=30)
    seller.endpoint = advertised  # buyers reach it through the proxy
    _wrap(seller.settlement, "Redeem", "before_redeem", "after_redeem")
    return seller


def main() -> None:
    install_clock()
    _journal_kill_points()
    _disk_full()
    _refusing_log(sys.argv[3])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    seller = _seller(*sys.argv[1:8])
    while True:  # the marketplace may be down right now: serve once it answers
        try:
            seller.serve(warm=False)
            break
        except AgentmarketError:
            if stop.wait(0.3):
                return
            seller = _seller(*sys.argv[1:8])  # a failed serve() stopped it
    print("ready", flush=True)
    stop.wait()
    seller.stop(0)


if __name__ == "__main__":
    main()
