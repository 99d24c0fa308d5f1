"""Let a serving process's threads keep their core after waking another thread (Linux's
SCHED_BATCH), instead of being preempted by the thread they woke.

Why: every call through a Python server hands work between threads (grpc's completion queue
to a worker, a committed journal batch to the calls waiting for it). Under Linux's default
policy, on busy cores, the woken thread often preempts the one that woke it while that one
still holds the interpreter lock: the woken thread cannot run without the lock, so both wait
for the next switch, and each such convoy costs two switches and the caches. SCHED_BATCH
turns off that wake-up preemption for the process's threads: a thread runs until it blocks or
its time slice ends, and the one it woke runs next, or at once on an idle core. It needs no
privilege and changes nothing else (nice values, CPU shares).

Measured on 2 cores, interleaved runs of the deployed benchmark (`benchmarks.deployed`, every
party its own process): 105-113 tasks/s against 96-103 under the default policy, with less CPU
per task in every party and a lower task p99. A paid HTTP call through the x402 gateway: 953-1,012
calls/s against 842-877. It is no free lunch: a woken thread may wait for the running one to
block or use up its slice, so a chain of hand-offs that is waited on end to end (16 paid calls
driven from one process against a seller whose calls wait for their journal commit) gained
nothing (1,791-1,856 against 1,871-1,934 calls/s) though each call cost 40% less CPU.

It is for a process that serves: the node and gateway commands call it (`--normal-scheduling`
keeps the default policy). A seller's or buyer's own process calls it once its agents have
started. It does nothing where the platform has no SCHED_BATCH.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def batch_scheduling() -> int:
    """Put every thread of this process under SCHED_BATCH (threads they start later inherit
    it); returns how many threads it moved, 0 where the platform lacks the policy."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None or not hasattr(os, "sched_setscheduler"):
        return 0
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the calling thread, and those it starts from now on
        threads = [0]
    moved = 0
    for tid in threads:
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
            moved += 1
        except OSError as error:  # ended meanwhile, or refused by a sandbox: keep the default
            log.debug("thread %d keeps its scheduling policy: %s", tid, error)
    return moved


__all__ = ["batch_scheduling"]
