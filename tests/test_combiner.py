"""Flat combining (`wallets._combiner`): a lone caller runs its own request on its own
thread; callers arriving meanwhile go together in the next batch, each gets its own result,
and a failed batch fails each of its requests."""

from __future__ import annotations

import threading
import time

import pytest

from wallets._combiner import Combiner


def test_a_lone_caller_runs_its_request_on_its_own_thread():
    threads: list[int] = []

    def run(batch):  # type: ignore[no-untyped-def]
        threads.append(threading.get_ident())
        return [r * 2 for r in batch]

    combiner = Combiner(run)
    assert [combiner.submit(n) for n in range(3)] == [0, 2, 4]
    assert threads == [threading.get_ident()] * 3


def test_callers_arriving_during_a_batch_go_together_and_each_gets_its_result():
    batches: list[list[int]] = []
    first_running = threading.Event()
    release = threading.Event()

    def run(batch):  # type: ignore[no-untyped-def]
        batches.append(list(batch))
        if batch == [0]:
            first_running.set()
            release.wait(5)
        return [f"r{r}" for r in batch]

    combiner = Combiner(run)
    results: dict[int, str] = {}

    def call(n: int) -> None:
        results[n] = combiner.submit(n)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert first_running.wait(5)
    others = [threading.Thread(target=call, args=(n,)) for n in range(1, 6)]
    for thread in others:
        thread.start()
    while len(combiner._queue) < 5:
        time.sleep(0.001)
    release.set()
    for thread in [first, *others]:
        thread.join(5)
    assert results == {n: f"r{n}" for n in range(6)}
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4, 5] and len(batches) == 2


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_one_runs():
    def run(batch):  # type: ignore[no-untyped-def]
        if "bad" in batch:
            raise RuntimeError("the batch failed")
        return list(batch)

    combiner = Combiner(run)
    with pytest.raises(RuntimeError):
        combiner.submit("bad")
    assert combiner.submit("good") == "good"
