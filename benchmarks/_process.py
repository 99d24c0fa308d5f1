"""Stopping a benchmark's child process: SIGTERM, then SIGKILL if it lingers."""

from __future__ import annotations

import subprocess


def terminate(process: subprocess.Popen, timeout_s: float = 20) -> None:  # type: ignore[type-arg]
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
