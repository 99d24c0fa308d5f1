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

Format: a header (magic, version, epoch), then frames of a header (the payload's length, its
CRC-32 and the log's epoch) and the payload: position and sequence (signed 64-bit), then
agreement id, call id, voucher, receipt and response, each as a 4-byte length and its bytes.
The file is kept allocated ahead of its frames (zeros written in `GROW_BYTES` steps) and frames
are written in place: an fdatasync of bytes the file already holds flushes the data alone, where
one that grows the file also commits the filesystem's journal (here, 80 against 51 us of CPU
and 190 against 125 us of wall time per fdatasync). Emptying the log writes a new epoch into
its header instead of truncating it, so frames left from an earlier epoch read as the end. A
frame of the current epoch cut short, or whose CRC does not match, is the tail of an append
whose fdatasync never returned (so never acknowledged): reading stops there and zeroes it. A
failed append is zeroed at once, so the file never holds a record nobody was told about. A
log written before the header existed (frames of length and CRC only) is still read.
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

_HEADER = struct.Struct("<4sIQ")  # magic, version, epoch
_MAGIC, _VERSION = b"AMCL", 1
_FRAME = struct.Struct("<IIQ")  # payload length, CRC-32, epoch
_LEGACY_FRAME = struct.Struct("<II")  # payload length, CRC-32 (a log from before the header)
_NUMBERS = struct.Struct("<qq")  # position, sequence
_LENGTH = struct.Struct("<I")
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
# The log is moved into the tables once it holds this many rows or bytes: a bigger log makes
# that one batch slower, a smaller one makes moves more frequent.
MOVE_ROWS = 1024
MOVE_BYTES = 8 << 20
# The file is allocated ahead of its frames in steps of this many bytes (zeros, written)
GROW_BYTES = 256 << 10
# The longest ids the tables hold (agents.tables)
_MAX_AGREEMENT_ID, _MAX_CALL_ID = 64, 128

Row = tuple[str, str, int, int, bytes, bytes, bytes]


class CallLog:
    """A file of call records (`Row`, the journal's call columns) written in place ahead of
    its end, by one writer at a time (the journal's write lock), and locked against other
    processes."""

    def __init__(self, path: Path) -> None:
        created = not path.exists()
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._allocated = os.fstat(self._fd).st_size
            # None: a log from before the header (read by `recover`, rewritten by `clear`)
            self._epoch: int | None = _epoch_of(os.pread(self._fd, _HEADER.size, 0))
            if self._epoch == 0:
                self._start_epoch(1)
            if created:  # the file's name is durable before any record relies on it
                _fsync_folder(path.parent)
        except BaseException:
            os.close(self._fd)
            raise
        self.size = 0  # bytes of whole, acknowledged frames (after the header)
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

    @property
    def end(self) -> int:
        """Where the next frame goes in the file."""
        return _HEADER.size + self.size

    def recover(self) -> list[Row]:
        """The records the file holds (after a restart), a torn tail zeroed; a log from before
        the header is read as it was written, and rewritten by the next `clear` (or now, if it
        held nothing whole)."""
        data = _read_all(self._fd)
        if self._epoch is None:
            rows = _frames(data, 0, None)[0]
            if not rows:
                self.clear()
            self.rows = rows
            return rows
        rows, end, torn = _frames(data, _HEADER.size, self._epoch)
        if torn:
            log.warning("usage journal: the call log ended in %d bytes of an append never "
                        "acknowledged; cut off", torn)
            _write_at(self._fd, bytes(torn), end)
            os.fdatasync(self._fd)
        self.rows, self.size = rows, end - _HEADER.size
        return rows

    def append(self, rows: list[Row]) -> None:
        """Write `rows` after the last frame and return once they are durable; on any failure
        what was written is zeroed, and the error raised."""
        epoch = self._epoch
        assert epoch is not None, "a log from before the header is moved and cleared first"
        data = b"".join(_frame(row, epoch) for row in rows)
        at = self.end
        try:
            if at + len(data) > self._allocated:
                grown = -(-(at + len(data)) // GROW_BYTES) * GROW_BYTES
                _write_at(self._fd, bytes(grown - self._allocated), self._allocated)
                self._allocated = grown
            _write_at(self._fd, data, at)
            _make_durable(self._fd)
        except BaseException:
            self._zero(at, len(data))
            raise
        self.size += len(data)
        self.rows.extend(rows)

    def clear(self) -> None:
        """Empty the log (its rows are in the tables now): a new epoch, so the frames of this
        one read as gone."""
        self._start_epoch((self._epoch or 0) + 1)
        self.rows, self.size = [], 0

    def close(self, *, remove_empty: bool = False) -> None:
        """Close the log; with `remove_empty`, an empty one is removed first, while still
        locked (a clean close leaves the database file alone, as SQLite does its WAL)."""
        with contextlib.suppress(OSError):
            if remove_empty and not self.rows and self.size == 0:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)

    def _start_epoch(self, epoch: int) -> None:
        _write_at(self._fd, _HEADER.pack(_MAGIC, _VERSION, epoch), 0)
        if self._epoch is None and self._allocated > _HEADER.size:  # the old frames after it
            _write_at(self._fd, bytes(self._allocated - _HEADER.size), _HEADER.size)
        self._allocated = max(self._allocated, _HEADER.size)
        os.fdatasync(self._fd)
        self._epoch = epoch

    def _zero(self, at: int, length: int) -> None:
        try:
            _write_at(self._fd, bytes(length), at)
            os.fdatasync(self._fd)
        except OSError as error:  # the next start reads a frame that fails its CRC as the end
            log.error("usage journal: zeroing a failed append in the call log failed: %s",
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
        data = _read_all(fd)
    finally:
        os.close(fd)
    epoch = _epoch_of(data[:_HEADER.size])
    if epoch == 0:
        return []
    return _frames(data, 0 if epoch is None else _HEADER.size, epoch)[0]


def fits(row: Any) -> bool:
    """Whether the tables would take `row` as it is (types, lengths, 64-bit numbers)."""
    agreement_id, call_id, position, sequence, voucher, receipt, response = row
    return (type(agreement_id) is str and type(call_id) is str
            and 0 < len(agreement_id) <= _MAX_AGREEMENT_ID and len(call_id) <= _MAX_CALL_ID
            and type(position) is int and type(sequence) is int
            and _INT64[0] <= position <= _INT64[1] and _INT64[0] <= sequence <= _INT64[1]
            and type(voucher) is bytes and type(receipt) is bytes and type(response) is bytes)


def _frame(row: Row, epoch: int) -> bytes:
    agreement_id, call_id, position, sequence, voucher, receipt, response = row
    parts = [_NUMBERS.pack(position, sequence)]
    for field in (agreement_id.encode(), call_id.encode(), voucher, receipt, response):
        parts += (_LENGTH.pack(len(field)), field)
    payload = b"".join(parts)
    return _FRAME.pack(len(payload), zlib.crc32(payload), epoch) + payload


def _epoch_of(head: bytes) -> int | None:
    """The epoch a log's first bytes name: 0 for no header yet, None for a log from before
    the header (its first frame's length cannot start with the magic)."""
    if head and not head.startswith(_MAGIC[:len(head)]):
        return None
    return _HEADER.unpack(head)[2] if len(head) == _HEADER.size else 0


def _frames(data: bytes, at: int, epoch: int | None) -> tuple[list[Row], int, int]:
    """The rows of the whole frames of `epoch` from `at` in `data` (None: of a log from before
    the header, whose frames hold no epoch), where they end, and how many bytes after that are
    a torn frame of the same epoch (0: zeros, or an earlier epoch's frames, read as the end;
    always 0 for a log from before the header, read as it was)."""
    frame = _LEGACY_FRAME if epoch is None else _FRAME
    rows: list[Row] = []
    while at + frame.size <= len(data):
        length, crc, *tagged = frame.unpack_from(data, at)
        if tagged and (tagged[0] != epoch or length == 0):
            break
        start, end = at + frame.size, at + frame.size + length
        row = _row(data[start:end]) if end <= len(data) and \
            zlib.crc32(data[start:end]) == crc else None
        if row is None:
            return rows, at, 0 if epoch is None else min(end, len(data)) - at
        rows.append(row)
        at = end
    return rows, at, 0


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


def _write_at(fd: int, data: bytes, at: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, memoryview(data)[written:], at + written)


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
