"""A benchmark's child processes: the CPU each used (Linux /proc), and stopping one (SIGTERM,
then SIGKILL if it lingers)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` used so far; OSError once it is gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime + stime


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
