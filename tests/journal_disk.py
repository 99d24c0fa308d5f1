"""The seller's usage journal on a disk that refuses or stalls its writes: its SQLite tables
and its call log (`agents._call_log`) both, as a full or hung disk would."""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import text

import agents._call_log as call_log
from wallets.store import make_engine


@contextlib.contextmanager
def log_refuses() -> Iterator[None]:
    """The call log's appends fail as on a full disk while inside."""
    durable = call_log._make_durable

    def refuse(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    call_log._make_durable = refuse
    try:
        yield
    finally:
        call_log._make_durable = durable


@contextlib.contextmanager
def log_stalls() -> Iterator[threading.Event]:
    """The call log's appends wait (as on a hung disk) until the event yielded is set, or the
    block is left."""
    durable, released = call_log._make_durable, threading.Event()

    def stall(fd: int) -> None:
        released.wait(30)
        durable(fd)

    call_log._make_durable = stall
    try:
        yield released
    finally:
        released.set()
        call_log._make_durable = durable


@contextlib.contextmanager
def journal_unwritable(journal: Path) -> Iterator[None]:
    """The seller's journal (a SQLite file) refuses its call records while inside: its calls
    table is gone and its call log's appends fail."""
    admin = make_engine(f"sqlite:///{journal}")
    try:
        with admin.begin() as conn:
            conn.execute(text("ALTER TABLE agentmarket_seller_calls RENAME TO calls_away"))
        with log_refuses():
            yield
        with admin.begin() as conn:
            conn.execute(text("ALTER TABLE calls_away RENAME TO agentmarket_seller_calls"))
    finally:
        admin.dispose()
