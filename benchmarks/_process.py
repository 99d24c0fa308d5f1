"""A benchmark's child processes: the CPU each used (Linux /proc), and stopping one (SIGTERM,
then SIGKILL if it lingers)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` used so far, all its threads (ended ones
    too); OSError once it is gone. Read from the process's CPU-time clock, in nanoseconds,
    where the kernel lets this process read it (Linux does); else from /proc/<pid>/stat, in
    clock ticks (10 ms here), where a short phase comes out as a whole number of ticks (the
    x402 closes: 7 or 8 ticks over 2,384 calls, 29.4 or 33.6 us a call, in every run)."""
    try:
        return time.clock_gettime(_cpu_clock(pid))
    except OSError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime + stime


def _cpu_clock(pid: int) -> int:
    """The clock id of process `pid`'s CPU time (glibc's clock_getcpuclockid: the pid
    complemented, shifted past the clock's kind, CPUCLOCK_SCHED)."""
    return (~pid << 3) | 2


def cpu_s_so_far(pid: int) -> float:
    """`cpu_s`, or 0.0 where it cannot be read (no /proc, or the process is gone)."""
    try:
        return cpu_s(pid)
    except OSError:
        return 0.0


def terminate(process: subprocess.Popen, timeout_s: float = 20) -> None:  # type: ignore[type-arg]
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
