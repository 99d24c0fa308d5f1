"""Setting a context variable for the length of a `with` block.

A class rather than a `contextlib.contextmanager` generator: the paid-call path enters
several of these per call, and a generator-based context costs several times more.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Scoped(Generic[T]):
    """`with Scoped(var, value) as value:` sets `var` inside the block, restores it after."""

    __slots__ = ("_token", "_value", "_var")

    def __init__(self, var: ContextVar[T], value: T) -> None:
        self._var = var
        self._value = value
        self._token: Token[T] | None = None

    def __enter__(self) -> T:
        self._token = self._var.set(self._value)
        return self._value

    def __exit__(self, *_exc: Any) -> None:
        if self._token is not None:
            self._var.reset(self._token)
            self._token = None
