"""Where the `agentmarket` commands print, and how a user's mistake ends one: one red line,
never a traceback; exit status 2 with the command's --help for a value of the wrong shape (as
typer's own checks), 1 for a refusal."""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

# No markup: what the commands print holds the user's own words (paths, ids, TOML, messages
# quoting them), and "[/x]" in one of those is text, not a style (colours are set as styles)
console = Console(markup=False)
errors = Console(stderr=True, markup=False)  # a script reading --json output gets no errors


def error_line(message: str) -> None:
    errors.print(Text.assemble(("error:", "red"), " ", message), highlight=False,
                 soft_wrap=True)


def fail(message: str) -> None:
    error_line(message)
    raise typer.Exit(1)


def bad_value(message: str) -> NoReturn:
    """An option's value of the wrong shape: a usage error like typer's own (`main` prints it
    with the command's --help, exit status 2)."""
    raise _WrongValue(message, ctx=_running_command())


class _WrongValue(typer.BadParameter):
    def format_message(self) -> str:
        return self.message  # the message names the option itself


def _running_command() -> Any:
    """The command's context, for its --help hint (typer keeps its click inside)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # another typer: the line comes without the hint
        return None
    return get_current_context(silent=True)
