"""The usage journal's call log: paid calls' records appended to a file beside a SQLite
journal, durable with one write and one fdatasync per batch, moved into the journal's tables
in bulk later.

Why: a SQLite commit of a few call records writes whole pages of the calls table, its index and
the WAL, and walks SQLite's transaction machinery, for every batch; with a seller's callers
waiting on each commit, that was the largest share of what a paid call cost the seller over an
unpaid one. Appending the same rows to a file costs one write and one fdatasync. The journal
(`agents.usage_journal`) logs a batch of call records here only when SQLite would take every
row (their agreements are in its tables, their numbers fit its columns); anything else, and any
batch that is not calls alone, goes to SQLite with the logged rows first, in one transaction,
after which the log is emptied. A restart moves what the log holds into the tables first.

Format: frames of a 4-byte length, the payload's CRC-32 and the payload: position and
sequence (signed 64-bit), then agreement id, call id, voucher, receipt and response, each as a
4-byte length and its bytes. A frame cut short, or whose CRC does not match, is the tail of an
append whose fdatasync never returned (so never acknowledged): reading stops there and cuts it
off. A failed append is cut off at once, so the file never holds a record nobody was told
about.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any

log = logging.getLogger("agentmarket.seller")

_FRAME = struct.Struct("<II")  # payload length, CRC-32
_NUMBERS = struct.Struct("<qq")  # position, sequence
_LENGTH = struct.Struct("<I")
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
# The log is moved into the tables once it holds this many rows or bytes: a bigger log makes
# that one batch slower, a smaller one makes moves more frequent.
MOVE_ROWS = 1024
MOVE_BYTES = 8 << 20
# The longest ids the tables hold (agents.tables)
_MAX_AGREEMENT_ID, _MAX_CALL_ID = 64, 128

Row = tuple[str, str, int, int, bytes, bytes, bytes]


class CallLog:
    """An append-only file of call records (`Row`, the journal's call columns), written by
    one writer at a time (the journal's write lock) and locked against other processes."""

    def __init__(self, path: Path) -> None:
        created = not path.exists()
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if created:  # the file's name is durable before any record relies on it
                _fsync_folder(path.parent)
        except BaseException:
            os.close(self._fd)
            raise
        self.size = 0  # bytes of whole, acknowledged frames
        self.rows: list[Row] = []  # what the file holds, not yet in the tables

    @classmethod
    def take(cls, path: Path) -> CallLog | None:
        """The log at `path`, to write; None while another journal holds it (a seller still
        running on the same database: that journal reads the log, `read_rows`, and writes
        every record to SQLite)."""
        try:
            return cls(path)
        except BlockingIOError:
            log.warning("usage journal: %s is held by another journal; this one writes its "
                        "call records to SQLite only", path)
            return None

    @property
    def due(self) -> bool:
        """Whether the log should be moved into the tables with the next batch."""
        return len(self.rows) >= MOVE_ROWS or self.size >= MOVE_BYTES

    def recover(self) -> list[Row]:
        """The records the file holds (after a restart), its torn tail cut off."""
        data = _read_all(self._fd)
        rows, end = _frames(data)
        if end < len(data):
            log.warning("usage journal: the call log ended in %d bytes of an append never "
                        "acknowledged; cut off", len(data) - end)
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        self.rows, self.size = rows, end
        return rows

    def append(self, rows: list[Row]) -> None:
        """Append `rows` and return once they are durable; on any failure the file is cut
        back to what it held, and the error raised."""
        data = b"".join(_frame(row) for row in rows)
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            _make_durable(self._fd)
        except BaseException:
            self._cut_back()
            raise
        self.size += len(data)
        self.rows.extend(rows)

    def clear(self) -> None:
        """Empty the log: its rows are in the tables now."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.rows, self.size = [], 0

    def close(self, *, remove_empty: bool = False) -> None:
        """Close the log; with `remove_empty`, an empty one is removed first, while still
        locked (a clean close leaves the database file alone, as SQLite does its WAL)."""
        with contextlib.suppress(OSError):
            if remove_empty and not self.rows and self.size == 0:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._fd, self.size)
            os.fsync(self._fd)
        except OSError as error:  # the next start cuts off what does not read back whole
            log.error("usage journal: cutting a failed append off the call log failed: %s",
                      error)


def path_beside(database: str | None) -> Path | None:
    """Where the call log of the SQLite file `database` is (None for an in-memory one)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).with_name(Path(database).name + "-calls")


def read_rows(path: Path) -> list[Row]:
    """The whole records in the log at `path`, read without taking it (nothing is cut)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        return _frames(_read_all(fd))[0]
    finally:
        os.close(fd)


def fits(row: Any) -> bool:
    """Whether the tables would take `row` as it is (types, lengths, 64-bit numbers)."""
    agreement_id, call_id, position, sequence, voucher, receipt, response = row
    return (type(agreement_id) is str and type(call_id) is str
            and 0 < len(agreement_id) <= _MAX_AGREEMENT_ID and len(call_id) <= _MAX_CALL_ID
            and type(position) is int and type(sequence) is int
            and _INT64[0] <= position <= _INT64[1] and _INT64[0] <= sequence <= _INT64[1]
            and type(voucher) is bytes and type(receipt) is bytes and type(response) is bytes)


def _frame(row: Row) -> bytes:
    agreement_id, call_id, position, sequence, voucher, receipt, response = row
    parts = [_NUMBERS.pack(position, sequence)]
    for field in (agreement_id.encode(), call_id.encode(), voucher, receipt, response):
        parts += (_LENGTH.pack(len(field)), field)
    payload = b"".join(parts)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _frames(data: bytes) -> tuple[list[Row], int]:
    """The rows of the whole frames at the start of `data`, and where they end."""
    rows: list[Row] = []
    at = 0
    while at + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, at)
        start, end = at + _FRAME.size, at + _FRAME.size + length
        if end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        row = _row(data[start:end])
        if row is None:
            break
        rows.append(row)
        at = end
    return rows, at


def _row(payload: bytes) -> Row | None:
    try:
        position, sequence = _NUMBERS.unpack_from(payload, 0)
        at, fields = _NUMBERS.size, []
        for _ in range(5):
            (length,) = _LENGTH.unpack_from(payload, at)
            at += _LENGTH.size
            fields.append(payload[at:at + length])
            if len(fields[-1]) != length:
                return None
            at += length
        if at != len(payload):
            return None
        return (fields[0].decode(), fields[1].decode(), position, sequence,
                fields[2], fields[3], fields[4])
    except (struct.error, UnicodeDecodeError):
        return None


def _make_durable(fd: int) -> None:
    """fdatasync: a function of its own, so that tests can make the disk refuse or stall."""
    os.fdatasync(fd)


def _read_all(fd: int) -> bytes:
    chunks, at = [], 0
    while chunk := os.pread(fd, 1 << 20, at):
        chunks.append(chunk)
        at += len(chunk)
    return b"".join(chunks)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
