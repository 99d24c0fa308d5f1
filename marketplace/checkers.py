"""Deterministic checkers, registered by name at a marketplace node.

    node.register_checker("word_count.max_12", lambda output: output["words"] <= 12)

An agreement with CHECKER verification names one (`Terms.checker`); at redeem, every output that
passed the skill's output schema is given to it (the parsed JSON value) and is paid only when it
returns True. A checker that raises fails that output. Checkers must be pure and fast: every
node serving the same database must register the same ones (nodes are stateless), and
OpenEscrow refuses an agreement naming a checker the node does not know.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from marketplace.errors import FailedPrecondition, InvalidArgument

Checker = Callable[[Any], bool]
_NAME = re.compile(r"^[a-z0-9_.-]{1,64}\Z")
MAX_CHECKERS = 1000


class CheckerRegistry:
    """Name -> checker function; thread-safe."""

    def __init__(self) -> None:
        self._checkers: dict[str, Checker] = {}
        self._lock = threading.Lock()

    def register(self, name: str, checker: Checker) -> None:
        """Register (or replace) a checker under `name` (1..64 of [a-z0-9_.-])."""
        if not _NAME.match(name):
            raise InvalidArgument("a checker name is 1..64 characters of [a-z0-9_.-]")
        if not callable(checker):
            raise InvalidArgument("a checker must be callable")
        with self._lock:
            if name not in self._checkers and len(self._checkers) >= MAX_CHECKERS:
                raise InvalidArgument(f"at most {MAX_CHECKERS} checkers")
            self._checkers[name] = checker

    def get(self, name: str) -> Checker:
        with self._lock:
            checker = self._checkers.get(name)
        if checker is None:
            raise FailedPrecondition(f"no checker {name!r} is registered at this marketplace",
                                     reason="CHECKER_NOT_REGISTERED")
        return checker

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._checkers

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._checkers)

    def run(self, name: str, output: Any) -> tuple[bool, str]:
        """(passed, reason) of one output."""
        try:
            passed = self.get(name)(output)
        except FailedPrecondition:
            raise
        except Exception as error:  # a checker's bug fails the output, never the redeem
            return False, f"checker {name} raised {type(error).__name__}"
        return (True, "") if passed is True else (False, f"checker {name} said no")
