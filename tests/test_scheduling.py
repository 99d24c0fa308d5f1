"""A serving process's threads, those it runs now and those it starts later, take SCHED_BATCH."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"),
                                reason="SCHED_BATCH is a Linux scheduling policy")

_PROBE = """
import json, os, threading
from marketplace.scheduling import batch_scheduling
hold = threading.Event()
before = threading.Thread(target=hold.wait)  # already running when the policy is set
before.start()
moved = batch_scheduling()
after = threading.Thread(target=hold.wait)  # started later: inherits it
after.start()
policies = {tid: os.sched_getscheduler(int(tid)) for tid in os.listdir("/proc/self/task")}
hold.set()
print(json.dumps({"moved": moved, "policies": policies, "batch": os.SCHED_BATCH}))
"""


def test_every_thread_now_and_later_runs_under_sched_batch():
    """In a process of its own: the test process keeps its policy."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         timeout=60, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["moved"] >= 2  # the main thread and the one waiting
    assert len(seen["policies"]) >= 3
    assert set(seen["policies"].values()) == {seen["batch"]}


_LIBRARY_PROBE = """
import json, os
before = os.sched_getscheduler(0)
from marketplace import MarketplaceNode
node = MarketplaceNode("sqlite:///" + {db!r}).start()
policies = {{os.sched_getscheduler(int(tid)) for tid in os.listdir("/proc/self/task")}}
node.stop(0)
print(json.dumps({{"before": before, "after": sorted(policies)}}))
"""


def test_a_node_made_as_a_library_leaves_the_process_policy_alone(tmp_path):
    """Only the process's owner (the node command, a deployed seller) asks for SCHED_BATCH."""
    out = subprocess.run([sys.executable, "-c", _LIBRARY_PROBE.format(db=str(tmp_path / "m.db"))],
                         capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["after"] == [seen["before"]]
