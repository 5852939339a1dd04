"""What a compiled query yields to the interpreter, and the few helpers compiled code calls."""
from __future__ import annotations

import asyncio
import contextvars
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Text:
    """Prompt text to append."""
    text: str


@dataclass(frozen=True)
class Role:
    """Start a chat message of this role (system, user, assistant)."""
    role: str


@dataclass(frozen=True)
class Hole:
    """A hole to decode; the interpreter sends its value back into the generator.

    `where(resolve)` builds the hole's constraint term; `resolve(name)` gives a decoded value,
    the hole's own symbol, or UNKNOWN for `later` holes of the same statement.
    `following` is the statement's literal text after the hole, up to the next hole or `{...}`.
    `distribution()` gives the candidate values when the hole is a `distribution` variable.
    """
    name: str
    line: int
    column: int
    where: Callable[[Callable[[str], Any]], Any] | None = None
    type: Any = None
    decorators: tuple[Callable[[Any], Any], ...] = ()
    later: tuple[str, ...] = ()
    following: str = ""   # the literal text right after the hole in its statement (for the trace)
    constraint: str | None = None  # the where-clause text about the hole, as written (for the event stream)
    distribution: Callable[[], Any] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Nested:
    """`[X: subquery(args)]`: run `query`'s program inline, then replace its text by its return value."""
    query: Any
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def is_query_function(obj: Any) -> bool:
    return getattr(obj, "__lmql_program__", None) is not None


def nested(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A call in a hole's type position: a query function becomes a nested query, anything else is called."""
    if is_query_function(fn):
        return Nested(fn, args, kwargs)
    return fn(*args, **kwargs)


def await_(value: Any) -> Any:
    """`await x` in a query: queries run synchronously, so a coroutine is run to completion here."""
    if not inspect.isawaitable(value):
        return value
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_wrap(value))
    finally:
        loop.close()


async def _wrap(awaitable: Any) -> Any:
    return await awaitable


_prompt: contextvars.ContextVar = contextvars.ContextVar("lmql_lite_prompt", default=None)


class QueryContext:
    """LMQL's `context` object: what a running query can ask about itself (`context.prompt`)."""

    @property
    def prompt(self) -> str:
        """The prompt so far, hole values included."""
        text = _prompt.get()
        if text is None:
            raise RuntimeError("context.prompt is only available while a query runs")
        return text()

    def __repr__(self) -> str:
        return "<lmql_lite query context>"


context = QueryContext()


def running(text: Callable[[], str]):
    """While a query's code runs, `context.prompt` is `text()`; returns the token to `reset` it."""
    return _prompt.set(text)


def reset(token) -> None:
    _prompt.reset(token)
