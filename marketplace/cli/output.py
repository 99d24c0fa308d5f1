"""Where the `agentmarket` commands print, and how a user's mistake ends one: one red line
and exit status 1, never a traceback."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()
errors = Console(stderr=True)  # a script reading a command's output (--json) gets no error text


def error_line(message: str) -> None:
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)


def fail(message: str) -> None:
    error_line(message)
    raise typer.Exit(1)
