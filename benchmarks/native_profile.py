"""Where a party's CPU goes below Python: Linux `perf` samples a process (user and kernel, C
libraries included) and each sample is put down to the library it ran in.

py-spy sees Python frames only, so grpc's C-core, SQLite, libsodium and the kernel's thread
switching all hide behind the Python call that entered them. This names them: the share of a
process's samples in the CPython interpreter, the kernel (and, of that, switching threads and
waking them), grpc's C-core, SQLite, libsodium, protobuf and libc.

    perf = PerfRecorder(out_dir); perf.start("node", pid); ...; perf.stop()
    shares(out_dir / "node.data")  # {"interpreter": 0.41, "kernel": 0.29, ...}
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from rich.table import Table

# what a library's name says it is (the first match wins); the rest is "other"
KINDS = (
    ("interpreter", re.compile(r"libpython|^python")),
    ("kernel", re.compile(r"^\[kernel")),
    ("grpc", re.compile(r"^cygrpc")),
    ("sqlite", re.compile(r"sqlite3")),
    ("libsodium", re.compile(r"^_sodium|libsodium")),
    ("protobuf", re.compile(r"^_message|upb")),
    ("libc", re.compile(r"^libc\.|^libm\.|^ld-linux")),
)
# the kernel's cost of switching threads: the switch itself, and waking the next one
SWITCHING = ("finish_task_switch", "_raw_spin_unlock_irqrestore")
_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S.*?)\s*$")


def available() -> str:
    """'' when `perf` can sample this machine's processes, else why not."""
    if shutil.which("perf") is None:
        return "no perf on PATH (Debian: linux-perf)"
    try:
        paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        return "cannot read /proc/sys/kernel/perf_event_paranoid"
    if paranoid > 1 and os.geteuid() != 0:
        return f"perf_event_paranoid is {paranoid}: run as root or lower it to 1"
    return ""


class PerfRecorder:
    """`perf record` on some processes at once, each to `<out_dir>/<name>.data`."""

    def __init__(self, out_dir: Path, frequency_hz: int = 999) -> None:
        self.out_dir = out_dir
        self.frequency_hz = frequency_hz
        self._running: list[subprocess.Popen] = []  # type: ignore[type-arg]

    def start(self, name: str, pid: int) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        data = self.out_dir / f"{name}.data"
        self._running.append(subprocess.Popen(
            ["perf", "record", "-q", "-F", str(self.frequency_hz), "-o", str(data),
             "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return data

    def stop(self) -> None:
        """SIGINT: each `perf record` writes its file and ends."""
        for process in self._running:
            process.send_signal(signal.SIGINT)
        for process in self._running:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        self._running.clear()


def _report(data: Path, sort: str) -> str:
    return subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", sort,
                           "--stdio", "-g", "none"], capture_output=True, text=True,
                          timeout=300, check=True).stdout


def parse_shares(by_library: str, by_symbol: str = "") -> dict[str, float]:
    """Shares (0..1) of the samples per kind of library, from `perf report --sort dso`
    (`by_library`), and `switching`: the kernel's thread switching, from `--sort sym`."""
    found = {kind: 0.0 for kind, _ in KINDS} | {"other": 0.0}
    for line in by_library.splitlines():
        matched = _LINE.match(line)
        if matched is None or line.lstrip().startswith("#"):
            continue
        percent, library = float(matched.group(1)), matched.group(2)
        kind = next((k for k, pattern in KINDS if pattern.search(library)), "other")
        found[kind] += percent / 100
    switching = 0.0
    for line in by_symbol.splitlines():
        matched = _LINE.match(line)
        if matched is not None and "[k]" in line and any(s in line for s in SWITCHING):
            switching += float(matched.group(1)) / 100
    found["switching"] = switching
    return {kind: round(share, 4) for kind, share in found.items()}


def shares(data: Path) -> dict[str, float]:
    """`parse_shares` of a `perf record` file."""
    return parse_shares(_report(data, "dso"), _report(data, "sym"))


def table(cpu_ms_per_task: dict[str, float], found: dict[str, dict[str, float]]) -> Table:
    """Per party (a column), each kind's share of its CPU and what that is per task."""
    table = Table(title="where each party's CPU goes (perf; ms per task)")
    table.add_column("")
    for party in found:
        table.add_column(f"{party} ({cpu_ms_per_task[party]:.2f} ms)", justify="right")
    for kind in [k for k, _ in KINDS] + ["other", "switching"]:
        label = "  of kernel: switching threads" if kind == "switching" else kind
        table.add_row(label, *(f"{share[kind]:.1%} ({share[kind] * cpu_ms_per_task[party]:.2f})"
                               for party, share in found.items()))
    return table
