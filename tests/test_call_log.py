"""The usage journal's call log (`agents._call_log`): a SQLite journal's call records are
appended to a file beside it, durable before they are acknowledged, and moved into its tables
in bulk; what a crash left in the log (and only what was whole) reaches the tables at the next
start; a failed append leaves nothing behind; another journal on the same file reads the log."""

from __future__ import annotations

import logging
import sqlite3
import stat
from pathlib import Path

import pytest

import agents._call_log as call_log
from agents._call_log import CallLog, path_beside, read_rows
from agents.usage_journal import JournalError, UsageJournal
from tests.journal_disk import log_refuses

AGREEMENT = "a" * 64


def _row(n: int, agreement: str = AGREEMENT) -> call_log.Row:
    return (agreement, f"call-{n}", n, n + 1, b"voucher %d" % n, b"receipt %d" % n,
            b"\x00response %d\xff" % n)


def _record(journal: UsageJournal, n: int, agreement: str = AGREEMENT) -> None:
    journal.record_call(*_row(n, agreement)).wait()


def _table_calls(database: Path) -> list[tuple]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT agreement_id, call_id, position, sequence, voucher, receipt, "
                          "response FROM agentmarket_seller_calls ORDER BY position").fetchall()


def _loaded(journal: UsageJournal) -> list[call_log.Row]:
    return [(agreement.agreement_id, call.call_id, call.position, call.sequence, call.voucher,
             call.receipt, call.response)
            for agreement in journal.load() for call in agreement.calls]


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A journal file holding the agreement AGREEMENT (and no call)."""
    path = tmp_path / "journal.db"
    with UsageJournal(f"sqlite:///{path}") as journal:
        journal.open_agreement(AGREEMENT, "seller", b"body")
    return path


def test_calls_are_logged_and_moved_into_the_tables_by_flush(database: Path) -> None:
    log_path = path_beside(str(database))
    assert log_path == database.with_name("journal.db-calls")
    with UsageJournal(f"sqlite:///{database}") as journal:
        for n in range(5):
            _record(journal, n)
        assert _table_calls(database) == []  # acknowledged: durable in the log
        assert read_rows(log_path) == [_row(n) for n in range(5)]
        assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
        journal.flush()
        assert _table_calls(database) == [_row(n) for n in range(5)]
        assert read_rows(log_path) == []
        _record(journal, 5)
    # closing moved the rest, and removed the empty log
    assert _table_calls(database) == [_row(n) for n in range(6)]
    assert not log_path.exists()


def test_the_log_is_moved_with_the_batch_once_it_is_due(database: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(call_log, "MOVE_ROWS", 4)
    with UsageJournal(f"sqlite:///{database}") as journal:
        for n in range(10):
            _record(journal, n)
            assert len(read_rows(path_beside(str(database)))) <= 4
        assert len(_table_calls(database)) >= 5
        assert _loaded(journal) == [_row(n) for n in range(10)]


def test_what_a_crash_left_in_the_log_reaches_the_tables_and_a_torn_tail_is_cut(
        database: Path, caplog: pytest.LogCaptureFixture) -> None:
    log_path = path_beside(str(database))
    assert log_path is not None
    written = CallLog(log_path)  # a seller killed after three acknowledged appends ...
    written.append([_row(0), _row(1)])
    written.append([_row(2)])
    written.append([_row(3)])
    end = written.end
    written.close()
    with log_path.open("r+b") as torn:  # ... and in the middle of a fourth
        torn.seek(end - 5)
        torn.write(bytes(5))
    with caplog.at_level(logging.WARNING, logger="agentmarket.seller"), \
            UsageJournal(f"sqlite:///{database}") as journal:
        assert _table_calls(database) == [_row(n) for n in range(3)]
        assert read_rows(log_path) == []
        assert _loaded(journal) == [_row(n) for n in range(3)]
    assert "never acknowledged; cut off" in caplog.text


def test_frames_of_an_emptied_log_never_come_back(database: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The log is written in place, allocated ahead: emptying it starts a new epoch, and what
    an earlier epoch left after the new frames reads as the end, even across a crash."""
    monkeypatch.setattr(call_log, "GROW_BYTES", 4096)
    log_path = path_beside(str(database))
    assert log_path is not None
    written = CallLog(log_path)
    written.append([_row(n) for n in range(40)])  # past one step of the allocation
    assert log_path.stat().st_size % 4096 == 0 and log_path.stat().st_size >= written.end
    written.clear()
    written.append([_row(40)])
    written.close()  # a crash: the old frames are still in the file, after the new one
    assert read_rows(log_path) == [_row(40)]
    with UsageJournal(f"sqlite:///{database}") as journal:
        assert _loaded(journal) == [_row(40)]


def test_a_log_written_before_the_header_is_still_moved(database: Path) -> None:
    log_path = path_beside(str(database))
    assert log_path is not None
    frames = [call_log._frame(_row(n), 0) for n in range(2)]
    legacy = b"".join(frame[:8] + frame[16:] for frame in frames)  # length, CRC, payload
    log_path.write_bytes(legacy)
    assert read_rows(log_path) == [_row(0), _row(1)]
    with UsageJournal(f"sqlite:///{database}") as journal:
        assert _table_calls(database) == [_row(0), _row(1)]
        _record(journal, 2)
        assert read_rows(log_path) == [_row(2)]
        assert _loaded(journal) == [_row(n) for n in range(3)]


def test_a_forgotten_agreement_s_records_are_not_moved_back(database: Path) -> None:
    log_path = path_beside(str(database))
    assert log_path is not None
    written = CallLog(log_path)  # moved and forgotten, then a crash before the log emptied
    written.append([_row(0, "f" * 64), _row(1)])
    written.close()
    with UsageJournal(f"sqlite:///{database}") as journal:
        assert _loaded(journal) == [_row(1)]
    assert _table_calls(database) == [_row(1)]


def test_a_failed_append_leaves_nothing_and_fails_only_its_callers(database: Path) -> None:
    log_path = path_beside(str(database))
    assert log_path is not None
    with UsageJournal(f"sqlite:///{database}") as journal:
        _record(journal, 0)
        with log_refuses(), pytest.raises(JournalError, match="No space left"):
            _record(journal, 1)
        assert read_rows(log_path) == [_row(0)]  # zeroed: no record nobody was told of
        assert b"call-1" not in log_path.read_bytes()
        _record(journal, 2)
        assert _loaded(journal) == [_row(0), _row(2)]


def test_records_the_tables_would_refuse_go_to_them_and_fail_there(database: Path) -> None:
    with UsageJournal(f"sqlite:///{database}") as journal:
        with pytest.raises(JournalError):  # no such agreement (a foreign key)
            _record(journal, 0, agreement="b" * 64)
        too_big = (*_row(1)[:3], 2**63, *_row(1)[4:])
        with pytest.raises(JournalError):  # past the column's 64 bits
            journal.record_call(*too_big).wait()
        _record(journal, 2)
        assert read_rows(path_beside(str(database))) == [_row(2)]  # logged again
        assert _loaded(journal) == [_row(2)]


def test_another_journal_on_the_file_reads_the_log_it_does_not_hold(
        database: Path, caplog: pytest.LogCaptureFixture) -> None:
    with UsageJournal(f"sqlite:///{database}") as first:
        for n in range(3):
            _record(first, n)
        with caplog.at_level(logging.WARNING, logger="agentmarket.seller"), \
                UsageJournal(f"sqlite:///{database}") as second:
            assert "held by another journal" in caplog.text
            assert _loaded(second) == [_row(n) for n in range(3)]
            _record(second, 3)  # to SQLite: the log is the first one's
            assert _table_calls(database) == [_row(3)]
            assert _loaded(second) == [_row(n) for n in range(4)]
        _record(first, 4)
        assert _loaded(first) == [_row(n) for n in range(5)]


@pytest.mark.parametrize("moved_by", ["redeem", "flush"])
def test_a_logged_record_the_tables_refuse_is_dropped_alone(
        database: Path, caplog: pytest.LogCaptureFixture, moved_by: str) -> None:
    other = "c" * 64
    with UsageJournal(f"sqlite:///{database}") as first:
        first.open_agreement(other, "seller", b"body")
        _record(first, 0, agreement=other)  # logged: its agreement is in the tables
        _record(first, 1)
        with UsageJournal(f"sqlite:///{database}") as second:  # forgets it behind first's back
            assert second.forget([other]) == 1
        with caplog.at_level(logging.ERROR, logger="agentmarket.seller"):
            if moved_by == "redeem":  # a batch that is not calls alone moves the log
                first.record_redeem(AGREEMENT, closed=True, escrow=None)
            else:
                first.flush()
        assert "tables refuse the logged record of call 'call-0'" in caplog.text
        assert _table_calls(database) == [_row(1)]
        _record(first, 2, agreement=AGREEMENT)  # the journal carries on
        assert [row[1] for row in _loaded(first)] == ["call-1", "call-2"]
