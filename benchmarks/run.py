"""`make bench`: every benchmark, a table of figures, and benchmarks/results.json.

Each figure that is a ratio was measured against its baseline in this same run on this machine;
the machine's core count is recorded with the results.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

MODULES = ("ledger", "usage_journal", "durable_record", "payment_path", "rpc_floor", "paid_call",
           "a2a", "x402_gateway", "discovery", "tasks", "deployed", "registry_flood", "console",
           "warm_start", "scale_out", "sandbox")
RESULTS = Path(__file__).resolve().parent / "results.json"
QUIET_S = 3.0  # after the sync, for the last benchmark's processes to finish exiting


def main(names: list[str]) -> int:
    os.environ.setdefault("AGENTMARKET_TRACING", "off")  # measure the work, not the exporter
    console = Console()
    # A run of some benchmarks refreshes their keys and keeps the others' last figures; a
    # whole run starts afresh, so that every figure in the file comes from that one run.
    results: dict[str, Any] = json.loads(RESULTS.read_text()) \
        if names and RESULTS.exists() else {}
    results.update({"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "run_commit": _commit(), "run_started_utc": _utc_now()})
    if names:  # the commit and times are this run's, most figures an earlier one's: say so
        results["run_partial"] = sorted({*results.get("run_partial", ()), *names})
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console) as progress:
        for name in names or MODULES:
            task = progress.add_task(name, total=None)
            module = importlib.import_module(f"benchmarks.{name}")
            results.update(module.run(lambda text, t=task: progress.update(t, description=text)))
            progress.update(task, description=f"{name}: done", completed=1, total=1)
            _quiet()
    results["run_finished_utc"] = _utc_now()
    table = Table("figure", "value", title=f"agentmarket benchmarks ({os.cpu_count()} cores)")
    for key, value in results.items():
        table.add_row(key, str(value))
    console.print(table)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"written to {RESULTS}")
    return 0


def _commit() -> str:
    """The commit measured (with "+changes" when the work tree differs from it), or ""."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=RESULTS.parent.parent, capture_output=True,
                              text=True, timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      f":(exclude){RESULTS.relative_to(RESULTS.parent.parent)}")
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{commit}+changes" if commit and changed else commit


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _quiet() -> None:
    """Let the next benchmark start on a quiet machine: what the last one wrote (the discovery
    benchmark's database is 500 MB) reaches the disk now, not as writeback competing with the
    next one's commits and CPU."""
    os.sync()
    time.sleep(QUIET_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
