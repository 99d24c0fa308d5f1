"""The seller's usage journal: what it acknowledged survives a restart (and a SIGKILL), it writes
concurrent callers' records in shared transactions, records are idempotent, and a write that
fails reaches the caller waiting on it without stopping later writes."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from agents.errors import NotFound, Unavailable
from agents.usage_journal import (
    JournalAgreement,
    JournalCall,
    JournalError,
    JournalPacedExecutor,
    UsageJournal,
)
from tests.journal_disk import log_refuses, log_stalls
from wallets.store import make_engine

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def journal(db_url: str) -> Iterator[UsageJournal]:
    journal = UsageJournal(db_url)
    yield journal
    journal.close()


def _call(agreement_id: str, position: int, sequence: int | None = None) -> JournalCall:
    """A call with distinct, recognisable bytes in every field."""
    tag = f"{agreement_id}/{position}"
    return JournalCall(call_id=f"call-{tag}", position=position,
                       sequence=position + 1 if sequence is None else sequence,
                       voucher=f"voucher {tag}".encode(), receipt=f"receipt {tag}".encode(),
                       response=os.urandom(8) + tag.encode())


def _record(journal: UsageJournal, agreement_id: str, call: JournalCall):  # -> Pending
    return journal.record_call(agreement_id, call.call_id, call.position, call.sequence,
                               call.voucher, call.receipt, call.response)


def _by_id(agreements: list[JournalAgreement]) -> dict[str, JournalAgreement]:
    return {a.agreement_id: a for a in agreements}


def _run_threads(count: int, target, *args) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            target(index, *args)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


def test_round_trip_from_many_threads_survives_reopening(db_url: str):
    agreements = [f"agr-{i}" for i in range(4)]
    journal = UsageJournal(db_url)
    # Opened in an order that is not alphabetical: load() must replay the opening order.
    for index, agreement_id in enumerate(reversed(agreements)):
        journal.open_agreement(agreement_id, f"seller-{index % 2}", f"body of {agreement_id}"
                               .encode())
    work = [(agreement_id, _call(agreement_id, position))
            for agreement_id in agreements for position in range(400)]
    random.Random(7).shuffle(work)  # each thread records positions out of order
    threads, per_thread = 8, 200

    def record(thread: int) -> None:
        mine = work[thread * per_thread:(thread + 1) * per_thread]
        pendings = [_record(journal, agreement_id, call) for agreement_id, call in mine]
        for pending in pendings:
            pending.wait()

    _run_threads(threads, record)
    assert journal.records_written == len(work) + len(agreements)
    journal.close()

    reopened = UsageJournal(db_url)
    try:
        loaded = reopened.load()
    finally:
        reopened.close()
    assert [a.agreement_id for a in loaded] == list(reversed(agreements))
    expected: dict[str, list[JournalCall]] = {a: [] for a in agreements}
    for agreement_id, call in work:
        expected[agreement_id].append(call)
    for index, agreement in enumerate(loaded):
        assert agreement.seller_id == f"seller-{index % 2}"
        assert agreement.body == f"body of {agreement.agreement_id}".encode()
        assert agreement.opened_at_ms > 1_700_000_000_000
        assert (agreement.closed, agreement.escrow) == (False, None)
        assert list(agreement.calls) == sorted(expected[agreement.agreement_id],
                                               key=lambda call: call.position)


def test_concurrent_callers_share_transactions(journal: UsageJournal):
    journal.open_agreement("agr", "seller", b"body")
    batches_before, threads, per_thread = journal.batches_written, 8, 100

    def record(thread: int) -> None:
        for i in range(per_thread):  # the seller's loop: record, wait, answer, next call
            _record(journal, "agr", _call("agr", thread * per_thread + i)).wait()

    _run_threads(threads, record)
    records, batches = threads * per_thread, journal.batches_written - batches_before
    assert journal.records_written == records + 1
    # One transaction per record would be 800; waiting callers pile up behind each commit.
    assert batches <= records // 2, f"{batches} transactions for {records} records"
    assert len(journal.load()[0].calls) == records


def test_writer_waits_max_delay_to_fill_a_batch(db_url: str):
    with UsageJournal(db_url, max_delay_s=0.3) as journal:
        journal.open_agreement("agr", "seller", b"body")
        before = journal.batches_written
        pendings = []
        for position in range(5):
            pendings.append(_record(journal, "agr", _call("agr", position)))
            time.sleep(0.01)  # slower than the writer: without the delay, several batches
        for pending in pendings:
            pending.wait()
        assert journal.batches_written - before == 1
        assert [c.position for c in journal.load()[0].calls] == [0, 1, 2, 3, 4]


# A linger far longer than any wait below: a batch held by it would time the wait out; and
# calls counted as running however long they take.
LONG_LINGER_S = 60.0


def test_a_batch_waits_for_the_record_of_a_running_call(db_url: str):
    with UsageJournal(db_url, max_linger_s=LONG_LINGER_S, fast_call_s=LONG_LINGER_S) as journal:
        journal.open_agreement("agr", "seller", b"body")
        before = journal.batches_written
        started, go = threading.Event(), threading.Event()

        def running_call() -> None:
            started.set()
            go.wait(10)
            _record(journal, "agr", _call("agr", 1)).wait(10)

        call = journal.expecting(running_call)  # accepted by the server, not yet recorded
        worker = threading.Thread(target=call)
        worker.start()
        started.wait(10)
        first = _record(journal, "agr", _call("agr", 0))
        time.sleep(0.2)
        assert not first.done()  # held for the running call's record
        go.set()
        first.wait(10)
        worker.join(10)
        assert journal.batches_written - before == 1  # one commit for both
        assert [c.position for c in journal.load()[0].calls] == [0, 1]


def test_a_record_its_worker_never_waits_for_is_written_anyway(db_url: str):
    """A paid call's worker may write its own batch as it waits (no thread switch to the
    writer); when it records and then never waits (the buyer hung up, its coroutine was
    cancelled) the idle writer, which nobody woke, still writes the record, and `flush`
    does not stall on it."""
    with UsageJournal(db_url) as journal:
        journal.open_agreement("agr", "seller", b"body")
        recorded: list = []
        worker = threading.Thread(target=journal.expecting(
            lambda: recorded.append(_record(journal, "agr", _call("agr", 0)))))
        worker.start()
        worker.join(10)
        deadline = time.monotonic() + 5
        while not recorded[0].done():
            assert time.monotonic() < deadline, "the unwaited record was never written"
            time.sleep(0.01)
        assert [c.position for c in journal.load()[0].calls] == [0]
        worker = threading.Thread(target=journal.expecting(
            lambda: recorded.append(_record(journal, "agr", _call("agr", 1)))))
        worker.start()
        worker.join(10)
        journal.flush(5)
        assert recorded[1].done() and not recorded[1].failed()


@pytest.mark.parametrize("ending", ["returns", "raises"])
def test_a_running_call_that_ends_without_a_record_releases_the_batch(db_url: str,
                                                                     ending: str):
    with UsageJournal(db_url, max_linger_s=LONG_LINGER_S, fast_call_s=LONG_LINGER_S) as journal:
        journal.open_agreement("agr", "seller", b"body")
        go = threading.Event()

        def refused_call() -> None:  # e.g. its voucher was refused: nothing to record
            go.wait(10)
            if ending == "raises":
                raise ValueError("refused")

        call = journal.expecting(refused_call)

        def serve() -> None:
            with contextlib.suppress(ValueError):
                call()

        worker = threading.Thread(target=serve)
        worker.start()
        first = _record(journal, "agr", _call("agr", 0))
        go.set()
        first.wait(10)  # well before the linger ends
        worker.join(10)


def test_nothing_running_means_no_wait(db_url: str):
    with UsageJournal(db_url, max_linger_s=LONG_LINGER_S, fast_call_s=LONG_LINGER_S) as journal:
        journal.open_agreement("agr", "seller", b"body")
        for position in range(3):
            _record(journal, "agr", _call("agr", position)).wait(10)
        assert len(journal.load()[0].calls) == 3


def test_a_slow_call_stops_holding_batches(db_url: str):
    """A call still running `fast_call_s` (to twice that) after it was announced is taken to
    be slow (a model call, a stream): the records of other calls no longer wait for it."""
    with UsageJournal(db_url, max_linger_s=LONG_LINGER_S, fast_call_s=1.0) as journal:
        journal.open_agreement("agr", "seller", b"body")
        started, go = threading.Event(), threading.Event()

        def slow_call() -> None:
            started.set()
            go.wait(10)
            _record(journal, "agr", _call("agr", 1)).wait(10)

        worker = threading.Thread(target=journal.expecting(slow_call))
        worker.start()
        started.wait(10)
        assert journal.expected_records == 1
        time.sleep(2.2)  # over two generations of 1 s
        assert journal.expected_records == 0
        _record(journal, "agr", _call("agr", 0)).wait(10)  # not held for the slow call
        go.set()
        worker.join(10)
        assert [c.position for c in journal.load()[0].calls] == [0, 1]


def _batch_of_three(journal: UsageJournal) -> None:
    """Two lazy opens share the commit of the first call: one batch of three rows."""
    journal.queue_open("a", "seller", b"body", lazy=True)
    journal.queue_open("b", "seller", b"body", lazy=True)
    _record(journal, "a", _call("a", 0)).wait(10)


def test_a_batch_waits_for_as_many_records_as_the_last_one_held(db_url: str):
    """`group_wait_s` (a seller on an event loop, whose calls cannot be announced ahead): the
    callers that shared the last commit are taken to come back together."""
    with UsageJournal(db_url, group_wait_s=LONG_LINGER_S) as journal:
        _batch_of_three(journal)
        before = journal.batches_written
        first = _record(journal, "a", _call("a", 1))
        time.sleep(0.2)
        assert not first.done()  # held for two more records
        others = [_record(journal, "b", _call("b", 0)), _record(journal, "a", _call("a", 2))]
        for pending in (first, *others):
            pending.wait(10)
        assert journal.batches_written - before == 1
        assert sorted(c.call_id for a in journal.load() for c in a.calls) == \
            ["call-a/0", "call-a/1", "call-a/2", "call-b/0"]


def test_a_lone_caller_never_waits_for_a_group(db_url: str):
    with UsageJournal(db_url, group_wait_s=LONG_LINGER_S) as journal:
        journal.open_agreement("agr", "seller", b"body")
        for position in range(3):  # each would time out if it waited for a group
            _record(journal, "agr", _call("agr", position)).wait(10)
        assert len(journal.load()[0].calls) == 3


def test_a_group_that_does_not_come_back_shrinks(db_url: str):
    """Fewer callers than the last commit held: the batch is written after `group_wait_s`,
    and the next ones wait for no one."""
    with UsageJournal(db_url, group_wait_s=0.2) as journal:
        _batch_of_three(journal)
        for position in range(1, 4):
            before = journal.batches_written
            _record(journal, "a", _call("a", position)).wait(10)
            assert journal.batches_written - before == 1
        assert [c.position for c in _by_id(journal.load())["a"].calls] == [0, 1, 2, 3]


def test_the_paced_pool_announces_each_call_until_it_ends(db_url: str):
    with UsageJournal(db_url, max_linger_s=LONG_LINGER_S, fast_call_s=LONG_LINGER_S) as journal:
        journal.open_agreement("agr", "seller", b"body")
        pool = JournalPacedExecutor(journal, max_workers=2)
        recorded = pool.submit(lambda n: _record(journal, "agr", _call("agr", n)).wait(10), 0)
        failed = pool.submit(lambda: 1 / 0)
        recorded.result(10)
        with pytest.raises(ZeroDivisionError):
            failed.result(10)
        pool.shutdown()
        with pytest.raises(RuntimeError):  # refused by a shut-down pool: never announced
            pool.submit(print)
        _record(journal, "agr", _call("agr", 1)).wait(10)  # no call left to wait for


def test_records_are_idempotent(journal: UsageJournal):
    journal.open_agreement("agr", "seller", b"first body")
    journal.open_agreement("agr", "other seller", b"second body")  # no-op
    first = _call("agr", 0)
    _record(journal, "agr", first).wait()
    retried = JournalCall(first.call_id, 5, 9, b"other voucher", b"other receipt", b"other")
    _record(journal, "agr", retried).wait()  # a retried call id: the first record stays
    # Twice in the same batch: still one row, the first.
    twin = _call("agr", 1)
    pendings = [_record(journal, "agr", twin),
                _record(journal, "agr", JournalCall(twin.call_id, 2, 3, b"v", b"r", b"x"))]
    for pending in pendings:
        pending.wait()
    [agreement] = journal.load()
    assert (agreement.seller_id, agreement.body) == ("seller", b"first body")
    assert list(agreement.calls) == [first, twin]


def test_redeem_states_survive_reopening_and_forget_deletes(db_url: str):
    journal = UsageJournal(db_url)
    for agreement_id in ("in-flight", "redeemed", "refused", "untouched"):
        journal.open_agreement(agreement_id, "seller", agreement_id.encode())
        for position in range(3):
            _record(journal, agreement_id, _call(agreement_id, position)).wait()
    journal.record_redeem("in-flight", closed=True, escrow=None)
    journal.record_redeem("redeemed", closed=True, escrow=None)
    journal.record_redeem("redeemed", closed=True, escrow=b"escrow bytes")
    journal.record_redeem("refused", closed=True, escrow=None)
    journal.record_redeem("refused", closed=False, escrow=None)
    with pytest.raises(NotFound):
        journal.record_redeem("never-opened", closed=True, escrow=None)
    journal.close()

    journal = UsageJournal(db_url)
    try:
        states = {a.agreement_id: (a.closed, a.escrow, len(a.calls)) for a in journal.load()}
        assert states == {"in-flight": (True, None, 3), "redeemed": (True, b"escrow bytes", 3),
                          "refused": (False, None, 3), "untouched": (False, None, 3)}
        assert journal.forget(["redeemed", "unknown"]) == 1
        assert journal.forget([]) == 0
    finally:
        journal.close()

    journal = UsageJournal(db_url)
    try:
        assert list(_by_id(journal.load())) == ["in-flight", "refused", "untouched"]
        engine = make_engine(db_url)
        try:
            with engine.connect() as conn:
                orphans = conn.execute(text("SELECT count(*) FROM agentmarket_seller_calls "
                                            "WHERE agreement_id = 'redeemed'")).scalar_one()
            assert orphans == 0
        finally:
            engine.dispose()
    finally:
        journal.close()


def test_a_refused_record_fails_alone(db_url: str):
    # max_batch 3 and a long delay: the three records below are written in one batch.
    with UsageJournal(db_url, max_batch=3, max_delay_s=5.0) as journal:
        journal.open_agreement("agr", "seller", b"body")
        good, stray, other = _call("agr", 0), _call("nowhere", 0), _call("agr", 1)
        pendings = [_record(journal, "agr", good), _record(journal, "nowhere", stray),
                    _record(journal, "agr", other)]
        pendings[0].wait()
        with pytest.raises(JournalError, match="nowhere") as refused:
            pendings[1].wait()
        assert isinstance(refused.value, Unavailable)  # the seller refuses: UNAVAILABLE
        pendings[2].wait()
        assert [c.call_id for c in journal.load()[0].calls] == [good.call_id, other.call_id]


def test_a_number_past_the_columns_fails_its_record_alone(db_url: str):
    """A record whose number no column holds (a buyer's voucher sequence of 2^63, were it let
    through) fails alone: the other records of its batch commit."""
    with UsageJournal(db_url, max_batch=3, max_delay_s=5.0) as journal:
        journal.open_agreement("agr", "seller", b"body")
        good, huge, other = _call("agr", 0), _call("agr", 1, sequence=2**63), _call("agr", 2)
        pendings = [_record(journal, "agr", call) for call in (good, huge, other)]
        pendings[0].wait()
        with pytest.raises(JournalError, match="call-agr/1"):
            pendings[1].wait()
        pendings[2].wait()
        assert [c.call_id for c in journal.load()[0].calls] == [good.call_id, other.call_id]


def test_a_failed_batch_reaches_every_caller_and_the_writer_carries_on(db_url: str):
    journal = UsageJournal(db_url)
    admin = make_engine(db_url)
    try:
        journal.open_agreement("agr", "seller", b"body")
        _record(journal, "agr", _call("agr", 0)).wait()
        with admin.begin() as conn:  # the database stops accepting the journal's writes
            conn.execute(text("ALTER TABLE agentmarket_seller_calls RENAME TO calls_away"))
        with log_refuses():  # and so does the disk its call log is on
            failed = [_record(journal, "agr", _call("agr", position)) for position in (1, 2, 3)]
            for pending in failed:
                with pytest.raises(JournalError, match="could not write"):
                    pending.wait()
        with admin.begin() as conn:
            conn.execute(text("ALTER TABLE calls_away RENAME TO agentmarket_seller_calls"))
        _record(journal, "agr", _call("agr", 4)).wait()
        assert [c.position for c in journal.load()[0].calls] == [0, 4]
    finally:
        journal.close()
        admin.dispose()


def test_wait_times_out_and_close_is_final(db_url: str):
    journal = UsageJournal(db_url)
    journal.open_agreement("agr", "seller", b"body")
    admin = make_engine(db_url)
    hold = threading.Event()
    released = threading.Event()

    def lock_the_table() -> None:  # keep the journal's next write waiting on a lock
        with admin.begin() as conn:
            if admin.dialect.name == "postgresql":
                conn.execute(text("LOCK TABLE agentmarket_seller_calls IN EXCLUSIVE MODE"))
            else:  # BEGIN IMMEDIATE already holds SQLite's one write lock
                conn.execute(text("UPDATE agentmarket_seller_agreements SET closed = closed"))
            hold.set()
            released.wait(10)

    locker = threading.Thread(target=lock_the_table)
    locker.start()
    try:
        with log_stalls() as log_released:  # and the disk of its call log hangs
            assert hold.wait(10)
            pending = _record(journal, "agr", _call("agr", 0))
            with pytest.raises(JournalError, match="did not commit within"):
                pending.wait(timeout_s=0.2)
            assert not pending.done()
            released.set()
            log_released.set()
            pending.wait()  # it commits once the lock is gone
    finally:
        released.set()
        locker.join()
        admin.dispose()
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(JournalError, match="closed"):
        _record(journal, "agr", _call("agr", 1))


CHILD = textwrap.dedent("""
    import sys, threading
    from agents.usage_journal import UsageJournal

    journal = UsageJournal(sys.argv[1])
    journal.open_agreement("agr", "seller", b"body")
    out = threading.Lock()

    def work(thread):
        for i in range(1_000_000):
            call_id = f"{thread}-{i}"
            journal.record_call("agr", call_id, thread * 1_000_000 + i, i, b"voucher",
                                b"receipt", call_id.encode()).wait()
            with out:
                sys.stdout.write(f"ok {call_id}\\n")
                sys.stdout.flush()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
""")


def test_acknowledged_calls_survive_sigkill(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with (tmp_path / "stderr.txt").open("wb") as stderr:
        child = subprocess.Popen([sys.executable, str(script), url], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=stderr)
        acknowledged: list[str] = []
        try:
            assert child.stdout is not None
            for line in child.stdout:
                acknowledged.append(line.decode().split()[1])
                if len(acknowledged) == 400:
                    break
            os.kill(child.pid, signal.SIGKILL)  # mid-run: records are queued and committing
            acknowledged += [line.decode().split()[1] for line in child.stdout]
        finally:
            child.kill()
            child.wait(timeout=30)
    assert len(acknowledged) >= 400, (tmp_path / "stderr.txt").read_text()

    with UsageJournal(url) as journal:
        [agreement] = journal.load()
    recorded = {call.call_id: call for call in agreement.calls}
    missing = set(acknowledged) - set(recorded)
    assert not missing, f"{len(missing)} acknowledged calls lost, e.g. {sorted(missing)[:5]}"
    for call_id in acknowledged:
        assert recorded[call_id].response == call_id.encode()
