"""How a started serving process (`serve`, `gateway`) tunes itself, and the two flags that
keep the defaults instead: one definition for both commands."""

from __future__ import annotations

import typer

from marketplace.heap import settle_heap
from marketplace.scheduling import batch_scheduling

GC_DEFAULTS = typer.Option(
    False, "--gc-defaults", help="Keep CPython's garbage-collector settings (by default the "
                                 "started process freezes its start-up heap and collects in "
                                 "larger passes: marketplace.heap).")
NORMAL_SCHEDULING = typer.Option(
    False, "--normal-scheduling", help="Keep Linux's default thread scheduling (by default: "
                                       "SCHED_BATCH, more calls per second when the cores are "
                                       "busy).")


def tune_started(*, gc_defaults: bool, normal_scheduling: bool) -> None:
    """Once started: what the process holds now lives as long as it (settle the heap), and its
    threads keep their core when they wake another (batch scheduling)."""
    if not gc_defaults:
        settle_heap()
    if not normal_scheduling:
        batch_scheduling()
