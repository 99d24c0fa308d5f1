"""What a party process of the fault suite is told to suffer, from its environment.

FAULT_KILL=<point>:<n>  SIGKILL the process itself the n-th time it reaches <point> (a step of
                        the paid path: before or after a durable write, before or after an RPC)
FAULT_CLOCK_S=<s>       the process's clock runs <s> seconds off (within the allowed skew), and
FAULT_JUMP=<t>:<s>      jumps by another <s> seconds <t> seconds after start
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

_real_time, _real_time_ns = time.time, time.time_ns


def refusing_log(journal: Path) -> Path:
    """The marker file that, while it exists, makes the seller's call log (beside its
    `journal`) refuse its appends as a full disk would."""
    return journal.with_name(journal.name + "-refusing")
_offset = [0.0]
_reached: Counter[str] = Counter()


def install_clock() -> None:
    """Run this process's wall clock off by FAULT_CLOCK_S, jumping per FAULT_JUMP."""
    _offset[0] = float(os.environ.get("FAULT_CLOCK_S", "0") or 0)
    jump = os.environ.get("FAULT_JUMP", "")
    if not _offset[0] and not jump:
        return
    time.time = lambda: _real_time() + _offset[0]  # type: ignore[assignment]
    time.time_ns = lambda: _real_time_ns() + int(_offset[0] * 1e9)  # type: ignore[assignment]
    if jump:
        after, by = (float(part) for part in jump.split(":"))
        timer = threading.Timer(after, lambda: _offset.__setitem__(0, _offset[0] + by))
        timer.daemon = True
        timer.start()


def reach(point: str) -> None:
    """A step of the paid path; dies here if FAULT_KILL names it (and this is the n-th time)."""
    _reached[point] += 1
    wanted = os.environ.get("FAULT_KILL", "")
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name == point and _reached[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
