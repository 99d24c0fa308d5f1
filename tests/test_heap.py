"""A serving process settles its heap: start-up objects frozen, larger collection passes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from marketplace.heap import FIRST_GENERATION_THRESHOLD, OLDER_GENERATION_THRESHOLD, settle_heap

_PROBE = """
import gc, json
from marketplace import MarketplaceNode
from marketplace.heap import settle_heap
node = MarketplaceNode("sqlite:///" + {db!r}).start()
before = gc.get_freeze_count()
frozen = settle_heap()
garbage = []
garbage.append(garbage)  # a cycle made after settling is still collected
del garbage
collected = gc.collect()
print(json.dumps({{"before": before, "frozen": frozen, "threshold": gc.get_threshold(),
                  "collected": collected, "again": settle_heap(500, 5)}}))
node.stop(0)
"""


def test_a_started_node_settles_its_heap(tmp_path):
    """In a process of its own: a test process must keep its collector as it is."""
    out = subprocess.run([sys.executable, "-c", _PROBE.format(db=str(tmp_path / "m.db"))],
                         capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["before"] == 0
    assert seen["frozen"] > 10_000  # modules, classes, descriptors: the start-up heap
    assert seen["threshold"] == [FIRST_GENERATION_THRESHOLD, OLDER_GENERATION_THRESHOLD,
                                 OLDER_GENERATION_THRESHOLD]
    assert seen["collected"] >= 1
    assert seen["again"] >= seen["frozen"]


@pytest.mark.parametrize("thresholds", [(0, 20), (10_000, 0), (-1, -1)])
def test_thresholds_below_one_are_refused_before_anything_changes(thresholds):
    import gc

    before = gc.get_threshold(), gc.get_freeze_count()
    with pytest.raises(ValueError, match="at least 1"):
        settle_heap(*thresholds)
    assert (gc.get_threshold(), gc.get_freeze_count()) == before
