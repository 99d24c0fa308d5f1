"""A journal batch's completion (`agents._journal_batches.Done`): what its callers wait on."""

from __future__ import annotations

import threading

from agents._journal_batches import Done


def test_set_before_waiting_is_seen_at_once() -> None:
    done = Done()
    done.set()
    assert done.is_set()
    assert done.wait(0) and done.wait(None) and done.wait(5)


def test_a_wait_that_runs_out_is_false_and_a_later_set_still_works() -> None:
    done = Done()
    assert not done.wait(0)
    assert not done.wait(-1)
    assert not done.wait(0.01)  # its lock is left held: the set below releases it once
    done.set()
    done.set()  # a second set releases nothing twice
    assert done.is_set() and done.wait(0.01)


def test_one_set_wakes_every_waiter() -> None:
    done, woken = Done(), []
    started = threading.Barrier(9)

    def waiter() -> None:
        started.wait()
        woken.append(done.wait(30))

    threads = [threading.Thread(target=waiter) for _ in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    done.set()
    for thread in threads:
        thread.join(30)
    assert woken == [True] * 8
    assert not any(thread.is_alive() for thread in threads)


def test_waiters_racing_the_set_all_return_true() -> None:
    """Waits begun before, during and after `set` (which hands its lock to the first waiter)
    all see it: none is left blocked until its timeout."""
    def waiter(done: Done, results: list[bool]) -> None:
        results.append(done.wait(30))

    for _ in range(200):
        done, results = Done(), []
        threads = [threading.Thread(target=waiter, args=(done, results)) for _ in range(4)]
        for index, thread in enumerate(threads):
            thread.start()
            if index == 1:
                done.set()
        for thread in threads:
            thread.join(30)
        assert results == [True] * 4
