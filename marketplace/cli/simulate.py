"""`agentmarket simulate SCENARIO --seed N --out DIR`: a market sandbox through the real stack.

Loads the scenario (one line naming the field if it is wrong), runs it with a progress bar,
writes DIR/events.csv, the plots and DIR/report.html, and prints the summary table. Exits 1 if
the books do not balance or the ledger's hash chain does not verify.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from agents.sandbox import events as event_file
from agents.sandbox.loop import RunResult, simulate
from agents.sandbox.plots import draw_all
from agents.sandbox.report import summary_table, write_html
from agents.sandbox.scenario import Scenario

EVENTS = "events.csv"
REPORT = "report.html"


class _CtrlC:
    """Ctrl-C as Python's own handler does it (KeyboardInterrupt in the main thread), and
    remembered: raised where a library catches it instead (inside a blocking gRPC call of
    the main thread, say), the run's next step raises it again, so the run still stops.
    Raised where Python cannot propagate it (a weakref callback the garbage collector runs,
    a `__del__`), it would be printed as "Exception ignored" with a traceback: `unraisable`
    keeps that quiet, as the next step raises it anyway."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous_hook = sys.unraisablehook

    def handle(self, _signum: int, _frame: Any) -> None:
        self.pressed = True  # a plain flag: an Event's lock may be held by the main thread
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.pressed:
            raise KeyboardInterrupt

    def unraisable(self, unraisable: Any) -> None:
        if not (self.pressed and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            self._previous_hook(unraisable)


@contextmanager
def _ctrl_c() -> Iterator[_CtrlC]:
    ctrl_c = _CtrlC()
    if threading.current_thread() is not threading.main_thread():
        yield ctrl_c  # only the main thread handles signals
        return
    previous = signal.signal(signal.SIGINT, ctrl_c.handle)
    sys.unraisablehook = ctrl_c.unraisable
    try:
        yield ctrl_c
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = ctrl_c._previous_hook


def run(scenario: Scenario, seed: int, out: Path, console: Console, *,
        db_url: str | None = None, workers: int = 16, node_process: bool = False
        ) -> RunResult:
    """Run, write every output into `out`, print the summary; returns the run."""
    out.mkdir(parents=True, exist_ok=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with _ctrl_c() as ctrl_c, Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("starting", total=None)

        def report(what: str, done: int, total: int) -> None:
            ctrl_c.check()
            progress.update(bar, description=what, completed=done, total=total)

        result = simulate(scenario, seed, out, db_url=db_url, workers=workers,
                          node_process=node_process, progress=report)
        progress.update(bar, description="drawing plots")
        event_file.write(out / EVENTS, result.events)
        plots = draw_all(result.events, out)
        write_html(out / REPORT, scenario, seed, result, plots)
        progress.update(bar, description="done")
    console.print(summary_table(scenario, seed, result))
    console.print(f"events: {out / EVENTS}; report: {out / REPORT}; plots: "
                  f"{', '.join(p.name for p in plots)}", highlight=False, soft_wrap=True)
    return result
